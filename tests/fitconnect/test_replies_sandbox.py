"""The sandbox's reply endpoints, with plain HTTP: exactly the shapes, statuses and scopes of the reply
profile (gateway/fitconnect/replies.py), the reply event log, callbacks both ways and the timers."""

from __future__ import annotations

import json
import uuid
from typing import Any

from gateway.fitconnect import replies as rp
from gateway.fitconnect.jose import parse_jws, verify_jws
from gateway.fitconnect.keys import load_public_jwk
from gateway.fitconnect.sets import parse_set
from gateway_sandbox.testing import RunningSandbox

from .sandbox_helpers import (  # noqa: F401  (api_fixture, receiver_fixture provide fixtures)
    JOSE,
    Api,
    Receiver,
    api_fixture,
    jwe,
    receiver_fixture,
    send,
)

CALLBACK_SECRET = "online-service-callback-" + "c" * 32


async def create_reply(api: Api, case_id: str, attachments: int = 1, **extra: Any) -> tuple[str, list[str]]:
    ids = [str(uuid.uuid4()) for _ in range(attachments)]
    body = {"caseId": case_id, "announcedAttachments": ids, **extra}
    r = await api.call("POST", "/v1/replies", auth="subscriber", json_body=body)
    assert r.status == rp.CREATE_STATUS, r.body
    return r.json["replyId"], ids


async def complete_reply(api: Api, case_id: str, attachments: int = 1) -> tuple[str, dict[str, Any]]:
    """A created, uploaded and submitted reply; returns its id and the tags sent."""
    keys = api.sb.keys
    assert keys is not None
    reply_id, ids = await create_reply(api, case_id, attachments)
    tags: dict[str, Any] = {"attachments": {}}
    for aid in ids:
        compact = jwe(keys, b"%PDF reply", "application/pdf")
        r = await api.call("PUT", f"/v1/replies/{reply_id}/attachments/{aid}", auth="subscriber", data=compact,
                           content_type=JOSE)  # fmt: skip
        assert r.status == rp.UPLOAD_STATUS, r.body
        tags["attachments"][aid] = compact.rsplit(".", 1)[1]
    metadata, data = jwe(keys, b'{"m": 1}'), jwe(keys, b'{"d": 1}')
    r = await api.call("PUT", f"/v1/replies/{reply_id}", auth="subscriber",
                       json_body={"encryptedMetadata": metadata, "encryptedData": data})  # fmt: skip
    assert r.status == rp.SUBMIT_STATUS, r.body
    tags.update(metadata=metadata.rsplit(".", 1)[1], data=data.rsplit(".", 1)[1])
    return reply_id, tags


