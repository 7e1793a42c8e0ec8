"""Secure Boot on a target (module_utils/secure_boot.py) and the kmodlab.lab.signing_state
probe, against a fake /sys and /proc.

The firmware's variables are laid out as efivarfs shows them (4 attribute bytes, then
the value); shim's MOK lists are EFI_SIGNATURE_LISTs built here with struct, holding
real certificates made with ``cryptography``.
"""

from __future__ import annotations

import base64
import datetime
import importlib
import os
import struct
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible_collections.kmodlab.lab.plugins.module_utils import secure_boot as sb
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

probe = importlib.import_module("ansible_collections.kmodlab.lab.plugins.modules.signing_state")

ATTRS = struct.pack("<I", 0x7)  # non-volatile, boot service, runtime access
OWNER = uuid.UUID("605dab50-e046-4300-abb6-3dd810dd8b23")
# /proc/keys as a Debian 12 host with a MOK enrolled shows it (as root): the key's
# description, then ": X509.rsa KEYID []" (the first line as seen on a Secure Boot VM)
PROC_KEYS = (
    "0b6a1b2b I------     1 perm 1f0b0000     0     0 keyring   .builtin_trusted_keys: 1\n"
    "0e5c0d5d I------     1 perm 1f010000     0     0 asymmetri Debian Secure Boot CA: "
    "6ccece7e4c6c0d1f6149f3dd27dfcc5cbb419ea1: X509.rsa 00b54c87 []\n"
    "1d5fe8c7 I------     1 perm 1f030000     0     0 keyring   .platform: 2\n"
    "2a7e1f10 I------     1 perm 1f010000     0     0 asymmetri {desc}: X509.ec 3c2b1a09 []\n"
    "33a1f0e2 I--Q---     1 perm 3f010000  1000  1000 user      session-note: 12\n"
)


def certificate(cn: str) -> tuple[bytes, str]:
    """A self-signed certificate (DER) and the description the kernel gives its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER), f"{cn}: {ski.digest.hex()}"


@pytest.fixture(scope="module")
def certs() -> dict[str, tuple[bytes, str]]:
    return {name: certificate(name) for name in ("kmodlab module signing", "other", "third")}


def siglist(kind: str, entries: list[bytes], header: bytes = b"") -> bytes:
    """One EFI_SIGNATURE_LIST: entries of equal size, each with shim's owner GUID."""
    size = 16 + len(entries[0])
    assert all(len(e) == len(entries[0]) for e in entries)
    body = b"".join(OWNER.bytes_le + e for e in entries)
    return (
        uuid.UUID(kind).bytes_le
        + struct.pack("<III", 28 + len(header) + len(body), len(header), size)
        + header
        + body
    )


def x509_list(*ders: bytes) -> bytes:
    return b"".join(siglist(sb.CERT_X509_GUID, [der]) for der in ders)


def write(root: Path, path: str, data: bytes | str, mode: int = 0o644) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data.encode() if isinstance(data, str) else data)
    os.chmod(target, mode)


def efivar(root: Path, name: str, guid: str, value: bytes) -> None:
    write(root, sb.efivar_path(name, guid), ATTRS + value)


def efi_host(root: Path, secure: int = 1, setup: int = 0) -> Path:
    (root / "sys/firmware/efi/efivars").mkdir(parents=True, exist_ok=True)
    efivar(root, "SecureBoot", sb.EFI_GLOBAL_GUID, bytes([secure]))
    efivar(root, "SetupMode", sb.EFI_GLOBAL_GUID, bytes([setup]))
    return root


# ------------------------------------------------------------------ signature lists


def test_signature_lists_give_every_entry_with_its_type(certs):
    der = certs["other"][0]
    digests = [bytes([n]) * 32 for n in (1, 2)]
    data = (
        siglist(sb.CERT_X509_GUID, [der])
        + siglist(sb.CERT_SHA256_GUID, digests, header=b"\xaa" * 8)
        + siglist(sb.CERT_X509_GUID, [certs["third"][0]])
    )
    assert sb.signature_lists(data) == [
        (sb.CERT_X509_GUID, der),
        (sb.CERT_SHA256_GUID, digests[0]),
        (sb.CERT_SHA256_GUID, digests[1]),
        (sb.CERT_X509_GUID, certs["third"][0]),
    ]
    assert sb.signature_lists(b"") == []


