"""The trees of third-party packages: a folder, a git ref or a tarball, on the controller.

A manifest whose ``package.source`` is set names where its package's tree is (see
:class:`kmodlab.manifest.PackageSpec`). :func:`fetch` makes that tree a local folder:

- ``path``: the folder itself (absolute, or relative to the manifest's folder), e.g. a
  Debian ``*-dkms`` package's ``/usr/src/NAME-VERSION``; nothing is copied;
- ``git`` + ``ref``: cloned once into the cache (``CACHE/git/URL-DIGEST``), fetched again
  only when the ref is not a commit the clone already has; the ref's commit is checked
  out into ``CACHE/trees/git-COMMIT`` once, and that commit is the tree's identity;
- ``url`` + ``sha256``: downloaded once into ``CACHE/tarballs/SHA256``, its digest
  checked before anything is unpacked (a mismatch is an error and the file is deleted),
  unpacked once into ``CACHE/trees/tar-SHA256`` (members outside the tree refused).

The cache is ``$KMODLAB_SOURCE_CACHE``, else ``$XDG_CACHE_HOME/kmodlab/sources``, else
``~/.cache/kmodlab/sources``: outside the repository, shared by every run. A folder is
written beside its final name and renamed into place, so an interrupted fetch leaves
nothing a later run would take for a tree.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kmodlab.lab.errors import LabError
from kmodlab.manifest import GitSource, PathSource, Source, TarballSource

_CHUNK = 1 << 16


class SourceError(LabError):
    """A package tree that could not be fetched or does not match its digest."""


@dataclass(frozen=True)
class Tree:
    """A fetched package tree: its folder and what identifies its content (a path, a git
    commit, or a tarball's sha256)."""

    path: Path
    identity: str


def cache_root() -> Path:
    chosen = os.environ.get("KMODLAB_SOURCE_CACHE")
    if chosen:
        return Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kmodlab" / "sources"


def fetch(source: Source, manifest_dir: Path, cache: Path | None = None) -> Tree:
    """The local tree of ``source`` (see the module docstring); SourceError otherwise."""
    cache = cache or cache_root()
    if isinstance(source, PathSource):
        path = (Path(manifest_dir) / source.path).resolve()
        if not path.is_dir():
            raise SourceError(f"package source {source.path}: {path} is not a folder")
        return Tree(path, f"path:{path}")
    if isinstance(source, GitSource):
        return _subdir(_git(source, cache), source.subdir, source.git)
    if isinstance(source, TarballSource):
        return _subdir(_tarball(source, cache), source.subdir, source.url)
    raise SourceError(f"unknown package source {source!r}")


def _subdir(tree: Tree, subdir: str | None, where: str) -> Tree:
    if not subdir:
        return tree
    path = (tree.path / subdir).resolve()
    if not path.is_relative_to(tree.path) or not path.is_dir():
        raise SourceError(f"{where}: subdir {subdir!r} is not a folder of the fetched tree")
    return Tree(path, f"{tree.identity}:{subdir}")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _run_git(args: list[str], where: str) -> str:
    proc = subprocess.run(
        ["git", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"},
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise SourceError(f"git {args[0]} for {where} failed: {tail}")
    return proc.stdout.strip()


def _git(source: GitSource, cache: Path) -> Tree:
    if shutil.which("git") is None:
        raise SourceError(
            f"{source.git}: git is not installed on the controller (apt-get install git)"
        )
    clone = cache / "git" / _digest(source.git)
    # Several hosts' selections run at once: one clone, fetch and checkout at a time.
    with _locked(_parent(clone) / f"{clone.name}.lock"):
        return _git_locked(source, clone, cache)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _git_locked(source: GitSource, clone: Path, cache: Path) -> Tree:
    if not (clone / "HEAD").is_file():
        clone.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=clone.name + ".", dir=clone.parent))
        try:
            _run_git(["clone", "--quiet", "--bare", source.git, str(partial)], source.git)
            partial.rename(clone)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    commit = _resolve(clone, source)
    tree = cache / "trees" / f"git-{commit}"
    if not tree.is_dir():
        archive = subprocess.run(
            ["git", f"--git-dir={clone}", "archive", "--format=tar", commit],
            capture_output=True,
            check=False,
        )
        if archive.returncode != 0:
            raise SourceError(f"git archive {commit} of {source.git} failed")
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            _place(tar, tree, source.git, strip_top=False)
    return Tree(tree, f"git:{commit}")


def _resolve(clone: Path, source: GitSource) -> str:
    """The commit of ``source.ref``: fetched again unless it is a commit the clone has."""
    git = [f"--git-dir={clone}"]
    known = subprocess.run(
        ["git", *git, "rev-parse", "--verify", "--quiet", f"{source.ref}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    is_commit = len(source.ref) == 40 and known.stdout.strip() == source.ref
    if not is_commit:
        _run_git([*git, "fetch", "--quiet", "--force", "--tags", source.git,
                  "+refs/heads/*:refs/heads/*"], source.git)  # fmt: skip
    try:
        return _run_git([*git, "rev-parse", "--verify", f"{source.ref}^{{commit}}"], source.git)
    except SourceError:
        raise SourceError(
            f"{source.git}: ref {source.ref!r} is neither a branch, a tag nor a commit of it"
        ) from None


def _parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.parent


def _tarball(source: TarballSource, cache: Path) -> Tree:
    tree = cache / "trees" / f"tar-{source.sha256}"
    with _locked(_parent(cache / "tarballs" / source.sha256) / f"{source.sha256}.lock"):
        return _tarball_locked(source, cache, tree)


def _tarball_locked(source: TarballSource, cache: Path, tree: Path) -> Tree:
    if tree.is_dir():
        return Tree(tree, f"sha256:{source.sha256}")
    archive = cache / "tarballs" / source.sha256
    if not archive.is_file():
        _download(source, archive)
    try:
        with tarfile.open(archive) as tar:
            _place(tar, tree, source.url, strip_top=True)
    except (tarfile.TarError, OSError) as exc:
        raise SourceError(f"{source.url}: not a tarball kmodlab can unpack ({exc})") from None
    return Tree(tree, f"sha256:{source.sha256}")


def _download(source: TarballSource, archive: Path) -> None:
    partial = Path(tempfile.mkstemp(prefix=archive.name + ".", dir=_parent(archive))[1])
    digest = hashlib.sha256()
    try:
        try:
            with (
                urllib.request.urlopen(source.url, timeout=60) as response,
                open(partial, "wb") as out,
            ):
                while chunk := response.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise SourceError(f"downloading {source.url} failed: {exc}") from None
        if digest.hexdigest() != source.sha256:
            raise SourceError(
                f"{source.url}: its sha256 is {digest.hexdigest()}, the manifest says "
                f"{source.sha256}; the file was deleted. Check the URL, or put the new "
                "digest in package.source.sha256 if the new file is the one you want"
            )
        partial.rename(archive)
    finally:
        partial.unlink(missing_ok=True)


def _place(tar: tarfile.TarFile, tree: Path, where: str, strip_top: bool) -> None:
    """Unpack ``tar`` into a scratch folder beside ``tree`` with the 'data' filter (no
    absolute paths, no links out of it, no devices), then rename it into place; with
    ``strip_top``, a tarball whose members are all in one folder gives that folder."""
    scratch = Path(tempfile.mkdtemp(prefix=tree.name + ".", dir=_parent(tree)))
    try:
        try:
            tar.extractall(scratch, filter="data")
        except tarfile.FilterError as exc:
            raise SourceError(f"{where}: refused member: {exc}") from None
        root = scratch
        children = list(scratch.iterdir())
        if strip_top and len(children) == 1 and children[0].is_dir():
            root = children[0]
        root.rename(tree)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


__all__ = ["SourceError", "Tree", "cache_root", "fetch"]