async def test_create_upload_submit_and_the_reply_log(fitconnect_sandbox: RunningSandbox, api: Api) -> None:
    keys = fitconnect_sandbox.keys
    assert keys is not None
    sent = await send(api, keys)
    chosen = str(uuid.uuid4())
    reply_id, (aid,) = await create_reply(api, sent.case_id, replyId=chosen)
    assert reply_id == chosen
    r = await api.call("POST", "/v1/replies", auth="subscriber",
                       json_body={"caseId": sent.case_id, "announcedAttachments": [], "replyId": chosen})  # fmt: skip
    r.problem(409, rp.PROBLEM_REPLY_EXISTS)
    r = await api.call("GET", f"/v1/replies/{reply_id}", auth="subscriber")
    assert r.json == {"replyId": reply_id, "caseId": sent.case_id, "destinationId": fitconnect_sandbox.destination_id,
                      "attachments": [], "status": "incomplete"}  # fmt: skip
    r = await api.call("GET", f"/v1/replies/{reply_id}", auth="sender")
    r.problem(404, "reply-not-found")  # the online service sees it only once submitted

    r = await api.call("PUT", f"/v1/replies/{reply_id}", auth="subscriber",
                       json_body={"encryptedMetadata": jwe(keys, b"{}")})  # fmt: skip
    assert r.problem(422, "missing-attachments")["missing"] == [aid]
    r = await api.call("PUT", f"/v1/replies/{reply_id}/attachments/{aid}", auth="subscriber", data="x",
                       content_type="application/octet-stream")  # fmt: skip
    r.problem(415, "unsupported-media-type")
    r = await api.call("PUT", f"/v1/replies/{reply_id}/attachments/{uuid.uuid4()}", auth="subscriber",
                       data=jwe(keys, b"x"), content_type=JOSE)  # fmt: skip
    r.problem(422, "attachment-not-announced")
    r = await api.call("PUT", f"/v1/replies/{reply_id}/attachments/{aid}", auth="sender", data=jwe(keys, b"x"),
                       content_type=JOSE)  # fmt: skip
    r.problem(403, "forbidden")  # only the destination's client that created it

    attachment = jwe(keys, b"%PDF", "application/pdf")
    r = await api.call("PUT", f"/v1/replies/{reply_id}/attachments/{aid}", auth="subscriber", data=attachment,
                       content_type=JOSE)  # fmt: skip
    assert r.status == 204
    metadata, data = jwe(keys, b'{"m": 1}'), jwe(keys, b'{"d": 1}')
    r = await api.call("PUT", f"/v1/replies/{reply_id}", auth="subscriber",
                       json_body={"encryptedMetadata": metadata, "encryptedData": data})  # fmt: skip
    assert r.status == 200, r.body
    assert r.json == {"replyId": reply_id, "caseId": sent.case_id, "destinationId": fitconnect_sandbox.destination_id,
                      "attachments": [aid]}  # fmt: skip
    r = await api.call("PUT", f"/v1/replies/{reply_id}", auth="subscriber",
                       json_body={"encryptedMetadata": metadata, "encryptedData": data})  # fmt: skip
    r.problem(422, rp.PROBLEM_REPLY_STATE)

    for who in ("subscriber", "sender"):  # both sides read the reply's own log
        r = await api.call("GET", f"/v1/replies/{reply_id}/events", auth=who)
        assert r.status == 200
        assert r.json["totalCount"] == 1
    (token,) = r.json["eventLog"]
    event = parse_set(token)
    assert (event.event, event.reply_id, event.case_id, event.submission_id) == (
        rp.SUBMIT_REPLY, reply_id, sent.case_id, None
    )  # fmt: skip
    assert event.issuer == fitconnect_sandbox.base_url
    assert event.event_payload["authenticationTags"] == {
        "metadata": metadata.rsplit(".", 1)[1], "data": data.rsplit(".", 1)[1],
        "attachments": {aid: attachment.rsplit(".", 1)[1]},
    }  # fmt: skip
    verify_jws(parse_jws(token), load_public_jwk(fitconnect_sandbox.sandbox.zsd.public_jwk))
    # The case's log holds the reply's events too (profile assumption reply-events-in-case-log).
    r = await api.call("GET", f"/v1/cases/{sent.case_id}/events", auth="subscriber")
    assert token in r.json["eventLog"]

    r = await api.call("GET", "/v1/replies", auth="sender")
    assert r.json == {"count": 1, "offset": 0, "totalCount": 1, "replies": [
        {"replyId": reply_id, "caseId": sent.case_id, "destinationId": fitconnect_sandbox.destination_id}]}  # fmt: skip
    r = await api.call("GET", f"/v1/replies/{reply_id}", auth="sender")
    assert (r.json["status"], r.json["encryptedMetadata"], r.json["encryptedData"]) == ("submitted", metadata, data)
    r = await api.call("GET", f"/v1/replies/{reply_id}/attachments/{aid}", auth="sender")
    assert (r.status, r.content_type, r.body.decode()) == (200, JOSE, attachment)


async def test_create_refusals(fitconnect_sandbox: RunningSandbox, api: Api) -> None:
    keys = fitconnect_sandbox.keys
    assert keys is not None
    sent = await send(api, keys)
    r = await api.call("POST", "/v1/replies", auth="subscriber",
                       json_body={"caseId": str(uuid.uuid4()), "announcedAttachments": []})  # fmt: skip
    r.problem(404, "case-not-found")
    r = await api.call(
        "POST", "/v1/replies", auth="sender", json_body={"caseId": sent.case_id, "announcedAttachments": []}
    )
    r.problem(403, "forbidden")  # replies need the destination's subscribe scope
    r = await api.call("POST", "/v1/replies", auth="subscriber", json_body={"caseId": sent.case_id})
    r.problem(400, "invalid-request")
    r = await api.call("POST", "/v1/replies", auth="subscriber",
                       json_body={"caseId": sent.case_id, "announcedAttachments": [], "replyId": "nope"})  # fmt: skip
    r.problem(400, "invalid-request")
    fitconnect_sandbox.offer_fitconnect_replies(None)
    r = await api.call(
        "POST", "/v1/replies", auth="subscriber", json_body={"caseId": sent.case_id, "announcedAttachments": []}
    )
    r.problem(422, rp.PROBLEM_NOT_OFFERED)


