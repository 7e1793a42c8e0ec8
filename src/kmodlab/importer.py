"""``kmodlab module import SOURCE``: a manifest draft for a module kmodlab did not write.

Everything the draft says is read from the built module (``kmodlab.koinfo``: its
``.modinfo`` and ``__param`` sections), never guessed from the C text: name, version,
licence, author, description, and every parameter with its kernel type, sysfs mode,
array capacity and initial value. A source tree without built modules is built first
with kbuild against kernel headers, in a scratch copy. A tree with its own ``dkms.conf``
(a third-party package, e.g. a ``*-dkms`` package's ``/usr/src/NAME-VERSION``) gives
drafts that name that package and its tree (``package.name``, ``package.source.path``)
at the package's version: the pipeline builds it as its dkms.conf says. The user then
adds the lab parameters and the expectations.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kmodlab.koinfo import KoError, KoInfo, read_ko
from kmodlab.lab.errors import LabError
from kmodlab.manifest import Manifest
from kmodlab.package import BUILD_OUTPUT, read_dkms_conf

SOURCE_PATTERNS = ("*.c", "*.h", "Kbuild", "Makefile", "dkms.conf")


class ModuleImportError(LabError):
    """Why no draft could be made, and what to do."""


def newest_headers() -> Path | None:
    """$KMODLAB_KERNEL_HEADERS, else the newest /usr/src/linux-headers-*-amd64 build
    tree (Debian's linux-headers-amd64), else None."""
    chosen = os.environ.get("KMODLAB_KERNEL_HEADERS")
    if chosen:
        return Path(chosen)
    trees = [
        p for p in Path("/usr/src").glob("linux-headers-*-amd64") if (p / "Makefile").is_file()
    ]
    return max(trees, key=_version_key) if trees else None


def default_headers() -> Path | None:
    """Where to build: $KMODLAB_KERNEL_HEADERS, the running kernel's build tree, or the
    newest /usr/src/linux-headers-*-amd64."""
    running = Path("/lib/modules") / os.uname().release / "build"
    if not os.environ.get("KMODLAB_KERNEL_HEADERS") and (running / "Makefile").is_file():
        return running
    return newest_headers()


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path.name))


def dkms_conf(directory: Path) -> dict[str, str]:
    """The assignments of ``directory``'s dkms.conf, if it has one."""
    path = directory / "dkms.conf"
    return read_dkms_conf(path.read_text(errors="replace")) if path.is_file() else {}


def build(source: Path, headers: Path) -> tuple[Path, list[Path]]:
    """Build ``source`` with kbuild in a scratch copy; the copy and its .ko files."""
    if not (headers / "Makefile").is_file():
        raise ModuleImportError(
            f"{headers} is no kernel build tree: install the headers (apt-get install "
            "linux-headers-amd64) or name a tree with --headers"
        )
    work = Path(tempfile.mkdtemp(prefix="kmodlab-import-"))
    copy = work / source.name
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns(*BUILD_OUTPUT))
    proc = subprocess.run(
        ["make", "-C", str(headers), f"M={copy}", "modules"],
        capture_output=True,
        text=True,
        check=False,
    )
    kos = sorted(copy.rglob("*.ko"))
    if proc.returncode != 0 or not kos:
        shutil.rmtree(work, ignore_errors=True)
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise ModuleImportError(f"building {source} against {headers} failed:\n{tail}")
    return work, kos


def _sources(directory: Path) -> list[str]:
    found: set[str] = set()
    for pattern in SOURCE_PATTERNS:
        found.update(
            str(p.relative_to(directory))
            for p in directory.rglob(pattern)
            if not any(part.startswith(".") for part in p.relative_to(directory).parts)
            and not p.name.endswith(".mod.c")
        )
    return sorted(found)


def draft(info: KoInfo, directory: Path, conf: dict[str, str]) -> dict[str, Any]:
    """The manifest draft of one built module, validated."""
    name = info.path.name.split(".ko")[0]
    # A tree with its own dkms.conf is a package as shipped: its version is the package's.
    package = conf.get("PACKAGE_NAME")
    version = (
        (conf.get("PACKAGE_VERSION") if package else None)
        or info.value("version")
        or conf.get("PACKAGE_VERSION")
        or "0.1.0"
    )
    license_ = info.value("license") or ""
    manifest: dict[str, Any] = {
        "name": name,
        "version": version,
        "description": info.value("description") or f"{name} (no description in the module)",
        "license": license_ or "unknown (no MODULE_LICENSE in the module)",
        "author": info.value("author") or "unknown (no MODULE_AUTHOR in the module)",
    }
    if package:
        manifest["package"] = {"name": package, "source": {"path": str(directory.resolve())}}
    else:
        manifest["sources"] = _sources(directory) or [info.path.name]
    if info.params:
        manifest["parameters"] = []
        for p in sorted(info.params, key=lambda p: p.name):
            entry: dict[str, Any] = {"name": p.name, "type": p.type}
            if p.array:
                entry.update({"array": True, "max_count": p.max_count})
                if not p.counted:
                    entry["counted"] = False
            entry.update(
                {
                    "default": p.default,
                    "perm": p.perm,
                    "description": p.description or f"{p.name} (no MODULE_PARM_DESC)",
                }
            )
            manifest["parameters"].append(entry)
    modinfo = {
        key: f"^{re.escape(value)}$"
        for key in ("license", "author", "description")
        if (value := info.value(key))
    }
    if modinfo:
        manifest["expect"] = {"modinfo": modinfo}
    try:
        Manifest.model_validate(manifest)
    except ValidationError as exc:
        raise ModuleImportError(
            f"{info.path}: the draft does not validate, the module says something a "
            f"manifest cannot: {exc}"
        ) from None
    return manifest


HEADER = """\
# Draft by `kmodlab module import` from {ko}, read from the built module
# (.modinfo and __param): name, version, licence, author, description, and each
# parameter's type, sysfs mode, array size and initial value.
# To do: the lab parameters (lab.params) and what must be observable once it is loaded
# (expect: proc_devices, dev_nodes, sysfs, procfs, dmesg, functional); see docs/design.md.
"""


def render(manifest: dict[str, Any], ko: Path) -> str:
    return HEADER.format(ko=ko.name) + yaml.safe_dump(
        manifest, sort_keys=False, default_flow_style=False, width=100
    )


def import_source(source: Path, headers: Path | None = None) -> list[tuple[str, str]]:
    """(module name, manifest text) for every module of ``source``: a .ko file, a
    folder holding built .ko files, or a source folder (built first)."""
    source = Path(source)
    if not source.exists():
        raise ModuleImportError(f"{source}: no such file or folder")
    work: Path | None = None
    directory = source if source.is_dir() else source.parent
    try:
        if source.is_file():
            kos = [source]
        else:
            kos = sorted(source.rglob("*.ko"))
            if not kos:
                tree = headers or default_headers()
                if tree is None:
                    raise ModuleImportError(
                        "no kernel headers to build with: apt-get install linux-headers-amd64, "
                        "or name a build tree with --headers"
                    )
                work, kos = build(source, tree)
        conf = dkms_conf(directory)
        out = []
        for ko in kos:
            try:
                info = read_ko(ko)
            except KoError as exc:
                raise ModuleImportError(str(exc)) from None
            manifest = draft(info, directory, conf)
            out.append((manifest["name"], render(manifest, ko)))
        return out
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
