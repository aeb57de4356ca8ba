"""The applicant's reply key (``replyChannel.fitConnect.encryptionPublicKey``) and process standards.

A reply is encrypted to the key the online service put into the submission metadata, not to a
destination key. That key comes without a certificate chain (the metadata schema has no ``x5c``), so
no V-PKI check is possible: the gateway checks what can be checked, pins the key to the case and
records its RFC 7638 thumbprint. A key that fails is never used; the reason is recorded (the answer
then goes to the fallback channel). Rules (metadata schema 2.1.0; digest §3.2):

==================  ====================================================================
code                the key is refused because
==================  ====================================================================
not-an-object       it is not a JSON object
private-material    it contains private key parameters (d, p, q, dp, dq, qi)
kty                 kty is not RSA
kid                 kid is missing or not a string of 8-64 characters
alg                 alg is not RSA-OAEP-256
key_ops             key_ops is not a list of strings containing wrapKey (and nothing but
                    wrapKey/encrypt: a key also meant for signing or decryption is refused)
use                 use is present and not "enc"
n-format            n is missing or not canonical base64url
e                   e is not AQAB (65537)
n-size              the modulus has fewer than 4096 bits (n shorter than 683 characters,
                    or leading zero bytes)
==================  ====================================================================
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from gateway.fitconnect.jose import JWE_ALG
from gateway.fitconnect.keys import MIN_N_CHARS, MIN_RSA_BITS, KeyValidationError, load_public_jwk, thumbprint

REASONS: Mapping[str, str] = {
    "not-an-object": "the key is not a JSON object",
    "private-material": "the key contains private key parameters",
    "kty": "kty is not RSA",
    "kid": "kid is missing or not 8-64 characters",
    "alg": f"alg is not {JWE_ALG}",
    "key_ops": "key_ops does not allow wrapKey (or allows more than encryption)",
    "use": 'use is not "enc"',
    "n-format": "the modulus is not well-formed base64url",
    "e": "the public exponent is not AQAB",
    "n-size": f"the modulus has fewer than {MIN_RSA_BITS} bits",
}
ENCRYPTION_OPS = frozenset({"wrapKey", "encrypt"})
_PRIVATE = ("d", "p", "q", "dp", "dq", "qi")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S+")
MAX_PROCESS_STANDARDS = 100


class ReplyKeyError(Exception):
    """The reply key (or the process standards) cannot be used; ``code`` is from :data:`REASONS`
    (or ``process-standards``), the message names the failed rule, never key material."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ReplyKey:
    jwk: Mapping[str, Any] = field(repr=False)  # the public JWK exactly as the applicant sent it
    key: RSAPublicKey = field(repr=False)
    kid: str
    thumbprint: str  # RFC 7638, SHA-256, base64url
    bits: int


def _fail(code: str, detail: str | None = None) -> ReplyKeyError:
    return ReplyKeyError(code, detail or REASONS[code])


def validate_reply_key(jwk: Any) -> ReplyKey:
    """Check the applicant's encryption key; raise :class:`ReplyKeyError` with the first failed rule."""
    if not isinstance(jwk, Mapping):
        raise _fail("not-an-object")
    if any(name in jwk for name in _PRIVATE):
        raise _fail("private-material")
    if jwk.get("kty") != "RSA":
        raise _fail("kty")
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not 8 <= len(kid) <= 64:
        raise _fail("kid")
    if jwk.get("alg") != JWE_ALG:
        raise _fail("alg")
    ops = jwk.get("key_ops")
    if (
        not isinstance(ops, list)
        or not all(isinstance(op, str) for op in ops)
        or "wrapKey" not in ops
        or not set(ops) <= ENCRYPTION_OPS
    ):
        raise _fail("key_ops")
    if "use" in jwk and jwk["use"] != "enc":
        raise _fail("use")
    if not isinstance(jwk.get("n"), str):
        raise _fail("n-format")
    if jwk.get("e") != "AQAB":
        raise _fail("e")
    try:
        key = load_public_jwk(jwk)
    except KeyValidationError:
        raise _fail("n-format") from None
    if len(jwk["n"]) < MIN_N_CHARS or key.key_size < MIN_RSA_BITS:
        raise _fail("n-size", f"the modulus has {key.key_size} bits, at least {MIN_RSA_BITS} are required")
    return ReplyKey(jwk=dict(jwk), key=key, kid=kid, thumbprint=thumbprint(key), bits=key.key_size)


def validate_process_standards(value: Any) -> tuple[str, ...]:
    """The applicant's ``processStandards``: a non-empty list of URIs (duplicates removed, order kept)."""
    if not isinstance(value, list) or not value:
        raise ReplyKeyError("process-standards", "processStandards is missing or not a non-empty list")
    if len(value) > MAX_PROCESS_STANDARDS:
        raise ReplyKeyError("process-standards", f"more than {MAX_PROCESS_STANDARDS} processStandards")
    for item in value:
        if not isinstance(item, str) or len(item) > 1000 or _URI.fullmatch(item) is None:
            raise ReplyKeyError("process-standards", "a processStandards entry is not a URI")
    return tuple(dict.fromkeys(value))
