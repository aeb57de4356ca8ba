"""The FIT-Connect JOSE profile, built directly on ``cryptography`` primitives.

Only what FIT-Connect uses is implemented, so algorithm pinning is structural rather than a
configuration option:

* JWE compact serialisation with ``alg=RSA-OAEP-256`` and ``enc=A256GCM`` (RFC 7516/7518), optional
  legacy ``zip=DEF`` (raw DEFLATE) on receipt and, for legacy-sender tests, on sending;
* JWS compact serialisation with ``alg=PS512`` (RSASSA-PSS, SHA-512, MGF1-SHA-512, salt 64 bytes).

Besides the usual one-shot functions there is a streaming decryptor (:class:`JWEStreamDecryptor`)
and a streaming encryptor (:func:`encrypt_jwe_stream`) whose memory use does not depend on the size
of the payload, for attachments of several hundred MB. See ``docs/fitconnect-crypto.md``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import pybase64
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

JWE_ALG = "RSA-OAEP-256"
JWE_ENC = "A256GCM"
JWS_ALG = "PS512"
ZIP_DEFLATE = "DEF"

CEK_BYTES = 32  # A256GCM
IV_BYTES = 12  # 96-bit GCM nonce, RFC 7518 §5.3
TAG_BYTES = 16  # 128-bit GCM tag
PS512_SALT_BYTES = 64  # RFC 7518 §3.5: salt length equals the hash output size

DEFAULT_MAX_PLAINTEXT = 64 << 20

# Bounds for the small segments; anything larger is hostile or broken and is refused early.
MAX_HEADER_CHARS = 16 * 1024
MAX_ENCRYPTED_KEY_CHARS = 2 * 1024  # RSA-8192 is 1366 chars; FIT-Connect uses RSA-4096 (683)
MAX_SMALL_SEGMENT_CHARS = 64  # iv (16 chars) and tag (22 chars)
MAX_JWS_CHARS = 1 << 20

# Streaming works in slices of this many base64 characters (a multiple of 4), so the memory used per
# step is bounded no matter how large the chunks are that the caller feeds.
STREAM_SLICE_CHARS = 128 * 1024
INFLATE_STEP = 1 << 20

_B64URL_RE = re.compile(rb"[A-Za-z0-9_-]*")
_B64URL_TO_STD = bytes.maketrans(b"-_", b"+/")
_STD_TO_B64URL = bytes.maketrans(b"+/", b"-_")
_B64URL_INDEX = {c: i for i, c in enumerate(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")}

_OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=PS512_SALT_BYTES)


# --------------------------------------------------------------------------------------------------
# Errors


class JoseError(Exception):
    """A JOSE object was refused. ``code`` is a stable machine-readable reason (see the docs)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class JWEFormatError(JoseError):
    """The JWE is not a well-formed compact serialisation of the FIT-Connect profile."""


class UnsupportedAlgorithm(JoseError):
    """``alg``/``enc``/``zip`` (or JWS ``alg``) is outside the FIT-Connect profile."""


class DecryptionError(JoseError):
    """No configured key could unwrap the content key, or the GCM authentication tag is wrong."""


class SignatureError(JoseError):
    """A JWS signature does not verify with the given key."""


class PlaintextTooLarge(JoseError):
    """The (inflated) plaintext exceeds the configured bound."""


# --------------------------------------------------------------------------------------------------
# base64url


