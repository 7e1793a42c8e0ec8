# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Secure Boot on the target: the firmware's state, the kernel's lockdown mode, shim's
Machine Owner Keys (MOK) and the keys the kernel holds.

Shared by the ``signing_state`` probe (as Ansible module_utils) and the verify collector
(which imports it from its zip), so only the standard library is used. Every path is
read through ``files.host_path(root, ...)``: ``root`` is "/" on a host, a fake tree in
tests.

- The firmware's variables are files of efivarfs (``/sys/firmware/efi/efivars``), named
  ``NAME-VENDORGUID``; each starts with the variable's 4 attribute bytes (little-endian
  u32), then its value. ``SecureBoot`` and ``SetupMode`` (EFI global GUID) hold one byte,
  1 = on.
- shim keeps the enrolled MOKs in ``MokListRT`` (a boot-services variable it mirrors to
  a runtime one); shim 15.3 and later also mirror it to
  ``/sys/firmware/efi/mok-variables/MokListRT`` (the value alone, no attributes) and
  split a list too big for one variable into ``MokListRT1``, ``MokListRT2``...
  ``mokutil --import`` and ``--delete`` leave their request in ``MokNew`` and ``MokDel``
  for MokManager at the next boot. All hold EFI_SIGNATURE_LISTs (``signature_lists``).
- ``/sys/kernel/security/lockdown`` shows the modes with the active one in brackets.
- ``/proc/keys`` lists the keys the reader may view, among them those of the kernel's
  builtin, secondary and platform keyrings (type ``asymmetric``).
