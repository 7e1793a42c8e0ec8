# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A kernel module's appended signature: read it (``read``, ``read_file``) and check it
against a certificate's RSA key (``verify``, ``problem_for_file``) the way the kernel
does before it loads the module under Secure Boot (module.sig_enforce, lockdown).

Runs on the target (as Ansible module_utils), so only the standard library is used: a
minimal DER reader, the CMS SignedData fields the kernel uses, RSA PKCS#1 v1.5 with
``pow``.

The format (Linux ``include/linux/module_signature.h``, ``scripts/sign-file.c``)::

    content || pkcs7 || struct module_signature (12 bytes) || "~Module signature appended~\\n"

    struct module_signature {
        u8 algo, hash, id_type;       /* 0, 0, PKEY_ID_PKCS7 (2) */
        u8 signer_len, key_id_len;    /* 0, 0 */
        u8 __pad[3];                  /* 0 */
        __be32 sig_len;               /* length of pkcs7 */
    };

``pkcs7`` is a DER ContentInfo holding a detached CMS SignedData: no certificates, one
SignerInfo naming the signing certificate by issuer and serial number (``sign-file -k``:
by subjectKeyIdentifier), by default no signed attributes, the RSA PKCS#1 v1.5 signature
over the digest of ``content``. With signed attributes the signature is over their DER
(re-tagged as a SET, as in the message) and their messageDigest is the content's digest.

A compressed module (``.ko.gz``, ``.ko.xz``) holds the signed module: the signature is
in the decompressed data. zstd (``.ko.zst``) has no standard-library decompressor.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import lzma
import struct
import zlib
from dataclasses import dataclass
from typing import NamedTuple

MAGIC = b"~Module signature appended~\n"
TRAILER = struct.Struct(">BBBBB3sI")  # struct module_signature: 12 bytes
PKEY_ID_PKCS7 = 2
ZSTD_UNSUPPORTED = "cannot read zstd-compressed module with the standard library"

OID_DATA = "1.2.840.113549.1.7.1"
OID_SIGNED_DATA = "1.2.840.113549.1.7.2"
OID_CONTENT_TYPE = "1.2.840.113549.1.9.3"
OID_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
OID_RSA_ENCRYPTION = "1.2.840.113549.1.1.1"

DIGESTS = {
    "1.3.14.3.2.26": "sha1",
    "2.16.840.1.101.3.4.2.4": "sha224",
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
}
DIGEST_OIDS = {name: oid for oid, name in DIGESTS.items()}

# RSA signature algorithms a SignerInfo may name: rsaEncryption (any digest), or
# <digest>WithRSAEncryption (which must agree with the SignerInfo's digestAlgorithm).
RSA_SIGNATURES = {
    OID_RSA_ENCRYPTION: None,
    "1.2.840.113549.1.1.5": "sha1",
    "1.2.840.113549.1.1.14": "sha224",
    "1.2.840.113549.1.1.11": "sha256",
    "1.2.840.113549.1.1.12": "sha384",
    "1.2.840.113549.1.1.13": "sha512",
}

# Attribute types of a distinguished name, as RFC 4514 (and OpenSSL) abbreviate them.
NAME_ATTRIBUTES = {
    "2.5.4.3": "CN",
    "2.5.4.4": "SN",
    "2.5.4.5": "serialNumber",
    "2.5.4.6": "C",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.9": "STREET",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "2.5.4.12": "title",
    "2.5.4.42": "GN",
    "0.9.2342.19200300.100.1.1": "UID",
    "0.9.2342.19200300.100.1.25": "DC",
    "1.2.840.113549.1.9.1": "emailAddress",
}
OID_COMMON_NAME = "2.5.4.3"

# DER tags (universal class; constructed ones with bit 0x20).
INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
NULL = 0x05
OID = 0x06
SEQUENCE = 0x30
SET = 0x31
CONTEXT_0 = 0xA0  # [0] constructed
CONTEXT_1 = 0xA1  # [1] constructed
CONTEXT_0_PRIMITIVE = 0x80  # [0] IMPLICIT primitive (SignerIdentifier's subjectKeyIdentifier)
STRING_CODECS = {
    0x0C: "utf-8",  # UTF8String
    0x12: "ascii",  # NumericString
    0x13: "ascii",  # PrintableString
    0x14: "latin-1",  # T61String (as OpenSSL shows it)
    0x16: "ascii",  # IA5String
    0x1A: "ascii",  # VisibleString
    0x1C: "utf-32-be",  # UniversalString
    0x1E: "utf-16-be",  # BMPString
}


