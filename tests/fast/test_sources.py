"""Fast tier: third-party package trees (kmodlab.sources) and their packages.

Real git repositories and real tarballs made here, fetched through ``file://`` URLs and a
local HTTP server: fetched once and cached, digests checked before anything is unpacked,
members that would land outside the tree refused. Then the package kmodlab makes of
such a tree: every file as shipped, its dkms.conf checked to name the manifest's package,
version and module, two modules of one package packaged once.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kmodlab.manifest import GitSource, PathSource, TarballSource
from kmodlab.package import PackageError, packages_for, render
from kmodlab.sources import SourceError, fetch

CONF = """\
PACKAGE_NAME="acme-sensors"
PACKAGE_VERSION="2.1.0"
BUILT_MODULE_NAME[0]="acme_temp"
BUILT_MODULE_NAME[1]="acme_fan"
DEST_MODULE_LOCATION[0]="/updates/dkms"
DEST_MODULE_LOCATION[1]="/updates/dkms"
MAKE[0]="make KDIR=${kernel_source_dir}"
"""
FILES = {"dkms.conf": CONF, "Makefile": "obj-m := acme_temp.o acme_fan.o\n",
         "acme_temp.c": "/* temp */\n", "acme_fan.c": "/* fan */\n"}  # fmt: skip


def write_tree(root: Path, files: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, text in (files or FILES).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def tarball(path: Path, members: dict[str, str], top: str = "acme-sensors-2.1.0") -> str:
    with tarfile.open(path, "w:gz") as tar:
        for rel, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{top}/{rel}" if top else rel)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def git(*args: str, cwd: Path) -> str:
    who = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@localhost"}  # fmt: skip
    env = {**who, "HOME": str(cwd), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on 127.0.0.1 (loopback only), and its base URL."""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_path_is_used_where_it_is(tmp_path: Path, cache: Path) -> None:
    tree = write_tree(tmp_path / "usr/src/acme-sensors-2.1.0")
    got = fetch(PathSource(path="../usr/src/acme-sensors-2.1.0"), tmp_path / "manifests", cache)
    assert got.path == tree and got.identity == f"path:{tree}"
    assert not cache.exists(), "a path is not copied"
    with pytest.raises(SourceError, match="is not a folder"):
        fetch(PathSource(path="/nonexistent/acme"), tmp_path, cache)


def test_a_tarball_is_checked_then_unpacked_once(http_root, tmp_path: Path, cache: Path):
    root, base = http_root
    digest = tarball(root / "acme.tar.gz", FILES)
    source = TarballSource(url=f"{base}/acme.tar.gz", sha256=digest)
    got = fetch(source, tmp_path, cache)
    assert got.identity == f"sha256:{digest}"
    assert {p.name for p in got.path.iterdir()} == set(FILES), "one top folder is stripped"
    assert (got.path / "dkms.conf").read_text() == CONF
    (root / "acme.tar.gz").unlink()  # the second fetch needs the network no more
    assert fetch(source, tmp_path, cache) == got


def test_a_tarball_with_another_digest_is_refused_and_deleted(http_root, tmp_path, cache):
    root, base = http_root
    tarball(root / "acme.tar.gz", FILES)
    wrong = "0" * 64
    with pytest.raises(SourceError) as err:
        fetch(TarballSource(url=f"{base}/acme.tar.gz", sha256=wrong), tmp_path, cache)
    assert f"the manifest says {wrong}; the file was deleted" in str(err.value)
    assert not list(cache.rglob("*acme*")) and not list((cache / "trees").glob("*"))
    with pytest.raises(SourceError, match=r"downloading .* failed"):
        fetch(TarballSource(url=f"{base}/missing.tar.gz", sha256=wrong), tmp_path, cache)


