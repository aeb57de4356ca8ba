"""JWE (RSA-OAEP-256 + A256GCM) of the FIT-Connect profile, cross-checked against joserfc."""

from __future__ import annotations

import json
import os
import zlib
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc import jwe as rfc_jwe
from joserfc.jwk import RSAKey

from gateway.fitconnect import jose
from gateway.fitconnect.jose import (
    DecryptionError,
    JoseError,
    JWEFormatError,
    PlaintextTooLarge,
    PrivateKeyEntry,
    UnsupportedAlgorithm,
    auth_tag,
    b64url_decode,
    b64url_encode,
    decrypt_jwe,
    encrypt_jwe,
    parse_jwe,
)

from .conftest import KeySet

RFC_ALGS = ["RSA-OAEP-256", "A256GCM", "DEF"]
OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def raw_jwe(
    header: dict[str, Any],
    body: bytes,
    recipient: RSAPublicKey,
    *,
    cek_bits: int = 256,
    iv: bytes | None = None,
    tag_len: int = 16,
) -> str:
    """Build a compact JWE by hand, with full control over header and body (for negative tests)."""
    protected = b64url_encode(json.dumps(header).encode())
    cek = AESGCM.generate_key(bit_length=cek_bits)
    iv = iv if iv is not None else os.urandom(12)
    sealed = AESGCM(cek).encrypt(iv[:12].ljust(12, b"\0"), body, protected.encode())
    parts = [protected, b64url_encode(recipient.encrypt(cek, OAEP)), b64url_encode(iv)]
    parts += [b64url_encode(sealed[:-16]), b64url_encode(sealed[-16:][:tag_len])]
    return ".".join(parts)


def entries(key_set: KeySet, second_key: RSAPrivateKey) -> tuple[PrivateKeyEntry, PrivateKeyEntry]:
    return key_set.encryption, PrivateKeyEntry.from_key("old-key-0001", second_key)


# -- base64url ------------------------------------------------------------------------------------


@given(st.binary(max_size=64))
def test_b64url_round_trip(data: bytes) -> None:
    encoded = b64url_encode(data)
    assert "=" not in encoded
    assert b64url_decode(encoded) == data
    assert b64url_decode(encoded + "=" * (-len(encoded) % 4)) == data  # padding tolerated


@pytest.mark.parametrize(
    "text",
    ["ab+c", "ab/c", "ab c", "ab\nc", "abcde", "AA=", "AA===", "A===", "AB", "ABC", "äbc", "=AAA", "AA=A"],
)
def test_b64url_rejects(text: str) -> None:
    with pytest.raises(JoseError) as info:
        b64url_decode(text)
    assert info.value.code == "base64url"


# -- round trips and interoperability --------------------------------------------------------------


def test_round_trip_header_and_sizes(key_set: KeySet) -> None:
    pub = key_set.encryption.key.public_key()
    compact = encrypt_jwe(b'{"a": 1}', pub, kid="kid-1", cty="application/json")
    segments = compact.split(".")
    assert len(segments) == 5
    assert len(segments[1]) == 683  # RSA-4096 encrypted key
    assert len(segments[4]) == 22  # 16-byte tag
    parts = parse_jwe(compact)
    assert parts.header == {"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": "kid-1", "cty": "application/json"}
    assert auth_tag(compact) == segments[4] == parts.tag_b64
    result = decrypt_jwe(compact, [key_set.encryption])
    assert result.plaintext == b'{"a": 1}'
    assert result.kid_used == key_set.encryption.kid


@pytest.mark.parametrize("zip_def", [False, True])
def test_ours_decrypts_with_joserfc(key_set: KeySet, zip_def: bool) -> None:
    plaintext = b"Antrag auf Wohngeld \xc3\xa4\xc3\xb6\xc3\xbc " * 50
    compact = encrypt_jwe(plaintext, key_set.encryption.key.public_key(), kid="k", cty="text/plain", zip_def=zip_def)
    rfc_key = RSAKey.import_key(key_set.encryption.key)
    obj = rfc_jwe.decrypt_compact(compact, rfc_key, algorithms=RFC_ALGS)
    assert obj.plaintext == plaintext
    assert obj.protected.get("zip") == ("DEF" if zip_def else None)


