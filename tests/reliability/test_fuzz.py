"""Fuzz targets (Hypothesis) for every parser that sees hostile bytes on the FIT-Connect path.

Properties, per target: no exception other than the documented error class, no hang (each test is
bounded by ``pytest.mark.timeout``), and valid inputs round-trip. Inputs: arbitrary bytes/text,
inputs built to get past the first checks (right segment count, plausible headers, base64url
alphabet), and single-character mutations of valid inputs.

Bounded by default (``GATEWAY_FUZZ_EXAMPLES``, default 200 per target, ``deadline=None``). A longer
run: ``GATEWAY_FUZZ_EXAMPLES=20000 pytest tests/reliability/test_fuzz.py`` (see docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from lxml import etree

from gateway.fitconnect.callbacks import CallbackVerdict, sign_callback, verify_callback
from gateway.fitconnect.jose import (
    JoseError,
    JWEStreamDecryptor,
    PrivateKeyEntry,
    b64url_encode,
    decrypt_jwe,
    encrypt_jwe,
    parse_jwe,
)
from gateway.fitconnect.keys import PrivateJWK, load_private_jwk
from gateway.fitconnect.sets import ACCEPT_SUBMISSION, SETError, build_set, parse_set, verify_set
from gateway.sources.fitconnect.checks import (
    CheckFailed,
    check_data,
    consistency_problems,
    declared_attachments,
    declared_data,
    match_service,
    metadata_schema,
    parse_metadata,
    validate_metadata,
)
from gateway.sources.fitconnect.schemas import SchemaIndex, load_schema_index
from gateway.xoev.parsing import ParseLimits, XmlRejected, parse_xml
from gateway_sandbox.online_service.sender import OutgoingAttachment, prepare_submission

from .harness import BAU_SCHEMA, BAU_SERVICE, DEMO_SCHEMAS, EXAMPLE, GEWERBE_SCHEMA, GEWERBE_SERVICE

EXAMPLES = int(os.environ.get("GATEWAY_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
TIMEOUT = pytest.mark.timeout(max(120, EXAMPLES // 2))  # the "no hang" bound for a whole target

B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
pytestmark = pytest.mark.slow


@functools.lru_cache(maxsize=1)
def decryption_key() -> PrivateJWK:
    return load_private_jwk(EXAMPLE / "encryption.private.jwk.json")


@functools.lru_cache(maxsize=1)
def signing_key() -> PrivateJWK:
    return load_private_jwk(EXAMPLE / "signing.private.jwk.json")


def keys() -> list[PrivateKeyEntry]:
    return [decryption_key()]


def public_key() -> Any:
    return decryption_key().key.public_key()


# -- strategies ---------------------------------------------------------------------------------------

json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False) | st.text(max_size=20)
)


def _json_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)


json_values = st.recursive(json_scalars, _json_containers, max_leaves=12)


def b64(data: bytes) -> str:
    return b64url_encode(data)


@st.composite
def jwe_like(draw: st.DrawFn) -> str:
    """Five segments with a plausible (or subtly wrong) header and random-length parts."""
    header: dict[str, Any] = {
        "alg": draw(st.sampled_from(["RSA-OAEP-256", "RSA-OAEP", "RSA1_5", "dir", "none", 7])),
        "enc": draw(st.sampled_from(["A256GCM", "A128GCM", "A256CBC-HS512", ""])),
    }
    if draw(st.booleans()):
        header["zip"] = draw(st.sampled_from(["DEF", "GZIP", None]))
    if draw(st.booleans()):
        header["kid"] = draw(st.text(max_size=40) | st.integers())
    if draw(st.booleans()):
        header["crit"] = draw(json_values)
    if draw(st.booleans()):
        header[draw(st.text(max_size=8))] = draw(json_values)
    raw_header = json.dumps(header).encode() if draw(st.booleans()) else draw(st.binary(max_size=64))
    key_len = draw(st.sampled_from([0, 1, 255, 256, 512, 513, 700]))
    parts = [
        b64(raw_header),
        b64(draw(st.binary(min_size=key_len, max_size=key_len))),
        b64(draw(st.binary(min_size=0, max_size=16))),
        b64(draw(st.binary(max_size=300))),
        b64(draw(st.binary(min_size=0, max_size=20))),
    ]
    count = draw(st.sampled_from([5, 5, 5, 4, 6]))
    return ".".join((parts + parts)[:count])


def mutate(text: str, position: int, replacement: str) -> str:
    position %= max(len(text), 1)
    return text[:position] + replacement + text[position + 1 :]


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, start = [], 0
    for point in points:
        out.append(data[start:point])
        start = point
    out.append(data[start:])
    return out


def stream_decrypt(data: bytes, cuts: list[int], max_plaintext: int = 1 << 20) -> bytes:
    sink = io.BytesIO()
    decryptor = JWEStreamDecryptor(keys(), sink, max_plaintext=max_plaintext)
    for piece in chunked(data, cuts):
        decryptor.feed(piece)
    result = decryptor.finish()
    plaintext = sink.getvalue()
    assert result.size == len(plaintext)
    return plaintext


# -- JWE ----------------------------------------------------------------------------------------------


@TIMEOUT
@FUZZ
@given(st.text(max_size=400) | st.text(alphabet=B64URL + ".", max_size=400) | jwe_like())
def test_jwe_parse_and_decrypt_raise_only_jose_errors(compact: str) -> None:
    for fn in (parse_jwe, lambda c: decrypt_jwe(c, keys(), max_plaintext=1 << 20)):
        with contextlib.suppress(JoseError):
            fn(compact)


@TIMEOUT
@FUZZ
@given(
    data=st.binary(max_size=400)
    | jwe_like().map(str.encode)
    | st.text(alphabet=B64URL + ".", max_size=400).map(str.encode),
    cuts=st.lists(st.integers(0, 10_000), max_size=8),
)
def test_jwe_stream_raises_only_jose_errors_and_agrees_with_one_shot(data: bytes, cuts: list[int]) -> None:
    try:
        streamed: bytes | None = stream_decrypt(data, cuts)
    except JoseError:
        streamed = None
    try:
        one_shot: bytes | None = decrypt_jwe(data.decode("latin-1"), keys(), max_plaintext=1 << 20).plaintext
    except JoseError:
        one_shot = None
    assert streamed == one_shot, "stream and one-shot decryption disagree on this input"


@TIMEOUT
@FUZZ
@given(
    plaintext=st.binary(max_size=3000),
    zip_def=st.booleans(),
    cty=st.sampled_from([None, "application/json", "application/xml"]),
    cuts=st.lists(st.integers(0, 10_000), max_size=10),
)
def test_jwe_round_trip_one_shot_and_streamed(
    plaintext: bytes, zip_def: bool, cty: str | None, cuts: list[int]
) -> None:
    compact = encrypt_jwe(plaintext, public_key(), kid=decryption_key().kid, cty=cty, zip_def=zip_def)
    assert decrypt_jwe(compact, keys()).plaintext == plaintext
    assert stream_decrypt(compact.encode(), cuts) == plaintext
    assert parse_jwe(compact).header.get("cty") == cty


@functools.lru_cache(maxsize=4)
def valid_jwe(zip_def: bool) -> str:
    return encrypt_jwe(b'{"antrag": "Gewerbeanmeldung", "n": 1}' * 20, public_key(), kid="k", cty=None, zip_def=zip_def)


@TIMEOUT
@FUZZ
@given(
    zip_def=st.booleans(),
    position=st.integers(0, 10_000),
    replacement=st.sampled_from(list(B64URL + ".=+/ \n\x00é")),
    cuts=st.lists(st.integers(0, 10_000), max_size=6),
)
def test_jwe_any_single_character_change_is_refused(
    zip_def: bool, position: int, replacement: str, cuts: list[int]
) -> None:
    original = valid_jwe(zip_def)
    tampered = mutate(original, position, replacement)
    assume(tampered != original)
    with pytest.raises(JoseError):
        decrypt_jwe(tampered, keys())
    with pytest.raises(JoseError):
        stream_decrypt(tampered.encode("utf-8"), cuts)


# -- SET ----------------------------------------------------------------------------------------------


@st.composite
def jws_like(draw: st.DrawFn) -> str:
    header = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "typ": st.sampled_from(["secevent+jwt", "JWT", "application/secevent+jwt", ""]) | json_values,
                "alg": st.sampled_from(["PS512", "RS256", "none", "HS256"]) | json_values,
                "kid": st.text(max_size=20) | json_values,
                "crit": json_values,
            },
        )
    )
    uid = st.uuids().map(str)
    claims = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "$schema": st.sampled_from(
                    ["https://schema.fitko.de/fit-connect/set-payload/1.0.0/set-payload.schema.json"]
                )
                | json_values,
                "jti": uid | json_values,
                "iss": st.text(max_size=30) | uid,
                "iat": st.integers(-(2**40), 2**40) | json_values,
                "sub": uid.map(lambda u: "submission:" + u) | uid.map(lambda u: "reply:" + u) | json_values,
                "txn": uid.map(lambda u: "case:" + u) | json_values,
                "events": st.dictionaries(st.text(max_size=40), json_values, max_size=2) | json_values,
            },
        )
    )
    segments = [
        b64(json.dumps(header).encode()),
        b64(json.dumps(claims).encode()),
        b64(draw(st.binary(max_size=600))),
    ]
    count = draw(st.sampled_from([3, 3, 3, 2, 4]))
    return ".".join((segments + segments)[:count])


@TIMEOUT
@FUZZ
@given(st.text(max_size=400) | st.text(alphabet=B64URL + ".", max_size=400) | jws_like())
def test_set_parser_raises_only_set_errors(token: str) -> None:
    now = int(time.time())
    try:
        parsed = parse_set(token, now=now)
    except SETError:
        return
    # Whatever passes the structural checks has the documented shape.
    assert parsed.case_id == str(uuid.UUID(parsed.case_id))
    assert (parsed.submission_id is None) != (parsed.reply_id is None)
    assert parsed.iat <= now + 300
    assert isinstance(parsed.event_payload, dict)
    with pytest.raises(SETError) as refused:  # random bytes are no PS512 signature of our key
        verify_set(parsed, signing_key().key.public_key())
    assert refused.value.code in ("signature", "format")


@TIMEOUT
@FUZZ
@given(
    submission=st.uuids(),
    case=st.uuids(),
    payload=st.dictionaries(st.text(max_size=10), json_values, max_size=3),
    position=st.integers(0, 10_000),
    replacement=st.sampled_from(list(B64URL + ".=")),
)
def test_set_round_trip_and_single_character_changes(
    submission: uuid.UUID, case: uuid.UUID, payload: dict[str, Any], position: int, replacement: str
) -> None:
    key = signing_key()
    token = build_set(
        issuer=str(uuid.uuid4()),
        submission_id=str(submission),
        case_id=str(case),
        event=ACCEPT_SUBMISSION,
        payload=payload,
        key=key.key,
        kid=key.kid,
    )
    parsed = parse_set(token)
    verify_set(parsed, key.key.public_key())
    assert (parsed.submission_id, parsed.case_id, parsed.event_payload) == (str(submission), str(case), payload)
    tampered = mutate(token, position, replacement)
    assume(tampered != token)
    with pytest.raises(SETError):
        verify_set(parse_set(tampered), key.key.public_key())


# -- callbacks ----------------------------------------------------------------------------------------

SECRET = "x" * 32 + "callback-secret"
REASONS = {"ok", "missing-headers", "bad-timestamp", "stale", "future", "bad-hmac"}


@TIMEOUT
@FUZZ
@given(
    timestamp=st.none() | st.text(max_size=20) | st.integers(0, 2**40).map(str),
    auth=st.none() | st.text(max_size=140) | st.text(alphabet="0123456789abcdefABCDEF", min_size=128, max_size=128),
    body=st.binary(max_size=300),
    now=st.integers(0, 2**40),
)
def test_callback_verification_never_raises(timestamp: str | None, auth: str | None, body: bytes, now: int) -> None:
    verdict = verify_callback(SECRET, timestamp, auth, body, now=now)
    assert isinstance(verdict, CallbackVerdict)
    assert verdict.reason in REASONS
    assert verdict.ok == (verdict.reason == "ok")
    assert not verdict.ok  # a random HMAC never matches


@TIMEOUT
@FUZZ
@given(
    body=st.binary(max_size=300),
    skew=st.integers(-299, 299),
    what=st.sampled_from(["body", "timestamp", "auth"]),
    position=st.integers(0, 10_000),
    flip=st.integers(1, 255),
)
def test_callback_round_trip_and_any_change_is_refused(
    body: bytes, skew: int, what: str, position: int, flip: int
) -> None:
    now = 1_800_000_000
    timestamp = now + skew
    auth = sign_callback(SECRET, body, timestamp)
    assert verify_callback(SECRET, str(timestamp), auth, body, now=now).ok
    ts_text = str(timestamp)
    if what == "body":
        if not body:
            body = b"x"
        else:
            i = position % len(body)
            body = body[:i] + bytes([body[i] ^ flip]) + body[i + 1 :]
    elif what == "timestamp":
        ts_text = str(timestamp + 1 + position % 100)
    else:
        i = position % len(auth)
        replacement = "0123456789abcdef"[(int(auth[i], 16) + 1 + flip % 15) % 16]
        auth = auth[:i] + replacement + auth[i + 1 :]
    assert not verify_callback(SECRET, ts_text, auth, body, now=now).ok


# -- XML ----------------------------------------------------------------------------------------------

LIMITS = ParseLimits(max_bytes=200_000, max_depth=32, max_elements=500, max_attribute_chars=200, max_text_chars=500)
XML_CODES = {
    "too-large",
    "syntax",
    "encoding",
    "doctype",
    "entity",
    "external-resource",
    "too-deep",
    "too-many-elements",
    "attribute-too-large",
    "text-too-large",
}
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,8}", fullmatch=True).filter(lambda n: not n.lower().startswith("xml"))
xml_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\ufffe\uffff"), max_size=30
).map(lambda s: "".join(c for c in s if c in "\t\n\r" or ord(c) >= 0x20))


@st.composite
def xml_trees(draw: st.DrawFn, depth: int = 0) -> etree._Element:
    elem = etree.Element(draw(names), attrib=draw(st.dictionaries(names, xml_text, max_size=3)))
    elem.text = draw(st.none() | xml_text)
    if depth < 4:
        for child in draw(st.lists(xml_trees(depth + 1), max_size=3)):
            child.tail = draw(st.none() | xml_text)
            elem.append(child)
    return elem


@TIMEOUT
@FUZZ
@given(
    st.binary(max_size=600)
    | st.text(alphabet="<>/=\"' ?!-[]&;:aAxX0\n", max_size=300).map(str.encode)
    | st.sampled_from(
        [
            b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e "x">]><a>&e;</a>',
            b'<a xmlns:xi="http://www.w3.org/2001/XInclude"><xi:include href="file:///etc/passwd"/></a>',
            b"\xff\xfe<\x00a\x00/\x00>\x00",
            b'<?xml version="1.0" encoding="ISO-8859-1"?><a>\xe4</a>',
            b"<a>" * 40 + b"</a>" * 40,
        ]
    )
)
def test_xml_parser_raises_only_xml_rejected(data: bytes) -> None:
    code = None
    try:
        parse_xml(data, LIMITS)
    except XmlRejected as exc:
        code = exc.code
    assert code is None or code in XML_CODES, code


@TIMEOUT
@FUZZ
@given(xml_trees())
def test_xml_round_trip(root: etree._Element) -> None:
    document = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    parsed = parse_xml(document, LIMITS)
    assert etree.tostring(parsed.getroot(), method="c14n") == etree.tostring(root, method="c14n")


# -- metadata -----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def schema_index(metadata_dir: Path) -> SchemaIndex:
    return load_schema_index(json_dirs=[(metadata_dir, "m"), (DEMO_SCHEMAS, "d")], xsd_dirs=[(DEMO_SCHEMAS, "d")])


@functools.lru_cache(maxsize=2)
def valid_metadata(version: str) -> str:
    prepared = prepare_submission(
        recipient=public_key(),
        kid="k",
        service_identifier=GEWERBE_SERVICE,
        service_name="Gewerbeanmeldung",
        data=(DEMO_SCHEMAS / "examples" / "gewerbeanmeldung.json").read_bytes(),
        data_schema_uri=GEWERBE_SCHEMA,
        data_mime_type="application/json",
        attachments=[OutgoingAttachment(mime_type="application/pdf", filename="a.pdf", content=b"%PDF-1.4 x")],
        metadata_version=version,
    )
    prepared.cleanup()
    return json.dumps(prepared.metadata)


DESTINATION_SERVICES = [
    {
        "identifier": GEWERBE_SERVICE,
        "regions": ["DE09162000"],
        "submissionSchemas": [{"schemaUri": GEWERBE_SCHEMA, "mimeType": "application/json"}],
    },
    {
        "identifier": BAU_SERVICE,
        "regions": ["DE09162000"],
        "submissionSchemas": [{"schemaUri": BAU_SCHEMA, "mimeType": "application/xml"}],
    },
]


def metadata_pipeline(plaintext: bytes, index: SchemaIndex, *, api_service: str | None) -> list[Any]:
    """The subscriber's metadata stages in the receiver's order; CheckFailed ends them."""
    metadata = parse_metadata(plaintext)
    info = metadata_schema(
        metadata, supported=index.metadata_versions(), destination_versions=["1.0.0", "2.1.0"], allow_missing=True
    )
    validate_metadata(metadata, info, index)
    service = match_service(DESTINATION_SERVICES, api_service)
    declared = declared_data(metadata)
    attachments = declared_attachments(metadata)
    problems = consistency_problems(
        metadata=metadata,
        api_service=api_service,
        service=service,
        data_present=declared is not None,
        submission_attachments=[a.raw_id for a in attachments],
        tag_attachments=[a.raw_id for a in attachments],
        destination_reply_channels={"eMail": {}},
        schemas=index,
        require_data_schemas=True,
    )
    if declared is not None and not problems:
        data = (DEMO_SCHEMAS / "examples" / "gewerbeanmeldung.json").read_bytes()
        with contextlib.suppress(CheckFailed):
            check_data(data, declared, index, max_bytes=1 << 20)
    return problems


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated_metadata(draw: st.DrawFn) -> bytes:
    document = json.loads(valid_metadata(draw(st.sampled_from(["1.0.0", "2.1.0"]))))
    for _ in range(draw(st.integers(0, 3))):
        paths = _paths(document)
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if not path:
            document = draw(json_values) if action == "replace" else document
            continue
        parent = document
        for step in path[:-1]:
            parent = parent[step]
        if action == "replace":
            parent[path[-1]] = draw(json_values)
        elif action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=12))] = draw(json_values)
    return json.dumps(document).encode()


@TIMEOUT
@FUZZ
@given(
    plaintext=st.binary(max_size=300)
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n)
    | mutated_metadata(),
    api_service=st.sampled_from([GEWERBE_SERVICE, BAU_SERVICE, None, "urn:x"]),
)
def test_metadata_checks_raise_only_check_failed(metadata_dir: Path, plaintext: bytes, api_service: str | None) -> None:
    refused: CheckFailed | None = None
    try:
        problems = metadata_pipeline(plaintext, schema_index(metadata_dir), api_service=api_service)
    except CheckFailed as exc:
        refused, problems = exc, exc.problems
    if refused is not None:
        assert refused.problems, "a refusal without a problem for the reject-submission SET"
    assert all(p.type.startswith("https://schema.fitko.de/") for p in problems)


@pytest.mark.parametrize("version", ["1.0.0", "2.1.0"])
def test_valid_metadata_passes_every_stage(metadata_dir: Path, version: str) -> None:
    problems = metadata_pipeline(
        valid_metadata(version).encode(), schema_index(metadata_dir), api_service=GEWERBE_SERVICE
    )
    assert problems == []
