"""JWS PS512 of the FIT-Connect profile, cross-checked against joserfc."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from joserfc import jws as rfc_jws
from joserfc.jwk import RSAKey

from gateway.fitconnect.jose import (
    JoseError,
    SignatureError,
    b64url_decode,
    b64url_encode,
    parse_jws,
    sign_jws,
    verify_jws,
)

from .conftest import KeySet

PAYLOAD = {"iss": "5b0d8a16-2e5f-4d0c-9d6c-9f1b7a3c2e01", "n": 1, "text": "Straße"}


def test_sign_parse_verify(key_set: KeySet) -> None:
    token = sign_jws(PAYLOAD, key_set.signing.key, kid=key_set.signing.kid)
    parsed = parse_jws(token)
    assert parsed.header == {"alg": "PS512", "kid": key_set.signing.kid, "typ": "secevent+jwt"}
    assert parsed.payload == PAYLOAD
    assert len(parsed.signature) == 512
    verify_jws(parsed, key_set.signing.key.public_key())


def test_joserfc_verifies_ours(key_set: KeySet) -> None:
    token = sign_jws(PAYLOAD, key_set.signing.key, kid="k")
    public = {k: v for k, v in key_set.signing_public.items()}
    obj = rfc_jws.deserialize_compact(token, RSAKey.import_key(public), algorithms=["PS512"])
    assert json.loads(obj.payload) == PAYLOAD


def test_ours_verifies_joserfc(key_set: KeySet) -> None:
    private = {k: v for k, v in key_set.signing.public_jwk.items() if k != "key_ops"}
    rfc_key = RSAKey.import_key(key_set.signing.key)
    token = rfc_jws.serialize_compact(
        {"alg": "PS512", "kid": private["kid"], "typ": "secevent+jwt"},
        json.dumps(PAYLOAD),
        rfc_key,
        algorithms=["PS512"],
    )
    parsed = parse_jws(token)
    verify_jws(parsed, key_set.signing.key.public_key())
    assert parsed.payload == PAYLOAD


def test_wrong_key_and_tampering(key_set: KeySet, second_key: RSAPrivateKey) -> None:
    token = sign_jws(PAYLOAD, key_set.signing.key, kid="k")
    with pytest.raises(SignatureError) as info:
        verify_jws(parse_jws(token), second_key.public_key())
    assert info.value.code == "jws-signature-invalid"
    header, _, signature = token.split(".")
    forged = ".".join([header, b64url_encode(json.dumps({**PAYLOAD, "n": 2}).encode()), signature])
    with pytest.raises(SignatureError):
        verify_jws(parse_jws(forged), key_set.signing.key.public_key())


def _token(header: dict[str, Any], payload: Any = PAYLOAD, signature: bytes = b"sig") -> str:
    return ".".join(
        [
            b64url_encode(json.dumps(header).encode()),
            b64url_encode(json.dumps(payload).encode()),
            b64url_encode(signature),
        ]
    )


@pytest.mark.parametrize("alg", ["none", "HS256", "HS512", "RS512", "PS256", "ES512", None])
def test_only_ps512_is_accepted(key_set: KeySet, alg: str | None) -> None:
    real = sign_jws(PAYLOAD, key_set.signing.key, kid="k")
    header = {"kid": "k", "typ": "secevent+jwt"} | ({"alg": alg} if alg else {})
    token = _token(header, signature=b64url_decode(real.split(".")[2]))
    with pytest.raises(SignatureError) as info:
        verify_jws(parse_jws(token), key_set.signing.key.public_key())
    assert info.value.code == "jws-alg"


def test_crit_is_refused(key_set: KeySet) -> None:
    with pytest.raises(SignatureError) as info:
        verify_jws(parse_jws(_token({"alg": "PS512", "crit": ["x"], "x": 1})), key_set.signing.key.public_key())
    assert info.value.code == "jws-crit"


@pytest.mark.parametrize(
    ("token", "code"),
    [
        ("a.b", "jws-segments"),
        ("a.b.c.d", "jws-segments"),
        ("a+.e30.c2ln", "jws-header"),
        (b64url_encode(b"[1]") + ".e30.c2ln", "jws-header"),
        (b64url_encode(b'{"alg":"PS512","alg":"none"}') + ".e30.c2ln", "jws-header"),
        ("e30." + b64url_encode(b"not json") + ".c2ln", "jws-payload"),
        ("e30." + b64url_encode(b'"string"') + ".c2ln", "jws-payload"),
        ("e30.e30.", "jws-signature"),
        ("e30.e30.c2l*", "jws-signature"),
        ("é.e30.c2ln", "jws-format"),
        ("e30.e30." + "A" * (1 << 20), "jws-too-large"),
    ],
)
def test_parse_errors(token: str, code: str) -> None:
    with pytest.raises(JoseError) as info:
        parse_jws(token)
    assert info.value.code == code