@pytest.mark.parametrize("zip_def", [False, True])
def test_joserfc_decrypts_with_ours(key_set: KeySet, zip_def: bool) -> None:
    plaintext = os.urandom(1000) + b"x" * 5000
    header = {"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": key_set.encryption.kid, "cty": "application/pdf"}
    if zip_def:
        header["zip"] = "DEF"
    # joserfc maps RSA-OAEP to the key_op "encrypt", FIT-Connect keys say "wrapKey" (a known JOSE
    # library quirk, digest §6.10), so the unmodified library gets the JWK without key_ops.
    public = {k: v for k, v in key_set.encryption_public.items() if k != "key_ops"}
    rfc_key = RSAKey.import_key(public)
    compact = rfc_jwe.encrypt_compact(header, plaintext, rfc_key, algorithms=RFC_ALGS)
    result = decrypt_jwe(compact, [key_set.encryption])
    assert result.plaintext == plaintext
    assert result.header["cty"] == "application/pdf"


def test_empty_plaintext(key_set: KeySet) -> None:
    compact = encrypt_jwe(b"", key_set.encryption.key.public_key(), kid=None, cty=None)
    assert compact.split(".")[3] == ""
    assert decrypt_jwe(compact, [key_set.encryption]).plaintext == b""


# -- key selection (rollover, legacy kids) ----------------------------------------------------------


def test_key_named_by_kid_is_used(key_set: KeySet, second_key: RSAPrivateKey) -> None:
    new, old = entries(key_set, second_key)
    compact = encrypt_jwe(b"x", second_key.public_key(), kid=old.kid, cty=None)
    assert decrypt_jwe(compact, [new, old]).kid_used == old.kid


def test_kid_may_be_the_thumbprint(key_set: KeySet, second_key: RSAPrivateKey) -> None:
    new, old = entries(key_set, second_key)
    compact = encrypt_jwe(b"x", key_set.encryption.key.public_key(), kid=new.thumbprint, cty=None)
    assert decrypt_jwe(compact, [old, new]).kid_used == new.kid


@pytest.mark.parametrize("kid", ["unknown-kid", None])
def test_fallback_to_all_keys(key_set: KeySet, second_key: RSAPrivateKey, kid: str | None) -> None:
    new, old = entries(key_set, second_key)
    compact = encrypt_jwe(b"rollover", second_key.public_key(), kid=kid, cty=None)
    result = decrypt_jwe(compact, [new, old])
    assert (result.plaintext, result.kid_used) == (b"rollover", old.kid)


def test_wrong_kid_points_to_wrong_key_then_falls_back(key_set: KeySet, second_key: RSAPrivateKey) -> None:
    new, old = entries(key_set, second_key)
    compact = encrypt_jwe(b"x", second_key.public_key(), kid=new.kid, cty=None)
    assert decrypt_jwe(compact, [new, old]).kid_used == old.kid


def test_no_matching_key(key_set: KeySet, second_key: RSAPrivateKey) -> None:
    compact = encrypt_jwe(b"x", second_key.public_key(), kid=key_set.encryption.kid, cty=None)
    with pytest.raises(DecryptionError) as info:
        decrypt_jwe(compact, [key_set.encryption])
    assert info.value.code == "no-matching-key"
    with pytest.raises(DecryptionError) as info:
        decrypt_jwe(compact, [])
    assert info.value.code == "no-keys"


def test_cek_of_wrong_length(key_set: KeySet) -> None:
    header = {"alg": "RSA-OAEP-256", "enc": "A256GCM"}
    compact = raw_jwe(header, b"x", key_set.encryption.key.public_key(), cek_bits=128)
    with pytest.raises(DecryptionError) as info:
        decrypt_jwe(compact, [key_set.encryption])
    assert info.value.code == "cek-length"


# -- tampering --------------------------------------------------------------------------------------


def _replace_segment(compact: str, index: int, value: str) -> str:
    segments = compact.split(".")
    segments[index] = value
    return ".".join(segments)