def test_truncated_or_inconsistent_lists_raise_a_clear_error(certs):
    data = x509_list(certs["other"][0], certs["third"][0])
    first = len(x509_list(certs["other"][0]))
    with pytest.raises(ValueError, match=rf"at offset {first} is truncated: ListSize \d+, but"):
        sb.signature_lists(data[:-10])
    with pytest.raises(ValueError, match=rf"at offset {first} is truncated: 12 bytes left"):
        sb.signature_lists(data[: first + 12])
    one = bytearray(x509_list(certs["other"][0]))
    struct.pack_into("<I", one, 20, 10000)  # HeaderSize larger than the list
    with pytest.raises(ValueError, match="smaller than its header"):
        sb.signature_lists(bytes(one))
    odd = bytearray(x509_list(certs["other"][0]))
    struct.pack_into("<I", odd, 24, 17)  # SignatureSize that does not divide the entries
    with pytest.raises(ValueError, match="not a multiple of SignatureSize 17"):
        sb.signature_lists(bytes(odd))
    empty = bytearray(x509_list(certs["other"][0]))
    struct.pack_into("<I", empty, 24, 16)
    with pytest.raises(ValueError, match="SignatureSize 16 leaves no room"):
        sb.signature_lists(bytes(empty))


# ------------------------------------------------------------------ MOK variables


def test_mok_list_from_the_kernels_mirror_first(tmp_path: Path, certs):
    ours, other = certs["kmodlab module signing"][0], certs["other"][0]
    efi_host(tmp_path)
    efivar(tmp_path, "MokListRT", sb.SHIM_LOCK_GUID, x509_list(other))
    assert sb.mok_certificates(str(tmp_path), "MokListRT") == [other]
    # shim 15.3+: the value alone, no attribute bytes
    write(tmp_path, f"{sb.MOK_VARIABLES}/MokListRT", x509_list(other, ours))
    assert sb.mok_certificates(str(tmp_path), "MokListRT") == [other, ours]


def test_mok_list_split_over_numbered_variables(tmp_path: Path, certs):
    ders = [certs[name][0] for name in ("other", "kmodlab module signing", "third")]
    # a hash list between the certificates: only X.509 entries are certificates
    data = x509_list(ders[0]) + siglist(sb.CERT_SHA256_GUID, [b"\x05" * 32]) + x509_list(*ders[1:])
    cut1, cut2 = len(data) // 3, 2 * len(data) // 3  # shim splits by size, not by list
    efi_host(tmp_path)
    efivar(tmp_path, "MokListRT", sb.SHIM_LOCK_GUID, data[:cut1])
    efivar(tmp_path, "MokListRT1", sb.SHIM_LOCK_GUID, data[cut1:cut2])
    assert "MokListRT1" in sb.efivar_path("MokListRT1", sb.SHIM_LOCK_GUID)
    with pytest.raises(ValueError, match=r"^MokListRT: EFI signature list at offset"):
        sb.mok_certificates(str(tmp_path), "MokListRT")  # MokListRT2 missing: truncated
    efivar(tmp_path, "MokListRT2", sb.SHIM_LOCK_GUID, data[cut2:])
    assert sb.mok_certificates(str(tmp_path), "MokListRT") == ders


def test_pending_requests_and_missing_variables(tmp_path: Path, certs):
    ours, other = certs["kmodlab module signing"][0], certs["other"][0]
    assert sb.mok_certificates(str(tmp_path), "MokListRT") == []
    assert sb.mok_certificates(str(tmp_path), "MokNew") == []
    efi_host(tmp_path)
    assert sb.mok_certificates(str(tmp_path), "MokNew") == []
    # trailing bytes shorter than a list header are tolerated in a request
    efivar(tmp_path, "MokNew", sb.SHIM_LOCK_GUID, x509_list(ours) + b"\0" * 27)
    efivar(tmp_path, "MokDel", sb.SHIM_LOCK_GUID, x509_list(other))
    assert sb.mok_certificates(str(tmp_path), "MokNew") == [ours]
    assert sb.mok_certificates(str(tmp_path), "MokDel") == [other]
    efivar(tmp_path, "MokNew", sb.SHIM_LOCK_GUID, x509_list(ours)[:-1])
    with pytest.raises(ValueError, match=r"^MokNew: EFI signature list at offset 0 is truncated"):
        sb.mok_certificates(str(tmp_path), "MokNew")


