"""The project's signing key store (kmodlab.keys) and `kmodlab key` (no VM)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from kmodlab import keys
from kmodlab.cli import app
from kmodlab.keys import KeyStoreError

BITS = 2048  # the fastest allowed size; one test makes the default 4096
CODE_SIGNING = "1.3.6.1.5.5.7.3.3"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "keys"


@pytest.fixture
def pair(root: Path) -> keys.KeyPair:
    made, changed = keys.create(root=root, bits=BITS)
    assert changed
    return made


def x509_of(pair: keys.KeyPair) -> x509.Certificate:
    return x509.load_der_x509_certificate((pair.directory / keys.CERT_DER).read_bytes())


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=BITS)


def make_cert(
    key: rsa.RSAPrivateKey,
    serial: int = 1,
    *,
    cn: str = "kmodlab lab module signing key",
    org: str = "kmodlab",
    skid: bool = True,
    not_after: datetime | None = None,
) -> x509.Certificate:
    now = datetime.now(UTC)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - timedelta(days=800))
        .not_valid_after(not_after or now + timedelta(days=365))
    )
    if skid:
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    return builder.sign(key, hashes.SHA256())


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def write_private(path: Path, data: bytes) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def key_pem(key: rsa.RSAPrivateKey, password: bytes | None = None) -> bytes:
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


# --- the certificate -------------------------------------------------------------------


def test_certificate_is_a_module_signing_certificate(root: Path) -> None:
    made, _created = keys.create(root=root, bits=BITS, years=3)
    cert = x509_of(made)
    public = cert.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.key_size >= 2048
    assert made.cert.key_bits == public.key_size
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    cert.verify_directly_issued_by(cert)  # self-signed

    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert [oid.dotted_string for oid in eku.value] == [CODE_SIGNING]
    assert ExtendedKeyUsageOID.CODE_SIGNING.dotted_string == CODE_SIGNING

    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    for other in (
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
    ):
        assert not getattr(usage.value, other), other

    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca is False

    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert made.cert.skid == ski.digest.hex()

    now = datetime.now(UTC)
    assert now - timedelta(hours=1, minutes=1) < made.cert.not_before <= now - timedelta(hours=1)
    assert timedelta(days=3 * 365) <= made.cert.not_after - now <= timedelta(days=3 * 366)

    assert made.cert.common_name == "kmodlab lab module signing key"
    assert made.cert.subject == "CN=kmodlab lab module signing key,O=kmodlab"
    assert cert.issuer == cert.subject
    assert made.cert.keyring_description() == f"kmodlab lab module signing key: {ski.digest.hex()}"


def test_subject_names_the_key(root: Path) -> None:
    made, _created = keys.create("secure-boot_2", root=root, bits=BITS)
    assert made.cert.common_name == "kmodlab secure-boot_2 module signing key"
    assert made.cert.subject.endswith(",O=kmodlab")


def test_default_key_is_rsa_4096(root: Path) -> None:
    made, _created = keys.create(root=root)
    assert made.cert.key_bits == 4096
    assert (made.cert.not_after - made.cert.not_before).days >= 10 * 365


def test_weak_key_or_no_validity_is_refused(root: Path) -> None:
    with pytest.raises(KeyStoreError, match=r"1024 bits is too weak: use --bits 2048"):
        keys.create(root=root, bits=1024)
    with pytest.raises(KeyStoreError, match="at least 1 year"):
        keys.create(root=root, bits=BITS, years=0)
    assert not (root / "lab").exists()


@pytest.mark.parametrize(
    ("serial", "expected"),
    [
        (0x80_01_02, "80:01:02"),  # top bit set: DER adds 00, modinfo does not
        (0xFF, "FF"),
        (0x0A, "0A"),
        (0x01_00, "01:00"),
        (0x1A2B03, "1A:2B:03"),
    ],
)
def test_sig_key_is_the_serial_as_modinfo_prints_it(serial: int, expected: str) -> None:
    info = keys.cert_info_bytes(der(make_cert(rsa_key(), serial)))
    assert info.serial == serial
    assert info.sig_key == expected


def test_sig_key_of_a_created_certificate(pair: keys.KeyPair) -> None:
    sig_key = pair.cert.sig_key
    assert all(len(part) == 2 and part == part.upper() for part in sig_key.split(":"))
    assert not sig_key.startswith("00:")
    assert int(sig_key.replace(":", ""), 16) == pair.cert.serial


def test_fingerprint_is_sha256_of_the_der(pair: keys.KeyPair) -> None:
    data = (pair.directory / keys.CERT_DER).read_bytes()
    digest = hashlib.sha256(data).hexdigest().upper()
    assert pair.cert.fingerprint.replace(":", "") == digest
    assert len(pair.cert.fingerprint.split(":")) == 32


def test_keyring_description_follows_the_kernel() -> None:
    """CN alone when it starts with the O, else "O: CN"; the DER serial without SKID."""
    key = rsa_key()
    other = keys.cert_info_bytes(der(make_cert(key, 0x80_01, cn="Build key", org="Example")))
    skid = x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest.hex()
    assert other.keyring_description() == f"Example: Build key: {skid}"
    no_skid = keys.cert_info_bytes(der(make_cert(key, 0x80_01, skid=False)))
    assert no_skid.skid == ""
    assert no_skid.keyring_description() == "kmodlab lab module signing key: 008001"


def test_cert_info_reads_pem_and_der(tmp_path: Path) -> None:
    cert = make_cert(rsa_key(), 12345)
    (tmp_path / "c.pem").write_bytes(pem(cert))
    (tmp_path / "c.der").write_bytes(der(cert))
    from_pem = keys.cert_info(tmp_path / "c.pem")
    from_der = keys.cert_info(tmp_path / "c.der")
    assert (from_pem.pem_path, from_pem.der_path) == (tmp_path / "c.pem", None)
    assert (from_der.pem_path, from_der.der_path) == (None, tmp_path / "c.der")
    assert (
        from_pem.fingerprint == from_der.fingerprint == keys.cert_info_bytes(pem(cert)).fingerprint
    )
    data = from_pem.as_dict()
    json.dumps(data)
    assert data["pem_path"] == str(tmp_path / "c.pem")
    assert data["not_after"] == from_pem.not_after.isoformat()

    (tmp_path / "junk").write_bytes(b"not a certificate")
    with pytest.raises(KeyStoreError, match=r"is not an X\.509 certificate"):
        keys.cert_info(tmp_path / "junk")
    with pytest.raises(KeyStoreError, match="does not exist"):
        keys.cert_info(tmp_path / "missing.der")


# --- where and how it is stored --------------------------------------------------------


def test_store_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.delenv("KMODLAB_KEY_DIR", raising=False)
    assert keys.store_root() == tmp_path / "home/.local/share/kmodlab/keys"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert keys.store_root() == tmp_path / "data/kmodlab/keys"
    monkeypatch.setenv("KMODLAB_KEY_DIR", str(tmp_path / "mine"))
    assert keys.store_root() == tmp_path / "mine"
    assert keys.key_dir("lab") == tmp_path / "mine/lab"


@pytest.mark.parametrize("name", ["", "Lab", "-lab", "_lab", "a/b", "..", "a b", "x" * 65])
def test_bad_key_names_are_refused(name: str, root: Path) -> None:
    with pytest.raises(KeyStoreError, match="invalid key name"):
        keys.key_dir(name, root)


def test_good_key_names(root: Path) -> None:
    for name in ("a", "0", "lab-2_x", "x" * 64):
        assert keys.key_dir(name, root) == root / name


def test_create_sets_the_modes(root: Path) -> None:
    old = os.umask(0)  # a permissive umask widens nothing
    try:
        made, _created = keys.create(root=root, bits=BITS)
    finally:
        os.umask(old)
    assert mode(root) == 0o700
    assert mode(made.directory) == 0o700
    assert mode(made.key_path) == 0o600
    assert mode(made.directory / keys.CERT_PEM) == 0o644
    assert mode(made.directory / keys.CERT_DER) == 0o644
    assert made.key_path == made.directory / keys.KEY_FILE
    assert b"BEGIN PRIVATE KEY" in made.key_path.read_bytes()  # PKCS#8, unencrypted
    assert not (made.directory / keys.STAGING_DIR).exists()


def test_certificates_are_readable_whatever_the_umask(root: Path) -> None:
    old = os.umask(0o077)
    try:
        made, _created = keys.create(root=root, bits=BITS)
    finally:
        os.umask(old)
    assert mode(made.directory / keys.CERT_DER) == 0o644


def test_create_is_idempotent(pair: keys.KeyPair, root: Path) -> None:
    files = [pair.key_path, pair.directory / keys.CERT_PEM, pair.directory / keys.CERT_DER]
    before = [f.stat().st_mtime_ns for f in files]
    again, changed = keys.create(root=root, bits=BITS)
    assert changed is False
    assert again.cert.fingerprint == pair.cert.fingerprint
    assert [f.stat().st_mtime_ns for f in files] == before
    assert keys.load(root=root) == again


def test_concurrent_creates_make_one_key(root: Path) -> None:
    results: list[tuple[keys.KeyPair, bool]] = []

    def make() -> None:
        results.append(keys.create(root=root, bits=BITS))

    threads = [threading.Thread(target=make) for _i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(changed for _made, changed in results) == [False, False, False, True]
    assert len({made.cert.fingerprint for made, _changed in results}) == 1


def test_load_refuses_a_key_others_can_read(pair: keys.KeyPair, root: Path) -> None:
    pair.key_path.chmod(0o644)
    with pytest.raises(KeyStoreError) as exc:
        keys.load(root=root)
    message = str(exc.value)
    assert str(pair.key_path) in message
    assert "mode 0644" in message
    assert f"`chmod 600 {pair.key_path}`" in message
    with pytest.raises(KeyStoreError, match="chmod 600"):
        keys.create(root=root, bits=BITS)  # nor does create replace it
    pair.key_path.chmod(0o600)
    assert keys.load(root=root).cert == pair.cert


def test_load_refuses_an_open_directory(pair: keys.KeyPair, root: Path) -> None:
    pair.directory.chmod(0o755)
    for call in (lambda: keys.load(root=root), lambda: keys.create(root=root, bits=BITS)):
        with pytest.raises(KeyStoreError) as exc:
            call()
        assert "mode 0755" in str(exc.value)
        assert f"`chmod 700 {pair.directory}`" in str(exc.value)


def test_load_of_a_missing_key_says_create(root: Path) -> None:
    with pytest.raises(KeyStoreError, match=r"no signing key 'lab'.*`kmodlab key create lab"):
        keys.load(root=root)
    root.mkdir(mode=0o700)
    (root / "other").mkdir(mode=0o700)
    with pytest.raises(KeyStoreError, match=r"`kmodlab key create other --key-dir "):
        keys.load("other", root=root)


def test_garbage_key(pair: keys.KeyPair, root: Path) -> None:
    # a PEM block with a body that is no key (its label assembled, not written out)
    label = b"PRIVATE" + b" KEY-----"
    write_private(pair.key_path, b"-----BEGIN " + label + b"\nAAAA\n-----END " + label + b"\n")
    with pytest.raises(KeyStoreError, match="is not a readable PEM private key"):
        keys.load(root=root)
    write_private(pair.key_path, b"\x00\x01 junk")
    with pytest.raises(KeyStoreError, match="is not a readable PEM private key"):
        keys.check_key_file(pair.key_path, pair.cert)
    rotated = keys.rotate(root=root, bits=BITS)  # the fix the message names
    assert rotated.previous == dataclasses.replace(
        pair.cert,
        pem_path=pair.directory / keys.PREVIOUS_PEM,
        der_path=pair.directory / keys.PREVIOUS_DER,
    )


def test_encrypted_key_and_passphrases(pair: keys.KeyPair, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(pair.key_path.read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    encrypted = tmp_path / "encrypted.key"
    write_private(encrypted, key_pem(key, b"right"))
    keys.check_key_file(encrypted, pair.cert, passphrase=b"right")
    with pytest.raises(
        KeyStoreError, match=re.escape(f"wrong passphrase for private key {encrypted}")
    ):
        keys.check_key_file(encrypted, pair.cert, passphrase=b"wrong")
    with pytest.raises(KeyStoreError, match="is encrypted: give its passphrase"):
        keys.check_key_file(encrypted, pair.cert)
    with pytest.raises(KeyStoreError, match="not encrypted, but a passphrase was given"):
        keys.check_key_file(pair.key_path, pair.cert, passphrase=b"right")


def test_key_not_matching_the_certificate(pair: keys.KeyPair, root: Path) -> None:
    write_private(pair.key_path, key_pem(rsa_key()))
    with pytest.raises(KeyStoreError) as exc:
        keys.load(root=root)
    assert f"private key {pair.key_path} does not match" in str(exc.value)
    assert "PRIVATE KEY" not in str(exc.value)
    with pytest.raises(KeyStoreError, match="does not match"):
        keys.create(root=root, bits=BITS)


def test_der_copy_must_be_the_certificate(pair: keys.KeyPair, root: Path) -> None:
    (pair.directory / keys.CERT_DER).write_bytes(der(make_cert(rsa_key())))
    with pytest.raises(KeyStoreError, match=r"signing\.der is not the certificate of"):
        keys.load(root=root)


def expire(pair: keys.KeyPair) -> None:
    """Replace the certificate by one of the same key that expired yesterday."""
    key = serialization.load_pem_private_key(pair.key_path.read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    old = make_cert(key, 77, not_after=datetime.now(UTC) - timedelta(days=1))
    (pair.directory / keys.CERT_PEM).write_bytes(pem(old))
    (pair.directory / keys.CERT_DER).write_bytes(der(old))


def test_expired_certificate_says_rotate(pair: keys.KeyPair, root: Path) -> None:
    expire(pair)
    with pytest.raises(KeyStoreError, match=r"expired on .*`kmodlab key rotate lab"):
        keys.load(root=root)
    with pytest.raises(KeyStoreError, match="expired"):
        keys.create(root=root, bits=BITS)  # never replaced by create
    rotated = keys.rotate(root=root, bits=BITS)
    assert rotated.previous is not None
    assert rotated.previous.serial == 77
    assert rotated.cert.not_after > datetime.now(UTC)


# --- rotate ----------------------------------------------------------------------------


def test_rotate(pair: keys.KeyPair, root: Path) -> None:
    old_key = pair.key_path.read_bytes()
    old_der = (pair.directory / keys.CERT_DER).read_bytes()
    rotated = keys.rotate(root=root, bits=BITS)
    assert rotated.cert.fingerprint != pair.cert.fingerprint
    assert rotated.previous is not None
    assert rotated.previous.fingerprint == pair.cert.fingerprint
    assert rotated.previous.pem_path == pair.directory / keys.PREVIOUS_PEM
    assert (pair.directory / keys.PREVIOUS_DER).read_bytes() == old_der
    assert mode(pair.directory / keys.PREVIOUS_DER) == 0o644
    assert mode(rotated.key_path) == 0o600
    # the old private key is nowhere in the directory any more
    for path in pair.directory.rglob("*"):
        assert path.is_dir() or path.read_bytes() != old_key, path
    assert sorted(p.name for p in pair.directory.iterdir()) == sorted(
        [".lock", "previous.crt", "previous.der", "signing.crt", "signing.der", "signing.key"]
    )
    assert keys.load(root=root) == rotated

    again = keys.rotate(root=root, bits=BITS)
    assert again.previous is not None
    assert again.previous.fingerprint == rotated.cert.fingerprint  # an older previous goes


def test_rotate_needs_a_key(root: Path) -> None:
    with pytest.raises(KeyStoreError, match="kmodlab key create lab"):
        keys.rotate(root=root, bits=BITS)


def test_crash_before_the_commit_keeps_the_current_key(
    pair: keys.KeyPair, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = keys._write_new
    calls: list[Path] = []

    def crash_on_third(path: Path, data: bytes, file_mode: int) -> None:
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real(path, data, file_mode)

    monkeypatch.setattr(keys, "_write_new", crash_on_third)
    with pytest.raises(KeyStoreError, match="No space left on device; nothing changed"):
        keys.rotate(root=root, bits=BITS)
    assert not (pair.directory / keys.STAGING_DIR).exists()  # cleaned up
    assert keys.load(root=root) == pair

    # a crash (no clean-up) leaves the staging, which the next call discards
    monkeypatch.setattr(keys, "_clear_staging", lambda staging: None)
    calls.clear()
    with pytest.raises(KeyStoreError):
        keys.rotate(root=root, bits=BITS)
    monkeypatch.undo()
    assert (pair.directory / keys.STAGING_DIR).is_dir()
    assert keys.load(root=root) == pair
    assert not (pair.directory / keys.STAGING_DIR).exists()


def test_crash_during_the_renames_is_finished_later(
    pair: keys.KeyPair, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.replace
    calls: list[str] = []

    def crash_on_fourth(src: str | Path, dst: str | Path) -> None:
        # 1: the COMMIT marker, 2-3: previous.crt/.der, 4: signing.der
        calls.append(str(dst))
        if len(calls) == 4:
            raise OSError(5, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(keys.os, "replace", crash_on_fourth)
    with pytest.raises(KeyStoreError, match="Input/output error; fix that, and the next"):
        keys.rotate(root=root, bits=BITS)
    monkeypatch.undo()
    assert calls[-1].endswith(keys.CERT_DER)
    assert (pair.directory / keys.PREVIOUS_PEM).exists()
    assert keys.KEY_FILE in os.listdir(pair.directory / keys.STAGING_DIR)
    finished = keys.load(root=root)
    assert finished.cert.fingerprint != pair.cert.fingerprint
    assert finished.previous is not None
    assert finished.previous.fingerprint == pair.cert.fingerprint
    assert not (pair.directory / keys.STAGING_DIR).exists()


# --- export and the MOK password -------------------------------------------------------


def test_export_der_and_pem(pair: keys.KeyPair, root: Path, tmp_path: Path) -> None:
    out_der = keys.export("lab", tmp_path / "lab.der", "der", root=root)
    assert out_der == tmp_path / "lab.der"
    assert out_der.read_bytes() == (pair.directory / keys.CERT_DER).read_bytes()
    assert keys.cert_info(out_der).fingerprint == pair.cert.fingerprint
    assert mode(out_der) == 0o644

    out_pem = keys.export("lab", tmp_path / "lab.pem", "pem", root=root)
    assert out_pem.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert b"PRIVATE" not in out_pem.read_bytes()
    assert keys.cert_info(out_pem).fingerprint == pair.cert.fingerprint

    into_dir = keys.export("lab", tmp_path, "der", root=root)
    assert into_dir == tmp_path / "kmodlab-lab.der"

    with pytest.raises(KeyStoreError, match="unknown format"):
        keys.export("lab", tmp_path / "x", "p12", root=root)  # type: ignore[arg-type]
    with pytest.raises(KeyStoreError, match="cannot write"):
        keys.export("lab", tmp_path / "missing" / "lab.der", "der", root=root)
    with pytest.raises(KeyStoreError, match="kmodlab key create other"):
        keys.export("other", tmp_path / "o.der", "der", root=root)


def test_mok_password(pair: keys.KeyPair, root: Path) -> None:
    password = keys.mok_password(root=root)
    assert len(password) == 16
    assert password.isalnum()
    assert password.isascii()
    assert keys.mok_password(root=root) == password
    path = pair.directory / keys.PASSWORD_FILE
    assert mode(path) == 0o600
    assert path.read_text().strip() == password
    assert keys.mok_password("other", root=root) != password
    path.chmod(0o640)
    with pytest.raises(KeyStoreError, match=r"mode 0640\): run `chmod 600 "):
        keys.mok_password(root=root)


# --- the CLI ---------------------------------------------------------------------------


runner = CliRunner()


def invoke(root: Path, *words: str, code: int = 0) -> str:
    result = runner.invoke(app, ["key", *words], env={"KMODLAB_KEY_DIR": str(root)})
    assert result.exit_code == code, result.output
    assert "PRIVATE KEY" not in result.output
    return result.output


def test_cli_create_show_rotate_export(root: Path, tmp_path: Path) -> None:
    output = invoke(root, "create", "--bits", str(BITS))
    made = keys.load(root=root)
    assert "created signing key lab" in output
    assert made.cert.fingerprint in output
    assert made.cert.sig_key in output
    assert made.cert.subject in output
    assert str(made.directory) in output
    key_body = made.key_path.read_text().splitlines()[1]
    assert key_body not in output

    output = invoke(root, "create")
    assert "exists: nothing changed" in output
    assert made.cert.fingerprint in output

    shown = json.loads(invoke(root, "show", "--json"))
    assert shown["cert"]["fingerprint"] == made.cert.fingerprint
    assert shown["key_path"] == str(made.key_path)
    assert shown["previous"] is None

    output = invoke(root, "rotate", "--bits", str(BITS))
    rotated = keys.load(root=root)
    assert made.cert.fingerprint in output
    assert rotated.cert.fingerprint in output
    assert "MokList" in output
    assert "lab.yml" in output

    output = invoke(root, "show")
    assert "previous certificate" in output
    assert made.cert.fingerprint in output

    dest = tmp_path / "out.der"
    assert str(dest) in invoke(root, "export", "--format", "der", "--output", str(dest))
    assert keys.cert_info(dest).fingerprint == rotated.cert.fingerprint
    invoke(root, "export", "lab", "--format", "pem", "--output", str(tmp_path / "out.pem"))
    assert keys.cert_info(tmp_path / "out.pem").fingerprint == rotated.cert.fingerprint


def test_cli_key_dir_option(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["key", "create", "mine", "--bits", str(BITS), "--key-dir", str(tmp_path / "k")]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "k" / "mine" / keys.KEY_FILE).exists()


def test_cli_errors_are_one_line_and_exit_2(root: Path) -> None:
    output = invoke(root, "show", code=2)
    assert "error: no signing key 'lab'" in output
    assert "kmodlab key create lab" in output
    assert "Traceback" not in output
    assert "too weak" in invoke(root, "create", "--bits", "1024", code=2)
    assert "invalid key name" in invoke(root, "create", "Bad", code=2)


def test_console_script(root: Path) -> None:
    """The installed `kmodlab` has the key commands; nothing private on the screen."""
    keys.create(root=root, bits=BITS)
    exe = Path(sys.executable).parent / "kmodlab"
    env = {**os.environ, "KMODLAB_KEY_DIR": str(root)}
    done = subprocess.run(
        [exe, "key", "show", "--json"], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["name"] == "lab"
    assert "PRIVATE KEY" not in done.stdout + done.stderr