"""

from __future__ import annotations

import os
import re
import struct
import uuid
from typing import Any

from ansible_collections.kmodlab.lab.plugins.module_utils.files import host_path, read_text

EFI_DIR = "/sys/firmware/efi"
EFIVARS = "/sys/firmware/efi/efivars"
MOK_VARIABLES = "/sys/firmware/efi/mok-variables"
LOCKDOWN = "/sys/kernel/security/lockdown"
PROC_KEYS = "/proc/keys"
SIG_ENFORCE = "/sys/module/module/parameters/sig_enforce"

EFI_GLOBAL_GUID = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
SHIM_LOCK_GUID = "605dab50-e046-4300-abb6-3dd810dd8b23"
CERT_X509_GUID = "a5c059a1-94e4-4aa7-87b5-ab155c2bf072"
CERT_SHA256_GUID = "c1c41626-504c-4092-aca9-41f936934328"

ATTRIBUTES = 4
# EFI_SIGNATURE_LIST: SignatureType (GUID), ListSize, HeaderSize, SignatureSize (u32 LE)
LIST_HEADER = struct.Struct("<16sIII")
OWNER = 16
# shim splits MokListRT into variables of at most a few pages; a bound against junk
VARIABLE_LIMIT = 4 * 1024 * 1024
MOK_SPLIT_LIMIT = 64
LOCKDOWN_MODES = ("none", "integrity", "confidentiality")


def _read_bytes(path: str, limit: int = VARIABLE_LIMIT) -> bytes | None:
    """The content of ``path``, or None when it does not exist or cannot be read."""
    try:
        with open(path, "rb") as handle:
            return handle.read(limit)
    except OSError:
        return None


def efivar_path(name: str, guid: str) -> str:
    """The efivarfs file of variable ``name`` of vendor ``guid``."""
    return f"{EFIVARS}/{name}-{guid}"


def efivar(root: str | None, name: str, guid: str) -> bytes | None:
    """The value of an EFI variable (without its 4 attribute bytes), or None when the
    variable does not exist, cannot be read or is shorter than its attributes."""
    data = _read_bytes(host_path(root, efivar_path(name, guid)))
    if data is None or len(data) < ATTRIBUTES:
        return None
    return data[ATTRIBUTES:]


def _flag(root: str | None, name: str) -> bool | None:
    value = efivar(root, name, EFI_GLOBAL_GUID)
    if not value:
        return None
    return value[0] != 0


def secure_boot(root: str | None) -> dict[str, bool | None]:
    """``{"efi", "secure_boot", "setup_mode"}``: whether the host booted through UEFI
    (``/sys/firmware/efi`` exists), and the firmware's ``SecureBoot`` and ``SetupMode``
    variables (None when they cannot be read: efivarfs not mounted, variable missing).
    A host that did not boot through UEFI has no Secure Boot (``secure_boot`` false,
    ``setup_mode`` None)."""
    if not os.path.isdir(host_path(root, EFI_DIR)):
        return {"efi": False, "secure_boot": False, "setup_mode": None}
    return {
        "efi": True,
        "secure_boot": _flag(root, "SecureBoot"),
        "setup_mode": _flag(root, "SetupMode"),
    }


def lockdown(root: str | None) -> str | None:
    """The kernel's lockdown mode, the bracketed word of ``/sys/kernel/security/lockdown``
    (``none``, ``integrity``, ``confidentiality``); None when the file is absent (no
    lockdown LSM, securityfs not mounted) or shows no bracketed mode."""
    text = read_text(host_path(root, LOCKDOWN))
    if text is None:
        return None
    match = re.search(r"\[([a-z]+)\]", text)
    return match.group(1) if match else None


def sig_enforce(root: str | None) -> bool | None:
    """Whether the kernel refuses unsigned modules (``module.sig_enforce``, set by
    CONFIG_MODULE_SIG_FORCE, the command line, or lockdown): ``Y``/``N`` of
    ``/sys/module/module/parameters/sig_enforce``, None when the file is absent."""
    text = read_text(host_path(root, SIG_ENFORCE))
    if text is None or text.strip() not in ("Y", "N"):
        return None
    return text.strip() == "Y"


def signature_lists(data: bytes) -> list[tuple[str, bytes]]:
    """The entries of a run of EFI_SIGNATURE_LISTs, as ``(type GUID, data)``.

    Each list is SignatureType (GUID), ListSize, HeaderSize, SignatureSize (u32
    little-endian), a header of HeaderSize bytes, then entries of SignatureSize bytes:
    the owner's GUID (16 bytes) and the data (a DER certificate for ``CERT_X509_GUID``,
    a digest for ``CERT_SHA256_GUID``...). Raises ValueError naming the offset and the
    field when the data is truncated or the sizes do not fit together.
    """
    out: list[tuple[str, bytes]] = []
    offset = 0
    total = len(data)
    while offset < total:
        left = total - offset
        if left < LIST_HEADER.size:
            raise ValueError(
                f"EFI signature list at offset {offset} is truncated: {left} bytes left, "
                f"its header takes {LIST_HEADER.size}"
            )
        guid, list_size, header_size, sig_size = LIST_HEADER.unpack_from(data, offset)
        kind = str(uuid.UUID(bytes_le=guid))
        if list_size > left:
            raise ValueError(
                f"EFI signature list at offset {offset} is truncated: ListSize {list_size}, "
                f"but only {left} bytes are left"
            )
        body = list_size - LIST_HEADER.size - header_size
        if body < 0:
            raise ValueError(
                f"EFI signature list at offset {offset}: ListSize {list_size} is smaller "
                f"than its header ({LIST_HEADER.size} + HeaderSize {header_size})"
            )
        if sig_size <= OWNER:
            raise ValueError(
                f"EFI signature list at offset {offset}: SignatureSize {sig_size} leaves "
                f"no room for data after the {OWNER}-byte owner GUID"
            )
        if body % sig_size:
            raise ValueError(
                f"EFI signature list at offset {offset}: its {body} bytes of entries are "
                f"not a multiple of SignatureSize {sig_size}"
            )
        start = offset + LIST_HEADER.size + header_size
        for entry in range(start, start + body, sig_size):
            out.append((kind, data[entry + OWNER : entry + sig_size]))
        offset += list_size
    return out


def mok_variable(root: str | None, var: str) -> bytes | None:
    """The signature lists of shim's variable ``var``, None when it does not exist.

    ``MokListRT``: ``/sys/firmware/efi/mok-variables/MokListRT`` when the kernel shows
    it (no attribute bytes there), else the efivars ``MokListRT``, ``MokListRT1``,
    ``MokListRT2``... joined, each without its attribute bytes. Any other name
    (``MokNew``, ``MokDel``): the efivar of shim's GUID, without its attribute bytes.
    """
    if var == "MokListRT":
        mirrored = _read_bytes(host_path(root, f"{MOK_VARIABLES}/{var}"))
        if mirrored is not None:
            return mirrored
    parts = []
    first = efivar(root, var, SHIM_LOCK_GUID)
    if first is not None:
        parts.append(first)
    if var == "MokListRT":
        for index in range(1, MOK_SPLIT_LIMIT):
            part = efivar(root, f"{var}{index}", SHIM_LOCK_GUID)
            if part is None:
                break
            parts.append(part)
    if not parts:
        return None
    return b"".join(parts)


def mok_certificates(root: str | None, var: str) -> list[bytes]:
    """The DER certificates (X.509 entries) in shim's variable ``var`` (``MokListRT``
    enrolled, ``MokNew`` waiting to be enrolled, ``MokDel`` waiting to be deleted at
    the next boot); [] when the variable does not exist.

    Trailing bytes too short for a list header are ignored in the request variables
    (MokNew, MokDel). Raises ValueError naming the variable when its lists are broken.
    """
    data = mok_variable(root, var)
    if not data:
        return []
    if var != "MokListRT":
        data = _whole_lists(data)
    try:
        entries = signature_lists(data)
    except ValueError as exc:
        raise ValueError(f"{var}: {exc}") from None
    return [payload for kind, payload in entries if kind == CERT_X509_GUID]


def _whole_lists(data: bytes) -> bytes:
    """``data`` without trailing bytes shorter than a list header."""
    offset = 0
    while len(data) - offset >= LIST_HEADER.size:
        list_size = LIST_HEADER.unpack_from(data, offset)[1]
        if list_size < LIST_HEADER.size:
            break  # broken: signature_lists says why
        offset += list_size
    if offset < len(data) and len(data) - offset < LIST_HEADER.size:
        return data[:offset]
    return data


def kernel_keys(root: str | None) -> list[str]:
    """The descriptions of the ``asymmetric`` keys in ``/proc/keys`` (those the reader
    may view), e.g. ``Debian Secure Boot CA: 6ccece7e4c6c0d1f6149f3dd27dfcc5cbb419ea1``.

    A line is ID FLAGS USAGE TIMEOUT PERM UID GID TYPE DESCRIPTION...; the type column
    is cut to 9 characters (``asymmetri``), and an X.509 key's description runs up to
    ``: X509.`` (the kernel prints its subtype and key id after a colon, e.g.
    ``...: 6ccece7e...: X509.rsa 00b54c87 []``).
    """
    text = read_text(host_path(root, PROC_KEYS), limit=4 * 1024 * 1024) or ""
    out = []
    for line in text.splitlines():
        parts = line.split(None, 8)
        if len(parts) < 9 or parts[7] not in ("asymmetri", "asymmetric"):
            continue
        rest = parts[8]
        end = rest.find(": X509.")
        if end < 0:
            end = rest.find(" X509.")
        out.append((rest[:end] if end >= 0 else rest).strip())
    return out


def certificate_state(root: str | None, der: bytes, keyring_description: str) -> dict[str, Any]:
    """Where a certificate (DER) stands: ``enrolled`` (in MokListRT), ``pending_enroll``
    (in MokNew), ``pending_delete`` (in MokDel), ``in_kernel_keyring`` (a kernel key's
    description is ``keyring_description``, e.g. ``CN: SUBJECT KEY ID in hex``)."""
    return {
        "enrolled": der in mok_certificates(root, "MokListRT"),
        "pending_enroll": der in mok_certificates(root, "MokNew"),
        "pending_delete": der in mok_certificates(root, "MokDel"),
        "in_kernel_keyring": keyring_description in kernel_keys(root),
    }
