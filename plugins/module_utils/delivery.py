# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One copy of each module per host: a module delivered by DKMS must not also come as a
prebuilt package, nor the other way round.

The two copies would land in different folders of /lib/modules/KERNEL (``updates/dkms``
and ``updates/kmodlab``), and modprobe would load whichever depmod ranks first. The
``dkms`` module and ``kmod_packages`` ask this before changing anything, so a host whose
delivery changed is stopped with the way out, not given a second copy.

Standard library only, Python 3.10+: it runs on managed hosts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from ansible_collections.kmodlab.lab.plugins.module_utils.deb_plan import abi_of

DKMS_TREE = "/var/lib/dkms"
# dpkg-query pattern of the prebuilt packages: kmodlab-NAME-modules-ABI.
PACKAGE_PATTERN = "kmodlab-*-modules-*"


def dkms_copies(names: Iterable[str], dkms_tree: str = DKMS_TREE) -> dict[str, str]:
    """``{name: folder}`` for the modules DKMS has registered on this host."""
    found = {}
    for name in names:
        folder = os.path.join(dkms_tree, name)
        if os.path.isdir(folder):
            found[name] = folder
    return found


def package_copies(
    names: Iterable[str], packages: Mapping[str, Mapping[str, Any]]
) -> dict[str, list[str]]:
    """``{name: [package, ...]}`` for the modules that have a prebuilt package on the host
    that is not gone (``packages``: ``dpkg_status.parse_query`` output)."""
    found: dict[str, list[str]] = {}
    for name in names:
        mine = [p for p, entry in sorted(packages.items())
                if abi_of(name, p) is not None and not entry.get("gone")]  # fmt: skip
        if mine:
            found[name] = mine
    return found


def dkms_conflict(found: Mapping[str, str]) -> str:
    """The failure for packages asked for where DKMS has the module."""
    names = ", ".join(sorted(found))
    where = "; ".join(f"{n}: {found[n]}" for n in sorted(found))
    return (
        f"{names}: DKMS already has {'this module' if len(found) == 1 else 'these modules'} "
        f"on this host ({where}); a prebuilt package too would put a second copy beside it "
        "in /lib/modules. Nothing was changed. Either keep this host on kmodlab_delivery: "
        "dkms, or remove the DKMS copy first: run lab.yml with kmodlab_delivery: dkms and "
        "state: absent for it, then with kmodlab_delivery: deb"
    )


def package_conflict(found: Mapping[str, list[str]]) -> str:
    """The failure for a DKMS package asked for where a prebuilt package has the module."""
    names = ", ".join(sorted(found))
    packages = [p for n in sorted(found) for p in found[n]]
    return (
        f"{names}: installed on this host as prebuilt "
        f"{'package' if len(packages) == 1 else 'packages'} ({', '.join(packages)}); a DKMS "
        "build too would put a second copy beside it in /lib/modules. Nothing was changed. "
        "Either keep this host on kmodlab_delivery: deb, or remove the "
        "package first: run lab.yml with kmodlab_delivery: deb and state: absent for it, "
        "then with kmodlab_delivery: dkms"
    )
