"""FIT-Connect key material: JWK conversion, RFC 7638 thumbprints, public key validation, test key sets.

FIT-Connect keys are RSA (≥ 4096 bit, e = 65537) JWKs carrying an ``x5c`` certificate chain.
Encryption keys: ``alg RSA-OAEP-256``, public ``key_ops ["wrapKey"]`` / private ``["unwrapKey"]``.
Signing keys: ``alg PS512``, public ``["verify"]`` / private ``["sign"]``.
See ``docs/fitconnect-crypto.md`` for the validation rules and their error codes.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.x509.oid import NameOID

from gateway.fitconnect.jose import (
    JWE_ALG,
    JWS_ALG,
    JoseError,
    PrivateKeyEntry,
    b64url_decode,
    b64url_encode,
    thumbprint_of,
)
from gateway.trust.crl import CrlDirectory, check_path
from gateway.trust.path import (
    TrustError,
    VerifiedPath,
    encryption_usage,
    is_self_signed,
    signature_usage,
    verify_path,
)

Purpose = Literal["encryption", "signing"]

MIN_RSA_BITS = 4096
MIN_N_CHARS = 683  # base64url length of a 4096-bit modulus
TEST_ORGANIZATION = "TEST ONLY - not for production use"
TEST_MARKER = "TEST ONLY"

PUBLIC_OPS: Mapping[Purpose, str] = {"encryption": "wrapKey", "signing": "verify"}
PRIVATE_OPS: Mapping[Purpose, str] = {"encryption": "unwrapKey", "signing": "sign"}
ALGS: Mapping[Purpose, str] = {"encryption": JWE_ALG, "signing": JWS_ALG}


class KeyValidationError(Exception):
    """A JWK was refused; ``code`` names the failed rule (see docs/fitconnect-crypto.md)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# --------------------------------------------------------------------------------------------------
# JWK <-> cryptography


