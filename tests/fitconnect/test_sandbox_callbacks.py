"""Sandbox: HMAC-signed callbacks to loopback receivers, retries, the delivery log, fault injection."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from gateway.fitconnect.callbacks import CALLBACK_NEW_EVENTS, CALLBACK_NEW_SUBMISSIONS, verify_callback
from gateway.fitconnect.sets import REJECT_SUBMISSION
from gateway_sandbox.testing import TEST_DESTINATION_ID, RunningSandbox
from gateway_sandbox.zustelldienst.clock import SandboxClock
from gateway_sandbox.zustelldienst.config import CallbackPolicy
from gateway_sandbox.zustelldienst.dispatcher import CallbackDispatcher
from gateway_sandbox.zustelldienst.state import SandboxState, SubmissionRecord

from .sandbox_helpers import (  # noqa: F401  (api_fixture, receiver_fixture provide fixtures)
    JOSE,
    Api,
    Received,
    Receiver,
    accept_set,
    api_fixture,
    receiver_fixture,
    send,
    subscriber_set,
)

# The documentation's receiving/notification example (digest §2.6), recomputed there.
VECTOR_SECRET = "insecure_unsafe_qHScgrg_kP-R31jHUwp3GkVkGJolvBchz65b74Lzue0"
VECTOR_TIMESTAMP = 1672527599
VECTOR_BODY = (
    b'{"type":"https://schema.fitko.de/fit-connect/submission-api/callbacks/new-submissions",'
    b'"submissionIds":["f39ab143-d91a-474a-b69f-b00f1a1873c2"],'
    b'"submissions":[{"destinationId":"d12caea8-f372-4eb1-b102-b0a228253a11",'
    b'"submissionId":"f39ab143-d91a-474a-b69f-b00f1a1873c2","caseId":"9eec7d3e-dc66-4f82-9f52-1520bf96a32e"}]}'
)
VECTOR_HMAC = (
    "2056b372b5bcec06d8f11ab79b84b42d6cbe1c8e1178cdfa36e4385dcf717758"
    "aaa7599f417d9ec3e079087884f4fd59680bf713621383e2d4414ef74fb10df3"
)
SENDER_SECRET = "sender-callback-secret-0123456789abcdef"
DEST_SECRET = "destination-callback-secret-0123456789abcdef"


def _verified(call: Received, secret: str) -> dict[str, Any]:
    verdict = verify_callback(
        secret,
        call.headers.get("callback-timestamp"),
        call.headers.get("callback-authentication"),
        call.body,
        now=time.time(),
    )
    assert verdict.ok, verdict.reason
    assert call.headers["Content-Type"] == "application/json"
    body: dict[str, Any] = json.loads(call.body)
    return body


async def test_hmac_matches_the_documented_test_vector(receiver: Receiver) -> None:
    """The dispatcher's real request, with the vector's ids and timestamp, carries the vector's HMAC."""
    state = SandboxState()
    dispatcher = CallbackDispatcher(
        state, SandboxClock(wall=lambda: float(VECTOR_TIMESTAMP)), CallbackPolicy(initial_delay=0.05), lambda: None
    )
    sub = SubmissionRecord(
        id="f39ab143-d91a-474a-b69f-b00f1a1873c2",
        case_id="9eec7d3e-dc66-4f82-9f52-1520bf96a32e",
        destination_id="d12caea8-f372-4eb1-b102-b0a228253a11",
        client_id="x",
        service_type={},
        announced=[],
        created_at=0.0,
    )
    task = asyncio.create_task(dispatcher.run())
    try:
        dispatcher.enqueue(
            target="destination",
            url=receiver.url,
            secret=VECTOR_SECRET,
            callback_type=CALLBACK_NEW_SUBMISSIONS,
            submissions=[sub],
        )
        (call,) = await receiver.wait(1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert call.body == VECTOR_BODY
    assert call.headers["callback-timestamp"] == str(VECTOR_TIMESTAMP)
    assert call.headers["callback-authentication"] == VECTOR_HMAC


async def test_new_submissions_to_destination_and_new_events_to_sender(
    fitconnect_sandbox: RunningSandbox, api: Api, receiver: Receiver
) -> None:
    sb = fitconnect_sandbox
    assert sb.keys is not None
    sb.set_destination_callback(receiver.url + "?to=destination", DEST_SECRET)
    sent = await send(api, sb.keys, callback={"url": receiver.url + "?to=sender", "secret": SENDER_SECRET})
    (call,) = await receiver.wait(1)
    body = _verified(call, DEST_SECRET)
    pickup = {"destinationId": TEST_DESTINATION_ID, "submissionId": sent.submission_id, "caseId": sent.case_id}
    assert body == {"type": CALLBACK_NEW_SUBMISSIONS, "submissionIds": [sent.submission_id], "submissions": [pickup]}
    assert abs(int(call.headers["callback-timestamp"]) - time.time()) < 60
    r = await api.call(
        "POST", f"/v1/cases/{sent.case_id}/events", auth="subscriber", data=accept_set(sb.keys, sent), content_type=JOSE
    )
    assert r.status == 204
    calls = await receiver.wait(2)
    body = _verified(calls[1], SENDER_SECRET)
    assert body == {"type": CALLBACK_NEW_EVENTS, "submissionIds": [sent.submission_id], "submissions": [pickup]}
    deliveries = await sb.wait_for_deliveries(2, state="delivered")
    assert [d["target"] for d in deliveries] == ["destination", "sender"]
    assert all(len(d["attempts"]) == 1 and d["attempts"][0]["status"] == 200 for d in deliveries)
    # The inspection API shows the same log, never a secret.
    r = await api.call("GET", "/_sandbox/callbacks")
    assert r.status == 200
    assert [d["id"] for d in r.json["deliveries"]] == [d["id"] for d in deliveries]
    assert DEST_SECRET not in r.body.decode()
    assert SENDER_SECRET not in r.body.decode()


async def test_reject_notifies_the_sender(fitconnect_sandbox: RunningSandbox, api: Api, receiver: Receiver) -> None:
    sb = fitconnect_sandbox
    assert sb.keys is not None
    sent = await send(api, sb.keys, callback={"url": receiver.url, "secret": SENDER_SECRET})
    reject = subscriber_set(sb.keys, sent, REJECT_SUBMISSION, {"problems": [{"type": "urn:x:y", "title": "kaputt"}]})
    r = await api.call("POST", f"/v1/cases/{sent.case_id}/events", auth="subscriber", data=reject, content_type=JOSE)
    assert r.status == 204
    (call,) = await receiver.wait(1)
    assert _verified(call, SENDER_SECRET)["type"] == CALLBACK_NEW_EVENTS


async def test_failed_deliveries_are_retried_with_backoff(
    fitconnect_sandbox: RunningSandbox, api: Api, receiver: Receiver
) -> None:
    sb = fitconnect_sandbox
    assert sb.keys is not None
    receiver.statuses = [500, 503]
    sb.set_destination_callback(receiver.url, DEST_SECRET)
    await send(api, sb.keys)
    calls = await receiver.wait(3)
    for call in calls:
        _verified(call, DEST_SECRET)  # every retry is freshly signed
    assert calls[0].body == calls[1].body == calls[2].body
    (delivery,) = await sb.wait_for_deliveries(1, state="delivered")
    assert [a["status"] for a in delivery["attempts"]] == [500, 503, 200]
    gaps = [calls[i + 1].at - calls[i].at for i in range(2)]
    assert gaps[0] >= 0.04  # initial_delay 0.05 s ...
    assert gaps[1] >= 0.09  # ... doubled


async def test_delivery_gives_up_after_max_attempts(
    fitconnect_sandbox: RunningSandbox, api: Api, receiver: Receiver
) -> None:
    sb = fitconnect_sandbox
    assert sb.keys is not None
    receiver.statuses = [500] * 10
    sb.set_destination_callback(receiver.url, DEST_SECRET)
    await send(api, sb.keys)
    (delivery,) = await sb.wait_for_deliveries(1, state="failed")
    assert len(delivery["attempts"]) == sb.config.callbacks.max_attempts == 5
    assert len(receiver.calls) == 5
    # An unreachable receiver fails the same way, with the connection error recorded.
    sb.set_destination_callback("http://127.0.0.1:9/unreachable", DEST_SECRET)
    await send(api, sb.keys)
    failed = await sb.wait_for_deliveries(2, state="failed")
    assert {a["error"] for a in failed[1]["attempts"]} == {"ClientConnectorError"}


async def test_fault_injection(fitconnect_sandbox: RunningSandbox, api: Api, receiver: Receiver) -> None:
    sb = fitconnect_sandbox
    assert sb.keys is not None
    sb.set_destination_callback(receiver.url, DEST_SECRET)

    async def one_callback(faults: dict[str, bool], expected_calls: int) -> list[Received]:
        r = await api.call("PUT", "/_sandbox/callbacks/faults", json_body=faults)
        assert r.status == 200
        before = len(receiver.calls)
        await send(api, sb.keys, attachments=0)  # type: ignore[arg-type]
        calls = await receiver.wait(before + expected_calls)
        return calls[before:]

    (call,) = await one_callback({"wrongHmac": True}, 1)
    assert (
        verify_callback(
            DEST_SECRET,
            call.headers["callback-timestamp"],
            call.headers["callback-authentication"],
            call.body,
            now=time.time(),
        ).reason
        == "bad-hmac"
    )
    (call,) = await one_callback({"staleTimestamp": True}, 1)
    ts = call.headers["callback-timestamp"]
    assert (
        verify_callback(DEST_SECRET, ts, call.headers["callback-authentication"], call.body, now=time.time()).reason
        == "stale"
    )
    # The stale request is still correctly signed for its (old) timestamp.
    assert verify_callback(DEST_SECRET, ts, call.headers["callback-authentication"], call.body, now=float(ts)).ok
    first, second = await one_callback({"duplicate": True}, 2)
    assert first.body == second.body
    assert first.headers["callback-authentication"] == second.headers["callback-authentication"]
    r = await api.call("GET", "/_sandbox/callbacks/faults")
    assert r.json == {"wrongHmac": False, "staleTimestamp": False, "duplicate": True}
    (call,) = await one_callback({}, 1)  # all off again
    _verified(call, DEST_SECRET)
    faults = [d["faults"] for d in sb.deliveries()]
    assert faults == [["wrong-hmac"], ["stale-timestamp"], ["duplicate"], []]
    (await api.call("PUT", "/_sandbox/callbacks/faults", json_body={"bogus": True})).problem(400, "invalid-request")
    (await api.call("PUT", "/_sandbox/callbacks/faults", json_body={"duplicate": "yes"})).problem(
        400, "invalid-request"
    )
