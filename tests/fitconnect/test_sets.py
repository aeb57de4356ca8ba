"""Security Event Tokens: build, parse (every structural rule with its own code), verify."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from joserfc import jwt as rfc_jwt
from joserfc.jwk import RSAKey

from gateway.fitconnect import sets
from gateway.fitconnect.jose import b64url_encode
from gateway.fitconnect.sets import SETError, build_set, parse_set, verify_set

from .conftest import TEST_DESTINATION_ID, KeySet

SUBMISSION = "ce75a6b8-d72f-4b94-b09e-af6be35bc2ae"
CASE = "e89e107e-cdfd-4cd5-a7e0-3fd5d2b7ac8b"
NOW = 1_700_000_000
TAGS = {"authenticationTags": {"metadata": "A" * 22, "data": "B" * 22, "attachments": {}}}


def signed(header: dict[str, Any], claims: Any, key: RSAPrivateKey) -> str:
    """Sign arbitrary header/claims with PS512 (to build tokens our builder would never make)."""
    signing_input = b64url_encode(json.dumps(header).encode()) + "." + b64url_encode(json.dumps(claims).encode())
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=64)
    return signing_input + "." + b64url_encode(key.sign(signing_input.encode(), pss, hashes.SHA512()))


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "$schema": sets.SET_SCHEMA_URI,
        "jti": str(uuid.uuid4()),
        "iss": TEST_DESTINATION_ID,
        "iat": NOW,
        "sub": f"submission:{SUBMISSION}",
        "txn": f"case:{CASE}",
        "events": {sets.ACCEPT_SUBMISSION: TAGS},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not Ellipsis}


HEADER = {"typ": "secevent+jwt", "alg": "PS512", "kid": "signing-kid-1"}


def test_build_parse_verify(key_set: KeySet) -> None:
    token = build_set(
        issuer=TEST_DESTINATION_ID,
        submission_id=SUBMISSION,
        case_id=CASE,
        event=sets.ACCEPT_SUBMISSION,
        payload=TAGS,
        key=key_set.signing.key,
        kid=key_set.signing.kid,
        iat=NOW,
    )
    parsed = parse_set(token, now=NOW)
    assert parsed.event == sets.ACCEPT_SUBMISSION
    assert parsed.event_payload == TAGS
    assert (parsed.submission_id, parsed.reply_id, parsed.case_id) == (SUBMISSION, None, CASE)
    assert (parsed.issuer, parsed.iat, parsed.token) == (TEST_DESTINATION_ID, NOW, token)
    assert parsed.claims["$schema"] == sets.SET_SCHEMA_URI
    assert parsed.header["kid"] == key_set.signing.kid
    uuid.UUID(parsed.jti)
    verify_set(parsed, key_set.signing.key.public_key())


def test_joserfc_reads_our_set(key_set: KeySet) -> None:
    token = build_set(
        issuer="https://zsd.example",
        submission_id=SUBMISSION,
        case_id=CASE,
        event=sets.SUBMIT_SUBMISSION,
        payload=TAGS,
        key=key_set.signing.key,
        kid="k",
        include_schema=False,
    )
    decoded = rfc_jwt.decode(token, RSAKey.import_key(key_set.signing_public), algorithms=["PS512"])
    assert decoded.header["typ"] == "secevent+jwt"
    assert decoded.claims["events"] == {sets.SUBMIT_SUBMISSION: TAGS}
    assert "$schema" not in decoded.claims


def test_uppercase_ids_are_normalised(key_set: KeySet) -> None:
    token = signed(
        HEADER,
        claims(sub=f"submission:{SUBMISSION.upper()}", txn=f"case:{CASE.upper()}", iss=TEST_DESTINATION_ID.upper()),
        key_set.signing.key,
    )
    parsed = parse_set(token, now=NOW)
    assert (parsed.submission_id, parsed.case_id, parsed.issuer) == (SUBMISSION, CASE, TEST_DESTINATION_ID)
    verify_set(parsed, key_set.signing.key.public_key())


def test_reply_subject(key_set: KeySet) -> None:
    parsed = parse_set(signed(HEADER, claims(sub=f"reply:{SUBMISSION}"), key_set.signing.key), now=NOW)
    assert (parsed.submission_id, parsed.reply_id) == (None, SUBMISSION)


def test_typ_with_media_type_prefix(key_set: KeySet) -> None:
    header = {**HEADER, "typ": "application/secevent+jwt"}
    assert parse_set(signed(header, claims(), key_set.signing.key), now=NOW).event == sets.ACCEPT_SUBMISSION


@pytest.mark.parametrize(
    ("header", "body", "code"),
    [
        ({**HEADER, "typ": "JWT"}, claims(), "typ"),
        ({"alg": "PS512", "kid": "k"}, claims(), "typ"),
        ({**HEADER, "alg": "RS512"}, claims(), "alg"),
        ({**HEADER, "alg": "none"}, claims(), "alg"),
        ({**HEADER, "crit": ["x"]}, claims(), "alg"),
        ({"typ": "secevent+jwt", "alg": "PS512"}, claims(), "kid"),
        ({**HEADER, "kid": ""}, claims(), "kid"),
        (HEADER, claims(jti=...), "claims"),
        (HEADER, claims(iss=...), "claims"),
        (HEADER, claims(iss=42), "claims"),
        (HEADER, claims(iat="1700000000"), "claims"),
        (HEADER, claims(iat=True), "claims"),
        (HEADER, claims(iat=1.7e9), "claims"),
        (HEADER, claims(sub=...), "claims"),
        (HEADER, claims(txn=...), "claims"),
        (HEADER, claims(events=...), "claims"),
        (HEADER, claims(**{"$schema": "https://example.org/schema.json"}), "schema"),
        (HEADER, claims(events={}), "events"),
        (HEADER, claims(events={sets.ACCEPT_SUBMISSION: {}, sets.REJECT_SUBMISSION: {}}), "events"),
        (HEADER, claims(events=[sets.ACCEPT_SUBMISSION]), "events"),
        (HEADER, claims(events={sets.ACCEPT_SUBMISSION: []}), "events"),
        (HEADER, claims(events={"": {}}), "events"),
        (HEADER, claims(sub=SUBMISSION), "sub"),
        (HEADER, claims(sub=f"submissions:{SUBMISSION}"), "sub"),
        (HEADER, claims(sub="submission:not-a-uuid"), "sub"),
        (HEADER, claims(sub=f"submission:{SUBMISSION} "), "sub"),
        (HEADER, claims(txn=f"Case:{CASE}"), "txn"),
        (HEADER, claims(txn=f"case:{CASE[:-1]}"), "txn"),
        (HEADER, claims(iat=NOW + 301), "iat"),
        (HEADER, claims(iat=1_500_000_000), "iat"),
    ],
)
def test_structural_rules(key_set: KeySet, header: dict[str, Any], body: dict[str, Any], code: str) -> None:
    with pytest.raises(SETError) as info:
        parse_set(signed(header, body, key_set.signing.key), now=NOW)
    assert info.value.code == code


def test_clock_skew_is_configurable(key_set: KeySet) -> None:
    token = signed(HEADER, claims(iat=NOW + 250), key_set.signing.key)
    assert parse_set(token, now=NOW).iat == NOW + 250
    with pytest.raises(SETError):
        parse_set(token, now=NOW, max_skew=60)


@pytest.mark.parametrize("token", ["a.b", "not a token", "e30.e30.e30.e30", "e30.W10.c2ln"])
def test_format_errors(token: str) -> None:
    with pytest.raises(SETError) as info:
        parse_set(token, now=NOW)
    assert info.value.code == "format"


def test_signature_errors(key_set: KeySet, second_key: RSAPrivateKey) -> None:
    token = signed(HEADER, claims(), key_set.signing.key)
    with pytest.raises(SETError) as info:
        verify_set(parse_set(token, now=NOW), second_key.public_key())
    assert info.value.code == "signature"
    # A payload swapped under a valid signature is caught too.
    header_b64, _, signature = token.split(".")
    other = b64url_encode(json.dumps(claims(events={sets.REJECT_SUBMISSION: {"problems": []}})).encode())
    forged = parse_set(f"{header_b64}.{other}.{signature}", now=NOW)
    with pytest.raises(SETError):
        verify_set(forged, key_set.signing.key.public_key())


def test_event_uris() -> None:
    prefix = "https://schema.fitko.de/fit-connect/events/"
    assert prefix + "create-submission" == sets.CREATE_SUBMISSION
    assert prefix + "submit-submission" == sets.SUBMIT_SUBMISSION
    assert prefix + "notify-submission" == sets.NOTIFY_SUBMISSION
    assert prefix + "forward-submission" == sets.FORWARD_SUBMISSION
    assert prefix + "accept-submission" == sets.ACCEPT_SUBMISSION
    assert prefix + "reject-submission" == sets.REJECT_SUBMISSION
    assert prefix + "delete-submission" == sets.DELETE_SUBMISSION


HOSTILE_KIDS = [
    "../../../submissions",  # path traversal
    "..%2F..%2Fsubmissions",  # percent-encoding
    "abcdefgh/keys/other",  # more path segments
    "abcdefgh?limit=500",  # a query
    "abcdefgh#fragment",
    "abcdefgh\r\nX-Injected: 1",  # CR/LF
    "abcdefgh\x00",  # NUL
    "ключ-1234567",  # Unicode
    "a" * 65,  # overlong
    "short",  # below the schema's 8
    "abc defgh",
]


@pytest.mark.parametrize("kid", HOSTILE_KIDS)
def test_hostile_kid_is_refused_before_any_lookup(key_set: KeySet, kid: str) -> None:
    token = signed({**HEADER, "kid": kid}, claims(), key_set.signing.key)
    with pytest.raises(SETError) as info:
        parse_set(token, now=NOW)
    assert info.value.code == "kid"
    assert kid not in info.value.message  # the value is not echoed into logs or problems


@pytest.mark.parametrize(
    "kid", ["c66e4423-e28d-4a1f-911d-818f9ab60221", "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs", "2011-04-29"]
)
def test_documented_kid_forms_pass(key_set: KeySet, kid: str) -> None:
    assert parse_set(signed({**HEADER, "kid": kid}, claims(), key_set.signing.key), now=NOW).header["kid"] == kid


@pytest.mark.parametrize("member", ["jku", "x5u", "jwk", "x5c"])
def test_token_carried_keys_are_refused(key_set: KeySet, member: str) -> None:
    token = signed({**HEADER, member: "https://evil.example/keys.json"}, claims(), key_set.signing.key)
    with pytest.raises(SETError) as info:
        parse_set(token, now=NOW)
    assert info.value.code == "alg"