def _int_to_b64(value: int) -> str:
    return b64url_encode(value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def _b64_to_int(jwk: Mapping[str, Any], name: str) -> int:
    raw = jwk.get(name)
    if not isinstance(raw, str) or not raw:
        raise KeyValidationError("jwk-format", f"JWK member {name!r} is missing or not a string")
    try:
        return int.from_bytes(b64url_decode(raw, what=name), "big")
    except JoseError as exc:
        raise KeyValidationError("jwk-format", exc.message) from None


def jwk_from_public_key(
    key: RSAPublicKey, *, kid: str, alg: str, key_ops: Sequence[str], x5c: Sequence[str]
) -> dict[str, Any]:
    numbers = key.public_numbers()
    return {
        "kty": "RSA",
        "kid": kid,
        "alg": alg,
        "key_ops": list(key_ops),
        "n": _int_to_b64(numbers.n),
        "e": _int_to_b64(numbers.e),
        "x5c": list(x5c),
    }


def jwk_from_private_key(
    key: RSAPrivateKey, *, kid: str, alg: str, key_ops: Sequence[str], x5c: Sequence[str] = ()
) -> dict[str, Any]:
    priv = key.private_numbers()
    jwk = jwk_from_public_key(key.public_key(), kid=kid, alg=alg, key_ops=key_ops, x5c=x5c)
    if not x5c:
        del jwk["x5c"]
    jwk.update(
        d=_int_to_b64(priv.d),
        p=_int_to_b64(priv.p),
        q=_int_to_b64(priv.q),
        dp=_int_to_b64(priv.dmp1),
        dq=_int_to_b64(priv.dmq1),
        qi=_int_to_b64(priv.iqmp),
    )
    return jwk


def load_public_jwk(jwk: Mapping[str, Any]) -> RSAPublicKey:
    """The RSA public key of a JWK (structure only; use :func:`validate_public_jwk` for policy)."""
    if jwk.get("kty") != "RSA":
        raise KeyValidationError("kty", f"kty {jwk.get('kty')!r} is not RSA")
    try:
        return rsa.RSAPublicNumbers(_b64_to_int(jwk, "e"), _b64_to_int(jwk, "n")).public_key()
    except ValueError as exc:
        raise KeyValidationError("jwk-format", f"invalid RSA public key: {exc}") from None


def thumbprint(jwk_or_key: Mapping[str, Any] | RSAPublicKey | RSAPrivateKey) -> str:
    """RFC 7638 SHA-256 thumbprint of an RSA JWK or key."""
    if isinstance(jwk_or_key, RSAPrivateKey):
        return thumbprint_of(jwk_or_key.public_key())
    if isinstance(jwk_or_key, RSAPublicKey):
        return thumbprint_of(jwk_or_key)
    return thumbprint_of(load_public_jwk(jwk_or_key))


@dataclass
class PrivateJWK(PrivateKeyEntry):
    """A loaded private JWK: usable as a decryption :class:`PrivateKeyEntry` and/or a signing key."""

    alg: str = ""
    key_ops: tuple[str, ...] = ()
    public_jwk: dict[str, Any] = field(default_factory=dict)

    @property
    def can_decrypt(self) -> bool:
        return self.alg == JWE_ALG and "unwrapKey" in self.key_ops

    @property
    def can_sign(self) -> bool:
        return self.alg == JWS_ALG and "sign" in self.key_ops


def load_private_jwk(path_or_dict: str | Path | Mapping[str, Any]) -> PrivateJWK:
    """Load a private RSA JWK from a file or dict; the CRT parameters are checked for consistency."""
    if isinstance(path_or_dict, Mapping):
        jwk = dict(path_or_dict)
    else:
        try:
            jwk = json.loads(Path(path_or_dict).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise KeyValidationError("jwk-format", f"cannot read private JWK: {type(exc).__name__}") from None
        if not isinstance(jwk, dict):
            raise KeyValidationError("jwk-format", "private JWK is not a JSON object")
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        raise KeyValidationError("kid", "private JWK has no kid")
    alg = jwk.get("alg")
    if alg not in (JWE_ALG, JWS_ALG):
        raise KeyValidationError("alg", f"private JWK alg {alg!r} is neither {JWE_ALG} nor {JWS_ALG}")
    ops = jwk.get("key_ops")
    if not isinstance(ops, list) or not all(isinstance(op, str) for op in ops):
        raise KeyValidationError("key_ops", "private JWK key_ops is missing or not a list of strings")
    public = load_public_jwk(jwk)
    pub_numbers = public.public_numbers()
    try:
        key = rsa.RSAPrivateNumbers(
            p=_b64_to_int(jwk, "p"),
            q=_b64_to_int(jwk, "q"),
            d=_b64_to_int(jwk, "d"),
            dmp1=_b64_to_int(jwk, "dp"),
            dmq1=_b64_to_int(jwk, "dq"),
            iqmp=_b64_to_int(jwk, "qi"),
            public_numbers=pub_numbers,
        ).private_key()
    except ValueError as exc:
        raise KeyValidationError("jwk-format", f"inconsistent RSA private key: {exc}") from None
    public_jwk = {k: v for k, v in jwk.items() if k not in ("d", "p", "q", "dp", "dq", "qi")}
    public_jwk["key_ops"] = ["wrapKey" if op == "unwrapKey" else "verify" if op == "sign" else op for op in ops]
    return PrivateJWK(
        kid=kid,
        key=key,
        thumbprint=thumbprint_of(public),
        alg=str(alg),
        key_ops=tuple(ops),
        public_jwk=public_jwk,
    )


# --------------------------------------------------------------------------------------------------
# Validation of public keys (what a sender checks before encrypting, a subscriber before verifying)


def _decode_x5c(jwk: Mapping[str, Any]) -> list[x509.Certificate]:
    x5c = jwk.get("x5c")
    if x5c is None:
        raise KeyValidationError("x5c-missing", "JWK has no x5c certificate chain")
    if not isinstance(x5c, list) or not x5c:
        raise KeyValidationError("x5c-missing", "x5c is not a non-empty list")
    certs = []
    for i, item in enumerate(x5c):
        if not isinstance(item, str):
            raise KeyValidationError("x5c-format", f"x5c[{i}] is not a string")
        try:
            # x5c is standard base64 (RFC 7517 §4.7), not base64url.
            der = base64.b64decode(item, validate=True)
            certs.append(x509.load_der_x509_certificate(der))
        except (binascii.Error, ValueError):
            raise KeyValidationError("x5c-format", f"x5c[{i}] is not a base64 DER certificate") from None
    return certs


def validate_public_jwk(
    jwk: Mapping[str, Any],
    *,
    purpose: Purpose,
    trust_anchors: Sequence[x509.Certificate] = (),
    allow_self_signed: bool = False,
    now: dt.datetime | None = None,
    crls: CrlDirectory | None = None,
) -> VerifiedPath:
    """Check a public JWK against the FIT-Connect key rules and its x5c chain; raise KeyValidationError.

    The path is validated by :func:`gateway.trust.path.verify_path` (``cryptography.x509.verification``),
    revocation against ``crls`` when given; OCSP is asynchronous and left to the caller
    (:class:`gateway.trust.ocsp.OcspChecker` on the returned path). Codes: docs/fitconnect-crypto.md.
    """
    now = now or dt.datetime.now(dt.UTC)
    if not isinstance(jwk, Mapping):
        raise KeyValidationError("jwk-format", "JWK is not an object")
    if jwk.get("kty") != "RSA":
        raise KeyValidationError("kty", f"kty {jwk.get('kty')!r} is not RSA")
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        raise KeyValidationError("kid", "JWK has no kid")
    n_b64 = jwk.get("n")
    if not isinstance(n_b64, str) or len(n_b64) < MIN_N_CHARS:
        raise KeyValidationError("n-size", f"modulus is shorter than {MIN_RSA_BITS} bits")
    if jwk.get("e") != "AQAB":
        raise KeyValidationError("e", "public exponent is not AQAB (65537)")
    if any(name in jwk for name in ("d", "p", "q", "dp", "dq", "qi")):
        raise KeyValidationError("private-material", "public JWK contains private key parameters")
    public = load_public_jwk(jwk)
    if public.key_size < MIN_RSA_BITS:
        raise KeyValidationError("n-size", f"modulus has {public.key_size} bits, need {MIN_RSA_BITS}")
    if jwk.get("alg") != ALGS[purpose]:
        raise KeyValidationError("alg", f"alg {jwk.get('alg')!r} is not {ALGS[purpose]} for a {purpose} key")
    ops = jwk.get("key_ops")
    if ops != [PUBLIC_OPS[purpose]]:
        raise KeyValidationError("key_ops", f"key_ops {ops!r} is not [{PUBLIC_OPS[purpose]!r}]")

    chain = _decode_x5c(jwk)
    leaf = chain[0]
    leaf_key = leaf.public_key()
    if not isinstance(leaf_key, RSAPublicKey) or leaf_key.public_numbers() != public.public_numbers():
        raise KeyValidationError("leaf-mismatch", "x5c leaf certificate key differs from the JWK n/e")
    usage = encryption_usage if purpose == "encryption" else signature_usage
    try:
        if len(chain) == 1 and is_self_signed(leaf):
            if not allow_self_signed:
                raise KeyValidationError("self-signed", "self-signed certificate (only allowed in test environments)")
            path = verify_path(leaf, [], [leaf], usage=usage, now=now)  # its own anchor: validity, key usage
        else:
            # x5c order (RFC 7517 §4.7) is not relied on: the library builds the path from the set
            path = verify_path(leaf, chain[1:], trust_anchors, usage=usage, now=now)
        if crls is not None:
            check_path(path.chain, crls, now)
    except TrustError as exc:
        raise KeyValidationError(exc.code, exc.message) from None
    return path


def own_certificates(jwk: Mapping[str, Any]) -> list[x509.Certificate]:
    """The x5c certificates of a (validated) JWK, for expiry reporting; [] if unreadable."""
    try:
        return _decode_x5c(jwk)
    except KeyValidationError:
        return []


def is_test_key(jwk: Mapping[str, Any]) -> bool:
    """True for keys that must never be used in production: self-signed or marked TEST ONLY.

    A key whose certificate cannot be read counts as a test key (it cannot be proven otherwise).
    """
    try:
        chain = _decode_x5c(jwk)
    except KeyValidationError:
        return True
    for cert in chain:
        for attr in cert.subject:
            if isinstance(attr.value, str) and TEST_MARKER in attr.value.upper():
                return True
    return len(chain) == 1 and chain[0].issuer == chain[0].subject


# --------------------------------------------------------------------------------------------------
# Test key sets


@dataclass
class KeySetPaths:
    encryption_private: Path
    encryption_public: Path
    signing_private: Path
    signing_public: Path
    encryption_cert: Path
    signing_cert: Path
    encryption_kid: str
    signing_kid: str


def self_signed_certificate(
    key: RSAPrivateKey, *, common_name: str, purpose: Purpose, days: int = 3650
) -> x509.Certificate:
    """A self-signed TEST ONLY leaf certificate for ``key`` (O= marks it as test material)."""
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, TEST_ORGANIZATION),
        ]
    )
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    usage = x509.KeyUsage(
        digital_signature=purpose == "signing",
        content_commitment=False,
        key_encipherment=purpose == "encryption",
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return builder.sign(key, hashes.SHA256())


def x5c_entry(cert: x509.Certificate) -> str:
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")


def _write(path: Path, text: str, *, private: bool) -> None:
    # Create private files with 0600 from the start instead of chmod-ing after the write.
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600 if private else 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(path, 0o600 if private else 0o644)


def generate_key_set(
    destination_id: str, out_dir: Path, *, common_name: str | None = None, bits: int = 4096
) -> KeySetPaths:
    """Generate a TEST ONLY encryption + signing key set (JWKs with self-signed x5c, PEM certs)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = KeySetPaths(
        encryption_private=out_dir / "encryption.private.jwk.json",
        encryption_public=out_dir / "encryption.public.jwk.json",
        signing_private=out_dir / "signing.private.jwk.json",
        signing_public=out_dir / "signing.public.jwk.json",
        encryption_cert=out_dir / "encryption.cert.pem",
        signing_cert=out_dir / "signing.cert.pem",
        encryption_kid=str(uuid.uuid4()),
        signing_kid=str(uuid.uuid4()),
    )
    purposes: tuple[tuple[Purpose, str, Path, Path, Path], ...] = (
        ("encryption", paths.encryption_kid, paths.encryption_private, paths.encryption_public, paths.encryption_cert),
        ("signing", paths.signing_kid, paths.signing_private, paths.signing_public, paths.signing_cert),
    )
    for purpose, kid, private_path, public_path, cert_path in purposes:
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        cn = f"{common_name or 'FIT-Connect ' + destination_id} {purpose}"[:64]  # X.520 CN upper bound
        cert = self_signed_certificate(key, common_name=cn, purpose=purpose)
        x5c = [x5c_entry(cert)]
        public = jwk_from_public_key(
            key.public_key(), kid=kid, alg=ALGS[purpose], key_ops=[PUBLIC_OPS[purpose]], x5c=x5c
        )
        private = jwk_from_private_key(key, kid=kid, alg=ALGS[purpose], key_ops=[PRIVATE_OPS[purpose]], x5c=x5c)
        _write(private_path, json.dumps(private, indent=2) + "\n", private=True)
        _write(public_path, json.dumps(public, indent=2) + "\n", private=False)
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM).decode("ascii"), private=False)
    return paths