# ------------------------------------------------------------------ firmware and kernel


def test_secure_boot_state(tmp_path: Path):
    assert sb.secure_boot(str(tmp_path)) == {
        "efi": False,
        "secure_boot": False,
        "setup_mode": None,
    }
    (tmp_path / "sys/firmware/efi").mkdir(parents=True)  # efivarfs not mounted
    assert sb.secure_boot(str(tmp_path)) == {"efi": True, "secure_boot": None, "setup_mode": None}
    efi_host(tmp_path, secure=1, setup=0)
    assert sb.secure_boot(str(tmp_path)) == {"efi": True, "secure_boot": True, "setup_mode": False}
    efi_host(tmp_path, secure=0, setup=1)
    assert sb.secure_boot(str(tmp_path)) == {"efi": True, "secure_boot": False, "setup_mode": True}
    write(tmp_path, sb.efivar_path("SecureBoot", sb.EFI_GLOBAL_GUID), ATTRS)  # no value
    assert sb.secure_boot(str(tmp_path))["secure_boot"] is None


@pytest.mark.parametrize(
    ("text", "mode"),
    [
        ("[none] integrity confidentiality\n", "none"),
        ("none [integrity] confidentiality\n", "integrity"),
        ("none integrity [confidentiality]\n", "confidentiality"),
        ("none integrity confidentiality\n", None),
        (None, None),
    ],
)
def test_lockdown_modes(tmp_path: Path, text, mode):
    if text is not None:
        write(tmp_path, sb.LOCKDOWN, text)
    assert sb.lockdown(str(tmp_path)) == mode


@pytest.mark.parametrize(("text", "value"), [("Y\n", True), ("N\n", False), (None, None)])
def test_sig_enforce(tmp_path: Path, text, value):
    if text is not None:
        write(tmp_path, sb.SIG_ENFORCE, text)
    assert sb.sig_enforce(str(tmp_path)) is value


def test_kernel_keys_are_the_asymmetric_key_descriptions(tmp_path: Path, certs):
    desc = certs["kmodlab module signing"][1]
    write(tmp_path, sb.PROC_KEYS, PROC_KEYS.format(desc=desc))
    assert sb.kernel_keys(str(tmp_path)) == [
        "Debian Secure Boot CA: 6ccece7e4c6c0d1f6149f3dd27dfcc5cbb419ea1",
        desc,
    ]
    assert sb.kernel_keys(str(tmp_path / "none")) == []


def test_certificate_state(tmp_path: Path, certs):
    (ours, desc), (other, other_desc) = certs["kmodlab module signing"], certs["other"]
    efi_host(tmp_path)
    write(tmp_path, sb.PROC_KEYS, PROC_KEYS.format(desc=desc))
    efivar(tmp_path, "MokListRT", sb.SHIM_LOCK_GUID, x509_list(ours))
    efivar(tmp_path, "MokDel", sb.SHIM_LOCK_GUID, x509_list(ours))
    efivar(tmp_path, "MokNew", sb.SHIM_LOCK_GUID, x509_list(other))
    assert sb.certificate_state(str(tmp_path), ours, desc) == {
        "enrolled": True,
        "pending_enroll": False,
        "pending_delete": True,
        "in_kernel_keyring": True,
    }
    assert sb.certificate_state(str(tmp_path), other, other_desc) == {
        "enrolled": False,
        "pending_enroll": True,
        "pending_delete": False,
        "in_kernel_keyring": False,
    }


# ------------------------------------------------------------------ the module


class Failed(Exception):
    pass


class FakeModule:
    def __init__(self, params: dict[str, Any]):
        self.params = {"certificates": [], "modules": [], "root": "/", **params}
        self.check_mode = False

    def fail_json(self, **kwargs):
        raise Failed(kwargs)


def cert_option(cert_id: str, cert: tuple[bytes, str]) -> dict[str, str]:
    return {
        "id": cert_id,
        "der_b64": base64.b64encode(cert[0]).decode(),
        "keyring_description": cert[1],
    }