class SignatureError(ValueError):
    """The appended signature (or a certificate) is malformed; the message says how."""


class UnsupportedCompression(OSError):
    """The module file is compressed in a way the standard library cannot read (zstd)."""


@dataclass(frozen=True)
class ModuleSignature:
    """What a module's appended signature says.

    ``content_length``: the signed bytes are ``data[:content_length]``. ``issuer``: the
    signing certificate's issuer, RFC 4514 order ("CN=..., O=..."); ``signer``: its CN
    (``modinfo -F signer``); ``serial``: its serial number (magnitude bytes, no leading
    zeros); ``sig_key``: the serial as modinfo shows it (``8F:0A:...``). With a signer
    named by subjectKeyIdentifier (``sign-file -k``), ``issuer``, ``signer`` and
    ``serial`` are empty, and ``subject_key_id`` and ``sig_key`` give the key id.
    ``signed_attrs``: the bytes the signature covers when the SignerInfo has signed
    attributes (their DER, tagged SET), with their ``message_digest``; None without.
    """

    content_length: int
    issuer: str
    signer: str
    serial: bytes
    sig_key: str
    digest: str
    signature: bytes
    signature_algorithm: str = OID_RSA_ENCRYPTION
    subject_key_id: bytes = b""
    signed_attrs: bytes | None = None
    message_digest: bytes | None = None


# ------------------------------------------------------------------ DER


class _Node(NamedTuple):
    """One DER element of ``data``: tag at ``start``, value ``data[vstart:vend]``, the next
    element at ``end``."""

    tag: int
    start: int
    vstart: int
    vend: int
    end: int


def _node(data: bytes, pos: int, limit: int, what: str) -> _Node:
    """The element at ``pos`` (which must end by ``limit``). BER's indefinite length (a
    constructed value closed by 00 00) is accepted too, as the kernel's decoder does."""
    if pos + 2 > limit:
        raise SignatureError(f"{what}: truncated")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise SignatureError(f"{what}: unsupported multi-byte tag")
    first = data[pos + 1]
    vstart = pos + 2
    if first == 0x80:
        if not tag & 0x20:
            raise SignatureError(f"{what}: indefinite length on a primitive value")
        cursor = vstart
        while True:
            if cursor + 2 > limit:
                raise SignatureError(f"{what}: truncated")
            if data[cursor] == 0 and data[cursor + 1] == 0:
                return _Node(tag, pos, vstart, cursor, cursor + 2)
            cursor = _node(data, cursor, limit, what).end
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count > 4 or vstart + count > limit:
            raise SignatureError(f"{what}: bad length")
        length = int.from_bytes(data[vstart : vstart + count], "big")
        vstart += count
    if vstart + length > limit:
        raise SignatureError(f"{what}: truncated")
    return _Node(tag, pos, vstart, vstart + length, vstart + length)


def _expect(node: _Node, tag: int, what: str) -> _Node:
    if node.tag != tag:
        raise SignatureError(f"{what}: expected tag 0x{tag:02x}, found 0x{node.tag:02x}")
    return node


def _children(data: bytes, node: _Node, what: str) -> list[_Node]:
    """The elements inside a constructed ``node``."""
    if not node.tag & 0x20:
        raise SignatureError(f"{what}: not a constructed value")
    items = []
    pos = node.vstart
    while pos < node.vend:
        item = _node(data, pos, node.vend, what)
        items.append(item)
        pos = item.end
    return items


def _value(data: bytes, node: _Node) -> bytes:
    return bytes(data[node.vstart : node.vend])


def _oid(data: bytes, node: _Node, what: str) -> str:
    raw = _value(data, _expect(node, OID, what))
    if not raw or raw[-1] & 0x80:
        raise SignatureError(f"{what}: bad object identifier")
    arcs: list[int] = []
    value = 0
    for byte in raw:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(arc) for arc in [first, arcs[0] - 40 * first, *arcs[1:]])


