"""Fast tier: DKMS state read from dkms's tree (module_utils/dkms_tree.py).

``Tree`` lays packages out the way dkms 3.0.10 does on Debian 12 (``dkms_tree.py``); the
expected lines are the ones its ``dkms status`` printed for
the same states. The VM tier compares the reader with the real ``dkms status``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from dkms_tree import DkmsTree

from kmodlab.verify.observe import collector_source

REPO = Path(__file__).resolve().parents[2]
status = importlib.import_module("ansible_collections.kmodlab.lab.plugins.module_utils.dkms_tree")

K = "6.1.0-56-amd64"
K2 = "6.1.0-99-amd64"
A = "x86_64"


class Tree(DkmsTree):
    def __init__(self, root: Path):
        super().__init__(root, A)

    def add(self, name, version, modules=None, conf_extra=""):
        src = self.src / f"{name}-{version}"
        src.mkdir(parents=True)
        conf = f'PACKAGE_NAME="{name}"\nPACKAGE_VERSION="{version}"\n'
        for i, m in enumerate(modules or [name]):
            conf += f'BUILT_MODULE_NAME[{i}]="{m}"\nDEST_MODULE_LOCATION[{i}]="/updates/dkms"\n'
        (src / "dkms.conf").write_text(conf + conf_extra)
        return self.register(name, version)

    def build(self, name, version, kernel=K, modules=None, suffix=".ko"):
        return super().build(name, version, kernel, modules, suffix)

    def install(self, name, version, kernel=K, dest="updates/dkms", content=None):
        return super().install(name, version, kernel, dest, content)

    def read(self, *names):
        return status.read_tree(str(self.dkms), list(names), str(self.lib))

    def lines(self, *names):
        return sorted(e["line"] for e in self.read(*names))


def tree(tmp_path):
    return Tree(tmp_path)


def test_added_built_installed(tmp_path):
    t = tree(tmp_path)
    t.add("foo", "1.0")
    assert t.lines("foo") == ["foo/1.0: added"]
    t.build("foo", "1.0")
    assert t.lines("foo") == [f"foo/1.0, {K}, {A}: built"]
    t.install("foo", "1.0")
    assert t.lines("foo") == [f"foo/1.0, {K}, {A}: installed"]
    (e,) = t.read("foo")
    assert (e["name"], e["version"], e["kernel"], e["arch"], e["status"]) == (
        "foo",
        "1.0",
        K,
        A,
        "installed",
    )
    assert e["diff"] is False and e["missing"] is False


def test_unknown_and_other_names_are_not_read(tmp_path):
    t = tree(tmp_path)
    t.add("foobar", "1.0").build("foobar", "1.0").install("foobar", "1.0")
    assert t.read("foo") == [] and t.read() == []
    assert status.read_tree(str(tmp_path / "nowhere"), ["foo"]) == []


def test_installed_copy_replaced_or_gone_is_a_diff(tmp_path):
    t = tree(tmp_path).add("foo", "1.0").build("foo", "1.0").install("foo", "1.0")
    copy = t.lib / K / "updates/dkms/foo.ko"
    copy.write_bytes(b"someone else's foo")
    assert t.lines("foo") == [
        f"foo/1.0, {K}, {A}: installed (WARNING! Diff between built and installed module!)"
    ]
    assert t.read("foo")[0]["diff"] is True
    copy.unlink()
    assert t.read("foo")[0]["diff"] is True


def test_a_missing_built_module(tmp_path):
    t = tree(tmp_path).add("foo", "1.0", modules=["foo", "foo_helper"])
    t.build("foo", "1.0", modules=["foo"])
    assert t.lines("foo") == [f"foo/1.0, {K}, {A}: built (WARNING! Missing some built modules!)"]
    assert t.read("foo")[0]["missing"] is True


def test_nothing_built_for_a_kernel_folder_is_added(tmp_path):
    # What dkms 3.0.10 says once the only built .ko is gone.
    t = tree(tmp_path).add("foo", "1.0").build("foo", "1.0")
    (t.dkms / "foo/1.0" / K / A / "module/foo.ko").unlink()
    assert t.lines("foo") == ["foo/1.0: added"]


def test_source_gone(tmp_path):
    t = tree(tmp_path).add("foo", "1.0").build("foo", "1.0").install("foo", "1.0")
    t.add("foo", "2.0")
    for folder in ("foo-1.0", "foo-2.0"):
        for f in (t.src / folder).iterdir():
            f.unlink()
        (t.src / folder).rmdir()
    # What was built still counts; a version with nothing built is broken (dkms 3.1).
    assert t.lines("foo") == ["foo/1.0, 6.1.0-56-amd64, x86_64: installed", "foo/2.0: broken"]


def test_compressed_modules_and_dest_names(tmp_path):
    t = tree(tmp_path).add("foo", "1.0", conf_extra='DEST_MODULE_NAME[0]="foo_new"\n')
    t.build("foo", "1.0", suffix=".ko.xz")
    link = t.dkms / "foo" / f"kernel-{K}-{A}"
    link.symlink_to(f"1.0/{K}/{A}")
    dest = t.lib / K / "updates/dkms"
    dest.mkdir(parents=True)
    (dest / "foo_new.ko.xz").write_bytes(
        (t.dkms / "foo/1.0" / K / A / "module/foo.ko.xz").read_bytes()
    )
    assert t.lines("foo") == [f"foo/1.0, {K}, {A}: installed"]


def test_conf_module_names():
    assert status.conf_modules("/nonexistent/dkms.conf") is None


def test_versions_seen_from_one_kernel(tmp_path):
    t = tree(tmp_path)
    t.add("foo", "1.0").build("foo", "1.0")
    t.add("foo", "2.0").build("foo", "2.0").install("foo", "2.0")
    t.build("foo", "2.0", kernel=K2).install("foo", "2.0", kernel=K2)
    t.add("foo", "3.0").build("foo", "3.0", kernel=K2)
    t.add("foo", "4.0")
    t.add("foobar", "1.0").build("foobar", "1.0").install("foobar", "1.0")
    entries = t.read("foo", "foobar")
    # 3.0 is built for another kernel only: registered, so "added" for this kernel.
    assert status.versions_on_kernel(entries, "foo", K) == {
        "1.0": "built",
        "2.0": "installed",
        "3.0": "added",
        "4.0": "added",
    }
    assert status.versions_on_kernel(entries, "nope", K) == {}
    assert status.kernels_installed(entries, "foo", "2.0") == [K, K2]
    assert status.entry_for(entries, "foo", "2.0", K)["status"] == "installed"
    assert status.entry_for(entries, "foo", "4.0", K) is None
    assert status.status_lines(entries, "foobar") == [f"foobar/1.0, {K}, {A}: installed"]


def test_broken_wins(tmp_path):
    entries = [
        {"name": "foo", "version": "1.0", "kernel": None, "status": "broken"},
        {"name": "foo", "version": "1.0", "kernel": K, "status": "installed"},
    ]
    assert status.versions_on_kernel(entries, "foo", K) == {"1.0": "broken"}


def test_tail_and_digest(tmp_path):
    assert status.tail("a\nb\nc\n", 2) == ["b", "c"]
    assert status.tail("a\nb\n", 0) == []
    log = tmp_path / "make.log"
    log.write_bytes(b"one\ntwo \xe2\x80\x98x\xe2\x80\x99\n\xff three\n")
    assert status.read_tail(str(log), 2) == ["two \u2018x\u2019", "\ufffd three"]
    assert status.read_tail(str(tmp_path / "missing"), 2) is None

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.c").write_text("int a;\n")
    (src / "sub" / "b.c").write_text("int b;\n")
    first = status.source_digest(str(src))
    assert first == status.source_digest(str(src))
    (src / "a.c").write_text("int a = 1;\n")
    assert status.source_digest(str(src)) != first
    assert status.source_digest(str(tmp_path / "nope")) is None


def test_the_verify_collector_carries_the_same_reader(tmp_path):
    t = tree(tmp_path).add("foo", "1.0").build("foo", "1.0")
    t.add("bar", "2.0")
    request = {"dkms": {"tree": str(t.dkms), "names": ["foo", "bar", "nope"]}}
    proc = subprocess.run(
        [sys.executable, "-c", collector_source(), json.dumps(request)],
        capture_output=True,
        text=True,
        check=True,
    )
    entries = json.loads(proc.stdout)["dkms"]["entries"]
    assert sorted(e["line"] for e in entries) == t.lines("foo", "bar")
    assert t.lines("foo", "bar") == ["bar/2.0: added", f"foo/1.0, {K}, {A}: built"]