def test_documentation_and_argument_spec_agree():
    doc = yaml.safe_load(probe.DOCUMENTATION)
    assert doc["module"] == "signing_state"
    options = doc["options"]
    assert set(options) == set(probe.ARGUMENT_SPEC)
    for name, spec in probe.ARGUMENT_SPEC.items():
        opt = options[name]
        assert opt["type"] == spec["type"], name
        assert opt.get("default") == spec.get("default"), name
        assert opt.get("elements") == spec.get("elements"), name
        assert opt.get("description"), name
        subs = spec.get("options") or {}
        assert set(opt.get("suboptions") or {}) == set(subs), name
        for sub, sub_spec in subs.items():
            sub_opt = opt["suboptions"][sub]
            assert sub_opt["type"] == sub_spec["type"], sub
            assert bool(sub_opt.get("required")) == bool(sub_spec.get("required")), sub
    assert doc["attributes"]["check_mode"]["support"] == "full"
    assert yaml.safe_load(probe.EXAMPLES)
    assert yaml.safe_load(probe.RETURN)


def test_the_probe_reads_host_and_certificates(tmp_path: Path, certs):
    ours, other = certs["kmodlab module signing"], certs["other"]
    efi_host(tmp_path)
    write(tmp_path, sb.LOCKDOWN, "none [integrity] confidentiality\n")
    write(tmp_path, sb.SIG_ENFORCE, "Y\n")
    write(tmp_path, sb.PROC_KEYS, PROC_KEYS.format(desc=ours[1]))
    efivar(tmp_path, "MokListRT", sb.SHIM_LOCK_GUID, x509_list(ours[0]))
    efivar(tmp_path, "MokNew", sb.SHIM_LOCK_GUID, x509_list(other[0]))
    wrapped = cert_option("other", other)
    wrapped["der_b64"] = "\n".join(
        wrapped["der_b64"][i : i + 64] for i in range(0, len(wrapped["der_b64"]), 64)
    )
    out = probe.run(
        FakeModule({"root": str(tmp_path), "certificates": [cert_option("kmodlab", ours), wrapped]})
    )
    assert out == {
        "changed": False,
        "unsigned": [],
        "efi": True,
        "secure_boot": True,
        "setup_mode": False,
        "lockdown": "integrity",
        "module_sig_enforced": True,
        "certificates": {
            "kmodlab": {
                "enrolled": True,
                "pending_enroll": False,
                "pending_delete": False,
                "in_kernel_keyring": True,
            },
            "other": {
                "enrolled": False,
                "pending_enroll": True,
                "pending_delete": False,
                "in_kernel_keyring": False,
            },
        },
    }
    documented = yaml.safe_load(probe.RETURN)
    assert set(out) - {"changed"} == set(documented)
    assert set(out["certificates"]["kmodlab"]) == set(documented["certificates"]["contains"])


def test_the_probe_on_a_host_without_uefi(tmp_path: Path):
    assert probe.run(FakeModule({"root": str(tmp_path)})) == {
        "changed": False,
        "unsigned": [],
        "efi": False,
        "secure_boot": False,
        "setup_mode": None,
        "lockdown": None,
        "module_sig_enforced": None,
        "certificates": {},
    }


def test_the_probe_fails_on_bad_input_and_broken_lists(tmp_path: Path, certs):
    ours = certs["kmodlab module signing"]
    bad = {**cert_option("kmodlab", ours), "der_b64": "not base64!"}
    with pytest.raises(Failed, match=r"certificates\[0\] \(kmodlab\): der_b64 is not base64"):
        probe.run(FakeModule({"root": str(tmp_path), "certificates": [bad]}))
    twice = [cert_option("kmodlab", ours), cert_option("kmodlab", ours)]
    with pytest.raises(Failed, match=r"certificates\[1\] \(kmodlab\): the id is given twice"):
        probe.run(FakeModule({"root": str(tmp_path), "certificates": twice}))
    efi_host(tmp_path)
    efivar(tmp_path, "MokListRT", sb.SHIM_LOCK_GUID, x509_list(ours[0])[:40])
    with pytest.raises(Failed, match="MOK variables cannot be read: MokListRT: EFI signature"):
        probe.run(FakeModule({"root": str(tmp_path), "certificates": [twice[0]]}))