def test_tampered_ciphertext_tag_iv_and_header(key_set: KeySet) -> None:
    pub = key_set.encryption.key.public_key()
    compact = encrypt_jwe(b"some plaintext bytes", pub, kid="kid-1", cty="application/json")
    ct = bytearray(b64url_decode(compact.split(".")[3]))
    ct[3] ^= 0x80
    tag = bytearray(b64url_decode(compact.split(".")[4]))
    tag[0] ^= 1
    iv = bytearray(b64url_decode(compact.split(".")[2]))
    iv[11] ^= 1
    other_header = b64url_encode(json.dumps({"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": "kid-2"}).encode())
    other = encrypt_jwe(b"some plaintext bytes", pub, kid="kid-1", cty="application/json")
    variants = [
        _replace_segment(compact, 3, b64url_encode(bytes(ct))),
        _replace_segment(compact, 4, b64url_encode(bytes(tag))),
        _replace_segment(compact, 2, b64url_encode(bytes(iv))),
        _replace_segment(compact, 0, other_header),  # AAD changed
        _replace_segment(compact, 4, other.split(".")[4]),  # tag of another JWE
    ]
    for variant in variants:
        with pytest.raises(DecryptionError) as info:
            decrypt_jwe(variant, [key_set.encryption])
        assert info.value.code == "tag-mismatch"


# -- structural checks ------------------------------------------------------------------------------


def _header_segment(header: Any) -> str:
    return b64url_encode(json.dumps(header).encode())


GOOD = {"alg": "RSA-OAEP-256", "enc": "A256GCM"}


@pytest.mark.parametrize(
    ("header", "error", "code"),
    [
        ({"alg": "RSA1_5", "enc": "A256GCM"}, UnsupportedAlgorithm, "jwe-alg"),
        ({"alg": "RSA-OAEP", "enc": "A256GCM"}, UnsupportedAlgorithm, "jwe-alg"),
        ({"alg": "dir", "enc": "A256GCM"}, UnsupportedAlgorithm, "jwe-alg"),
        ({"alg": "none", "enc": "A256GCM"}, UnsupportedAlgorithm, "jwe-alg"),
        ({"alg": "RSA-OAEP-256", "enc": "A128GCM"}, UnsupportedAlgorithm, "jwe-enc"),
        ({"alg": "RSA-OAEP-256", "enc": "A256CBC-HS512"}, UnsupportedAlgorithm, "jwe-enc"),
        ({**GOOD, "crit": ["exp"], "exp": 1}, UnsupportedAlgorithm, "jwe-crit"),
        ({**GOOD, "zip": "GZIP"}, UnsupportedAlgorithm, "jwe-zip"),
        ({"alg": "RSA-OAEP-256"}, JWEFormatError, "jwe-header"),
        ({**GOOD, "kid": 17}, JWEFormatError, "jwe-header"),
        ({**GOOD, "cty": ["application/json"]}, JWEFormatError, "jwe-header"),
        (["RSA-OAEP-256", "A256GCM"], JWEFormatError, "jwe-header"),
    ],
)
def test_header_policy(key_set: KeySet, header: Any, error: type[JoseError], code: str) -> None:
    compact = encrypt_jwe(b"x", key_set.encryption.key.public_key(), kid=None, cty=None)
    forged = _replace_segment(compact, 0, _header_segment(header))
    with pytest.raises(error) as info:
        parse_jwe(forged)
    assert info.value.code == code
    with pytest.raises(error):
        decrypt_jwe(forged, [key_set.encryption])


def test_header_duplicate_member_and_invalid_json(key_set: KeySet) -> None:
    compact = encrypt_jwe(b"x", key_set.encryption.key.public_key(), kid=None, cty=None)
    duplicate = b64url_encode(b'{"alg":"RSA-OAEP-256","enc":"A256GCM","enc":"A128GCM"}')
    for segment in (duplicate, b64url_encode(b"{not json"), b64url_encode(b"\xff\xfe"), "!!", ""):
        with pytest.raises(JWEFormatError) as info:
            parse_jwe(_replace_segment(compact, 0, segment))
        assert info.value.code == "jwe-header"


