"""What a built kernel module (``.ko``) says about itself, read from its ELF file.

``read_ko`` returns the ``.modinfo`` section (what ``modinfo`` prints: name, version,
license, author, description, ``parm`` and ``parmtype``) and every parameter's entry of
the ``__param`` section: its sysfs mode, its type (the ``kernel_param_ops`` it uses),
for arrays the capacity and whether a count variable exists, and its initial value in
the module's data. A ``.ko`` is a relocatable ELF: pointers in ``__param`` are
relocations, so each is resolved through its section's ``.rela`` entries.

Only x86-64 (ELF64, little endian, ``struct kernel_param`` of Linux 6.1) is read.
"""

from __future__ import annotations

import lzma
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# struct kernel_param (include/linux/moduleparam.h, x86-64): name, mod, ops, perm (u16),
# level (s8), flags (u8), then the union arg/str/arr.
PARAM_SIZE = 40
PARAM_NAME, PARAM_OPS, PARAM_PERM, PARAM_ARG = 0, 16, 24, 32
# struct kparam_array: max (uint), elemsize (uint), num (uint *), ops, elem (void *).
ARRAY_MAX, ARRAY_NUM, ARRAY_OPS, ARRAY_ELEM = 0, 8, 16, 24
# param_ops_TYPE -> (manifest type, struct format of one value)
SCALARS = {
    "byte": ("byte", "<B"),
    "short": ("short", "<h"),
    "ushort": ("ushort", "<H"),
    "int": ("int", "<i"),
    "uint": ("uint", "<I"),
    "long": ("long", "<q"),
    "ulong": ("ulong", "<Q"),
    "bool": ("bool", "<?"),
    "invbool": ("invbool", "<?"),
    "bint": ("int", "<i"),
}
SHT_NOBITS, SHT_RELA = 8, 4
R_X86_64_64 = 1


class KoError(ValueError):
    """The file is not a kernel module this reader understands."""


@dataclass
class KoParam:
    name: str
    type: str
    perm: str
    default: Any
    array: bool = False
    max_count: int | None = None
    counted: bool = True
    description: str = ""


@dataclass
class KoInfo:
    path: Path
    modinfo: dict[str, list[str]] = field(default_factory=dict)
    params: list[KoParam] = field(default_factory=list)

    def value(self, key: str) -> str | None:
        values = self.modinfo.get(key)
        return values[0] if values else None


@dataclass
class _Section:
    name: str
    type: int
    offset: int
    size: int
    link: int
    info: int
    data: bytes


class _Elf:
    def __init__(self, data: bytes, path: Path) -> None:
        if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
            raise KoError(
                f"{path}: not a kernel module built for x86-64 (no 64-bit little-endian ELF header)"
            )
        (shoff,) = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
        raw = []
        for i in range(shnum):
            name, stype, _flags, _addr, offset, size, link, info = struct.unpack_from(
                "<IIQQQQII", data, shoff + i * shentsize
            )
            raw.append((name, stype, offset, size, link, info))
        names = raw[shstrndx]
        strtab = data[names[2] : names[2] + names[3]]
        self.sections = [
            _Section(
                _cstr(strtab, n),
                t,
                o,
                s,
                lk,
                inf,
                b"" if t == SHT_NOBITS else data[o : o + s],
            )
            for n, t, o, s, lk, inf in raw
        ]
        self.symbols: list[tuple[str, int, int]] = []  # (name, section index, value)
        for sec in self.sections:
            if sec.name == ".symtab":
                strings = self.sections[sec.link].data
                for off in range(0, len(sec.data), 24):
                    st_name, _info, _other, shndx, value, _size = struct.unpack_from(
                        "<IBBHQQ", sec.data, off
                    )
                    self.symbols.append((_cstr(strings, st_name), shndx, value))
        # relocations by target section index: {offset: (symbol index, addend)}
        self.relocs: dict[int, dict[int, tuple[int, int]]] = {}
        for sec in self.sections:
            if sec.type == SHT_RELA:
                table = self.relocs.setdefault(sec.info, {})
                for off in range(0, len(sec.data), 24):
                    r_offset, r_info, r_addend = struct.unpack_from("<QQq", sec.data, off)
                    if r_info & 0xFFFFFFFF == R_X86_64_64:
                        table[r_offset] = (r_info >> 32, r_addend)

    def section(self, name: str) -> tuple[int, _Section] | None:
        for index, sec in enumerate(self.sections):
            if sec.name == name:
                return index, sec
        return None

    def pointer(self, index: int, offset: int) -> tuple[str, int, int] | None:
        """Where the pointer at ``offset`` of section ``index`` points: (symbol name,
        section index, offset in that section), or None for NULL."""
        hit = self.relocs.get(index, {}).get(offset)
        if hit is None:
            return None
        sym, addend = hit
        name, shndx, value = self.symbols[sym]
        return name, shndx, value + addend

    def read(self, shndx: int, offset: int, size: int) -> bytes:
        sec = self.sections[shndx]
        if sec.type == SHT_NOBITS:
            return bytes(size)
        return sec.data[offset : offset + size]

    def string(self, shndx: int, offset: int) -> str:
        return _cstr(self.sections[shndx].data, offset)


