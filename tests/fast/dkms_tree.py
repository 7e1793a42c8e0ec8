"""A DKMS tree laid out the way dkms 3.0.10 lays it out on Debian 12 (checked there with
``ls -lR /var/lib/dkms``), shared by the fast tests of the tree reader and of kmodlab.lab.dkms:

    usr/src/NAME-VERSION/                      sources, dkms.conf
    var/lib/dkms/NAME/VERSION/source           -> usr/src/NAME-VERSION (added)
    var/lib/dkms/NAME/VERSION/KERNEL/ARCH/module/MOD.ko   (built)
    var/lib/dkms/NAME/kernel-KERNEL-ARCH       -> VERSION/KERNEL/ARCH (installed)
    lib/modules/KERNEL/updates/dkms/MOD.ko     the installed copy
"""

from __future__ import annotations

from pathlib import Path


class DkmsTree:
    def __init__(self, root: Path, arch: str):
        self.src = root / "usr/src"
        self.dkms = root / "var/lib/dkms"
        self.lib = root / "lib/modules"
        self.arch = arch

    def register(self, name: str, version: str) -> DkmsTree:
        """``dkms add``: the version's folder and its source link."""
        folder = self.dkms / name / version
        (folder / "build").mkdir(parents=True, exist_ok=True)
        if not (folder / "source").is_symlink():
            (folder / "source").symlink_to(self.src / f"{name}-{version}")
        return self

    def built_dir(self, name: str, version: str, kernel: str) -> Path:
        return self.dkms / name / version / kernel / self.arch / "module"

    def build(self, name, version, kernel, modules=None, suffix=".ko") -> DkmsTree:
        """``dkms build``: one file per module, its content naming module, version, kernel."""
        folder = self.built_dir(name, version, kernel)
        folder.mkdir(parents=True, exist_ok=True)
        (folder.parent / "log").mkdir(exist_ok=True)
        for m in modules or [name]:
            (folder / f"{m}{suffix}").write_bytes(f"{m} {version} {kernel}".encode())
        return self

    def install(self, name, version, kernel, dest="updates/dkms", content=None) -> DkmsTree:
        """``dkms install``: the kernel link, and a copy of each built module (``content``
        instead: a copy someone replaced)."""
        link = self.dkms / name / f"kernel-{kernel}-{self.arch}"
        if link.is_symlink():
            link.unlink()
        link.symlink_to(f"{version}/{kernel}/{self.arch}")
        target = self.lib / kernel / dest
        target.mkdir(parents=True, exist_ok=True)
        for built in self.built_dir(name, version, kernel).iterdir():
            (target / built.name).write_bytes(built.read_bytes() if content is None else content)
        return self