@pytest.mark.parametrize(
    ("index", "value", "code"),
    [
        (1, "", "jwe-encrypted-key"),
        (1, "a+b", "jwe-encrypted-key"),
        (2, b64url_encode(b"\0" * 16), "jwe-iv"),
        (2, b64url_encode(b"\0" * 11), "jwe-iv"),
        (3, "abc*", "jwe-ciphertext"),
        (4, b64url_encode(b"\0" * 15), "jwe-tag"),
        (4, b64url_encode(b"\0" * 32), "jwe-tag"),
    ],
)
def test_segment_checks(key_set: KeySet, index: int, value: str, code: str) -> None:
    compact = encrypt_jwe(b"x", key_set.encryption.key.public_key(), kid=None, cty=None)
    with pytest.raises(JWEFormatError) as info:
        parse_jwe(_replace_segment(compact, index, value))
    assert info.value.code == code


@pytest.mark.parametrize("count", [1, 3, 4, 6])
def test_segment_count(key_set: KeySet, count: int) -> None:
    compact = encrypt_jwe(b"x", key_set.encryption.key.public_key(), kid=None, cty=None)
    segments = (compact.split(".") * 2)[:count]
    with pytest.raises(JWEFormatError) as info:
        parse_jwe(".".join(segments))
    assert info.value.code == "jwe-segments"
    if count != 5:
        with pytest.raises(JWEFormatError):
            auth_tag(".".join(segments))


def test_non_ascii_jwe() -> None:
    with pytest.raises(JWEFormatError) as info:
        parse_jwe("ä.b.c.d.e")
    assert info.value.code == "jwe-segments"


# -- DEFLATE and size bounds ------------------------------------------------------------------------


def test_zip_bomb_is_bounded(key_set: KeySet) -> None:
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = bomb.compress(b"\0" * (8 << 20)) + bomb.flush()
    assert len(body) < 64 * 1024
    compact = raw_jwe({**GOOD, "zip": "DEF"}, body, key_set.encryption.key.public_key())
    with pytest.raises(PlaintextTooLarge) as info:
        decrypt_jwe(compact, [key_set.encryption], max_plaintext=1 << 20)
    assert info.value.code == "plaintext-too-large"
    assert len(decrypt_jwe(compact, [key_set.encryption], max_plaintext=8 << 20).plaintext) == 8 << 20


def test_plaintext_bound_without_zip(key_set: KeySet) -> None:
    compact = encrypt_jwe(b"y" * 2000, key_set.encryption.key.public_key(), kid=None, cty=None)
    with pytest.raises(PlaintextTooLarge):
        decrypt_jwe(compact, [key_set.encryption], max_plaintext=1999)
    assert decrypt_jwe(compact, [key_set.encryption], max_plaintext=2000).plaintext == b"y" * 2000


def test_bad_deflate_data(key_set: KeySet) -> None:
    pub = key_set.encryption.key.public_key()
    good = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = good.compress(b"hello world" * 100) + good.flush()
    cases = {
        "garbage": b"\xff\xff\xff\xff not deflate",
        "truncated": stream[: len(stream) // 2],
        "trailing": stream + b"extra",
    }
    for body in cases.values():
        compact = raw_jwe({**GOOD, "zip": "DEF"}, body, pub)
        with pytest.raises(JWEFormatError) as info:
            decrypt_jwe(compact, [key_set.encryption])
        assert info.value.code == "jwe-inflate"


@settings(max_examples=30, deadline=None)
@given(plaintext=st.binary(max_size=300), zip_def=st.booleans())
def test_round_trip_property(key_set: KeySet, plaintext: bytes, zip_def: bool) -> None:
    compact = encrypt_jwe(plaintext, key_set.encryption.key.public_key(), kid=None, cty=None, zip_def=zip_def)
    assert decrypt_jwe(compact, [key_set.encryption]).plaintext == plaintext


def test_module_constants_match_profile() -> None:
    assert (jose.JWE_ALG, jose.JWE_ENC, jose.JWS_ALG) == ("RSA-OAEP-256", "A256GCM", "PS512")