def test_a_tarball_member_outside_the_tree_is_refused(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "evil.tar.gz"
    digest = tarball(path, {"../../escape.txt": "x"}, top="")
    with pytest.raises(SourceError, match="refused member"):
        fetch(TarballSource(url=path.as_uri(), sha256=digest), tmp_path, cache)
    assert not (tmp_path / "escape.txt").exists()
    assert not list((cache / "trees").glob("*")), "nothing half-unpacked is left as a tree"


def test_a_git_ref_is_fetched_once_and_identified_by_its_commit(tmp_path: Path, cache):
    repo = write_tree(tmp_path / "repo" / "driver")
    git("init", "-q", "-b", "main", cwd=repo.parent)
    git("add", ".", cwd=repo.parent)
    git("commit", "-q", "-m", "v2.1.0", cwd=repo.parent)
    git("tag", "v2.1.0", cwd=repo.parent)
    first = git("rev-parse", "HEAD", cwd=repo.parent)
    url = (tmp_path / "repo").as_uri()
    got = fetch(GitSource(git=url, ref="v2.1.0", subdir="driver"), tmp_path, cache)
    assert got.identity == f"git:{first}:driver"
    assert (got.path / "dkms.conf").read_text() == CONF
    # A new commit on main: the branch moves, the tag and the commit do not.
    (repo / "acme_fan.c").write_text("/* fan, v2 */\n")
    git("commit", "-q", "-am", "next", cwd=repo.parent)
    moved = fetch(GitSource(git=url, ref="main", subdir="driver"), tmp_path, cache)
    assert moved.identity != got.identity
    assert (moved.path / "acme_fan.c").read_text() == "/* fan, v2 */\n"
    pinned = fetch(GitSource(git=url, ref=first, subdir="driver"), tmp_path, cache)
    assert pinned == got and (got.path / "acme_fan.c").read_text() == "/* fan */\n"
    with pytest.raises(SourceError, match="neither a branch, a tag nor a commit"):
        fetch(GitSource(git=url, ref="v9"), tmp_path, cache)
    with pytest.raises(SourceError, match="subdir 'nope'"):
        fetch(GitSource(git=url, ref="main", subdir="nope"), tmp_path, cache)


def record(name: str, tree: Path, package: str = "acme-sensors", version: str = "2.1.0"):
    return {
        "name": name,
        "kmod": name,
        "version": version,
        "package": package,
        "state": "present",
        "source_dir": str(tree),
        "manifest": {"name": name, "package": {"name": package, "source": {"path": str(tree)}}},
    }


def test_the_package_is_the_tree_as_shipped(tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "acme", {**FILES, "scripts/post.sh": "#!/bin/sh\n"})
    (tree / "scripts/post.sh").chmod(0o755)
    (tree / "acme_temp.o").write_text("build output")
    (tree / ".git").mkdir()
    (tree / ".git/HEAD").write_text("ref")
    pkg = render(record("acme_temp", tree))
    assert pkg.name == "acme-sensors" and pkg.version == "2.1.0" and pkg.depends == ()
    assert set(pkg.files) == {*FILES, "scripts/post.sh"}
    assert pkg.files["dkms.conf"] == CONF and pkg.executables == ("scripts/post.sh",)
    (spec,) = packages_for([record("acme_temp", tree), record("acme_fan", tree)])
    assert spec["name"] == "acme-sensors" and spec["state"] == "present"
    # One of them absent, the other present: the package stays.
    absent = {**record("acme_fan", tree), "state": "absent"}
    assert [s["state"] for s in packages_for([absent, record("acme_temp", tree)])] == ["present"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"package": "other-pkg"}, "PACKAGE_NAME is 'acme-sensors', the manifest says 'other-pkg'"),
        ({"version": "2.2.0"}, "PACKAGE_VERSION is '2.1.0', the manifest says '2.2.0'"),
        ({"name": "acme_light", "kmod": "acme_light"}, "do not include acme_light"),
    ],
)
def test_a_dkms_conf_that_does_not_match_the_manifest_is_named(tmp_path, change, message):
    tree = write_tree(tmp_path / "acme")
    with pytest.raises(PackageError) as err:
        render({**record("acme_temp", tree), **change})
    assert str(err.value).startswith(f"module {change.get('name', 'acme_temp')}: {tree}/dkms.conf")
    assert message in str(err.value)


def test_two_modules_of_one_package_from_different_trees_clash(tmp_path: Path) -> None:
    one = write_tree(tmp_path / "one")
    two = write_tree(tmp_path / "two", {**FILES, "acme_fan.c": "/* other */\n"})
    with pytest.raises(PackageError, match="acme_temp and acme_fan are both built in package"):
        packages_for([record("acme_temp", one), record("acme_fan", two)])
