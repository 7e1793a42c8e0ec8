"""The project's module signing key, kept on this machine (the controller).

One RSA key and its self-signed certificate per name, in a directory (0700) under
``store_root()``::

    NAME/signing.key     the private key, PEM PKCS#8, unencrypted, 0600; never printed
    NAME/signing.crt     its certificate, PEM, 0644
    NAME/signing.der     the same certificate, DER: what `mokutil --import` takes
    NAME/previous.crt    after a rotation: the replaced certificate (its key is deleted)
    NAME/previous.der
    NAME/mok-password    the one-time MOK password typed into MokManager, 0600
    NAME/.lock           flock: one writer at a time (Ansible forks may call create at once)
    NAME/.staging/       a create or rotation in progress, see ``_stage`` and ``_recover``

A create or rotation writes every new file into ``.staging``, then commits by writing
``.staging/COMMIT``, then renames the files into place. A crash before the commit leaves
the current files as they were (the staging is discarded by the next call); a crash after
it is finished by the next call. The current key is never lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
import re
import secrets
import stat
import string
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kmodlab.lab.errors import LabError

DEFAULT_NAME = "lab"
KEY_FILE = "signing.key"
CERT_PEM = "signing.crt"
CERT_DER = "signing.der"
PREVIOUS_PEM = "previous.crt"
PREVIOUS_DER = "previous.der"
PASSWORD_FILE = "mok-password"
LOCK_FILE = ".lock"
STAGING_DIR = ".staging"
COMMIT_FILE = "COMMIT"

MIN_BITS = 2048
CLOCK_SKEW = timedelta(hours=1)
PASSWORD_LENGTH = 16
PASSWORD_ALPHABET = string.ascii_letters + string.digits
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
ORGANIZATION = "kmodlab"
KEY_MODE = 0o600
CERT_MODE = 0o644
DIR_MODE = 0o700
# Renamed into place in this order: the private key last.
STAGED_ORDER = (PREVIOUS_PEM, PREVIOUS_DER, CERT_DER, CERT_PEM, KEY_FILE)


class KeyStoreError(LabError):
    """The signing key store is missing, unsafe or inconsistent; the message says the fix."""


# --- where ---------------------------------------------------------------------------


def store_root() -> Path:
    """``$KMODLAB_KEY_DIR``, else ``$XDG_DATA_HOME/kmodlab/keys``, else
    ``~/.local/share/kmodlab/keys``."""
    if env := os.environ.get("KMODLAB_KEY_DIR"):
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "kmodlab" / "keys"


def key_dir(name: str, root: Path | None = None) -> Path:
    """The directory of key NAME (not created); NAME is ``[a-z0-9][a-z0-9_-]{0,63}``."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise KeyStoreError(
            f"invalid key name {name!r}: use 1-64 lowercase letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    return (root if root is not None else store_root()) / name


# --- certificates ----------------------------------------------------------------------


def _hex_colons(data: bytes) -> str:
    return ":".join(f"{b:02X}" for b in data)