async def test_decisions_callbacks_and_scopes(fitconnect_sandbox: RunningSandbox, api: Api, receiver: Receiver) -> None:
    sb = fitconnect_sandbox
    keys = sb.keys
    assert keys is not None
    sb.set_destination_callback(receiver.url, "destination-callback-secret-" + "d" * 32)
    sent = await send(api, keys, callback={"url": receiver.url, "secret": CALLBACK_SECRET})
    calls_before = len(receiver.calls)
    reply_id, tags = await complete_reply(api, sent.case_id)
    (new_replies,) = [c for c in await receiver.wait(calls_before + 2) if b"new-replies" in c.body]  # + new-submissions
    assert json.loads(new_replies.body) == {"type": rp.CALLBACK_NEW_REPLIES, "replies": [
        {"replyId": reply_id, "caseId": sent.case_id, "destinationId": sb.destination_id}]}  # fmt: skip

    other = sb.add_client("other-sender", "other-secret", ("send:region:DE",))
    for method, path in (("GET", f"/v1/replies/{reply_id}"), ("GET", f"/v1/replies/{reply_id}/events")):
        r = await api.call(method, path, token=await sb.token(other))
        r.problem(403, "forbidden")  # an online service that did not open the case
    r = await api.call("GET", "/v1/replies", token=await sb.token(other))
    assert r.json["replies"] == []
    r = await api.call("GET", "/v1/replies", auth="subscriber")
    r.problem(403, "forbidden")  # the listing is the online service's

    path = f"/v1/replies/{reply_id}/events"
    wrong = dict(tags, data="AAAAAAAAAAAAAAAAAAAAAA")
    r = await api.call(
        "POST", path, auth="sender", json_body=rp.decision_body(rp.ACCEPT_REPLY, authentication_tags=wrong)
    )
    assert r.problem(422, "invalid-decision")["issue"] == "authentication-tags-mismatch"
    r = await api.call("POST", path, auth="sender", json_body={"event": rp.REJECT_REPLY, "problems": []})
    assert r.problem(422, "invalid-decision")["issue"] == "invalid-payload"
    r = await api.call(
        "POST", path, auth="subscriber", json_body=rp.decision_body(rp.ACCEPT_REPLY, authentication_tags=tags)
    )
    r.problem(403, "forbidden")  # the destination cannot accept its own reply

    r = await api.call(
        "POST", path, auth="sender", json_body=rp.decision_body(rp.ACCEPT_REPLY, authentication_tags=tags)
    )
    assert r.status == rp.DECISION_STATUS, r.body
    assert sb.reply_status(reply_id) == "accepted"
    r = await api.call(
        "POST", path, auth="sender", json_body=rp.decision_body(rp.ACCEPT_REPLY, authentication_tags=tags)
    )
    r.problem(409, "invalid-state-transition")
    r = await api.call("GET", f"/v1/replies/{reply_id}", auth="sender")
    r.problem(404, "reply-not-found")  # content gone after the decision
    r = await api.call("GET", f"/v1/replies/{reply_id}", auth="subscriber")
    assert r.json["status"] == "accepted"
    assert "encryptedData" not in r.json

    r = await api.call("GET", path, auth="subscriber")
    accept = parse_set(r.json["eventLog"][1])
    assert (accept.event, accept.issuer, accept.event_payload) == (
        rp.ACCEPT_REPLY, sb.base_url, {"authenticationTags": tags}
    )  # fmt: skip
    events = [c for c in await receiver.wait(calls_before + 3) if b"new-events" in c.body]
    assert json.loads(events[-1].body)["replies"][0]["replyId"] == reply_id


async def test_timers_forget_incomplete_and_reject_unanswered(fitconnect_sandbox: RunningSandbox, api: Api) -> None:
    sb = fitconnect_sandbox
    keys = sb.keys
    assert keys is not None
    sent = await send(api, keys)
    chosen = str(uuid.uuid4())
    await create_reply(api, sent.case_id, replyId=chosen)
    answered, _ = await complete_reply(api, sent.case_id, attachments=0)
    sb.advance(sb.config.periods.incomplete_deletion + 1)
    api.drop_tokens()
    r = await api.call("GET", f"/v1/replies/{chosen}", auth="subscriber")
    r.problem(404, "reply-not-found")
    again, _ = await create_reply(api, sent.case_id, attachments=0, replyId=chosen)  # the id is free again
    assert again == chosen
    sb.advance(sb.config.periods.auto_reject)
    assert sb.reply_status(answered) == "rejected"
    (view,) = [v for v in sb.replies(sent.case_id) if v["replyId"] == answered]
    assert [e["event"] for e in view["events"]] == [rp.SUBMIT_REPLY, rp.REJECT_REPLY]
    assert view["events"][1]["claims"]["iss"] == sb.base_url
    assert view["events"][1]["claims"]["events"][rp.REJECT_REPLY]["problems"][0]["type"].endswith("/technical-error")