def _integer_bytes(data: bytes, node: _Node, what: str) -> bytes:
    """An INTEGER's magnitude: its value bytes without leading zeros (as OpenSSL's
    ``BN_bn2bin`` gives a serial number)."""
    raw = _value(data, _expect(node, INTEGER, what))
    if not raw:
        raise SignatureError(f"{what}: empty integer")
    return raw.lstrip(b"\x00")


def _algorithm(data: bytes, node: _Node, what: str) -> str:
    """The OID of an AlgorithmIdentifier SEQUENCE { algorithm, parameters OPTIONAL }."""
    items = _children(data, _expect(node, SEQUENCE, what), what)
    if not items:
        raise SignatureError(f"{what}: empty algorithm identifier")
    return _oid(data, items[0], what)


def _escape(value: str) -> str:
    """An attribute value escaped as RFC 4514 wants it."""
    out = "".join("\\" + c if c in '"+,;<>\\' else c for c in value)
    if out.startswith(("#", " ")):
        out = "\\" + out
    if out.endswith(" ") and len(out) > 1:
        out = out[:-1] + "\\ "
    return out


def _name(data: bytes, node: _Node, what: str) -> tuple[str, str]:
    """A Name (SEQUENCE OF RDN SET OF {type, value}): (RFC 4514 string, its CN)."""
    rdns: list[str] = []
    common_name = ""
    for rdn in _children(data, _expect(node, SEQUENCE, what), what):
        parts: list[str] = []
        for attribute in _children(data, _expect(rdn, SET, what), what):
            items = _children(data, _expect(attribute, SEQUENCE, what), what)
            if len(items) != 2:
                raise SignatureError(f"{what}: bad attribute")
            oid = _oid(data, items[0], what)
            codec = STRING_CODECS.get(items[1].tag)
            raw = _value(data, items[1])
            text = "#" + raw.hex() if codec is None else raw.decode(codec, errors="replace")
            if oid == OID_COMMON_NAME and not common_name:
                common_name = text
            parts.append(f"{NAME_ATTRIBUTES.get(oid, oid)}={_escape(text)}")
        rdns.append("+".join(parts))
    return ", ".join(reversed(rdns)), common_name


def _key_id(raw: bytes) -> str:
    """Bytes as modinfo shows a sig_key: uppercase hex pairs joined by ":"."""
    return ":".join(f"{b:02X}" for b in raw)


# ------------------------------------------------------------------ reading


def _trailer(data: bytes) -> tuple[int, int] | None:
    """(content length, sig_len) from the struct before the magic; None if unsigned."""
    if not data.endswith(MAGIC):
        return None
    end = len(data) - len(MAGIC)
    if end < TRAILER.size:
        raise SignatureError("the signature trailer is truncated")
    algo, hash_, id_type, signer_len, key_id_len, pad, sig_len = TRAILER.unpack_from(
        data, end - TRAILER.size
    )
    if id_type != PKEY_ID_PKCS7:
        raise SignatureError(f"id_type {id_type}, not PKCS#7 ({PKEY_ID_PKCS7})")
    if algo or hash_ or signer_len or key_id_len or pad != b"\x00\x00\x00":
        raise SignatureError("unexpected non-zero fields in struct module_signature")
    # As the kernel's mod_check_sig: some content must remain before the signature.
    if sig_len >= end - TRAILER.size:
        raise SignatureError(f"sig_len {sig_len} is larger than the module")
    return end - TRAILER.size - sig_len, sig_len


def _signed_attributes(data: bytes, node: _Node, what: str) -> tuple[bytes, bytes]:
    """([0] signedAttrs re-tagged as SET, as the signature covers them; messageDigest)."""
    found: dict[str, bytes] = {}
    for attribute in _children(data, node, what):
        items = _children(data, _expect(attribute, SEQUENCE, what), what)
        if len(items) != 2:
            raise SignatureError(f"{what}: bad attribute")
        oid = _oid(data, items[0], what)
        values = _children(data, _expect(items[1], SET, what), what)
        if oid in (OID_CONTENT_TYPE, OID_MESSAGE_DIGEST):
            if len(values) != 1 or oid in found:
                raise SignatureError(f"{what}: attribute {oid} must have one value")
            found[oid] = _value(data, values[0])
            if oid == OID_MESSAGE_DIGEST:
                _expect(values[0], OCTET_STRING, what)
    if OID_CONTENT_TYPE not in found or OID_MESSAGE_DIGEST not in found:
        raise SignatureError(f"{what}: contentType or messageDigest missing")
    # The kernel hashes the attributes' own encoding with the tag byte replaced by SET.
    covered = bytes([SET]) + bytes(data[node.start + 1 : node.end])
    return covered, found[OID_MESSAGE_DIGEST]


