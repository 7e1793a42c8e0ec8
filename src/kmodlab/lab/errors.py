"""Errors the CLI turns into one clear line and exit code 2."""

from __future__ import annotations

import shutil


class LabError(Exception):
    """A user-facing error: bad input or a missing prerequisite. Nothing was left half-done."""


# Tool -> Debian package that provides it.
TOOL_PACKAGES: dict[str, str] = {
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "debootstrap": "debootstrap",
    "mkfs.ext4": "e2fsprogs",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "mmd": "mtools",
    "sgdisk": "gdisk",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "tar": "tar",
}

OVMF_PACKAGE = "ovmf"


def require_tools(*tools: str) -> None:
    """Fail with one line naming the Debian package of the first missing tool."""
    for tool in tools:
        if shutil.which(tool) is None:
            package = TOOL_PACKAGES.get(tool, tool)
            raise LabError(f"{tool} not found: install it with `apt-get install {package}`")
