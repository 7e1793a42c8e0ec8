"""DKMS packages of kernel modules: the file set of a module and its dkms.conf.

One resolved selection record (:func:`kmodlab.selection.resolve`) becomes one DKMS package:
the manifest's ``sources``, the module folder's ``Kbuild`` and ``Makefile`` when it has
them, and a ``dkms.conf`` rendered from the manifest (unless the module ships its own
among its sources). The dkms_module role (through the ``kmodlab.lab.dkms_packages``
lookup, which hands :func:`packages_for` to ``kmodlab.lab.dkms``) and the container builder
(through :func:`write`) both call :func:`render`, so both build exactly the same package.

Every package kmodlab renders keeps its ``Module.symvers``: dkms 3.0 deletes the build
folder, ``Module.symvers`` with it, after a build, so the rendered dkms.conf runs
:data:`KEEP_SYMVERS` (shipped executable in the package) as its ``POST_BUILD``, which
copies it beside the built module. A module whose manifest ``depends`` on others gets
``BUILD_DEPENDS`` (dkms autoinstall builds them first) and their kept ``Module.symvers``
in ``KBUILD_EXTRA_SYMBOLS``, through dkms's ``kernel-KERNEL-ARCH`` link of the version
installed for the kernel.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import TypeAdapter, ValidationError

from kmodlab.manifest import MANIFEST_FILE, ModuleName, Version

#: The POST_BUILD script of every rendered package (package data of this module).
KEEP_SYMVERS = "kmodlab-keep-symvers.sh"
#: kbuild files shipped with a module's sources when its folder has them.
KBUILD_FILES = ("Kbuild", "Makefile")
DKMS_CONF = "dkms.conf"
DEFAULT_DEST_LOCATION = "/updates/dkms"
# What kbuild leaves in a module folder: never part of a package.
BUILD_OUTPUT = ("*.o", "*.ko", "*.mod", "*.mod.c", "*.cmd", "modules.order", "Module.symvers")

# dkms.conf is sourced by bash inside dkms, which sets these variables.
_BUILD_DIR = "${dkms_tree}/${PACKAGE_NAME}/${PACKAGE_VERSION}/build"
_MODULE_DIR = "${dkms_tree}/${PACKAGE_NAME}/${PACKAGE_VERSION}/${kernelver}/${arch}/module"
# Where a package finds the Module.symvers of a package it depends on: the build installed
# for the kernel, through dkms's kernel-KERNEL-ARCH link (kept there by its POST_BUILD).
_SYMVERS = "${{dkms_tree}}/{dep}/kernel-${{kernelver}}-${{arch}}/module/Module.symvers"
# dkms accepts a DEST_MODULE_LOCATION that starts with one of these (kmodlab: one of them
# or a folder below it); the rest must stay literal inside the double quotes of dkms.conf.
_DEST_LOCATION = re.compile(r"^/(kernel|updates|extra)(/[A-Za-z0-9._/+-]*)?$")
_NAME = TypeAdapter(ModuleName)
_VERSION = TypeAdapter(Version)


class PackageError(ValueError):
    """A record that cannot become a DKMS package; the message names the module."""


@dataclass(frozen=True)
class Package:
    """One DKMS package: the files of ``/usr/src/NAME-VERSION``.

    ``files`` maps a path relative to the package folder to its text; ``executables`` are
    those of them to write with mode 0755 (0644 otherwise); ``depends`` names the packages
    this one builds against (its dkms.conf's ``BUILD_DEPENDS``).
    """

    name: str
    version: str
    files: dict[str, str]
    executables: tuple[str, ...] = ()
    depends: tuple[str, ...] = ()

    @property
    def folder(self) -> str:
        """The package folder's name, as dkms wants it below its source tree."""
        return f"{self.name}-{self.version}"

    def spec(self) -> dict[str, Any]:
        """The package as an entry of ``kmodlab.lab.dkms``'s ``packages`` (state present)."""
        return {
            "name": self.name,
            "version": self.version,
            "state": "present",
            "files": dict(self.files),
            "executables": list(self.executables),
            "depends": list(self.depends),
        }


def keep_symvers_script() -> str:
    """The text of :data:`KEEP_SYMVERS`, shipped in every package with a rendered dkms.conf."""
    return resources.files(__name__).joinpath(KEEP_SYMVERS).read_text(encoding="utf-8")


def check_dest_location(dest_location: str) -> str:
    """Return ``dest_location`` if dkms accepts it as ``DEST_MODULE_LOCATION``."""
    if not isinstance(dest_location, str) or not _DEST_LOCATION.match(dest_location):
        raise PackageError(
            f"dest_location {dest_location!r}: DEST_MODULE_LOCATION must start with /kernel, "
            "/updates or /extra (one of them or a folder below it, in letters, digits and "
            ". _ / + -: the folder below /lib/modules/KERNEL dkms installs into, e.g. "
            "/updates/dkms)"
        )
    return dest_location


def render(
    record: Mapping[str, Any],
    *,
    dest_location: str = DEFAULT_DEST_LOCATION,
    autoinstall: bool = True,
) -> Package:
    """The DKMS package of one resolved selection record (its ``state`` is not read).

    Reads ``name``, ``version``, ``source_dir`` and the ``manifest``'s ``sources`` and
    ``depends``. Raises PackageError for a module with neither Kbuild nor Makefile, an
    unreadable source, or a bad ``dest_location``.

    A module of a third-party package (the manifest's ``package.source``) gives that
    package as shipped: every file of its tree (``source_dir``, build output and dot files
    left out) with its own dkms.conf, checked to name the package, the version and the
    module among the modules it builds.
    """
    check_dest_location(dest_location)
    name, version, depends = _identity(record)
    manifest = record.get("manifest") or {}
    source_dir = Path(str(record.get("source_dir") or ""))
    if not record.get("source_dir") or not source_dir.is_dir():
        raise PackageError(f"module {name}: source_dir {str(source_dir)!r} is not a folder")
    if (manifest.get("package") or {}).get("source"):
        return _shipped(record, name, version, source_dir)
    sources = manifest.get("sources") or []
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        raise PackageError(f"module {name}: manifest sources must be a list of file names")

    files: dict[str, str] = {}
    for rel in sources:
        files[_relative(name, rel)] = _read(name, source_dir, rel)
    for rel in KBUILD_FILES:
        if rel not in files and (source_dir / rel).is_file():
            files[rel] = _read(name, source_dir, rel)
    if not any(rel in files for rel in KBUILD_FILES):
        raise PackageError(
            f"module {name}: no Kbuild or Makefile beside {MANIFEST_FILE} in {source_dir}; dkms "
            'builds with "make -C <headers> M=<sources>", which needs one: add a Kbuild with '
            f'"obj-m := {name}.o"'
        )

    executables: tuple[str, ...] = ()
    if DKMS_CONF not in files:
        if KEEP_SYMVERS in files:
            raise PackageError(
                f"module {name}: {KEEP_SYMVERS} among its sources would be replaced by "
                "kmodlab's POST_BUILD script: rename it"
            )
        files[DKMS_CONF] = dkms_conf(
            name, version, depends, dest_location=dest_location, autoinstall=autoinstall
        )
        files[KEEP_SYMVERS] = keep_symvers_script()
        executables = (KEEP_SYMVERS,)
    return Package(name, version, files, executables, depends)


def _shipped(record: Mapping[str, Any], name: str, version: str, tree: Path) -> Package:
    """The third-party package ``record``'s module is built in, as its tree ships it."""
    package = str(
        record.get("package")
        or (record.get("manifest") or {}).get("package", {}).get("name")
        or name
    )
    files: dict[str, str] = {}
    executables: list[str] = []
    for path in sorted(tree.rglob("*")):
        rel = path.relative_to(tree)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if any(fnmatch.fnmatch(path.name, pattern) for pattern in BUILD_OUTPUT):
            continue
        files[rel.as_posix()] = _read(name, tree, rel.as_posix())
        if os.access(path, os.X_OK):
            executables.append(rel.as_posix())
    conf_text = files.get(DKMS_CONF)
    if conf_text is None:
        raise PackageError(f"module {name}: the package tree {tree} has no {DKMS_CONF}")
    conf = read_dkms_conf(conf_text)
    problems = []
    if conf.get("PACKAGE_NAME") != package:
        problems.append(
            f"PACKAGE_NAME is {conf.get('PACKAGE_NAME')!r}, the manifest says {package!r}"
        )
    if conf.get("PACKAGE_VERSION") != version:
        problems.append(
            f"PACKAGE_VERSION is {conf.get('PACKAGE_VERSION')!r}, the manifest says {version!r}"
        )
    built = built_modules(conf)
    kmod = str(record.get("kmod") or name.replace("-", "_"))
    if not {name, kmod} & set(built):
        problems.append(
            f"its BUILT_MODULE_NAME entries ({', '.join(built) or 'none'}) do not include {kmod}"
        )
    if problems:
        raise PackageError(f"module {name}: {tree / DKMS_CONF}: " + "; ".join(problems))
    return Package(package, version, files, tuple(executables), ())


def built_modules(conf: Mapping[str, str]) -> list[str]:
    """The BUILT_MODULE_NAME[n] values of a read dkms.conf, in index order."""
    found = []
    for key, value in conf.items():
        match = re.fullmatch(r"BUILT_MODULE_NAME\[(\d+)\]", key)
        if match:
            found.append((int(match.group(1)), value))
    return [value for _index, value in sorted(found)]


_ASSIGNMENT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*(?:\[\d+\])?)=(.*)$")