def read(data: bytes) -> ModuleSignature | None:
    """The signature appended to a module's (decompressed) bytes; None when there is
    none. Raises SignatureError when one is appended but malformed."""
    trailer = _trailer(data)
    if trailer is None:
        return None
    start, sig_len = trailer
    end = start + sig_len
    what = "PKCS#7"
    info = _node(data, start, end, what)
    if info.end != end:
        raise SignatureError(f"{what}: {end - info.end} bytes after the message")
    content_info = _children(data, _expect(info, SEQUENCE, what), what)
    if len(content_info) != 2 or _oid(data, content_info[0], what) != OID_SIGNED_DATA:
        raise SignatureError(f"{what}: not a SignedData ContentInfo")
    explicit = _children(data, _expect(content_info[1], CONTEXT_0, what), what)
    if len(explicit) != 1:
        raise SignatureError(f"{what}: bad SignedData wrapper")
    what = "SignedData"
    items = _children(data, _expect(explicit[0], SEQUENCE, what), what)
    if len(items) < 4:
        raise SignatureError(f"{what}: too few fields")
    _expect(items[0], INTEGER, f"{what} version")
    _expect(items[1], SET, f"{what} digestAlgorithms")
    encap = _children(data, _expect(items[2], SEQUENCE, what), f"{what} encapContentInfo")
    if not encap or _oid(data, encap[0], f"{what} eContentType") != OID_DATA:
        raise SignatureError(f"{what}: content type is not data")
    if len(encap) > 1:
        raise SignatureError(f"{what}: not a detached signature (content included)")
    rest = items[3:]
    while rest and rest[0].tag in (CONTEXT_0, CONTEXT_1):  # certificates, crls
        rest = rest[1:]
    if len(rest) != 1:
        raise SignatureError(f"{what}: signerInfos missing or followed by extra fields")
    signer_infos = _children(data, _expect(rest[0], SET, what), f"{what} signerInfos")
    if not signer_infos:
        raise SignatureError(f"{what}: no SignerInfo")
    # sign-file writes one SignerInfo; with more, the first is the one reported/checked.
    what = "SignerInfo"
    fields = _children(data, _expect(signer_infos[0], SEQUENCE, what), what)
    if len(fields) < 5:
        raise SignatureError(f"{what}: too few fields")
    _expect(fields[0], INTEGER, f"{what} version")
    sid = fields[1]
    issuer = signer = ""
    serial = subject_key_id = b""
    if sid.tag == SEQUENCE:
        issuer_and_serial = _children(data, sid, f"{what} issuerAndSerialNumber")
        if len(issuer_and_serial) != 2:
            raise SignatureError(f"{what}: bad issuerAndSerialNumber")
        issuer, signer = _name(data, issuer_and_serial[0], f"{what} issuer")
        serial = _integer_bytes(data, issuer_and_serial[1], f"{what} serialNumber")
        sig_key = _key_id(serial)
    elif sid.tag == CONTEXT_0_PRIMITIVE:
        subject_key_id = _value(data, sid)
        sig_key = _key_id(subject_key_id)
    else:
        raise SignatureError(f"{what}: unknown signer identifier (tag 0x{sid.tag:02x})")
    digest_oid = _algorithm(data, fields[2], f"{what} digestAlgorithm")
    rest = fields[3:]
    signed_attrs = message_digest = None
    if rest[0].tag == CONTEXT_0:
        signed_attrs, message_digest = _signed_attributes(data, rest[0], f"{what} signedAttrs")
        rest = rest[1:]
    if len(rest) < 2:
        raise SignatureError(f"{what}: signatureAlgorithm or signature missing")
    signature_algorithm = _algorithm(data, rest[0], f"{what} signatureAlgorithm")
    signature = _value(data, _expect(rest[1], OCTET_STRING, f"{what} signature"))
    return ModuleSignature(
        content_length=start,
        issuer=issuer,
        signer=signer,
        serial=serial,
        sig_key=sig_key,
        digest=DIGESTS.get(digest_oid, digest_oid),
        signature=signature,
        signature_algorithm=signature_algorithm,
        subject_key_id=subject_key_id,
        signed_attrs=signed_attrs,
        message_digest=message_digest,
    )