def _cstr(data: bytes, offset: int) -> str:
    end = data.find(b"\0", offset)
    return data[offset : end if end >= 0 else len(data)].decode("utf-8", "replace")


def _ko_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".gz":
        return zlib.decompress(data, 16 + zlib.MAX_WBITS)
    return data


def _modinfo(elf: _Elf) -> dict[str, list[str]]:
    found = elf.section(".modinfo")
    out: dict[str, list[str]] = {}
    if found is None:
        return out
    for item in found[1].data.split(b"\0"):
        if b"=" in item:
            parts = item.decode("utf-8", "replace").partition("=")
            out.setdefault(parts[0], []).append(parts[2])
    return out


def _ops_type(name: str) -> str:
    if not name.startswith("param_ops_"):
        raise KoError(f"parameter operations {name!r} are not one of the kernel's param_ops_*")
    kind = name[len("param_ops_") :]
    if kind == "charp":
        return "charp"
    if kind not in SCALARS:
        raise KoError(f"parameter type {kind!r} is not one a manifest can describe")
    return kind


def _value(elf: _Elf, kind: str, where: tuple[str, int, int]) -> Any:
    _sym, shndx, offset = where
    if kind == "charp":
        target = elf.pointer(shndx, offset)
        return "" if target is None else elf.string(target[1], target[2])
    fmt = SCALARS[kind][1]
    (value,) = struct.unpack(fmt, elf.read(shndx, offset, struct.calcsize(fmt)))
    return value


def _param(elf: _Elf, index: int, base: int, descriptions: dict[str, str]) -> KoParam:
    sec = elf.sections[index]
    name_at = elf.pointer(index, base + PARAM_NAME)
    ops_at = elf.pointer(index, base + PARAM_OPS)
    if name_at is None or ops_at is None:
        raise KoError("a __param entry without name or operations")
    name = elf.string(name_at[1], name_at[2])
    (perm,) = struct.unpack_from("<H", sec.data, base + PARAM_PERM)
    arg = elf.pointer(index, base + PARAM_ARG)
    if arg is None:
        raise KoError(f"parameter {name} has no variable")
    param = KoParam(name, "", f"{perm:04o}", None, description=descriptions.get(name, ""))
    if ops_at[0] == "param_array_ops":
        _sym, ashndx, aoff = arg
        max_count, _elemsize = struct.unpack("<II", elf.read(ashndx, aoff + ARRAY_MAX, 8))
        elem_ops = elf.pointer(ashndx, aoff + ARRAY_OPS)
        elem = elf.pointer(ashndx, aoff + ARRAY_ELEM)
        num = elf.pointer(ashndx, aoff + ARRAY_NUM)
        if elem_ops is None or elem is None:
            raise KoError(f"array parameter {name} without element operations or storage")
        kind = _ops_type(elem_ops[0])
        if kind == "charp":
            raise KoError(f"array parameter {name} of charp is not one a manifest can describe")
        size = struct.calcsize(SCALARS[kind][1])
        values = [
            _value(elf, kind, (elem[0], elem[1], elem[2] + i * size)) for i in range(max_count)
        ]
        count = max_count
        if num is not None:
            (count,) = struct.unpack("<I", elf.read(num[1], num[2], 4))
        param.type = SCALARS[kind][0]
        param.array, param.max_count, param.counted = True, max_count, num is not None
        param.default = values[: min(count, max_count)]
        return param
    kind = _ops_type(ops_at[0])
    param.type = "charp" if kind == "charp" else SCALARS[kind][0]
    param.default = _value(elf, kind, arg)
    return param


def read_ko(path: Path) -> KoInfo:
    """The ``.modinfo`` fields and parameters of the module file ``path`` (.ko, .ko.xz,
    .ko.gz)."""
    path = Path(path)
    try:
        elf = _Elf(_ko_bytes(path), path)
    except (OSError, lzma.LZMAError, zlib.error, struct.error) as exc:
        raise KoError(f"{path}: cannot read it as a kernel module: {exc}") from None
    info = KoInfo(path, _modinfo(elf))
    if not info.modinfo:
        raise KoError(f"{path}: no .modinfo section: not a kernel module")
    descriptions = {}
    for item in info.modinfo.get("parm", []):
        parts = item.partition(":")
        descriptions[parts[0]] = parts[2]
    found = elf.section("__param")
    if found is not None:
        index, sec = found
        for base in range(0, sec.size, PARAM_SIZE):
            info.params.append(_param(elf, index, base, descriptions))
    return info
