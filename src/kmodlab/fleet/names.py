"""Names of the fleet path's Debian packages, in one place.

The package builder (``kmodlab.fleet.debpkg``), the rollout and the verify suite
(``kmodlab.verify``) all name a module's package, its ``.deb`` file and where it installs
the ``.ko`` with these functions, so that what is built is what is checked.
"""

from __future__ import annotations

# The host side (plugins/module_utils/deb_plan.py, which runs on targets) owns the package
# name and the depmod deferral; the controller imports them from there.
from ansible_collections.kmodlab.lab.plugins.module_utils.deb_plan import (
    DEFER_DEPMOD_ENV,
    package_name,
)

__all__ = ["DEFER_DEPMOD_ENV", "deb_file", "install_dir", "package_name"]


def deb_file(module: str, version: str, abi: str, arch: str = "amd64") -> str:
    """The package's file name: ``PACKAGE_VERSION_ARCH.deb``."""
    return f"{package_name(module, abi)}_{version}_{arch}.deb"


def install_dir(abi: str) -> str:
    """Where a package installs its module for kernel ``abi`` (the file is ``KMOD.ko``)."""
    return f"/lib/modules/{abi}/updates/kmodlab"