def decompress(path: str, raw: bytes) -> bytes:
    """A module file's bytes, decompressed according to its name's suffix."""
    try:
        if path.endswith(".gz"):
            return gzip.decompress(raw)
        if path.endswith(".xz"):
            return lzma.decompress(raw)
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as err:
        raise OSError(f"bad compressed data: {err}") from err
    if path.endswith(".zst"):
        raise UnsupportedCompression(ZSTD_UNSUPPORTED)
    return raw


def read_file(path: str) -> tuple[bytes, ModuleSignature | None]:
    """(the module's bytes, decompressed by suffix; its signature or None). Raises
    OSError (UnsupportedCompression for ``.zst``) and SignatureError."""
    with open(path, "rb") as handle:
        raw = handle.read()
    data = decompress(path, raw)
    return data, read(data)


# ------------------------------------------------------------------ certificates


def public_numbers_from_der(cert_der: bytes) -> tuple[int, int, bytes]:
    """(modulus n, public exponent e, serial number magnitude bytes) of an X.509
    certificate with an RSA key (DER; PEM is accepted too). Raises SignatureError."""
    if cert_der.lstrip().startswith(b"-----BEGIN"):
        lines = cert_der.decode("ascii", errors="replace").split("-----")
        if len(lines) < 3:
            raise SignatureError("certificate: bad PEM")
        try:
            cert_der = base64.b64decode("".join(lines[2].split()), validate=True)
        except ValueError as err:
            raise SignatureError(f"certificate: bad PEM: {err}") from err
    what = "certificate"
    top = _node(cert_der, 0, len(cert_der), what)
    certificate = _children(cert_der, _expect(top, SEQUENCE, what), what)
    if not certificate:
        raise SignatureError(f"{what}: empty")
    tbs = _children(cert_der, _expect(certificate[0], SEQUENCE, what), f"{what} tbsCertificate")
    if tbs and tbs[0].tag == CONTEXT_0:  # [0] EXPLICIT version
        tbs = tbs[1:]
    if len(tbs) < 6:
        raise SignatureError(f"{what}: too few tbsCertificate fields")
    serial = _integer_bytes(cert_der, tbs[0], f"{what} serialNumber")
    what = "certificate subjectPublicKeyInfo"
    spki = _children(cert_der, _expect(tbs[5], SEQUENCE, what), what)
    if len(spki) != 2:
        raise SignatureError(f"{what}: bad structure")
    algorithm = _algorithm(cert_der, spki[0], what)
    if algorithm != OID_RSA_ENCRYPTION:
        raise SignatureError(f"{what}: not an RSA key (algorithm {algorithm})")
    bits = _value(cert_der, _expect(spki[1], BIT_STRING, what))
    if not bits or bits[0] != 0:
        raise SignatureError(f"{what}: bad bit string")
    key = _node(bits, 1, len(bits), "RSAPublicKey")
    numbers = _children(bits, _expect(key, SEQUENCE, "RSAPublicKey"), "RSAPublicKey")
    if len(numbers) != 2:
        raise SignatureError("RSAPublicKey: bad structure")
    n = int.from_bytes(_integer_bytes(bits, numbers[0], "RSAPublicKey modulus"), "big")
    e = int.from_bytes(_integer_bytes(bits, numbers[1], "RSAPublicKey exponent"), "big")
    if n <= 0 or e <= 0:
        raise SignatureError("RSAPublicKey: bad numbers")
    return n, e, serial


# ------------------------------------------------------------------ verifying


def _digest_info(digest: str, value: bytes) -> bytes:
    """DER DigestInfo SEQUENCE { AlgorithmIdentifier { oid, NULL }, OCTET STRING }."""
    arcs = [int(arc) for arc in DIGEST_OIDS[digest].split(".")]
    body = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    algorithm = bytes([OID, len(body)]) + bytes(body) + bytes([NULL, 0])
    algorithm = bytes([SEQUENCE, len(algorithm)]) + algorithm
    octets = bytes([OCTET_STRING, len(value)]) + value
    return bytes([SEQUENCE, len(algorithm) + len(octets)]) + algorithm + octets


