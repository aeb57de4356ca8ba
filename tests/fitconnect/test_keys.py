"""Key generation, JWK loading, RFC 7638 thumbprints and public key validation with real X.509 chains."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import stat
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from joserfc.jwk import RSAKey

from gateway.fitconnect.jose import PrivateKeyEntry, decrypt_jwe, encrypt_jwe, parse_jws, sign_jws, verify_jws
from gateway.fitconnect.keys import (
    KeyValidationError,
    is_test_key,
    load_private_jwk,
    load_public_jwk,
    thumbprint,
    validate_public_jwk,
)
from gateway.fitconnect.keys_cli import register

from .conftest import KeySet
from .pki import NOW, certificate, jwk_with_chain, name

CaKeys = tuple[RSAPrivateKey, RSAPrivateKey, RSAPrivateKey]


# -- generated key sets ---------------------------------------------------------------------------


def test_generated_files(key_set: KeySet) -> None:
    p = key_set.paths
    for path in (p.encryption_private, p.signing_private):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for path in (p.encryption_public, p.signing_public, p.encryption_cert, p.signing_cert):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    uuid.UUID(p.encryption_kid)
    uuid.UUID(p.signing_kid)
    enc, sig = key_set.encryption_public, key_set.signing_public
    assert (enc["kid"], enc["alg"], enc["key_ops"], enc["e"]) == (p.encryption_kid, "RSA-OAEP-256", ["wrapKey"], "AQAB")
    assert (sig["kid"], sig["alg"], sig["key_ops"]) == (p.signing_kid, "PS512", ["verify"])
    assert len(enc["n"]) == 683
    assert len(sig["n"]) == 683
    assert "d" not in enc
    assert "d" not in sig
    private = json.loads(p.encryption_private.read_text())
    assert private["key_ops"] == ["unwrapKey"]
    assert json.loads(p.signing_private.read_text())["key_ops"] == ["sign"]
    cert = x509.load_pem_x509_certificate(p.encryption_cert.read_bytes())
    assert "TEST ONLY" in cert.subject.rfc4514_string()
    assert cert.public_key().public_numbers() == load_public_jwk(enc).public_numbers()  # type: ignore[union-attr]


def test_generated_keys_validate_only_as_test_keys(key_set: KeySet) -> None:
    validate_public_jwk(key_set.encryption_public, purpose="encryption", allow_self_signed=True)
    validate_public_jwk(key_set.signing_public, purpose="signing", allow_self_signed=True)
    with pytest.raises(KeyValidationError) as info:
        validate_public_jwk(key_set.encryption_public, purpose="encryption")
    assert info.value.code == "self-signed"
    assert is_test_key(key_set.encryption_public)
    assert is_test_key(key_set.signing_public)
    with pytest.raises(KeyValidationError) as info:
        validate_public_jwk(key_set.encryption_public, purpose="signing", allow_self_signed=True)
    assert info.value.code == "alg"


def test_loaded_private_keys_work(key_set: KeySet) -> None:
    enc, sig = key_set.encryption, key_set.signing
    assert enc.can_decrypt
    assert not enc.can_sign
    assert sig.can_sign
    assert not sig.can_decrypt
    assert enc.public_jwk["key_ops"] == ["wrapKey"]
    assert isinstance(enc, PrivateKeyEntry)
    public = load_public_jwk(key_set.encryption_public)
    compact = encrypt_jwe(b"x", public, kid=enc.kid, cty=None)
    assert decrypt_jwe(compact, [enc]).kid_used == enc.kid
    verify_jws(parse_jws(sign_jws({"a": 1}, sig.key, kid=sig.kid)), load_public_jwk(key_set.signing_public))


def test_thumbprint_matches_joserfc(key_set: KeySet) -> None:
    expected = RSAKey.import_key(key_set.encryption_public).thumbprint()
    assert thumbprint(key_set.encryption_public) == expected
    assert thumbprint(key_set.encryption.key) == expected
    assert thumbprint(key_set.encryption.key.public_key()) == expected
    assert key_set.encryption.thumbprint == expected


def test_rfc7638_example_vector() -> None:
    # RFC 7638 §3.1 example key and thumbprint.
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV"
        "4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0z"
        "gdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFC"
        "ur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda j: j.pop("kid"), "kid"),
        (lambda j: j.update(alg="RS256"), "alg"),
        (lambda j: j.update(key_ops="unwrapKey"), "key_ops"),
        (lambda j: j.update(kty="EC"), "kty"),
        (lambda j: j.update(d="AQAB"), "jwk-format"),
        (lambda j: j.update(q="AQAB"), "jwk-format"),
    ],
)
def test_load_private_jwk_errors(key_set: KeySet, mutate: Any, code: str) -> None:
    jwk = json.loads(key_set.paths.encryption_private.read_text())
    mutate(jwk)
    with pytest.raises(KeyValidationError) as info:
        load_private_jwk(jwk)
    assert info.value.code == code


def test_load_private_jwk_from_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "k.json").write_text("[1]")
    for path in (tmp_path / "missing.json", tmp_path / "k.json"):
        with pytest.raises(KeyValidationError) as info:
            load_private_jwk(path)
        assert info.value.code == "jwk-format"


# -- validation against a real 3-level chain -------------------------------------------------------


@pytest.fixture(scope="module")
def pki(ca_keys: CaKeys, second_key: RSAPrivateKey) -> dict[str, Any]:
    root_key, inter_key, other_key = ca_keys
    root = certificate(
        subject=name("Test Root CA"),
        subject_key=root_key.public_key(),
        issuer=name("Test Root CA"),
        issuer_key=root_key,
        ca=True,
    )
    inter = certificate(
        subject=name("Test Sub CA"),
        subject_key=inter_key.public_key(),
        issuer=name("Test Root CA"),
        issuer_key=root_key,
        ca=True,
        pss=True,
    )
    leaf = certificate(
        subject=name("Stadt Musterstadt Bauamt"),
        subject_key=second_key.public_key(),
        issuer=name("Test Sub CA"),
        issuer_key=inter_key,
        ca=False,
        key_usage="encryption",
    )
    other_root = certificate(
        subject=name("Other Root"),
        subject_key=other_key.public_key(),
        issuer=name("Other Root"),
        issuer_key=other_key,
        ca=True,
    )
    return {
        "root": root,
        "inter": inter,
        "leaf": leaf,
        "other_root": other_root,
        "inter_key": inter_key,
        "root_key": root_key,
        "leaf_key": second_key,
    }


def _leaf(pki: dict[str, Any], **kwargs: Any) -> x509.Certificate:
    args = {
        "subject": name("Leaf"),
        "subject_key": pki["leaf_key"].public_key(),
        "issuer": name("Test Sub CA"),
        "issuer_key": pki["inter_key"],
        "ca": False,
        "key_usage": "encryption",
    }
    args.update(kwargs)
    return certificate(**args)


def test_three_level_chain_passes(pki: dict[str, Any]) -> None:
    jwk = jwk_with_chain(pki["leaf_key"].public_key(), [pki["leaf"], pki["inter"], pki["root"]])
    validate_public_jwk(jwk, purpose="encryption", trust_anchors=[pki["root"]])
    # The root may be left out of x5c when the anchor is configured.
    short = jwk_with_chain(pki["leaf_key"].public_key(), [pki["leaf"], pki["inter"]])
    validate_public_jwk(short, purpose="encryption", trust_anchors=[pki["other_root"], pki["root"]])
    assert not is_test_key(jwk)


def test_signing_chain_passes(pki: dict[str, Any]) -> None:
    leaf = _leaf(pki, key_usage="signing")
    jwk = jwk_with_chain(pki["leaf_key"].public_key(), [leaf, pki["inter"]], purpose="signing")
    validate_public_jwk(jwk, purpose="signing", trust_anchors=[pki["root"]])
    with pytest.raises(KeyValidationError) as info:
        validate_public_jwk(
            jwk_with_chain(pki["leaf_key"].public_key(), [leaf, pki["inter"]]),
            purpose="encryption",
            trust_anchors=[pki["root"]],
        )
    assert info.value.code == "cert-key-usage"


def _expect(code: str, jwk: dict[str, Any], anchors: list[x509.Certificate], **kwargs: Any) -> None:
    with pytest.raises(KeyValidationError) as info:
        validate_public_jwk(jwk, purpose=kwargs.pop("purpose", "encryption"), trust_anchors=anchors, **kwargs)
    assert info.value.code == code, info.value


def test_wrong_anchor(pki: dict[str, Any]) -> None:
    jwk = jwk_with_chain(pki["leaf_key"].public_key(), [pki["leaf"], pki["inter"], pki["root"]])
    _expect("untrusted", jwk, [pki["other_root"]])
    _expect("untrusted", jwk, [])
    _expect("untrusted", jwk, [pki["other_root"]], allow_self_signed=True)  # a chain is never "self-signed"


def test_expired_and_not_yet_valid(pki: dict[str, Any]) -> None:
    expired = _leaf(pki, not_before=NOW - dt.timedelta(days=30), not_after=NOW - dt.timedelta(days=1))
    future = _leaf(pki, not_before=NOW + dt.timedelta(days=1), not_after=NOW + dt.timedelta(days=30))
    _expect("cert-expired", jwk_with_chain(pki["leaf_key"].public_key(), [expired, pki["inter"]]), [pki["root"]])
    _expect("cert-not-yet-valid", jwk_with_chain(pki["leaf_key"].public_key(), [future, pki["inter"]]), [pki["root"]])
    jwk = jwk_with_chain(pki["leaf_key"].public_key(), [pki["leaf"], pki["inter"]])
    _expect("cert-expired", jwk, [pki["root"]], now=NOW + dt.timedelta(days=400))


def test_leaf_mismatch(pki: dict[str, Any], key_set: KeySet) -> None:
    jwk = jwk_with_chain(pki["leaf_key"].public_key(), [pki["leaf"], pki["inter"]])
    jwk["n"] = key_set.encryption_public["n"]
    _expect("leaf-mismatch", jwk, [pki["root"]])


def test_intermediate_must_be_ca(pki: dict[str, Any]) -> None:
    not_ca = certificate(
        subject=name("Test Sub CA"),
        subject_key=pki["inter_key"].public_key(),
        issuer=name("Test Root CA"),
        issuer_key=pki["root_key"],
        ca=False,
    )
    jwk = jwk_with_chain(pki["leaf_key"].public_key(), [pki["leaf"], not_ca])
    with pytest.raises(KeyValidationError) as info:
        validate_public_jwk(jwk, purpose="encryption", trust_anchors=[pki["root"]])
    assert info.value.code == "untrusted"
    assert "cA must be asserted" in info.value.message


def test_broken_chain(pki: dict[str, Any], ca_keys: CaKeys) -> None:
    forged_inter = certificate(
        subject=name("Test Sub CA"),
        subject_key=pki["inter_key"].public_key(),
        issuer=name("Test Root CA"),
        issuer_key=ca_keys[2],
        ca=True,
    )
    _expect("untrusted", jwk_with_chain(pki["leaf_key"].public_key(), [pki["leaf"], forged_inter]), [pki["root"]])
    forged_leaf = _leaf(pki, issuer_key=ca_keys[2])  # right issuer name, wrong signing key
    _expect("untrusted", jwk_with_chain(pki["leaf_key"].public_key(), [forged_leaf, pki["inter"]]), [pki["root"]])
    # The path is built from the x5c set by the library: a misordered chain still validates (the
    # signatures decide, not the positions), and a missing intermediate does not.
    misordered = jwk_with_chain(pki["leaf_key"].public_key(), [pki["leaf"], pki["root"], pki["inter"]])
    validate_public_jwk(misordered, purpose="encryption", trust_anchors=[pki["root"]])
    _expect("untrusted", jwk_with_chain(pki["leaf_key"].public_key(), [pki["leaf"]]), [pki["root"]])


def test_small_key_and_wrong_exponent(pki: dict[str, Any], ca_keys: CaKeys) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = _leaf(pki, subject_key=small.public_key())
    _expect("n-size", jwk_with_chain(small.public_key(), [leaf, pki["inter"]]), [pki["root"]])
    jwk = jwk_with_chain(pki["leaf_key"].public_key(), [pki["leaf"], pki["inter"]])
    jwk["e"] = "Aw"
    _expect("e", jwk, [pki["root"]])
    # Zero-padding a 2048-bit modulus makes the text long enough, but the number is still 2048 bits.
    small_jwk = jwk_with_chain(small.public_key(), [leaf, pki["inter"]])
    padded = dict(small_jwk, n="A" * 360 + small_jwk["n"])
    assert len(padded["n"]) >= 683
    _expect("n-size", padded, [pki["root"]])


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"kty": "EC"}, "kty"),
        ({"kid": ""}, "kid"),
        ({"alg": "RSA-OAEP"}, "alg"),
        ({"alg": "PS512"}, "alg"),
        ({"key_ops": ["wrapKey", "encrypt"]}, "key_ops"),
        ({"key_ops": ["unwrapKey"]}, "key_ops"),
        ({"key_ops": "wrapKey"}, "key_ops"),
        ({"x5c": None}, "x5c-missing"),
        ({"x5c": []}, "x5c-missing"),
        ({"x5c": ["not base64!"]}, "x5c-format"),
        ({"x5c": ["AAAA"]}, "x5c-format"),
        ({"x5c": [17]}, "x5c-format"),
        ({"d": "AQAB"}, "private-material"),
        ({"n": "short"}, "n-size"),
    ],
)
def test_jwk_member_rules(pki: dict[str, Any], change: dict[str, Any], code: str) -> None:
    jwk = jwk_with_chain(pki["leaf_key"].public_key(), [pki["leaf"], pki["inter"]])
    for key, value in change.items():
        if value is None:
            jwk.pop(key)
        else:
            jwk[key] = value
    _expect(code, jwk, [pki["root"]])


def test_pinned_self_signed_leaf_still_needs_allowance(key_set: KeySet) -> None:
    cert = x509.load_pem_x509_certificate(key_set.paths.encryption_cert.read_bytes())
    _expect("self-signed", key_set.encryption_public, [cert])
    validate_public_jwk(key_set.encryption_public, purpose="encryption", trust_anchors=[cert], allow_self_signed=True)


# -- CLI -----------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_generate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = "5b0d8a16-2e5f-4d0c-9d6c-9f1b7a3c2e01"
    args = _parser().parse_args(["keys", "generate", "--destination", dest, "--out", str(tmp_path / "k")])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["destinationId"] == dest
    public = json.loads((tmp_path / "k" / "encryption.public.jwk.json").read_text())
    assert public["kid"] == out["encryptionKid"]
    validate_public_jwk(public, purpose="encryption", allow_self_signed=True)
    # A second run refuses to overwrite keys.
    assert args.func(args) == 1
    assert "--force" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--destination", "not-a-uuid"], ["--bits", "2048"]])
def test_cli_refuses(tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    base = ["keys", "generate", "--destination", "5b0d8a16-2e5f-4d0c-9d6c-9f1b7a3c2e01", "--out", str(tmp_path)]
    args = _parser().parse_args(base + argv)
    assert args.func(args) == 2
    assert "error" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_example_key_set_is_valid_test_material() -> None:
    folder = Path(__file__).resolve().parents[2] / "certs" / "example"
    for purpose in ("encryption", "signing"):
        public = json.loads((folder / f"{purpose}.public.jwk.json").read_text())
        validate_public_jwk(public, purpose=purpose, allow_self_signed=True)  # type: ignore[arg-type]
        assert is_test_key(public)
        private = load_private_jwk(folder / f"{purpose}.private.jwk.json")
        assert private.kid == public["kid"]
        assert private.thumbprint == thumbprint(public)
