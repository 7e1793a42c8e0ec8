"""Debian packages of built kernel modules: names (shared with the rollout), control
data, maintainer scripts, and the reproducible ``dpkg-deb`` build.

One package per module and kernel ABI: ``kmodlab-MODULE-modules-ABI`` holds
``/lib/modules/ABI/updates/kmodlab/KMOD.ko``. Its postinst (configure) and postrm (remove,
purge) run ``depmod -a ABI`` when that kernel is installed, unless
:data:`DEFER_DEPMOD_ENV` is set non-empty (kmodlab's installer then runs one depmod per
ABI after all packages). The same .ko always gives the same .deb: fixed mtimes, root
ownership, xz.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from kmodlab.fleet.names import DEFER_DEPMOD_ENV, deb_file, install_dir, package_name
from kmodlab.lab.errors import LabError

MAINTAINER = "kmodlab <kmodlab@localhost>"
ARCH = "amd64"
#: Every file of a package has this mtime (and dpkg-deb gets it as SOURCE_DATE_EPOCH).
EPOCH = 1_700_000_000
#: A Debian kernel ABI as in package names (6.1.0-57-amd64).
ABI_RE = re.compile(r"^[0-9]+\.[0-9]+(\.[0-9]+)?-[0-9A-Za-z.+~-]+$")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,54}$")
_VERSION_RE = re.compile(r"^[0-9][0-9A-Za-z.+~-]*$")


class DebError(LabError):
    """A package that cannot be built; the message names module and ABI."""


def check_abi(abi: str) -> str:
    """``abi`` if it is spelled like a Debian kernel ABI, else DebError."""
    if not isinstance(abi, str) or not ABI_RE.match(abi):
        raise DebError(f"{abi!r} is not a kernel ABI such as 6.1.0-57-amd64")
    return abi


def ko_path(kmod: str, abi: str) -> str:
    """The module file's path on the host."""
    return f"{install_dir(abi)}/{kmod}.ko"


@dataclass(frozen=True)
class DebSpec:
    """What one package says: the module, its ABI, its kmodlab dependencies (module ->
    version), and the signature of the .ko it carries."""

    module: str
    kmod: str
    version: str
    abi: str
    description: str
    signer: str
    sig_key: str
    depends: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in (self.module, *self.depends):
            if not _NAME_RE.match(name):
                raise DebError(f"{name!r} is not a module name")
        for version in (self.version, *self.depends.values()):
            if not _VERSION_RE.match(version):
                raise DebError(f"module {self.module}: {version!r} is not a package version")
        check_abi(self.abi)

    @property
    def package(self) -> str:
        return package_name(self.module, self.abi)

    @property
    def file(self) -> str:
        return deb_file(self.module, self.version, self.abi)

    def depends_packages(self) -> list[str]:
        """The kmodlab packages it depends on (names only)."""
        return [package_name(dep, self.abi) for dep in self.depends]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def control(spec: DebSpec, installed_kib: int) -> str:
    """The DEBIAN/control text."""
    depends = [f"linux-image-{spec.abi} | linux-image-{spec.abi}-unsigned"]
    depends += [f"{package_name(d, spec.abi)} (= {v})" for d, v in spec.depends.items()]
    short = _one_line(spec.description) or f"kernel module {spec.module}"
    extended = (
        f"kmodlab build of {spec.module} {spec.version} for Linux {spec.abi}, "
        f"signed by {_one_line(spec.signer)} ({spec.sig_key})."
    )
    return (
        f"Package: {spec.package}\n"
        f"Version: {spec.version}\n"
        f"Architecture: {ARCH}\n"
        f"Maintainer: {MAINTAINER}\n"
        f"Installed-Size: {installed_kib}\n"
        f"Depends: {', '.join(depends)}\n"
        "Section: kernel\n"
        "Priority: optional\n"
        f"Description: {short}\n"
        f" {extended}\n"
    )


def _depmod_block(abi: str) -> str:
    return (
        f'    if [ -z "${{{DEFER_DEPMOD_ENV}:-}}" ] && [ -e /lib/modules/{abi}/modules.order ]; '
        "then\n"
        f"        depmod -a {abi}\n"
        "    fi\n"
    )


def postinst(spec: DebSpec) -> str:
    """postinst: ``depmod -a ABI`` on configure unless deferred or the kernel is absent."""
    return (
        "#!/bin/sh\n"
        f"# kmodlab: {spec.package} {spec.version}\n"
        "set -e\n"
        'if [ "$1" = configure ]; then\n'
        f"{_depmod_block(spec.abi)}"
        "fi\n"
        "exit 0\n"
    )


def postrm(spec: DebSpec) -> str:
    """postrm: ``depmod -a ABI`` on remove and purge unless deferred or the kernel is absent."""
    return (
        "#!/bin/sh\n"
        f"# kmodlab: {spec.package} {spec.version}\n"
        "set -e\n"
        'case "$1" in\n'
        "remove|purge)\n"
        f"{_depmod_block(spec.abi)}"
        "    ;;\n"
        "esac\n"
        "exit 0\n"
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write(path: Path, data: str | bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    os.chmod(path, mode)


def build_deb(spec: DebSpec, ko: Path, out_dir: Path, work: Path) -> Path:
    """Build the package of ``spec`` carrying the signed module ``ko`` into
    ``out_dir/FILE`` (replaced atomically); ``work`` is an empty scratch folder."""
    if shutil.which("dpkg-deb") is None:
        raise DebError("dpkg-deb not found: install it with `apt-get install dpkg`")
    root = work / "root"
    data = ko.read_bytes()
    _write(root / ko_path(spec.kmod, spec.abi).lstrip("/"), data, 0o644)
    installed_kib = (len(data) + 1023) // 1024
    _write(root / "DEBIAN/control", control(spec, installed_kib), 0o644)
    _write(root / "DEBIAN/postinst", postinst(spec), 0o755)
    _write(root / "DEBIAN/postrm", postrm(spec), 0o755)
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_dir():
            os.chmod(path, 0o755)
        os.utime(path, (EPOCH, EPOCH), follow_symlinks=False)
    os.utime(root, (EPOCH, EPOCH))
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / spec.file
    partial = out_dir / f".{spec.file}.partial"
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(EPOCH)}
    proc = subprocess.run(
        ["dpkg-deb", "--build", "--root-owner-group", "-Zxz", str(root), str(partial)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        raise DebError(
            f"module {spec.module}, ABI {spec.abi}: dpkg-deb failed: "
            f"{(proc.stderr or proc.stdout).strip()}"
        )
    os.replace(partial, final)
    return final


__all__ = [
    "ARCH",
    "DEFER_DEPMOD_ENV",
    "MAINTAINER",
    "DebError",
    "DebSpec",
    "build_deb",
    "check_abi",
    "control",
    "deb_file",
    "install_dir",
    "ko_path",
    "package_name",
    "postinst",
    "postrm",
    "sha256_file",
]
