# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Target-side helpers for kmodlab's DKMS module and verify suite: DKMS state, digests.

This file is shipped to managed hosts inside the module payload (AnsiballZ) and inside
the verify collector's zip, where the ``kmodlab`` package is
not installed: standard library only, Python 3.10+ (the floor in tests/config.yml).

``read_tree`` reads the state of packages straight from dkms's own tree, the files
``dkms status`` itself looks at, into one entry per package/version/kernel/arch with the
states and warnings ``dkms status`` shows (its ``line`` is the line dkms 3.0 prints). An
emulated guest pays about 3 s per ``dkms status -m NAME`` and 25 s for a plain ``dkms
status`` of ten packages (it forks about a hundred times per version); reading the tree
costs milliseconds. The VM tier checks it against the real ``dkms status`` in each state.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from typing import Any

STATUS_ORDER = ("absent", "added", "built", "installed")

MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")
_BUILT_NAME = re.compile(r"""^\s*BUILT_MODULE_NAME\[(\d+)\]=["']?([^"'\s$]+)["']?\s*$""")
_DEST_NAME = re.compile(r"""^\s*DEST_MODULE_NAME\[(\d+)\]=["']?([^"'\s$]+)["']?\s*$""")
_DEST_LOCATION = re.compile(r"""^\s*DEST_MODULE_LOCATION\[(\d+)\]=["']?([^"'\s$]+)["']?\s*$""")
_NOT_KERNEL = ("build", "source", "tarball", "driver_disk", "log")
DEFAULT_DEST = "/updates/dkms"


def status_line(
    name: str,
    version: str,
    kernel: str | None,
    arch: str | None,
    status: str,
    notes: Iterable[str] = (),
) -> str:
    """The line dkms 3.0's ``dkms status`` prints for one entry."""
    if kernel is None:
        line = f"{name}/{version}: {status}"
    else:
        line = f"{name}/{version}, {kernel}, {arch}: {status}"
    return line + "".join(f" ({n})" for n in notes)


def entry(
    name: str,
    version: str,
    kernel: str | None,
    arch: str | None,
    status: str,
    diff: bool = False,
    missing: bool = False,
) -> dict[str, Any]:
    """One entry as ``read_tree`` returns it (the planner predicts entries with it too)."""
    notes = []
    if missing:
        notes.append("WARNING! Missing some built modules!")
    if diff:
        notes.append("WARNING! Diff between built and installed module!")
    return {
        "name": name,
        "version": version,
        "kernel": kernel,
        "arch": arch,
        "status": status,
        "notes": notes,
        "diff": diff,
        "missing": missing,
        "line": status_line(name, version, kernel, arch, status, notes),
    }


def conf_modules(conf_path: str) -> list[tuple[str, str, str]] | None:
    """[(built name, dest name, dest location)] from a dkms.conf, or None when unknown.

    Only literal assignments are understood; a dkms.conf that computes its module names
    (shell code) gives None and its built modules are taken as they are found.
    """
    built, dest, where = {}, {}, {}
    try:
        with open(conf_path) as handle:
            for line in handle:
                for pattern, into in (
                    (_BUILT_NAME, built),
                    (_DEST_NAME, dest),
                    (_DEST_LOCATION, where),
                ):
                    m = pattern.match(line)
                    if m:
                        into[int(m.group(1))] = m.group(2)
    except OSError:
        return None
    if not built:
        return None
    return [(built[i], dest.get(i, built[i]), where.get(i, DEFAULT_DEST)) for i in sorted(built)]


def _module_file(folder: str, name: str) -> str | None:
    for suffix in MODULE_SUFFIXES:
        path = os.path.join(folder, name + suffix)
        if os.path.isfile(path):
            return path
    return None


def _same_file(a: str, b: str) -> bool:
    try:
        if os.path.getsize(a) != os.path.getsize(b):
            return False
        with open(a, "rb") as one, open(b, "rb") as two:
            return one.read() == two.read()
    except OSError:
        return False


def _is_dir(path: str) -> bool:
    return os.path.isdir(path) and not os.path.islink(path)


