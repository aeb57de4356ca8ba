"""Sandbox: the clock, automatic rejection, deletion of incomplete submissions, restart persistence."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

from gateway.fitconnect.keys import load_public_jwk
from gateway.fitconnect.sets import DELETE_SUBMISSION, REJECT_SUBMISSION, parse_set, verify_set
from gateway_sandbox.testing import TEST_DESTINATION_ID, RunningSandbox, SandboxKeys, default_config
from gateway_sandbox.zustelldienst.config import Periods
from gateway_sandbox.zustelldienst.events import AUTO_REJECT_PROBLEM

from .sandbox_helpers import (  # noqa: F401  (api_fixture, receiver_fixture provide fixtures)
    JOSE,
    Api,
    Receiver,
    accept_set,
    api_fixture,
    create,
    jwe,
    receiver_fixture,
    sandbox_api,
    send,
)
from .test_sandbox_callbacks import DEST_SECRET, SENDER_SECRET

DAY = 86400


async def test_auto_reject_after_14_days(fitconnect_sandbox: RunningSandbox, api: Api, receiver: Receiver) -> None:
    sb = fitconnect_sandbox
    assert sb.keys is not None
    sb.set_destination_callback(receiver.url + "?d", DEST_SECRET)
    sent = await send(api, sb.keys, callback={"url": receiver.url + "?s", "secret": SENDER_SECRET})
    await receiver.wait(1)  # new-submissions
    sb.advance(14 * DAY - 5)
    assert sb.submission_status(sent.submission_id) == "submitted"
    r = await api.call("POST", "/_sandbox/clock/advance", json_body={"seconds": 10})
    assert r.status == 200
    assert r.json["offset"] == 14 * DAY + 5
    assert sb.submission_status(sent.submission_id) == "rejected"  # effective before the answer
    api.drop_tokens()  # tokens expired on the way
    r = await api.call("GET", f"/v1/cases/{sent.case_id}/events", auth="sender")
    last = parse_set(r.json["eventLog"][-1])
    jwks = (await api.call("GET", "/.well-known/jwks.json")).json["keys"]
    verify_set(last, load_public_jwk(jwks[0]))
    assert last.event == REJECT_SUBMISSION
    assert last.issuer == sb.base_url  # issued by the Zustelldienst, not the subscriber
    assert last.event_payload == {"problems": [AUTO_REJECT_PROBLEM]}
    assert abs(last.iat - time.time()) < 60  # wall clock: a peer must not see it "from the future"
    (await api.call("GET", f"/v1/submissions/{sent.submission_id}", auth="subscriber")).problem(
        404, "submission-not-found"
    )
    r = await api.call(
        "POST", f"/v1/cases/{sent.case_id}/events", auth="subscriber", data=accept_set(sb.keys, sent), content_type=JOSE
    )
    r.problem(409, "invalid-state-transition")
    # NEW_EVENTS to both sides.
    calls = await receiver.wait(3)
    assert sorted(c.body.count(b"new-events") for c in calls[1:]) == [1, 1]
    targets = sorted(d["target"] for d in sb.deliveries()[1:])
    assert targets == ["destination", "sender"]


async def test_incomplete_submissions_are_deleted_after_a_day(
    fitconnect_sandbox: RunningSandbox, api: Api, receiver: Receiver
) -> None:
    sb = fitconnect_sandbox
    assert sb.keys is not None
    sid, cid, (aid,) = await create(api, 1, callback={"url": receiver.url, "secret": SENDER_SECRET})
    r = await api.call(
        "PUT", f"/v1/submissions/{sid}/attachments/{aid}", auth="sender", data=jwe(sb.keys, b"a"), content_type=JOSE
    )
    assert r.status == 204
    sb.advance(DAY - 1)
    assert sb.submission_status(sid) == "incomplete"
    sb.advance(1)
    assert sb.submission_status(sid) == "deleted"
    assert not sb.sandbox.blobs.exists(sid, f"attachment:{aid}")
    assert [e.event_name for e in sb.events(cid)] == ["create-submission", "delete-submission"]
    assert sb.events(cid)[-1].event == DELETE_SUBMISSION
    api.drop_tokens()
    r = await api.call(
        "PUT", f"/v1/submissions/{sid}", auth="sender", json_body={"encryptedMetadata": jwe(sb.keys, b"{}")}
    )
    r.problem(422, "submission-state-invalid")
    r = await api.call(
        "PUT", f"/v1/submissions/{sid}/attachments/{aid}", auth="sender", data=jwe(sb.keys, b"a"), content_type=JOSE
    )
    r.problem(422, "submission-state-invalid")
    (call,) = await receiver.wait(1)
    assert b"new-events" in call.body


async def test_periods_are_configurable_and_run_in_the_background(fitconnect_sandbox_keys: SandboxKeys) -> None:
    periods = Periods(incomplete_deletion=0.3, auto_reject=0.3, sweep_interval=0.05)
    async with sandbox_api(fitconnect_sandbox_keys, periods=periods) as api:
        sb = api.sb
        incomplete, _, _ = await create(api, 0)
        sent = await send(api, fitconnect_sandbox_keys, attachments=0)
        deadline = time.monotonic() + 15
        while sb.submission_status(sent.submission_id) != "rejected" or sb.submission_status(incomplete) != "deleted":
            assert time.monotonic() < deadline, "timers did not fire"
            await asyncio.sleep(0.05)


async def test_clock_endpoints(api: Api) -> None:
    before = (await api.call("GET", "/_sandbox/clock")).json
    assert before["offset"] == 0
    assert abs(before["now"] - time.time()) < 60
    r = await api.call("POST", "/_sandbox/clock/advance", json_body={"seconds": 3600})
    assert r.json["offset"] == 3600
    assert r.json["now"] - r.json["wall"] > 3599
    for bad in ({"seconds": -1}, {"seconds": "1"}, {"seconds": True}, {}):
        (await api.call("POST", "/_sandbox/clock/advance", json_body=bad)).problem(400, "invalid-request")


async def test_state_survives_a_restart(fitconnect_sandbox_keys: SandboxKeys, tmp_path: Path) -> None:
    keys = fitconnect_sandbox_keys
    state_dir = tmp_path / "state"
    async with sandbox_api(keys, state_dir=state_dir, signing_key_file=None) as api:
        sent = await send(api, keys, attachments=1)
        unsent, _, _ = await create(api, 0)
        api.sb.advance(3600)
        kid = api.sb.sandbox.zsd.kid
        log = [e.token for e in api.sb.events(sent.case_id)]
    assert (state_dir / "state.json").stat().st_mode & 0o777 == 0o600
    assert (state_dir / "zsd-signing.key.pem").stat().st_mode & 0o777 == 0o600
    async with sandbox_api(keys, state_dir=state_dir, signing_key_file=None) as api:
        sb = api.sb
        assert sb.sandbox.zsd.kid == kid  # the generated key was kept: old SETs still verify
        assert [e.token for e in sb.events(sent.case_id)] == log
        assert sb.clock.offset == 3600
        assert sb.submission_status(unsent) == "incomplete"
        r = await api.call("GET", "/v1/submissions", auth="subscriber")
        assert [s["submissionId"] for s in r.json["submissions"]] == [sent.submission_id]
        r = await api.call(
            "GET", f"/v1/submissions/{sent.submission_id}/attachments/{sent.attachment_ids[0]}", auth="subscriber"
        )
        assert r.body.decode() == sent.attachment_jwes[sent.attachment_ids[0]]
        r = await api.call(
            "POST",
            f"/v1/cases/{sent.case_id}/events",
            auth="subscriber",
            data=accept_set(keys, sent),
            content_type=JOSE,
        )
        assert r.status == 204


async def test_config_changes_win_but_runtime_changes_survive(
    fitconnect_sandbox_keys: SandboxKeys, tmp_path: Path
) -> None:
    keys = fitconnect_sandbox_keys
    state_dir = tmp_path / "state"
    async with sandbox_api(keys, state_dir=state_dir) as api:
        api.sb.sandbox.update_destination(TEST_DESTINATION_ID, status="inactive")  # a runtime change
    async with sandbox_api(keys, state_dir=state_dir) as api:
        assert api.sb.sandbox.destination(TEST_DESTINATION_ID).status == "inactive"  # same config: kept
    base = default_config(keys, state_dir=state_dir)
    changed = dataclasses.replace(
        base, destinations=(dataclasses.replace(base.destinations[0], metadata_versions=("1.0.0",)),)
    )
    from gateway_sandbox.testing import running_sandbox

    async with running_sandbox(changed) as sb:
        dest = sb.sandbox.destination(TEST_DESTINATION_ID)
        assert dest.metadata_versions == ("1.0.0",)
        assert dest.status == "active"  # the changed config entry replaced the stored one
