"""Sandbox: the event log (ZSD-issued SETs) and every reason to refuse a subscriber's SET."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from gateway.fitconnect.jose import sign_jws
from gateway.fitconnect.keys import load_private_jwk, load_public_jwk
from gateway.fitconnect.sets import (
    ACCEPT_SUBMISSION,
    CREATE_SUBMISSION,
    REJECT_SUBMISSION,
    SUBMIT_SUBMISSION,
    parse_set,
    verify_set,
)
from gateway_sandbox.testing import TEST_DESTINATION_ID, RunningSandbox, SandboxKeys

from .sandbox_helpers import (  # noqa: F401  (api_fixture provides the api fixture)
    JOSE,
    Api,
    Sent,
    accept_set,
    api_fixture,
    create,
    raw_set,
    sandbox_api,
    send,
    signing_key,
    subscriber_set,
)


async def _post(api: Api, case_id: str, token: str, auth: str = "subscriber") -> Any:
    return await api.call("POST", f"/v1/cases/{case_id}/events", auth=auth, data=token, content_type=JOSE)


async def test_event_log_is_signed_by_the_sandbox(fitconnect_sandbox: RunningSandbox, api: Api) -> None:
    sb = fitconnect_sandbox
    assert sb.keys is not None
    sent = await send(api, sb.keys, attachments=2)
    r = await api.call("GET", f"/v1/cases/{sent.case_id}/events", auth="subscriber")
    assert r.status == 200
    assert r.json["count"] == r.json["totalCount"] == 2
    assert r.json["offset"] == 0
    (jwk,) = (await api.call("GET", "/.well-known/jwks.json")).json["keys"]
    events = []
    for token in r.json["eventLog"]:
        parsed = parse_set(token)
        assert parsed.header == {"alg": "PS512", "kid": jwk["kid"], "typ": "secevent+jwt"}
        verify_set(parsed, load_public_jwk(jwk))
        assert parsed.issuer == sb.base_url
        assert parsed.submission_id == sent.submission_id
        assert parsed.case_id == sent.case_id
        assert abs(parsed.iat - time.time()) < 60
        assert parsed.claims["$schema"].startswith("https://schema.fitko.de/fit-connect/set-payload/")
        events.append(parsed)
    assert [e.event for e in events] == [CREATE_SUBMISSION, SUBMIT_SUBMISSION]
    assert events[0].event_payload == {}
    assert events[1].event_payload == {"authenticationTags": sent.tags}
    # The sender (creator) may read the log too; pagination, oldest first.
    r = await api.call("GET", f"/v1/cases/{sent.case_id}/events?limit=1&offset=1", auth="sender")
    assert r.json["count"] == 1
    assert r.json["totalCount"] == 2
    assert parse_set(r.json["eventLog"][0]).event == SUBMIT_SUBMISSION


async def test_event_log_errors(fitconnect_sandbox: RunningSandbox, api: Api) -> None:
    sb = fitconnect_sandbox
    _, case_id, _ = await create(api, 0)
    (await api.call("GET", f"/v1/cases/{uuid.uuid4()}/events", auth="subscriber")).problem(404, "case-not-found")
    (await api.call("GET", "/v1/cases/nope/events", auth="subscriber")).problem(404, "not-found")
    (await api.call("GET", f"/v1/cases/{case_id}/events")).problem(401, "unauthorized")
    sb.add_client("stranger", "s3cret", ["send:region:DE"])  # may send, but did not create this case
    (await api.call("GET", f"/v1/cases/{case_id}/events", auth="stranger")).problem(403, "forbidden")
    (await api.call("GET", f"/v1/cases/{case_id}/events?limit=501", auth="sender")).problem(400, "invalid-request")


async def test_accept(fitconnect_sandbox: RunningSandbox, api: Api) -> None:
    sb = fitconnect_sandbox
    assert sb.keys is not None
    sent = await send(api, sb.keys, attachments=1)
    token = accept_set(sb.keys, sent)
    r = await _post(api, sent.case_id, token)
    assert r.status == 204
    assert r.body == b""
    assert sb.submission_status(sent.submission_id) == "accepted"
    log = (await api.call("GET", f"/v1/cases/{sent.case_id}/events", auth="sender")).json["eventLog"]
    assert log[-1] == token
    # Repeating it (a client retry) or any later accept/reject is an invalid transition.
    (await _post(api, sent.case_id, token)).problem(409, "invalid-state-transition")
    (await _post(api, sent.case_id, accept_set(sb.keys, sent))).problem(409, "invalid-state-transition")
    reject = subscriber_set(sb.keys, sent, REJECT_SUBMISSION, {"problems": [{"type": "urn:x", "title": "x"}]})
    (await _post(api, sent.case_id, reject)).problem(409, "invalid-state-transition")


async def test_reject_with_any_problem_type(fitconnect_sandbox: RunningSandbox, api: Api) -> None:
    sb = fitconnect_sandbox
    assert sb.keys is not None
    sent = await send(api, sb.keys)
    problems = [
        {
            "type": "https://schema.fitko.de/fit-connect/events/problems/some-future-problem",
            "title": "Neues Problem",
            "detail": "not in any catalogue the sandbox knows",
            "instance": "data",
        }
    ]
    r = await _post(api, sent.case_id, subscriber_set(sb.keys, sent, REJECT_SUBMISSION, {"problems": problems}))
    assert r.status == 204
    assert sb.submission_status(sent.submission_id) == "rejected"
    assert sb.events(sent.case_id)[-1].payload == {"problems": problems}
    assert not sb.sandbox.blobs.exists(sent.submission_id, "metadata")


async def test_409_for_incomplete_and_deleted(fitconnect_sandbox: RunningSandbox, api: Api) -> None:
    sb = fitconnect_sandbox
    assert sb.keys is not None
    sid, cid, _ = await create(api, 0)
    incomplete = Sent(sid, cid, tags={"metadata": "AAAAAAAAAAAAAAAAAAAAAA", "attachments": {}})
    body = (await _post(api, cid, accept_set(sb.keys, incomplete))).problem(409, "invalid-state-transition")
    assert "incomplete" in body["detail"]
    sb.advance(86400)  # incomplete submissions are deleted after a day
    assert sb.submission_status(sid) == "deleted"
    api.drop_tokens()
    (await _post(api, cid, accept_set(sb.keys, incomplete))).problem(409, "invalid-state-transition")


def _other_key_pem(keys: SandboxKeys) -> Any:
    # Any RSA-4096 key that is not the destination's signing key: the encryption key will do.
    return load_private_jwk(keys.encryption_private).key


BAD_SETS: list[tuple[str, Any]] = [
    ("malformed", lambda k, s, o: "not-a-jws"),
    ("malformed", lambda k, s, o: "e30.e30"),
    ("invalid-typ", lambda k, s, o: sign_jws(_claims(s), signing_key(k).key, kid=k.signing_kid, typ="JWT")),
    ("invalid-alg", lambda k, s, o: raw_set(k, s, header={"typ": "secevent+jwt", "alg": "none", "kid": k.signing_kid})),
    (
        "invalid-alg",
        lambda k, s, o: raw_set(k, s, header={"typ": "secevent+jwt", "alg": "RS512", "kid": k.signing_kid}),
    ),
    ("missing-kid", lambda k, s, o: raw_set(k, s, header={"typ": "secevent+jwt", "alg": "PS512"})),
    ("missing-claims", lambda k, s, o: raw_set(k, s, jti=None)),
    ("missing-claims", lambda k, s, o: raw_set(k, s, events=None)),
    ("missing-claims", lambda k, s, o: raw_set(k, s, iat="yesterday")),
    ("invalid-schema", lambda k, s, o: raw_set(k, s, schema="https://example.org/other.json")),
    ("invalid-events", lambda k, s, o: raw_set(k, s, events={ACCEPT_SUBMISSION: {}, REJECT_SUBMISSION: {}})),
    ("invalid-events", lambda k, s, o: raw_set(k, s, events={})),
    ("invalid-sub", lambda k, s, o: raw_set(k, s, sub=s.submission_id)),
    ("invalid-sub", lambda k, s, o: raw_set(k, s, sub=f"reply:{uuid.uuid4()}")),
    ("invalid-txn", lambda k, s, o: raw_set(k, s, txn=s.case_id)),
    ("invalid-iat", lambda k, s, o: raw_set(k, s, iat=int(time.time()) + 3600)),
    ("invalid-iat", lambda k, s, o: raw_set(k, s, iat=1000)),
    (
        "unknown-kid",
        lambda k, s, o: subscriber_set(
            k, s, ACCEPT_SUBMISSION, {"authenticationTags": s.tags}, kid="no-such-signing-key"
        ),
    ),
    (
        "unknown-kid",  # the encryption key's kid is not a signing key
        lambda k, s, o: subscriber_set(k, s, ACCEPT_SUBMISSION, {"authenticationTags": s.tags}, kid=k.encryption_kid),
    ),
    ("invalid-signature", lambda k, s, o: accept_set(k, s, key=_other_key_pem(k))),
    ("invalid-signature", lambda k, s, o: _tampered(accept_set(k, s))),
    ("invalid-issuer", lambda k, s, o: accept_set(k, s, issuer=str(uuid.uuid4()))),
    ("invalid-issuer", lambda k, s, o: accept_set(k, s, issuer="https://submission-api.example")),
    ("txn-mismatch", lambda k, s, o: accept_set(k, s, case_id=o.case_id)),
    ("subject-not-in-case", lambda k, s, o: accept_set(k, s, submission_id=o.submission_id)),
    ("subject-not-in-case", lambda k, s, o: accept_set(k, s, submission_id=str(uuid.uuid4()))),
    ("event-not-allowed", lambda k, s, o: subscriber_set(k, s, SUBMIT_SUBMISSION, {"authenticationTags": s.tags})),
    ("event-not-allowed", lambda k, s, o: subscriber_set(k, s, "https://example.org/events/x", {})),
    ("invalid-payload", lambda k, s, o: subscriber_set(k, s, ACCEPT_SUBMISSION, {})),
    ("invalid-payload", lambda k, s, o: subscriber_set(k, s, ACCEPT_SUBMISSION, {"authenticationTags": {"data": "x"}})),
    ("invalid-payload", lambda k, s, o: subscriber_set(k, s, REJECT_SUBMISSION, {"problems": []})),
    ("invalid-payload", lambda k, s, o: subscriber_set(k, s, REJECT_SUBMISSION, {"problems": [{"title": "no type"}]})),
    (
        "authentication-tags-mismatch",
        lambda k, s, o: subscriber_set(
            k, s, ACCEPT_SUBMISSION, {"authenticationTags": {**s.tags, "metadata": "AAAAAAAAAAAAAAAAAAAAAA"}}
        ),
    ),
]


def _claims(sent: Sent) -> dict[str, Any]:
    return {
        "jti": str(uuid.uuid4()),
        "iss": TEST_DESTINATION_ID,
        "iat": int(time.time()),
        "sub": f"submission:{sent.submission_id}",
        "txn": f"case:{sent.case_id}",
        "events": {ACCEPT_SUBMISSION: {"authenticationTags": sent.tags}},
    }


def _tampered(token: str) -> str:
    import json

    from gateway.fitconnect.jose import b64url_decode, b64url_encode

    head, payload, sig = token.split(".")
    claims = json.loads(b64url_decode(payload))
    claims["iat"] -= 1
    return ".".join((head, b64url_encode(json.dumps(claims).encode()), sig))


@pytest.mark.parametrize(("issue", "make"), BAD_SETS, ids=[f"{i}-{n}" for n, (i, _) in enumerate(BAD_SETS)])
async def test_bad_sets_are_422_with_issue(fitconnect_sandbox: RunningSandbox, api: Api, issue: str, make: Any) -> None:
    sb = fitconnect_sandbox
    assert sb.keys is not None
    sent = await send(api, sb.keys, attachments=1)
    other = await send(api, sb.keys, attachments=0)
    body = (await _post(api, sent.case_id, make(sb.keys, sent, other))).problem(422, "invalid-security-event-token")
    assert body["issue"] == issue, body
    assert body["detail"]
    assert sb.submission_status(sent.submission_id) == "submitted"
    assert len(sb.events(sent.case_id)) == 2  # nothing was recorded


async def test_duplicate_jti(fitconnect_sandbox: RunningSandbox, api: Api) -> None:
    sb = fitconnect_sandbox
    assert sb.keys is not None
    sent = await send(api, sb.keys)
    used = sb.events(sent.case_id)[0].claims["jti"]  # the ZSD's create-submission jti
    body = (await _post(api, sent.case_id, accept_set(sb.keys, sent, jti=used))).problem(
        422, "invalid-security-event-token"
    )
    assert body["issue"] == "duplicate-jti"


async def test_post_event_request_errors(fitconnect_sandbox: RunningSandbox, api: Api) -> None:
    sb = fitconnect_sandbox
    assert sb.keys is not None
    sent = await send(api, sb.keys)
    token = accept_set(sb.keys, sent)
    path = f"/v1/cases/{sent.case_id}/events"
    (await api.call("POST", path, auth="subscriber", data=token, content_type="application/jwt")).problem(
        400, "invalid-request"
    )
    (await api.call("POST", path, auth="subscriber", data="", content_type=JOSE)).problem(400, "invalid-request")
    (await api.call("POST", path, auth="subscriber", data="x" * 300_000, content_type=JOSE)).problem(
        413, "payload-too-large"
    )
    (await api.call("POST", path, data=token, content_type=JOSE)).problem(401, "unauthorized")
    (await _post(api, sent.case_id, token, auth="sender")).problem(403, "forbidden")
    (await _post(api, str(uuid.uuid4()), token)).problem(404, "case-not-found")
    (await _post(api, "nope", token)).problem(400, "invalid-request")
    assert (await _post(api, sent.case_id, token)).status == 204


async def test_signing_key_rollover_for_sets(fitconnect_sandbox: RunningSandbox, api: Api) -> None:
    """A second registered signing key is accepted as soon as it is added."""
    sb = fitconnect_sandbox
    assert sb.keys is not None
    sent = await send(api, sb.keys)
    other = load_private_jwk(sb.keys.encryption_private)  # reuse an RSA-4096 key as the "new" signing key
    from gateway.fitconnect.keys import jwk_from_public_key, self_signed_certificate, x5c_entry

    cert = self_signed_certificate(other.key, common_name="rollover TEST ONLY", purpose="signing")
    new_jwk = jwk_from_public_key(
        other.key.public_key(), kid="signing-2024-rollover", alg="PS512", key_ops=["verify"], x5c=[x5c_entry(cert)]
    )
    token = accept_set(sb.keys, sent, key=other.key, kid="signing-2024-rollover")
    body = (await _post(api, sent.case_id, token)).problem(422, "invalid-security-event-token")
    assert body["issue"] == "unknown-kid"
    r = await api.call("POST", f"/_sandbox/destinations/{TEST_DESTINATION_ID}/keys", json_body=new_jwk)
    assert r.status == 201
    assert (await _post(api, sent.case_id, token)).status == 204


async def test_accept_tag_check_can_be_switched_off(fitconnect_sandbox_keys: SandboxKeys) -> None:
    async with sandbox_api(fitconnect_sandbox_keys, verify_accept_tags=False) as a:
        sent = await send(a, fitconnect_sandbox_keys)
        token = subscriber_set(
            fitconnect_sandbox_keys, sent, ACCEPT_SUBMISSION, {"authenticationTags": {"metadata": "other"}}
        )
        assert (await _post(a, sent.case_id, token)).status == 204