def serial_sig_key(serial: int) -> str:
    """The serial as ``modinfo -F sig_key`` prints it: the magnitude, big-endian, in the
    fewest bytes, uppercase hex separated by ':'."""
    magnitude = abs(serial)
    return _hex_colons(magnitude.to_bytes((magnitude.bit_length() + 7) // 8, "big"))


def _raw_serial(serial: int) -> bytes:
    """The content octets of the DER INTEGER (two's complement, shortest form)."""
    return serial.to_bytes(serial.bit_length() // 8 + 1, "big", signed=True)


def _last_attribute(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    values = name.get_attributes_for_oid(oid)
    return str(values[-1].value) if values else ""


def _kernel_subject(name: x509.Name) -> str:
    """The subject as the kernel names it (x509_fabricate_name): the CN alone when it
    starts with the O (or with its first 7 characters), else "O: CN"."""
    cn = _last_attribute(name, NameOID.COMMON_NAME)
    org = _last_attribute(name, NameOID.ORGANIZATION_NAME)
    if cn and org:
        if cn.startswith(org) or (len(cn) >= 7 and len(org) >= 7 and cn[:7] == org[:7]):
            return cn
        return f"{org}: {cn}"
    return cn or org or _last_attribute(name, NameOID.EMAIL_ADDRESS)


def _skid(cert: x509.Certificate) -> str:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        return ""
    return ext.value.digest.hex()


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass(frozen=True)
class CertInfo:
    """What kmodlab needs to know about a certificate (public material only)."""

    pem_path: Path | None
    der_path: Path | None
    subject: str  # RFC 4514
    common_name: str
    serial: int
    sig_key: str  # as `modinfo -F sig_key` prints it
    fingerprint: str  # SHA-256 of the DER, uppercase hex, ':'-separated
    skid: str  # subject key identifier, lowercase hex ("" when the cert has none)
    not_before: datetime
    not_after: datetime
    key_bits: int
    kernel_subject: str = ""  # the subject as the kernel names it in /proc/keys
    spki_sha256: str = ""  # SHA-256 of the public key (SubjectPublicKeyInfo DER), hex

    def keyring_description(self) -> str:
        """How the kernel names the key in /proc/keys: "CN: skid" (the kernel uses the
        DER serial instead when the certificate has no subject key identifier)."""
        key_id = self.skid or _raw_serial(self.serial).hex()
        return f"{self.kernel_subject or self.common_name}: {key_id}"

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for field in ("pem_path", "der_path"):
            data[field] = str(data[field]) if data[field] is not None else None
        data["not_before"] = self.not_before.isoformat()
        data["not_after"] = self.not_after.isoformat()
        data["keyring_description"] = self.keyring_description()
        return data


def _info(
    cert: x509.Certificate, pem_path: Path | None = None, der_path: Path | None = None
) -> CertInfo:
    public = cert.public_key()
    return CertInfo(
        pem_path=pem_path,
        der_path=der_path,
        subject=cert.subject.rfc4514_string(),
        common_name=_last_attribute(cert.subject, NameOID.COMMON_NAME),
        serial=cert.serial_number,
        sig_key=serial_sig_key(cert.serial_number),
        fingerprint=_hex_colons(cert.fingerprint(hashes.SHA256())),
        skid=_skid(cert),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        key_bits=int(getattr(public, "key_size", 0)),
        kernel_subject=_kernel_subject(cert.subject),
        spki_sha256=hashlib.sha256(_spki(cert)).hexdigest(),
    )


def _parse_cert(data: bytes, origin: str) -> x509.Certificate:
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise KeyStoreError(
            f"{origin} is not an X.509 certificate (PEM or DER): restore it, or give "
            "the certificate file"
        ) from None


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyStoreError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise KeyStoreError(f"cannot read {what} {path}: {exc.strerror}") from None


def _read_cert(path: Path) -> x509.Certificate:
    return _parse_cert(_read(path, "certificate"), str(path))


def cert_info(path: Path) -> CertInfo:
    """The certificate in ``path`` (PEM or DER)."""
    data = _read(path, "certificate")
    cert = _parse_cert(data, str(path))
    if b"-----BEGIN" in data:
        return _info(cert, pem_path=path)
    return _info(cert, der_path=path)


def cert_info_bytes(data: bytes) -> CertInfo:
    """A certificate given as PEM or DER bytes."""
    return _info(_parse_cert(data, "the data"))


def _validity(years: int) -> tuple[datetime, datetime]:
    now = datetime.now(UTC).replace(microsecond=0)
    try:
        until = now.replace(year=now.year + years)
    except ValueError:  # 29 February
        until = now.replace(year=now.year + years, day=28)
    return now - CLOCK_SKEW, until


def _subject(name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, f"kmodlab {name} module signing key"),
        ]
    )


def _key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _make_cert(name: str, key: rsa.RSAPrivateKey, years: int) -> x509.Certificate:
    not_before, not_after = _validity(years)
    public = key.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(public)
    return (
        x509.CertificateBuilder()
        .subject_name(_subject(name))
        .issuer_name(_subject(name))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )


def _check_params(years: int, bits: int) -> None:
    if bits < MIN_BITS:
        raise KeyStoreError(f"an RSA key of {bits} bits is too weak: use --bits {MIN_BITS} or more")
    if years < 1:
        raise KeyStoreError(f"the certificate must be valid for at least 1 year, not {years}")


# --- files -----------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _check_dir(directory: Path) -> None:
    if not directory.is_dir():
        raise KeyStoreError(f"{directory} is not a directory: move it away")
    mode = _mode(directory)
    if mode & 0o077:
        raise KeyStoreError(
            f"key directory {directory} is accessible by group or others (mode {mode:04o}): "
            f"run `chmod 700 {directory}`"
        )


def _ensure_dir(directory: Path) -> None:
    """Create the key directory 0700 (the store root too), or check the existing one."""
    if not directory.exists():
        try:
            directory.parent.parent.mkdir(parents=True, exist_ok=True)
            directory.parent.mkdir(mode=DIR_MODE, exist_ok=True)
            directory.mkdir(mode=DIR_MODE, exist_ok=True)
        except OSError as exc:
            raise KeyStoreError(f"cannot create {directory}: {exc.strerror}") from None
    _check_dir(directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write a new file, created with ``mode`` (a key is never readable by others, not
    even for a moment); fchmod before the data, so the umask narrows nothing either."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, mode)
        f.write(data)
        f.flush()
        os.fsync(fd)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` through a temporary file in the same directory and os.replace."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        _write_new(tmp, data, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold the key directory's lock; finish or discard an interrupted create/rotate."""
    try:
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, KEY_MODE)
    except OSError as exc:
        raise KeyStoreError(f"cannot lock {directory}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _recover(directory)
        yield
    finally:
        os.close(fd)


def _clear_staging(staging: Path) -> None:
    for leftover in staging.iterdir():
        leftover.unlink()
    staging.rmdir()


def _recover(directory: Path) -> None:
    """Finish a committed create/rotate (rename its files into place), or discard an
    uncommitted one. Called with the lock held."""
    staging = directory / STAGING_DIR
    if not staging.is_dir():
        return
    if (staging / COMMIT_FILE).exists():
        _roll_forward(directory)
    else:
        _clear_staging(staging)
        _fsync_dir(directory)


def _roll_forward(directory: Path) -> None:
    staging = directory / STAGING_DIR
    for name in STAGED_ORDER:
        if (staging / name).exists():
            os.replace(staging / name, directory / name)
    _fsync_dir(directory)
    _clear_staging(staging)
    _fsync_dir(directory)


def _stage(directory: Path, files: dict[str, tuple[bytes, int]]) -> None:
    """Write ``files`` (name -> data, mode) into the staging directory and commit them."""
    staging = directory / STAGING_DIR
    staging.mkdir(mode=DIR_MODE)
    for name, (data, mode) in files.items():
        _write_new(staging / name, data, mode)
    _fsync_dir(staging)
    _write_atomic(staging / COMMIT_FILE, b"\n".join(n.encode() for n in files) + b"\n", KEY_MODE)


def _install(directory: Path, files: dict[str, tuple[bytes, int]]) -> None:
    """Replace files of the key directory all or nothing: nothing before the commit,
    everything after it (a later call finishes an interrupted rename)."""
    try:
        _stage(directory, files)
    except OSError as exc:
        with contextlib.suppress(OSError):
            _clear_staging(directory / STAGING_DIR)
        raise KeyStoreError(
            f"cannot write the new key files in {directory}: {exc.strerror}; nothing changed"
        ) from None
    try:
        _roll_forward(directory)
    except OSError as exc:
        raise KeyStoreError(
            f"cannot move the new key files into place in {directory}: {exc.strerror}; "
            "fix that, and the next `kmodlab key` command finishes the change"
        ) from None


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_files(cert: x509.Certificate, pem: str, der: str) -> dict[str, tuple[bytes, int]]:
    return {
        pem: (cert.public_bytes(serialization.Encoding.PEM), CERT_MODE),
        der: (cert.public_bytes(serialization.Encoding.DER), CERT_MODE),
    }


def _new_key_files(name: str, years: int, bits: int) -> dict[str, tuple[bytes, int]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    cert = _make_cert(name, key, years)
    return {**_cert_files(cert, CERT_PEM, CERT_DER), KEY_FILE: (_key_pem(key), KEY_MODE)}


# --- the private key -------------------------------------------------------------------


def _check_private_mode(path: Path, what: str = "private key") -> None:
    try:
        mode = _mode(path)
    except FileNotFoundError:
        raise KeyStoreError(f"{what} {path} does not exist") from None
    if mode & 0o077:
        raise KeyStoreError(
            f"{what} {path} is accessible by group or others (mode {mode:04o}): "
            f"run `chmod 600 {path}`"
        )


def _load_private_key(path: Path, passphrase: bytes | None) -> PrivateKeyTypes:
    data = _read(path, "private key")
    try:
        return serialization.load_pem_private_key(data, password=passphrase)
    except TypeError:
        if passphrase is None:
            raise KeyStoreError(
                f"private key {path} is encrypted: give its passphrase, or store it "
                "unencrypted (DKMS signs without asking)"
            ) from None
        raise KeyStoreError(
            f"private key {path} is not encrypted, but a passphrase was given: give none"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        if passphrase is not None and b"ENCRYPTED" in data:
            raise KeyStoreError(f"wrong passphrase for private key {path}") from None
        raise KeyStoreError(
            f"{path} is not a readable PEM private key (damaged or not a key): restore it "
            "from a backup, or replace the key with `kmodlab key rotate`"
        ) from None


def check_key_file(path: Path, cert: CertInfo, passphrase: bytes | None = None) -> None:
    """Refuse a key file others can read, one that cannot be read or decrypted, and one
    that is not the key of ``cert``."""
    _check_private_mode(path)
    key = _load_private_key(path, passphrase)
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if hashlib.sha256(spki).hexdigest() != cert.spki_sha256:
        where = cert.pem_path or cert.der_path or "the certificate"
        raise KeyStoreError(
            f"private key {path} does not match {where} (SHA-256 {cert.fingerprint}): "
            "restore the matching pair from a backup, or replace the key with `kmodlab key rotate`"
        )


# --- the key pair ----------------------------------------------------------------------


@dataclass(frozen=True)
class KeyPair:
    """A key of the store: the private key's path (never its content) and certificates."""

    name: str
    directory: Path
    key_path: Path
    cert: CertInfo
    previous: CertInfo | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "directory": str(self.directory),
            "key_path": str(self.key_path),
            "cert": self.cert.as_dict(),
            "previous": self.previous.as_dict() if self.previous else None,
        }


def _hint(command: str, name: str, root: Path | None) -> str:
    """The `kmodlab key` command line for key NAME in ``root``."""
    option = f" --key-dir {root}" if root is not None and root != store_root() else ""
    return f"`kmodlab key {command} {name}{option}`"


def _store_cert(directory: Path, pem: str, der: str) -> CertInfo:
    """The certificate ``pem`` of the store, checked against its DER copy ``der``."""
    cert = _read_cert(directory / pem)
    der_path = directory / der
    if _read(der_path, "certificate") != cert.public_bytes(serialization.Encoding.DER):
        raise KeyStoreError(
            f"{der_path} is not the certificate of {directory / pem}: write it again "
            f"from it (`openssl x509 -in {directory / pem} -outform DER -out {der_path}`)"
        )
    return _info(cert, directory / pem, der_path)


def _check_current(info: CertInfo, name: str, root: Path | None) -> None:
    now = datetime.now(UTC)
    if info.not_after < now:
        raise KeyStoreError(
            f"the certificate of key {name} expired on {info.not_after:%Y-%m-%d}: "
            f"run {_hint('rotate', name, root)}"
        )
    if info.not_before > now:
        raise KeyStoreError(
            f"the certificate of key {name} is valid only from {info.not_before:%Y-%m-%d %H:%M} "
            "UTC: check this machine's clock"
        )


def _read_pair(
    name: str, directory: Path, root: Path | None, *, current: bool = True, key: bool = True
) -> KeyPair:
    """The key pair in ``directory`` (lock held), checked; ``current``: not expired;
    ``key``: the private key file too (its mode, content, match)."""
    key_path = directory / KEY_FILE
    if not key_path.exists():
        raise KeyStoreError(
            f"no signing key {name!r} in {directory.parent}: run {_hint('create', name, root)}"
        )
    if not (directory / CERT_PEM).exists():
        raise KeyStoreError(
            f"key {name} has a private key but no certificate {directory / CERT_PEM}: "
            "restore it from a backup"
        )
    info = _store_cert(directory, CERT_PEM, CERT_DER)
    if key:
        check_key_file(key_path, info)
    if current:
        _check_current(info, name, root)
    previous = None
    if (directory / PREVIOUS_PEM).exists():
        previous = _store_cert(directory, PREVIOUS_PEM, PREVIOUS_DER)
    return KeyPair(name, directory, key_path, info, previous)


def _existing_dir(name: str, root: Path | None) -> Path:
    directory = key_dir(name, root)
    if not directory.exists():
        raise KeyStoreError(
            f"no signing key {name!r} in {directory.parent}: run {_hint('create', name, root)}"
        )
    _check_dir(directory)
    return directory


def load(name: str = DEFAULT_NAME, root: Path | None = None) -> KeyPair:
    """The key NAME, checked: modes, key matching the certificate, not expired."""
    directory = _existing_dir(name, root)
    with _locked(directory):
        return _read_pair(name, directory, root)


def create(
    name: str = DEFAULT_NAME, *, years: int = 10, bits: int = 4096, root: Path | None = None
) -> tuple[KeyPair, bool]:
    """Create key NAME unless it exists; (the key pair, whether it was created). An
    existing key is never replaced: when it is unusable, the error says what to do."""
    _check_params(years, bits)
    directory = key_dir(name, root)
    _ensure_dir(directory)
    with _locked(directory):
        if (directory / KEY_FILE).exists():
            return _read_pair(name, directory, root), False
        _install(directory, _new_key_files(name, years, bits))
        return _read_pair(name, directory, root), True


def rotate(
    name: str = DEFAULT_NAME, *, years: int = 10, bits: int = 4096, root: Path | None = None
) -> KeyPair:
    """Replace key NAME by a new one: the current certificate becomes the previous one
    (replacing an older previous), its private key is deleted. An expired key rotates."""
    _check_params(years, bits)
    directory = _existing_dir(name, root)
    with _locked(directory):
        # The certificate must be sound; the key is replaced whatever its state (expired,
        # damaged, or readable by others: then rotating is the fix).
        _read_pair(name, directory, root, current=False, key=False)
        old_cert = _read_cert(directory / CERT_PEM)
        files = {
            **_cert_files(old_cert, PREVIOUS_PEM, PREVIOUS_DER),
            **_new_key_files(name, years, bits),
        }
        _install(directory, files)
        return _read_pair(name, directory, root)


def export(name: str, dest: Path, fmt: Literal["der", "pem"], root: Path | None = None) -> Path:
    """Write the certificate of key NAME (never the key) to ``dest`` (a file, or an
    existing directory: ``kmodlab-NAME.der|pem`` in it); the path written."""
    if fmt not in ("der", "pem"):
        raise KeyStoreError(f"unknown format {fmt!r}: choose der or pem")
    directory = _existing_dir(name, root)
    with _locked(directory):
        if not (directory / CERT_PEM).exists():
            raise KeyStoreError(
                f"no certificate for key {name!r} in {directory}: run {_hint('create', name, root)}"
            )
        cert = _read_cert(directory / CERT_PEM)
    encoding = serialization.Encoding.DER if fmt == "der" else serialization.Encoding.PEM
    if dest.is_dir():
        dest = dest / f"kmodlab-{name}.{fmt}"
    try:
        _write_atomic(dest, cert.public_bytes(encoding), CERT_MODE)
    except OSError as exc:
        raise KeyStoreError(f"cannot write {dest}: {exc.strerror}") from None
    return dest


def _new_password() -> str:
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _i in range(PASSWORD_LENGTH))


def mok_password(name: str = DEFAULT_NAME, root: Path | None = None) -> str:
    """The MOK password of key NAME (for `mokutil --import`), made once and kept 0600."""
    directory = key_dir(name, root)
    _ensure_dir(directory)
    path = directory / PASSWORD_FILE
    with _locked(directory):
        if path.exists():
            _check_private_mode(path, "MOK password")
            password = _read(path, "MOK password").decode("ascii", "replace").strip()
            if len(password) == PASSWORD_LENGTH and password.isalnum() and password.isascii():
                return password
            raise KeyStoreError(
                f"{path} does not hold a MOK password ({PASSWORD_LENGTH} letters and digits): "
                "remove it, a new one is made"
            )
        password = _new_password()
        try:
            _write_atomic(path, password.encode() + b"\n", KEY_MODE)
        except OSError as exc:
            raise KeyStoreError(f"cannot write {path}: {exc.strerror}") from None
        return password