def read_dkms_conf(text: str) -> dict[str, str]:
    """The plain assignments of a dkms.conf (``PACKAGE_NAME``, ``MAKE[0]``, ...), their
    values unquoted as the shell would, unexpanded. A line that is not one assignment
    of one word (a command, an unquoted value with spaces) is left out."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        match = _ASSIGNMENT.match(line)
        if not match:
            continue
        try:
            words = shlex.split(match.group(2), comments=True)
        except ValueError:
            continue
        if len(words) <= 1:
            out[match.group(1)] = words[0] if words else ""
    return out


def dkms_conf(
    name: str,
    version: str,
    depends: Iterable[str] = (),
    *,
    dest_location: str = DEFAULT_DEST_LOCATION,
    autoinstall: bool = True,
) -> str:
    """The dkms.conf kmodlab renders for package ``name`` ``version`` (values not checked:
    :func:`render` checks them)."""
    deps = list(depends)
    symvers = [_SYMVERS.format(dep=dep) for dep in deps]
    lines = [
        f"# Managed by kmodlab: DKMS package {name} {version}, "
        f"rendered from modules/{name}/{MANIFEST_FILE}.",
        f'PACKAGE_NAME="{name}"',
        f'PACKAGE_VERSION="{version}"',
        f'BUILT_MODULE_NAME[0]="{name}"',
        f'DEST_MODULE_LOCATION[0]="{dest_location}"',
    ]
    if deps:
        one = len(deps) == 1
        its = "its" if one else "their"
        lines += [
            f"# Built against the symbols {', '.join(deps)} export{'s' if one else ''}: dkms "
            f"autoinstall builds {'that package' if one else 'those packages'} first,",
            f"# and modpost reads {its} Module.symvers from the build installed for the kernel",
            f"# (kept there by {its} POST_BUILD).",
            "BUILD_DEPENDS=(" + " ".join(f'"{dep}"' for dep in deps) + ")",
        ]
    extra = ""
    if len(symvers) == 1:
        extra = f" KBUILD_EXTRA_SYMBOLS={symvers[0]}"
    elif symvers:
        # dkms evals MAKE: the single quotes keep the list one make argument.
        extra = f" KBUILD_EXTRA_SYMBOLS='{' '.join(symvers)}'"
    lines += [
        "# Spelled out rather than left to dkms's default, which differs between dkms versions",
        "# (old ones passed SUBDIRS=, which kernels since 5.4 ignore).",
        f'MAKE[0]="make -C ${{kernel_source_dir}} M={_BUILD_DIR}{extra}"',
        f'CLEAN="make -C ${{kernel_source_dir}} M={_BUILD_DIR} clean"',
        "# dkms 3.0 deletes the build folder after a build: the script keeps Module.symvers",
        "# beside the built module, where the packages that use this module's exported symbols",
        "# find it (through dkms's kernel-KERNEL-ARCH link).",
        f'POST_BUILD="{KEEP_SYMVERS} {_MODULE_DIR}"',
        f'AUTOINSTALL="{"yes" if autoinstall else "no"}"',
    ]
    return "\n".join(lines) + "\n"


def write(package: Package, root: str | Path) -> Path:
    """Write ``package`` to ``root/NAME-VERSION/`` and return that folder.

    Files are written with mode 0644, its executables with 0755 (whatever the umask);
    files already in the folder that are not in the package are left alone.
    """
    folder = Path(root) / package.folder
    folder.mkdir(parents=True, exist_ok=True)
    executables = set(package.executables)
    unknown = executables - set(package.files)
    if unknown:
        raise PackageError(
            f"package {package.folder}: executables not among its files: "
            f"{', '.join(sorted(unknown))}"
        )
    for rel, text in package.files.items():
        path = folder / _relative(package.name, rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.chmod(path, 0o755 if rel in executables else 0o644)
    return folder


def packages_for(
    records: Iterable[Mapping[str, Any]],
    *,
    dest_location: str = DEFAULT_DEST_LOCATION,
    autoinstall: bool = True,
) -> list[dict[str, Any]]:
    """The ``packages`` option of ``kmodlab.lab.dkms`` for resolved selection records.

    A present or config record becomes ``{name, version, state: present, files,
    executables, depends}``, an absent one ``{name, version, state: absent}``; the order of
    ``records`` is kept. Every broken record is reported in one PackageError.
    """
    check_dest_location(dest_location)
    out: dict[str, dict[str, Any]] = {}
    owners: dict[str, str] = {}
    problems: list[str] = []
    for record in records:
        try:
            if not isinstance(record, Mapping):
                raise PackageError(f"a record is a mapping, got {type(record).__name__}")
            state = record.get("state", "present")
            name, version, _depends = _identity(record)
            if state == "absent":
                spec = {"name": str(record.get("package") or name), "version": version,
                        "state": "absent"}  # fmt: skip
            elif state in ("present", "config"):
                spec = render(record, dest_location=dest_location, autoinstall=autoinstall).spec()
            else:
                raise PackageError(
                    f"module {record.get('name')}: state {state!r} is not one of "
                    "present, config, absent"
                )
        except PackageError as exc:
            problems.append(str(exc))
            continue
        # The modules of one third-party package share it: one entry, present when any
        # of them is.
        key = spec["name"]
        seen = out.get(key)
        if seen is None or (seen["state"] == "absent" and spec["state"] != "absent"):
            out[key], owners[key] = spec, name
        elif spec["state"] != "absent" and spec != seen:
            problems.append(_clash(key, owners[key], name))
    if problems:
        raise PackageError("\n".join(problems))
    return list(out.values())


def _clash(package: str, first: str, second: str) -> str:
    return (
        f"modules {first} and {second} are both built in package {package}, but at "
        "different versions or from different trees: their manifests must name the same"
    )


def _identity(record: Mapping[str, Any]) -> tuple[str, str, tuple[str, ...]]:
    """The record's checked name, version and manifest depends."""
    try:
        name = _NAME.validate_python(record.get("name"))
    except ValidationError:
        raise PackageError(
            f"record name {record.get('name')!r} is not a module name "
            "(lower-case letters, digits, _ and -)"
        ) from None
    try:
        version = _VERSION.validate_python(record.get("version"))
    except ValidationError:
        raise PackageError(
            f"module {name}: version {record.get('version')!r} is not a DKMS version"
        ) from None
    depends = (record.get("manifest") or {}).get("depends") or []
    try:
        checked = tuple(_NAME.validate_python(dep) for dep in depends)
    except (ValidationError, TypeError):
        raise PackageError(
            f"module {name}: manifest depends {depends!r} is not a list of module names"
        ) from None
    return name, version, checked


def _relative(name: str, rel: str) -> str:
    """``rel`` if it is a plain relative path inside the package folder."""
    path = PurePosixPath(rel)
    if not rel or path.is_absolute() or ".." in path.parts or "\\" in rel:
        raise PackageError(f"module {name}: {rel!r} is not a path inside the package folder")
    return path.as_posix()


def _read(name: str, source_dir: Path, rel: str) -> str:
    try:  # newline="": the text as it is, as the file lookup gave it
        with open(source_dir / rel, encoding="utf-8", newline="") as handle:
            return handle.read()
    except FileNotFoundError:
        raise PackageError(f"module {name}: source {rel} does not exist in {source_dir}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PackageError(f"module {name}: cannot read {source_dir / rel}: {exc}") from None


__all__ = [
    "DEFAULT_DEST_LOCATION",
    "DKMS_CONF",
    "KBUILD_FILES",
    "KEEP_SYMVERS",
    "Package",
    "PackageError",
    "check_dest_location",
    "dkms_conf",
    "keep_symvers_script",
    "packages_for",
    "render",
    "write",
]
