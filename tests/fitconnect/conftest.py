"""Shared FIT-Connect test material. RSA-4096 generation is slow, so keys are session-scoped."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from gateway.fitconnect.keys import KeySetPaths, PrivateJWK, generate_key_set, load_private_jwk

TEST_DESTINATION_ID = "5b0d8a16-2e5f-4d0c-9d6c-9f1b7a3c2e01"


@dataclass
class KeySet:
    paths: KeySetPaths
    encryption: PrivateJWK
    signing: PrivateJWK
    encryption_public: dict[str, Any]
    signing_public: dict[str, Any]


@pytest.fixture(scope="session")
def key_set(tmp_path_factory: pytest.TempPathFactory) -> KeySet:
    """A destination key set made by the real generator (RSA-4096, self-signed x5c)."""
    out = tmp_path_factory.mktemp("keyset")
    paths = generate_key_set(TEST_DESTINATION_ID, out)
    return KeySet(
        paths=paths,
        encryption=load_private_jwk(paths.encryption_private),
        signing=load_private_jwk(paths.signing_private),
        encryption_public=json.loads(Path(paths.encryption_public).read_text()),
        signing_public=json.loads(Path(paths.signing_public).read_text()),
    )


@pytest.fixture(scope="session")
def second_key() -> RSAPrivateKey:
    """Another RSA-4096 key (rollover partner, foreign key, PKI leaf)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=4096)


@pytest.fixture(scope="session")
def ca_keys() -> tuple[RSAPrivateKey, RSAPrivateKey, RSAPrivateKey]:
    """Root, intermediate and a spare CA key (CA key sizes are not policed, so 2048 keeps tests fast)."""
    return tuple(rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3))  # type: ignore[return-value]