def read_tree(
    dkms_tree: str, names: Iterable[str], install_tree: str = "/lib/modules"
) -> list[dict[str, Any]]:
    """The ``dkms status`` entries of ``names``, read from ``dkms_tree`` (dkms 3.0 layout).

    ``DKMS_TREE/NAME/VERSION/source`` registers a version (``added``; ``broken`` when its
    target is gone and nothing was built), ``VERSION/KERNEL/ARCH/module/`` holds what was
    built for a kernel (``built``, with ``missing`` when a module dkms.conf names is not
    there; nothing there counts as not built, as dkms 3.0 sees it), and the
    ``NAME/kernel-KERNEL-ARCH`` link naming ``VERSION/KERNEL/ARCH`` marks it ``installed``
    (with ``diff`` when the copy under ``INSTALL_TREE/KERNEL/DEST`` is not the built one).
    """
    entries = []
    for name in names:
        base = os.path.join(dkms_tree, name)
        try:
            children = sorted(os.listdir(base))
        except OSError:
            continue
        installed = {}
        for child in children:
            link = os.path.join(base, child)
            if child.startswith("kernel-") and os.path.islink(link):
                installed[os.readlink(link).strip("/")] = True
        for version in children:
            vdir = os.path.join(base, version)
            if version.startswith("kernel-") or not _is_dir(vdir):
                continue
            source = os.path.join(vdir, "source")
            if not os.path.lexists(source):
                continue
            # Source folder gone: what was built still counts (as with dkms 3.0); a version
            # with nothing built is "broken" (as dkms 3.1 says), not merely "added".
            broken = not os.path.isdir(source)
            modules = conf_modules(os.path.join(source, "dkms.conf"))
            kernels = []
            for kernel in sorted(os.listdir(vdir)):
                kdir = os.path.join(vdir, kernel)
                if kernel in _NOT_KERNEL or not _is_dir(kdir):
                    continue
                for arch in sorted(os.listdir(kdir)):
                    if _is_dir(os.path.join(kdir, arch)):
                        kernels.append((kernel, arch))
            found = []
            for kernel, arch in kernels:
                built_dir = os.path.join(vdir, kernel, arch, "module")
                wanted = modules
                if wanted is None:
                    files = sorted(os.listdir(built_dir)) if os.path.isdir(built_dir) else []
                    wanted = [
                        (f.split(".ko")[0], f.split(".ko")[0], DEFAULT_DEST)
                        for f in files
                        if ".ko" in f
                    ]
                is_installed = f"{version}/{kernel}/{arch}" in installed
                present = [
                    (_module_file(built_dir, built_name), dest_name, where)
                    for built_name, dest_name, where in wanted
                ]
                if not any(built for built, _dest, _where in present):
                    # Nothing built for that kernel: dkms 3.0 shows the version as added.
                    continue
                missing = False
                diff = False
                for built, dest_name, where in present:
                    if built is None:
                        missing = True
                        continue
                    if is_installed:
                        copy = _module_file(
                            os.path.join(install_tree, kernel, where.strip("/")), dest_name
                        )
                        if copy is None or not _same_file(built, copy):
                            diff = True
                status = "installed" if is_installed else "built"
                found.append(entry(name, version, kernel, arch, status, diff, missing))
            entries.extend(
                found or [entry(name, version, None, None, "broken" if broken else "added")]
            )
    return entries


def _rank(status: str) -> str:
    if status == "installed":
        return "installed"
    if status == "built":
        return "built"
    return "added"


def versions_on_kernel(
    entries: Iterable[dict[str, Any]], name: str, kernel: str | None
) -> dict[str, str]:
    """``{version: status}`` of every registered version of ``name``, seen from ``kernel``.

    A version built or installed for another kernel only, or merely added, counts as
    ``added`` here (it is registered, but does nothing for ``kernel``); ``broken`` (dkms
    3.1+, source folder gone) is kept as is.
    """
    out = {}
    for e in entries:
        if e["name"] != name:
            continue
        current = out.get(e["version"])
        if e["status"] == "broken":
            out[e["version"]] = "broken"
            continue
        if current == "broken":
            continue
        status = _rank(e["status"]) if e["kernel"] == kernel else "added"
        if current is None or STATUS_ORDER.index(status) > STATUS_ORDER.index(current):
            out[e["version"]] = status
    return out


def entry_for(
    entries: Iterable[dict[str, Any]], name: str, version: str, kernel: str | None
) -> dict[str, Any] | None:
    """The status entry of ``name/version`` for ``kernel`` (built or installed), or None."""
    for e in entries:
        if e["name"] == name and e["version"] == version and e["kernel"] == kernel:
            return e
    return None


def kernels_installed(entries: Iterable[dict[str, Any]], name: str, version: str) -> list[str]:
    """Kernels on which ``name/version`` is installed (removing it needs depmod there)."""
    return sorted(
        {
            e["kernel"]
            for e in entries
            if e["name"] == name
            and e["version"] == version
            and e["kernel"]
            and e["status"] == "installed"
        }
    )


def status_lines(entries: Iterable[dict[str, Any]], name: str) -> list[str]:
    """The ``dkms status`` lines about ``name``, for diffs."""
    return [e["line"] for e in entries if e["name"] == name]


def tail(text: str | None, lines: int) -> list[str]:
    """The last ``lines`` lines of ``text``."""
    if not text:
        return []
    return text.splitlines()[-lines:] if lines > 0 else []


def read_tail(path: str, lines: int) -> list[str] | None:
    """The last ``lines`` lines of a file, or None when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    return tail(data.decode("utf-8", errors="replace"), lines)


def source_digest(path: str) -> str | None:
    """sha256 over every regular file below ``path`` (relative names and contents).

    Recorded beside each build so a later run can tell that the sources in
    ``/usr/src/NAME-VERSION`` changed since the module was built.
    """
    digest = hashlib.sha256()
    if not os.path.isdir(path):
        return None
    found = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for filename in files:
            full = os.path.join(root, filename)
            if os.path.isfile(full) and not os.path.islink(full):
                found.append(os.path.relpath(full, path))
    for rel in sorted(found):
        with open(os.path.join(path, rel), "rb") as handle:
            content = handle.read()
        digest.update(rel.encode("utf-8", errors="surrogateescape"))
        digest.update(b"\0")
        digest.update(hashlib.sha256(content).hexdigest().encode("ascii"))
        digest.update(b"\n")
    return digest.hexdigest()