def _describe(sig: ModuleSignature) -> str:
    if sig.signer:
        return f"signer {sig.signer}, key id {sig.sig_key}"
    if sig.issuer:
        return f"issuer {sig.issuer}, key id {sig.sig_key}"
    return f"key id {sig.sig_key}"


def check(data: bytes, sig: ModuleSignature, n: int, e: int, serial: bytes) -> str | None:
    """None when ``sig`` (read from ``data``) is by the certificate (serial ``serial``,
    RSA key ``n``, ``e``) and verifies; else the problem (see ``verify``)."""
    if (sig.serial or not sig.subject_key_id) and sig.serial != serial.lstrip(b"\x00"):
        return f"signed by another key ({_describe(sig)})"
    # A signer named by subjectKeyIdentifier (sign-file -k): the RSA check below tells
    # whether the key is the certificate's (the kernel finds the certificate by the
    # subjectKeyIdentifier extension, which sign-file took from it).
    if sig.digest not in DIGEST_OIDS:
        return f"unsupported signature: digest algorithm {sig.digest}"
    if sig.signature_algorithm not in RSA_SIGNATURES:
        return f"unsupported signature: algorithm {sig.signature_algorithm} is not RSA"
    implied = RSA_SIGNATURES[sig.signature_algorithm]
    if implied is not None and implied != sig.digest:
        return f"malformed signature: {implied} signature algorithm with a {sig.digest} digest"
    content_digest = hashlib.new(sig.digest, data[: sig.content_length]).digest()
    if sig.signed_attrs is None:
        signed_digest = content_digest
    else:
        signed_digest = hashlib.new(sig.digest, sig.signed_attrs).digest()
    size = (n.bit_length() + 7) // 8
    expected_info = _digest_info(sig.digest, signed_digest)
    if size < len(expected_info) + 11:
        return "malformed signature: the certificate's key is too small for the digest"
    padding = b"\x00\x01" + b"\xff" * (size - 3 - len(expected_info)) + b"\x00"
    not_ours = (
        f"signed by another key ({_describe(sig)})"
        if sig.subject_key_id
        else f"the signature was not made with the certificate's key ({_describe(sig)})"
    )
    signature = int.from_bytes(sig.signature, "big")
    if len(sig.signature) != size or signature >= n:
        return not_ours
    encoded = pow(signature, e, n).to_bytes(size, "big")
    if hmac.compare_digest(encoded, padding + expected_info):
        if sig.message_digest is None or hmac.compare_digest(sig.message_digest, content_digest):
            return None
        return "the signature does not match the module's content (altered after signing?)"
    # Which part differs: only the digest (the key is right, the bytes are not) or more.
    head = len(padding) + len(expected_info) - len(signed_digest)
    if hmac.compare_digest(encoded[:head], (padding + expected_info)[:head]):
        return "the signature does not match the module's content (altered after signing?)"
    return not_ours


def verify(data: bytes, n: int, e: int, serial: bytes) -> str | None:
    """None when the module ``data`` (decompressed) is signed by the certificate with
    serial number ``serial`` and RSA public key ``n``, ``e``, and the signature verifies
    over its content; else a short problem: "not signed", "signed by another key (signer
    X, key id Y)", "the signature does not match the module's content (altered after
    signing?)", "the signature was not made with the certificate's key (...)" (same
    serial, another key), "malformed signature: ...", "unsupported signature: ...".
    A signer named by subjectKeyIdentifier (``sign-file -k``; modinfo shows no signer
    then) is the certificate when the signature verifies with its key."""
    try:
        sig = read(data)
    except SignatureError as err:
        return f"malformed signature: {err}"
    if sig is None:
        return "not signed"
    return check(data, sig, n, e, serial)


def problem_for_file(path: str, n: int, e: int, serial: bytes) -> str | None:
    """``verify`` for the module file ``path`` (decompressed by suffix); a file that
    cannot be read gives "cannot read PATH: ..."."""
    try:
        data, sig = read_file(path)
    except UnsupportedCompression:
        return f"{ZSTD_UNSUPPORTED}: {path}"
    except OSError as err:
        return f"cannot read {path}: {err.strerror or err}"
    except SignatureError as err:
        return f"malformed signature: {err}"
    if sig is None:
        return "not signed"
    return check(data, sig, n, e, serial)
