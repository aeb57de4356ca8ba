"""The sandbox Zustelldienst's own PS512 signing key (RSA-4096, self-signed TEST ONLY x5c).

It signs the ZSD-issued SETs (create-/submit-submission, automatic rejections) and the access
tokens, and is published at ``/.well-known/jwks.json``. With a state dir it is generated there on
first start (``zsd-signing.key.pem``, mode 0600, plus ``zsd-signing.cert.pem``) and reused after a
restart, so event logs recorded earlier still verify. ``kid`` is the RFC 7638 thumbprint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from gateway.errors import ConfigError
from gateway.fitconnect.jose import JWS_ALG
from gateway.fitconnect.keys import jwk_from_public_key, self_signed_certificate, thumbprint, x5c_entry

KEY_FILE = "zsd-signing.key.pem"
CERT_FILE = "zsd-signing.cert.pem"
KEY_BITS = 4096
COMMON_NAME = "FIT-Connect sandbox Zustelldienst (signing) TEST ONLY"


@dataclass(frozen=True)
class ZsdSigningKey:
    key: RSAPrivateKey
    kid: str
    cert: x509.Certificate

    @property
    def public_jwk(self) -> dict[str, Any]:
        return jwk_from_public_key(
            self.key.public_key(), kid=self.kid, alg=JWS_ALG, key_ops=["verify"], x5c=[x5c_entry(self.cert)]
        )

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk]}


def generate_private_key(bits: int = KEY_BITS) -> RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def write_private_key(key: RSAPrivateKey, path: Path) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)


def _read_private_key(path: Path) -> RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot load the sandbox signing key: {type(exc).__name__}", file=str(path)) from None
    if not isinstance(key, RSAPrivateKey) or key.key_size < KEY_BITS:
        raise ConfigError(f"the sandbox signing key must be RSA with >= {KEY_BITS} bits", file=str(path))
    return key


def load_or_create(state_dir: Path | None, key_file: Path | None) -> ZsdSigningKey:
    """``key_file`` (PEM) wins; else the state dir's key (generated on first start); else a fresh key."""
    cert: x509.Certificate | None = None
    if key_file is not None:
        key = _read_private_key(key_file)
    elif state_dir is not None:
        path = state_dir / KEY_FILE
        if path.exists():
            key = _read_private_key(path)
            cert_path = state_dir / CERT_FILE
            if cert_path.exists():
                cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
                if cert.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
                    cert = None
        else:
            key = generate_private_key()
            write_private_key(key, path)
    else:
        key = generate_private_key()
    if cert is None:
        cert = self_signed_certificate(key, common_name=COMMON_NAME, purpose="signing")
        if state_dir is not None and key_file is None:
            (state_dir / CERT_FILE).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return ZsdSigningKey(key=key, kid=thumbprint(key), cert=cert)