def b64url_encode(data: bytes) -> str:
    """base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode_bytes(raw: bytes, what: str) -> bytes:
    stripped = raw.rstrip(b"=")
    pad = len(raw) - len(stripped)
    n = len(stripped)
    if _B64URL_RE.fullmatch(stripped) is None:
        raise JoseError("base64url", f"{what}: characters outside the base64url alphabet")
    if n % 4 == 1:
        raise JoseError("base64url", f"{what}: impossible length")
    if pad and (pad > 2 or (n + pad) % 4 != 0):
        raise JoseError("base64url", f"{what}: wrong padding")
    # Non-canonical encodings (unused low bits set) would let two strings name the same bytes.
    if n % 4 and _B64URL_INDEX[stripped[-1]] & (0x0F if n % 4 == 2 else 0x03):
        raise JoseError("base64url", f"{what}: non-canonical encoding")
    padded = stripped.translate(_B64URL_TO_STD) + b"=" * (-n % 4)
    try:
        return binascii.a2b_base64(padded, strict_mode=True)
    except binascii.Error as exc:  # pragma: no cover - the checks above catch every case we know
        raise JoseError("base64url", f"{what}: {exc}") from None


def b64url_decode(s: str, *, what: str = "value") -> bytes:
    """Strict base64url decoding: URL-safe alphabet only, padding optional but correct if present."""
    try:
        raw = s.encode("ascii")
    except (UnicodeEncodeError, AttributeError):
        raise JoseError("base64url", f"{what}: not an ASCII string") from None
    return _b64url_decode_bytes(raw, what)


def _json_object(raw: bytes, code: str, what: str) -> dict[str, Any]:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ValueError(f"duplicate member {key!r}")
            out[key] = value
        return out

    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise JoseError(code, f"{what} is not valid UTF-8 JSON ({type(exc).__name__})") from None
    if not isinstance(value, dict):
        raise JoseError(code, f"{what} is not a JSON object")
    return value


def _compact_json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def thumbprint_of(key: RSAPublicKey) -> str:
    """RFC 7638 JWK thumbprint (SHA-256) of an RSA public key."""
    numbers = key.public_numbers()
    n = b64url_encode(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big"))
    e = b64url_encode(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big"))
    canonical = json.dumps({"e": e, "kty": "RSA", "n": n}, separators=(",", ":"), sort_keys=True)
    return b64url_encode(hashlib.sha256(canonical.encode("ascii")).digest())


# --------------------------------------------------------------------------------------------------
# JWE: header checks shared by the one-shot and the streaming path


def _check_jwe_header(header: dict[str, Any]) -> None:
    alg = header.get("alg")
    enc = header.get("enc")
    if alg is None or enc is None:
        raise JWEFormatError("jwe-header", "protected header lacks alg or enc")
    if alg != JWE_ALG:
        raise UnsupportedAlgorithm("jwe-alg", f"alg {alg!r} is not {JWE_ALG}")
    if enc != JWE_ENC:
        raise UnsupportedAlgorithm("jwe-enc", f"enc {enc!r} is not {JWE_ENC}")
    if "crit" in header:
        raise UnsupportedAlgorithm("jwe-crit", "critical header extensions are not supported")
    if "zip" in header and header["zip"] != ZIP_DEFLATE:
        raise UnsupportedAlgorithm("jwe-zip", f"zip {header['zip']!r} is not {ZIP_DEFLATE}")
    for name in ("kid", "cty", "typ"):
        if name in header and not isinstance(header[name], str):
            raise JWEFormatError("jwe-header", f"header member {name} is not a string")


def _parse_jwe_header(segment: bytes) -> dict[str, Any]:
    if len(segment) > MAX_HEADER_CHARS:
        raise JWEFormatError("jwe-header", "protected header is too large")
    try:
        raw = _b64url_decode_bytes(segment, "protected header")
    except JoseError as exc:
        raise JWEFormatError("jwe-header", exc.message) from None
    try:
        header = _json_object(raw, "jwe-header", "protected header")
    except JoseError as exc:
        raise JWEFormatError(exc.code, exc.message) from None
    _check_jwe_header(header)
    return header


def _decode_segment(segment: bytes, code: str, what: str, size: int | None = None) -> bytes:
    try:
        value = _b64url_decode_bytes(segment, what)
    except JoseError as exc:
        raise JWEFormatError(code, exc.message) from None
    if size is not None and len(value) != size:
        raise JWEFormatError(code, f"{what} has {len(value)} bytes, expected {size}")
    return value


@dataclass
class JWEParts:
    header: dict[str, Any]
    protected_b64: str
    encrypted_key: bytes
    iv: bytes
    ciphertext: bytes
    tag: bytes
    tag_b64: str


def parse_jwe(compact: str) -> JWEParts:
    """Split and check a compact JWE against the FIT-Connect profile (no decryption)."""
    try:
        raw = compact.encode("ascii")
    except (UnicodeEncodeError, AttributeError):
        raise JWEFormatError("jwe-segments", "JWE is not an ASCII string") from None
    segments = raw.split(b".")
    if len(segments) != 5:
        raise JWEFormatError("jwe-segments", f"compact JWE has {len(segments)} segments, expected 5")
    header = _parse_jwe_header(segments[0])
    if len(segments[1]) > MAX_ENCRYPTED_KEY_CHARS:
        raise JWEFormatError("jwe-encrypted-key", "encrypted key is too large")
    encrypted_key = _decode_segment(segments[1], "jwe-encrypted-key", "encrypted key")
    if not encrypted_key:
        raise JWEFormatError("jwe-encrypted-key", "encrypted key is empty")
    iv = _decode_segment(segments[2], "jwe-iv", "initialisation vector", IV_BYTES)
    ciphertext = _decode_segment(segments[3], "jwe-ciphertext", "ciphertext")
    tag = _decode_segment(segments[4], "jwe-tag", "authentication tag", TAG_BYTES)
    return JWEParts(
        header=header,
        protected_b64=segments[0].decode("ascii"),
        encrypted_key=encrypted_key,
        iv=iv,
        ciphertext=ciphertext,
        tag=tag,
        tag_b64=segments[4].decode("ascii"),
    )


def auth_tag(compact: str) -> str:
    """The authentication tag segment (5th) exactly as sent; what the submit-submission SET records."""
    if compact.count(".") != 4:
        raise JWEFormatError("jwe-segments", "compact JWE must have 5 segments")
    return compact.rsplit(".", 1)[1]


# --------------------------------------------------------------------------------------------------
# JWE: encryption


def _jwe_header(kid: str | None, cty: str | None, zip_def: bool) -> dict[str, Any]:
    header: dict[str, Any] = {"alg": JWE_ALG, "enc": JWE_ENC}
    if kid is not None:
        header["kid"] = kid
    if cty is not None:
        header["cty"] = cty
    if zip_def:
        header["zip"] = ZIP_DEFLATE
    return header


def _deflate_raw(data: bytes) -> bytes:
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return comp.compress(data) + comp.flush()


def encrypt_jwe(
    plaintext: bytes, recipient: RSAPublicKey, *, kid: str | None, cty: str | None, zip_def: bool = False
) -> str:
    """Compact JWE RSA-OAEP-256 + A256GCM; the AAD is the ASCII of the protected header segment."""
    protected_b64 = b64url_encode(_compact_json(_jwe_header(kid, cty, zip_def)))
    cek = AESGCM.generate_key(bit_length=256)
    iv = os.urandom(IV_BYTES)
    body = _deflate_raw(plaintext) if zip_def else plaintext
    sealed = AESGCM(cek).encrypt(iv, body, protected_b64.encode("ascii"))
    ciphertext, tag = sealed[:-TAG_BYTES], sealed[-TAG_BYTES:]
    encrypted_key = recipient.encrypt(cek, _OAEP)
    return ".".join(
        (
            protected_b64,
            b64url_encode(encrypted_key),
            b64url_encode(iv),
            b64url_encode(ciphertext),
            b64url_encode(tag),
        )
    )


def encrypt_jwe_stream(
    src: BinaryIO,
    dst: BinaryIO,
    recipient: RSAPublicKey,
    *,
    kid: str | None,
    cty: str | None,
    zip_def: bool = False,
    chunk_size: int = 1 << 20,
) -> str:
    """Encrypt ``src`` to a compact JWE written to ``dst`` chunk by chunk; returns the tag segment."""
    protected_b64 = b64url_encode(_compact_json(_jwe_header(kid, cty, zip_def)))
    cek = AESGCM.generate_key(bit_length=256)
    iv = os.urandom(IV_BYTES)
    encryptor = Cipher(algorithms.AES(cek), modes.GCM(iv)).encryptor()
    encryptor.authenticate_additional_data(protected_b64.encode("ascii"))
    encrypted_key = recipient.encrypt(cek, _OAEP)
    dst.write(f"{protected_b64}.{b64url_encode(encrypted_key)}.{b64url_encode(iv)}.".encode("ascii"))
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS) if zip_def else None
    carry = b""  # ciphertext bytes not yet a multiple of 3 (base64 works in 3-byte groups)

    def emit(ciphertext: bytes) -> None:
        nonlocal carry
        buf = carry + ciphertext
        cut = len(buf) - len(buf) % 3
        if cut:
            dst.write(pybase64.b64encode(buf[:cut], altchars=b"-_"))
        carry = buf[cut:]

    while True:
        chunk = src.read(chunk_size)
        if not chunk:
            break
        body = compressor.compress(chunk) if compressor is not None else chunk
        if body:
            emit(encryptor.update(body))
    if compressor is not None:
        emit(encryptor.update(compressor.flush()))
    emit(encryptor.finalize())
    if carry:
        dst.write(b64url_encode(carry).encode("ascii"))
    tag_b64 = b64url_encode(encryptor.tag)
    dst.write(b"." + tag_b64.encode("ascii"))
    return tag_b64


# --------------------------------------------------------------------------------------------------
# JWE: decryption


@dataclass
class PrivateKeyEntry:
    """A configured private decryption key; ``thumbprint`` is RFC 7638 of its public key."""

    kid: str
    key: RSAPrivateKey
    thumbprint: str

    @classmethod
    def from_key(cls, kid: str, key: RSAPrivateKey) -> PrivateKeyEntry:
        return cls(kid=kid, key=key, thumbprint=thumbprint_of(key.public_key()))


@dataclass
class DecryptedJWE:
    plaintext: bytes
    header: dict[str, Any]
    kid_used: str


def _candidate_keys(header: dict[str, Any], keys: Sequence[PrivateKeyEntry]) -> list[PrivateKeyEntry]:
    """Keys named by ``kid`` (kid or thumbprint) first, then every other key (rollover, legacy kids)."""
    kid = header.get("kid")
    named = [k for k in keys if kid is not None and kid in (k.kid, k.thumbprint)]
    named_ids = {id(k) for k in named}  # identity, not dataclass equality (keys need not compare)
    return named + [k for k in keys if id(k) not in named_ids]


def _unwrap_cek(header: dict[str, Any], encrypted_key: bytes, keys: Sequence[PrivateKeyEntry]) -> tuple[bytes, str]:
    if not keys:
        raise DecryptionError("no-keys", "no private decryption key is configured")
    for entry in _candidate_keys(header, keys):
        if len(encrypted_key) != entry.key.key_size // 8:
            continue  # cannot be for this key (differently sized modulus)
        try:
            cek = entry.key.decrypt(encrypted_key, _OAEP)
        except ValueError:
            continue  # wrong key: expected during rollover or with thumbprint/missing kids
        if len(cek) != CEK_BYTES:
            raise DecryptionError("cek-length", f"content key has {len(cek)} bytes, expected {CEK_BYTES}")
        return cek, entry.kid
    raise DecryptionError("no-matching-key", "none of the configured private keys unwraps the content key")


class _BoundedInflater:
    """Incremental raw-DEFLATE inflation with a hard bound on the output size (zip-bomb guard)."""

    def __init__(self, limit: int) -> None:
        self._d = zlib.decompressobj(-zlib.MAX_WBITS)
        self._limit = limit
        self.produced = 0

    def feed(self, data: bytes | memoryview) -> Iterator[bytes]:
        """Yield the inflated output in pieces of at most INFLATE_STEP bytes (never all at once)."""
        if not data:
            return
        if self._d.eof:
            raise JWEFormatError("jwe-inflate", "data after the end of the DEFLATE stream")
        pending = data
        while True:
            try:
                piece = self._d.decompress(pending, INFLATE_STEP)
            except zlib.error:
                raise JWEFormatError("jwe-inflate", "invalid DEFLATE data") from None
            self.produced += len(piece)
            if self.produced > self._limit:
                raise PlaintextTooLarge("plaintext-too-large", f"inflated plaintext exceeds {self._limit} bytes")
            if piece:
                yield piece
            pending = self._d.unconsumed_tail
            if self._d.eof:
                if pending or self._d.unused_data:
                    raise JWEFormatError("jwe-inflate", "data after the end of the DEFLATE stream")
                return
            # A full output buffer may leave output pending inside zlib even when all input is consumed.
            if not pending and len(piece) < INFLATE_STEP:
                return

    def finish(self) -> None:
        if not self._d.eof:
            raise JWEFormatError("jwe-inflate", "truncated DEFLATE stream")


def decrypt_jwe(
    compact: str, keys: Sequence[PrivateKeyEntry], *, max_plaintext: int = DEFAULT_MAX_PLAINTEXT
) -> DecryptedJWE:
    """Decrypt a FIT-Connect JWE with the key named by ``kid``, falling back to every configured key."""
    parts = parse_jwe(compact)
    if "zip" not in parts.header and len(parts.ciphertext) > max_plaintext:
        raise PlaintextTooLarge("plaintext-too-large", f"plaintext exceeds {max_plaintext} bytes")
    cek, kid_used = _unwrap_cek(parts.header, parts.encrypted_key, keys)
    try:
        body = AESGCM(cek).decrypt(parts.iv, parts.ciphertext + parts.tag, parts.protected_b64.encode("ascii"))
    except InvalidTag:
        raise DecryptionError("tag-mismatch", "GCM authentication failed (tampered or corrupted JWE)") from None
    if parts.header.get("zip") == ZIP_DEFLATE:
        inflater = _BoundedInflater(max_plaintext)
        pieces = list(inflater.feed(body))  # bounded by max_plaintext
        inflater.finish()
        body = b"".join(pieces)
    return DecryptedJWE(plaintext=body, header=parts.header, kid_used=kid_used)


@dataclass
class StreamResult:
    header: dict[str, Any]
    tag_b64: str
    sha512_hex: str
    size: int
    kid_used: str


class JWEStreamDecryptor:
    """Decrypt a compact JWE fed in arbitrary chunks, writing plaintext to ``sink`` as it goes.

    The GCM tag is only checked in :meth:`finish`: until it returns successfully, whatever was
    written to ``sink`` is UNAUTHENTICATED and must be treated as untrusted (write it to a temp file
    and discard it on any error). Memory stays bounded by a few MB independent of the payload size.
    """

    _HEADER, _KEY, _IV, _CIPHERTEXT, _TAG, _DONE = range(6)

    def __init__(
        self,
        keys: Sequence[PrivateKeyEntry],
        sink: BinaryIO,
        *,
        max_plaintext: int = DEFAULT_MAX_PLAINTEXT,
        hash_plaintext: bool = True,
    ) -> None:
        """``hash_plaintext=False`` skips the SHA-512 (``StreamResult.sha512_hex`` is then empty) for
        sinks that hash what they store anyway, e.g. the gateway's blob writer: once is enough."""
        self._keys = keys
        self._hash_plaintext = hash_plaintext
        self._sink = sink
        self._max_plaintext = max_plaintext
        self._state = self._HEADER
        self._buf = bytearray()  # the small segment being collected
        self._carry = b""  # base64 characters of the ciphertext not yet forming a 4-char group
        self._out = bytearray()  # reused plaintext buffer of the AES step
        self._header: dict[str, Any] = {}
        self._protected = b""
        self._encrypted_key = b""
        self._kid_used = ""
        self._decryptor: Any = None
        self._inflater: _BoundedInflater | None = None
        self._sha = hashlib.sha512()
        self._size = 0
        self._failed: JoseError | None = None

    # -- input ---------------------------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Consume the next chunk (any size, any boundary). ``data`` may be reused once this returns."""
        if self._failed is not None:
            raise self._failed
        # The parser searches with bytes.find (memchr, no slicing); other buffers are copied once.
        buf = data if isinstance(data, bytes | bytearray) else bytes(memoryview(data).cast("B"))
        try:
            self._feed(buf)
        except JoseError as exc:
            self._failed = exc
            raise

    def _feed(self, data: bytes | bytearray) -> None:
        pos, total = 0, len(data)
        while pos < total:
            if self._state == self._CIPHERTEXT:
                # At most one slice per step, so the decoded ciphertext held at once stays bounded.
                end = min(total, pos + STREAM_SLICE_CHARS)
                dot = data.find(b".", pos, end)
                self._ciphertext_chars(data, pos, end if dot < 0 else dot)
                if dot < 0:
                    pos = end
                else:
                    self._end_ciphertext()
                    pos = dot + 1
                continue
            if self._state == self._DONE:
                raise JWEFormatError("jwe-segments", "data after the end of the compact JWE")
            # Small segments: copy at most one bound's worth, so hostile input cannot make us buffer much.
            end = min(total, pos + MAX_HEADER_CHARS + 1)
            dot = data.find(b".", pos, end)
            self._buf += data[pos : end if dot < 0 else dot]
            self._check_small_segment_size()
            if dot < 0:
                pos = end
            else:
                pos = dot + 1
                self._end_small_segment()

    def _check_small_segment_size(self) -> None:
        limit = {
            self._HEADER: MAX_HEADER_CHARS,
            self._KEY: MAX_ENCRYPTED_KEY_CHARS,
            self._IV: MAX_SMALL_SEGMENT_CHARS,
            self._TAG: MAX_SMALL_SEGMENT_CHARS,
        }[self._state]
        if len(self._buf) > limit:
            code = {self._HEADER: "jwe-header", self._KEY: "jwe-encrypted-key", self._IV: "jwe-iv"}
            raise JWEFormatError(code.get(self._state, "jwe-tag"), "segment is too large")

    def _end_small_segment(self) -> None:
        segment = bytes(self._buf)
        self._buf.clear()
        if self._state == self._HEADER:
            self._header = _parse_jwe_header(segment)
            self._protected = segment
            self._state = self._KEY
        elif self._state == self._KEY:
            self._encrypted_key = _decode_segment(segment, "jwe-encrypted-key", "encrypted key")
            if not self._encrypted_key:
                raise JWEFormatError("jwe-encrypted-key", "encrypted key is empty")
            self._state = self._IV
        elif self._state == self._IV:
            iv = _decode_segment(segment, "jwe-iv", "initialisation vector", IV_BYTES)
            cek, self._kid_used = _unwrap_cek(self._header, self._encrypted_key, self._keys)
            self._decryptor = Cipher(algorithms.AES(cek), modes.GCM(iv)).decryptor()
            self._decryptor.authenticate_additional_data(self._protected)
            if self._header.get("zip") == ZIP_DEFLATE:
                self._inflater = _BoundedInflater(self._max_plaintext)
            self._state = self._CIPHERTEXT
        else:  # a dot after the tag
            raise JWEFormatError("jwe-segments", "compact JWE has more than 5 segments")

    def _ciphertext_chars(self, data: bytes | bytearray, start: int, stop: int) -> None:
        """Decode ``data[start:stop]`` (ciphertext characters) without copying it."""
        if self._carry:  # complete the 4-character group left over from the previous chunk
            take = min(4 - len(self._carry), stop - start)
            self._carry += data[start : start + take]
            start += take
            if len(self._carry) < 4:
                return
            group, self._carry = self._carry, b""
            self._decode_groups(group, 0, 4)
        cut = stop - (stop - start) % 4
        if cut < stop:
            self._carry = bytes(data[cut:stop])
        if cut > start:
            self._decode_groups(data, start, cut)

    def _decode_groups(self, data: bytes | bytearray, start: int, stop: int) -> None:
        # The hot loop of large attachments: pybase64 decodes with SIMD (~10x binascii) and its
        # validate=True refuses foreign characters and inner padding; "+" and "/" are standard base64,
        # not base64url, and pybase64 would accept them beside the altchars, so refuse them first
        # (two memchr scans of the range; neither slices nor copies).
        if data.find(b"+", start, stop) >= 0 or data.find(b"/", start, stop) >= 0:
            raise JWEFormatError("jwe-ciphertext", "ciphertext: characters outside the base64url alphabet")
        try:
            ciphertext = pybase64.b64decode(memoryview(data)[start:stop], altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            ciphertext = b""
        if len(ciphertext) != (stop - start) // 4 * 3:
            raise JWEFormatError("jwe-ciphertext", "ciphertext: characters outside the base64url alphabet")
        self._decrypt(ciphertext)

    def _decrypt(self, ciphertext: bytes) -> None:
        # GCM is a stream mode: as many plaintext bytes as ciphertext bytes, decrypted into one reused
        # buffer (no allocation per step; the sink copies or writes what it keeps).
        if len(self._out) < len(ciphertext) + 15:  # update_into wants block_size - 1 bytes of room
            self._out = bytearray(len(ciphertext) + 15)
        n = self._decryptor.update_into(ciphertext, self._out)
        self._plaintext(memoryview(self._out)[:n])

    def _end_ciphertext(self) -> None:
        if self._carry:
            tail = _decode_segment(self._carry, "jwe-ciphertext", "ciphertext")
            self._carry = b""
            self._decrypt(tail)
        self._state = self._TAG

    def _plaintext(self, body: memoryview) -> None:
        if not body:
            return
        pieces = self._inflater.feed(body) if self._inflater is not None else iter((body,))
        for piece in pieces:
            self._size += len(piece)
            if self._size > self._max_plaintext:
                raise PlaintextTooLarge("plaintext-too-large", f"plaintext exceeds {self._max_plaintext} bytes")
            if self._hash_plaintext:
                self._sha.update(piece)
            self._sink.write(piece)

    # -- end -----------------------------------------------------------------------------------

    def finish(self) -> StreamResult:
        """Check the tag (and the end of a DEFLATE stream); only now is the sink content authentic."""
        if self._failed is not None:
            raise self._failed
        try:
            return self._finish()
        except JoseError as exc:
            self._failed = exc
            raise

    def _finish(self) -> StreamResult:
        if self._state != self._TAG:
            raise JWEFormatError("jwe-segments", "compact JWE is truncated (fewer than 5 segments)")
        tag_segment = bytes(self._buf)
        tag = _decode_segment(tag_segment, "jwe-tag", "authentication tag", TAG_BYTES)
        try:
            self._decryptor.finalize_with_tag(tag)
        except InvalidTag:
            raise DecryptionError("tag-mismatch", "GCM authentication failed (tampered or corrupted JWE)") from None
        if self._inflater is not None:
            self._inflater.finish()
        self._state = self._DONE
        return StreamResult(
            header=self._header,
            tag_b64=tag_segment.decode("ascii"),
            sha512_hex=self._sha.hexdigest() if self._hash_plaintext else "",
            size=self._size,
            kid_used=self._kid_used,
        )


# --------------------------------------------------------------------------------------------------
# JWS (PS512)


@dataclass
class ParsedJWS:
    header: dict[str, Any]
    payload: dict[str, Any]
    signing_input: bytes
    signature: bytes


def sign_jws(payload: dict[str, Any], key: RSAPrivateKey, *, kid: str, typ: str = "secevent+jwt") -> str:
    """Compact JWS, PS512, with a compact-JSON payload."""
    header = {"alg": JWS_ALG, "kid": kid, "typ": typ}
    signing_input = f"{b64url_encode(_compact_json(header))}.{b64url_encode(_compact_json(payload))}"
    signature = key.sign(signing_input.encode("ascii"), _PSS, hashes.SHA512())
    return f"{signing_input}.{b64url_encode(signature)}"


def parse_jws(token: str) -> ParsedJWS:
    """Split a compact JWS whose header and payload are JSON objects (signature not yet checked)."""
    if not isinstance(token, str):
        raise JoseError("jws-format", "JWS is not a string")
    if len(token) > MAX_JWS_CHARS:
        raise JoseError("jws-too-large", f"JWS is longer than {MAX_JWS_CHARS} characters")
    try:
        raw = token.encode("ascii")
    except UnicodeEncodeError:
        raise JoseError("jws-format", "JWS is not ASCII") from None
    segments = raw.split(b".")
    if len(segments) != 3:
        raise JoseError("jws-segments", f"compact JWS has {len(segments)} segments, expected 3")
    decoded = []
    for segment, code, what in (
        (segments[0], "jws-header", "header"),
        (segments[1], "jws-payload", "payload"),
        (segments[2], "jws-signature", "signature"),
    ):
        try:
            decoded.append(_b64url_decode_bytes(segment, what))
        except JoseError as exc:
            raise JoseError(code, exc.message) from None
    header = _json_object(decoded[0], "jws-header", "header")
    payload = _json_object(decoded[1], "jws-payload", "payload")
    if not decoded[2]:
        raise JoseError("jws-signature", "signature is empty")
    return ParsedJWS(
        header=header, payload=payload, signing_input=segments[0] + b"." + segments[1], signature=decoded[2]
    )


def verify_jws(parsed: ParsedJWS, key: RSAPublicKey) -> None:
    """Verify a PS512 signature; any other ``alg`` (``none``, HS*, RS*) is refused."""
    alg = parsed.header.get("alg")
    if alg != JWS_ALG:
        raise SignatureError("jws-alg", f"alg {alg!r} is not {JWS_ALG}")
    if "crit" in parsed.header:
        raise SignatureError("jws-crit", "critical header extensions are not supported")
    try:
        key.verify(parsed.signature, parsed.signing_input, _PSS, hashes.SHA512())
    except InvalidSignature:
        raise SignatureError("jws-signature-invalid", "PS512 signature does not verify") from None
