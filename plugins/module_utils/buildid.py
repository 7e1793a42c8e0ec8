# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The GNU build ID of a kernel module, on disk (its .ko) and loaded (sysfs).

Debian's 6.1 kernel is built without CONFIG_MODULE_SRCVERSION_ALL and our modules set no
MODULE_VERSION, so neither modinfo nor /sys/module/KMOD has a srcversion to tell one
build from another. Every build has a GNU build ID note: in the .ko's
``.note.gnu.build-id`` section, and for the loaded module in
``/sys/module/KMOD/notes/.note.gnu.build-id``. Two builds of the same sources in other
folders (a DKMS version bump) differ in it.

Shared by the kmod_load probe (as Ansible module_utils) and the verify collector (which
imports it from its zip), so only the standard library is used.
"""

from __future__ import annotations

import gzip
import lzma
import struct
import sys
from typing import Any

NT_GNU_BUILD_ID = 3
SHT_NOTE = 7
MODULE_LIMIT = 64 * 1024 * 1024


def note_build_id(data: bytes, order: str) -> str | None:
    """The GNU build ID in a run of ELF notes (namesz, descsz, type, name, desc)."""
    pos = 0
    while pos + 12 <= len(data):
        namesz, descsz, ntype = struct.unpack_from(order + "III", data, pos)
        pos += 12
        name = data[pos : pos + namesz]
        pos += (namesz + 3) & ~3
        desc = data[pos : pos + descsz]
        pos += (descsz + 3) & ~3
        if ntype == NT_GNU_BUILD_ID and name.rstrip(b"\0") == b"GNU" and desc:
            return desc.hex()
    return None


def elf_build_id(data: bytes) -> str | None:
    """The GNU build ID in the SHT_NOTE sections of an ELF file (32 or 64 bit)."""
    order = "<" if data[5] == 1 else ">"
    if data[4] == 2:
        (shoff,) = struct.unpack_from(order + "Q", data, 0x28)
        shentsize, shnum = struct.unpack_from(order + "HH", data, 0x3A)
        where, fields = 0x18, "QQ"
    else:
        (shoff,) = struct.unpack_from(order + "I", data, 0x20)
        shentsize, shnum = struct.unpack_from(order + "HH", data, 0x2E)
        where, fields = 0x10, "II"
    for index in range(shnum):
        header = shoff + index * shentsize
        (sh_type,) = struct.unpack_from(order + "I", data, header + 4)
        if sh_type != SHT_NOTE:
            continue
        offset, size = struct.unpack_from(order + fields, data, header + where)
        found = note_build_id(data[offset : offset + size], order)
        if found:
            return found
    return None


def build_id(path: str) -> dict[str, Any]:
    """{"ok": True, "build_id": HEX} or {"ok": False, "error": TEXT} for a .ko (ELF, also
    .xz / .gz) or a sysfs note file."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MODULE_LIMIT)
        if path.endswith(".xz"):
            data = lzma.decompress(data)
        elif path.endswith(".gz"):
            data = gzip.decompress(data)
        elif path.endswith(".zst"):
            return {"ok": False, "error": "zstd-compressed: not read"}
    except OSError as exc:
        return {"ok": False, "error": exc.strerror or str(exc)}
    except (lzma.LZMAError, EOFError) as exc:
        return {"ok": False, "error": f"cannot decompress: {exc}"}
    try:
        if data[:4] == b"\x7fELF":
            found = elf_build_id(data)
        else:
            found = note_build_id(data, "<" if sys.byteorder == "little" else ">")
    except (struct.error, IndexError) as exc:
        return {"ok": False, "error": f"not a valid ELF file or note: {exc}"}
    if found is None:
        return {"ok": False, "error": "no GNU build ID note"}
    return {"ok": True, "build_id": found}
