"""module_utils/modsig: a kernel module's appended signature, read and checked against
the project certificate with the standard library only.

Modules are signed here as scripts/sign-file signs them (detached CMS SignedData, no
certificates, no signed attributes, signer by issuer and serial), with cryptography's
PKCS#7 builder; and, where linux-kbuild is installed, with the real sign-file, whose
result modinfo must describe as modsig does.
"""

from __future__ import annotations

import datetime
import glob
import gzip
import lzma
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from ansible_collections.kmodlab.lab.plugins.module_utils import modsig
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HASHES = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}
SIGN_FILES = sorted(glob.glob("/usr/lib/linux-kbuild-*/scripts/sign-file"))
TOP_BIT_SERIAL = int.from_bytes(b"\x8f" + bytes(range(1, 16)), "big")


class Signer:
    def __init__(self, common_name: str, serial: int) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kmodlab"),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        numbers = self.key.public_key().public_numbers()
        self.n, self.e = numbers.n, numbers.e
        self.serial = serial.to_bytes((serial.bit_length() + 7) // 8, "big")

    def pkcs7(self, body: bytes, digest: str = "sha256", attributes: bool = False) -> bytes:
        options = [
            pkcs7.PKCS7Options.DetachedSignature,
            pkcs7.PKCS7Options.NoCerts,
            pkcs7.PKCS7Options.Binary,
        ]
        if not attributes:
            options.append(pkcs7.PKCS7Options.NoAttributes)
        return (
            pkcs7.PKCS7SignatureBuilder()
            .set_data(body)
            .add_signer(self.cert, self.key, HASHES[digest]())
            .sign(Encoding.DER, options)
        )

    def sign(self, body: bytes, digest: str = "sha256", attributes: bool = False) -> bytes:
        return append(body, self.pkcs7(body, digest, attributes))


def append(body: bytes, pkcs7_der: bytes, sig_len: int | None = None) -> bytes:
    """body || pkcs7 || struct module_signature || magic, as sign-file writes it."""
    length = len(pkcs7_der) if sig_len is None else sig_len
    trailer = struct.pack(">BBBBB3sI", 0, 0, 2, 0, 0, b"\0\0\0", length)
    return body + pkcs7_der + trailer + modsig.MAGIC


def key_id(serial: int) -> str:
    raw = serial.to_bytes((serial.bit_length() + 7) // 8, "big")
    return ":".join(f"{b:02X}" for b in raw)


@pytest.fixture(scope="module")
def project() -> Signer:
    return Signer("kmodlab module signing", TOP_BIT_SERIAL)


@pytest.fixture(scope="module")
def other() -> Signer:
    return Signer("someone else", x509.random_serial_number())


@pytest.fixture(scope="module")
def body() -> bytes:
    return b"\x7fELF" + os.urandom(20000)


def check(data: bytes, signer: Signer) -> str | None:
    return modsig.verify(data, signer.n, signer.e, signer.serial)


# ------------------------------------------------------------------ reading


@pytest.mark.parametrize("digest", sorted(HASHES))
def test_signed_module_reads_and_verifies(project, body, digest):
    data = project.sign(body, digest)
    sig = modsig.read(data)
    assert sig is not None
    assert sig.content_length == len(body)
    assert sig.signer == "kmodlab module signing"
    assert sig.issuer == "CN=kmodlab module signing, O=kmodlab, C=DE"
    assert sig.serial == project.serial
    assert sig.sig_key == key_id(TOP_BIT_SERIAL)
    assert sig.digest == digest
    assert len(sig.signature) == 256
    assert sig.signed_attrs is None
    assert check(data, project) is None


def test_serial_with_the_top_bit_set_has_no_leading_zero(project, body):
    # DER encodes it with a leading 00 byte (else it would be negative); modinfo does not
    # show that byte.
    assert project.cert.serial_number >> 127 == 1
    sig = modsig.read(project.sign(body))
    assert sig is not None
    assert sig.serial[0] == 0x8F
    assert sig.sig_key.startswith("8F:01:02:")
    assert len(sig.sig_key.split(":")) == 16


def test_padded_serial_from_the_controller_still_matches(project, body):
    data = project.sign(body)
    assert modsig.verify(data, project.n, project.e, b"\x00" + project.serial) is None


def test_unsigned_module(project, body):
    assert modsig.read(body) is None
    assert check(body, project) == "not signed"
    assert modsig.read(b"") is None


# ------------------------------------------------------------------ problems


def test_signed_by_another_key(project, other, body):
    problem = check(other.sign(body), project)
    assert problem == (
        f"signed by another key (signer someone else, key id {key_id(other.cert.serial_number)})"
    )


def test_same_serial_but_another_key(project, body):
    impostor = Signer("kmodlab module signing", TOP_BIT_SERIAL)
    problem = check(impostor.sign(body), project)
    assert problem is not None
    assert problem.startswith("the signature was not made with the certificate's key")


def test_altered_content(project, body):
    data = bytearray(project.sign(body))
    data[1234] ^= 0x01
    assert check(bytes(data), project) == (
        "the signature does not match the module's content (altered after signing?)"
    )


def test_truncated_trailer(project, body):
    with pytest.raises(modsig.SignatureError, match="truncated"):
        modsig.read(b"\0\0\2" + modsig.MAGIC)
    assert check(b"\0\0\2" + modsig.MAGIC, project).startswith("malformed signature: ")


def test_sig_len_larger_than_the_module(project, body):
    pkcs7_der = project.pkcs7(body)
    with pytest.raises(modsig.SignatureError, match="sig_len"):
        modsig.read(append(body, pkcs7_der, sig_len=len(body) + len(pkcs7_der) + 1))


def test_sig_len_not_the_message_length(project, body):
    pkcs7_der = project.pkcs7(body)
    for wrong in (len(pkcs7_der) - 1, len(pkcs7_der) + 1):
        with pytest.raises(modsig.SignatureError):
            modsig.read(append(body, pkcs7_der, sig_len=wrong))
        problem = check(append(body, pkcs7_der, sig_len=wrong), project)
        assert problem.startswith("malformed signature: ")


def test_truncated_pkcs7(project, body):
    pkcs7_der = project.pkcs7(body)[:-10]
    with pytest.raises(modsig.SignatureError, match="truncated"):
        modsig.read(append(body, pkcs7_der))


def test_not_pkcs7_id_type(project, body):
    pkcs7_der = project.pkcs7(body)
    trailer = struct.pack(">BBBBB3sI", 0, 0, 1, 0, 0, b"\0\0\0", len(pkcs7_der))
    with pytest.raises(modsig.SignatureError, match="PKCS#7"):
        modsig.read(body + pkcs7_der + trailer + modsig.MAGIC)


def test_garbage_instead_of_pkcs7(project, body):
    with pytest.raises(modsig.SignatureError):
        modsig.read(append(body, b"\x30\x03\x02\x01\x01"))


# ------------------------------------------------------------------ signed attributes


def test_signed_attributes(project, body):
    data = project.sign(body, attributes=True)
    sig = modsig.read(data)
    assert sig is not None
    assert sig.signed_attrs is not None and sig.signed_attrs[0] == 0x31
    assert sig.message_digest is not None and len(sig.message_digest) == 32
    assert check(data, project) is None


def test_signed_attributes_with_a_wrong_message_digest(project, body):
    # The signature over the attributes is right; their messageDigest is another body's.
    pkcs7_der = project.pkcs7(b"another body", attributes=True)
    assert check(append(body, pkcs7_der), project) == (
        "the signature does not match the module's content (altered after signing?)"
    )


# ------------------------------------------------------------------ files


@pytest.mark.parametrize(
    ("suffix", "compress"),
    [("", lambda b: b), (".gz", gzip.compress), (".xz", lzma.compress)],
)
def test_read_file(project, body, tmp_path, suffix, compress):
    data = project.sign(body)
    path = tmp_path / f"m.ko{suffix}"
    path.write_bytes(compress(data))
    read_data, sig = modsig.read_file(str(path))
    assert read_data == data
    assert sig is not None and sig.signer == "kmodlab module signing"
    assert modsig.problem_for_file(str(path), project.n, project.e, project.serial) is None


def test_problem_for_file(project, other, body, tmp_path):
    def problem(path: Path) -> str | None:
        return modsig.problem_for_file(str(path), project.n, project.e, project.serial)

    (tmp_path / "other.ko.xz").write_bytes(lzma.compress(other.sign(body)))
    assert problem(tmp_path / "other.ko.xz").startswith("signed by another key")
    (tmp_path / "plain.ko").write_bytes(body)
    assert problem(tmp_path / "plain.ko") == "not signed"
    assert problem(tmp_path / "missing.ko") == (
        f"cannot read {tmp_path / 'missing.ko'}: No such file or directory"
    )
    (tmp_path / "broken.ko.gz").write_bytes(gzip.compress(body)[:-20])
    assert problem(tmp_path / "broken.ko.gz").startswith(f"cannot read {tmp_path}/broken.ko.gz")
    (tmp_path / "m.ko.zst").write_bytes(b"\x28\xb5\x2f\xfd")
    assert problem(tmp_path / "m.ko.zst") == (
        f"cannot read zstd-compressed module with the standard library: {tmp_path}/m.ko.zst"
    )
    with pytest.raises(modsig.UnsupportedCompression):
        modsig.read_file(str(tmp_path / "m.ko.zst"))
    bad = append(body, b"\x30\x03\x02\x01\x01")
    (tmp_path / "bad.ko").write_bytes(bad)
    assert problem(tmp_path / "bad.ko").startswith("malformed signature: ")


# ------------------------------------------------------------------ certificates


def test_public_numbers_from_der(project, other):
    for signer in (project, other):
        der = signer.cert.public_bytes(Encoding.DER)
        assert modsig.public_numbers_from_der(der) == (signer.n, signer.e, signer.serial)
        pem = signer.cert.public_bytes(Encoding.PEM)
        assert modsig.public_numbers_from_der(pem) == (signer.n, signer.e, signer.serial)


def test_public_numbers_from_a_non_rsa_certificate():
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ec")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(modsig.SignatureError, match="not an RSA key"):
        modsig.public_numbers_from_der(cert.public_bytes(Encoding.DER))
    with pytest.raises(modsig.SignatureError):
        modsig.public_numbers_from_der(b"\x30\x82\x01")


# ------------------------------------------------------------------ the real sign-file


@pytest.mark.skipif(
    not (SIGN_FILES and shutil.which("gcc") and shutil.which("modinfo", path="/usr/sbin:/sbin")),
    reason="needs scripts/sign-file of linux-kbuild-* (apt-get install linux-kbuild-6.1), "
    "gcc and modinfo (kmod)",
)
@pytest.mark.parametrize("digest", ["sha256", "sha512"])
def test_real_sign_file(project, other, tmp_path, digest):
    key = tmp_path / "key.pem"
    key.write_bytes(
        project.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert = tmp_path / "cert.der"
    cert.write_bytes(project.cert.public_bytes(Encoding.DER))
    # A relocatable ELF object with a .modinfo section: enough for modinfo.
    source = tmp_path / "m.c"
    source.write_text(
        'const char info[] __attribute__((section(".modinfo"), used)) = "license=GPL";\n'
    )
    module = tmp_path / "m.ko"
    subprocess.run(["gcc", "-c", str(source), "-o", str(module)], check=True)
    unsigned = module.read_bytes()
    subprocess.run([SIGN_FILES[-1], digest, str(key), str(cert), str(module)], check=True)

    data, sig = modsig.read_file(str(module))
    assert sig is not None
    assert data[: sig.content_length] == unsigned
    assert sig.signed_attrs is None
    modinfo = shutil.which("modinfo", path="/usr/sbin:/sbin")
    assert modinfo is not None

    def field(name: str) -> str:
        return subprocess.run(
            [modinfo, "-F", name, str(module)], check=True, capture_output=True, text=True
        ).stdout.strip()

    assert (sig.signer, sig.sig_key, sig.digest) == (
        field("signer"),
        field("sig_key"),
        field("sig_hashalgo"),
    )
    assert sig.sig_key == key_id(TOP_BIT_SERIAL)
    n, e, serial = modsig.public_numbers_from_der(cert.read_bytes())
    assert modsig.problem_for_file(str(module), n, e, serial) is None
    assert check(data, other).startswith("signed by another key (signer kmodlab module signing")

    altered = bytearray(data)
    altered[100] ^= 0xFF
    assert check(bytes(altered), project).startswith("the signature does not match")


@pytest.mark.skipif(
    not SIGN_FILES,
    reason="needs scripts/sign-file of linux-kbuild-* (apt-get install linux-kbuild-6.1)",
)
def test_real_sign_file_with_key_identifier(project, other, body, tmp_path):
    """sign-file -k names the signer by the certificate's subjectKeyIdentifier."""
    key = tmp_path / "key.pem"
    key.write_bytes(
        project.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert = tmp_path / "cert.pem"
    cert.write_bytes(project.cert.public_bytes(Encoding.PEM))
    module = tmp_path / "m.ko"
    module.write_bytes(body)
    subprocess.run([SIGN_FILES[-1], "-k", "sha256", str(key), str(cert), str(module)], check=True)

    data, sig = modsig.read_file(str(module))
    assert sig is not None
    skid = project.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert sig.subject_key_id == skid.digest
    assert (sig.serial, sig.signer) == (b"", "")
    assert sig.sig_key == ":".join(f"{b:02X}" for b in skid.digest)
    assert check(data, project) is None
    assert check(data, other) == f"signed by another key (key id {sig.sig_key})"
    altered = bytearray(data)
    altered[100] ^= 0xFF
    assert check(bytes(altered), project).startswith("the signature does not match")
