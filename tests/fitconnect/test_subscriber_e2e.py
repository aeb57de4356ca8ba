"""End to end through the sandbox Zustelldienst: pickup, every receipt check, accept, delivery, restarts."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.fitconnect.keys import load_private_jwk
from gateway.model import AckState, MessageState
from gateway.runtime import Runtime
from gateway.sources.base import AckOutcome
from gateway.sources.fitconnect.client import ApiError

from .subscriber_helpers import (
    ACCEPT,
    BAU_DATA,
    BAU_SCHEMA,
    BAU_SERVICE,
    GEWERBE_DATA,
    GEWERBE_SCHEMA,
    GEWERBE_SERVICE,
    PDF,
    REJECT,
    Gateway,
    OutgoingAttachment,
    SenderQuirks,
    e2e,
    eventually,
    rollover_keys,
)


def manifest(gw: Gateway, message_id: str) -> dict[str, Any]:
    found = list((gw.tmp / "out").glob(f"**/{message_id}/manifest.json"))
    assert len(found) == 1, found
    value: dict[str, Any] = json.loads(found[0].read_text())
    return value


def disable_delivery(runtime: Runtime) -> None:
    """Keep the delivery worker idle: messages stay ROUTED (a crash after intake, before delivery)."""

    async def idle() -> None:
        await asyncio.Event().wait()

    runtime.worker.run = idle  # type: ignore[method-assign]


async def test_json_submission_is_accepted_and_delivered(tmp_path: Path, fitconnect_shared: Path) -> None:
    async with e2e(tmp_path, fitconnect_shared) as gw:
        sent = await gw.send()
        outcome = await gw.outcome(sent)
        assert outcome.event == ACCEPT
        assert outcome.claims["iss"] == gw.sandbox.destination_id
        assert outcome.header["kid"] == gw.sandbox.keys.signing_kid  # type: ignore[union-attr]
        assert outcome.payload["authenticationTags"] == sent.auth_tags  # exactly as received
        stored = await gw.wait_stored(sent.submission_id, [MessageState.ACKNOWLEDGED])
        env = stored.envelope
        assert env.data is not None
        assert env.data.size == len(GEWERBE_DATA)
        assert env.data.sha512 == hashlib.sha512(GEWERBE_DATA).hexdigest()
        assert env.routing.service == GEWERBE_SERVICE
        assert env.routing.region == "09162000"
        assert env.routing.destination == gw.sandbox.destination_id
        assert env.routing.namespace == env.routing.message_type == GEWERBE_SCHEMA
        assert env.source.case == sent.case_id
        assert env.source.reference == sent.submission_id
        fc = env.metadata["fitconnect"]
        assert fc["metadataVersion"] == "1.0.0"
        assert fc["metadataSchemaAssumed"] is False
        assert fc["dataSchema"] == {"schemaUri": GEWERBE_SCHEMA, "mimeType": "application/json"}
        assert env.metadata["metadata"] == sent.metadata
        assert manifest(gw, env.id)["source"]["reference"] == sent.submission_id
        assert gw.sandbox.submission_status(sent.submission_id) == "accepted"


async def test_xml_data_with_one_attachment(tmp_path: Path, fitconnect_shared: Path) -> None:
    attachment = OutgoingAttachment(mime_type="application/pdf", filename="../../lageplan.pdf", content=PDF)
    async with e2e(tmp_path, fitconnect_shared) as gw:
        sent = await gw.send(service=BAU_SERVICE, data=BAU_DATA, attachments=[attachment])
        assert (await gw.outcome(sent)).event == ACCEPT
        env = (await gw.wait_stored(sent.submission_id, [MessageState.ACKNOWLEDGED])).envelope
        assert env.routing.namespace == BAU_SCHEMA
        assert env.data is not None
        assert env.data.media_type == "application/xml"
        (att,) = env.attachments
        assert att.name == f"attachment:{sent.attachment_ids[0]}"
        assert att.sha512 == hashlib.sha512(PDF).hexdigest()
        assert att.size == len(PDF)
        assert att.filename == "../../lageplan.pdf"  # untrusted; the adapter sanitises it
        assert env.metadata["fitconnect"]["attachments"] == [
            {
                "id": sent.attachment_ids[0],
                "filename": "../../lageplan.pdf",
                "mimeType": "application/pdf",
                "purpose": "attachment",
            }
        ]


async def test_several_attachments_with_metadata_2_1_0(tmp_path: Path, fitconnect_shared: Path) -> None:
    attachments = [
        OutgoingAttachment(mime_type="application/pdf", filename=f"anlage-{i}.pdf", content=PDF + bytes([i]) * i)
        for i in range(3)
    ]
    async with e2e(tmp_path, fitconnect_shared) as gw:
        sent = await gw.send(attachments=attachments, version="2.1.0")
        assert (await gw.outcome(sent)).event == ACCEPT
        env = (await gw.wait_stored(sent.submission_id, [MessageState.ACKNOWLEDGED])).envelope
        assert env.metadata["fitconnect"]["metadataVersion"] == "2.1.0"
        assert sorted(a.attachment_id for a in env.attachments if a.attachment_id) == sorted(sent.attachment_ids)
        files = manifest(gw, env.id)["files"]
        assert len(files) == 4


async def test_attachments_only_submission(tmp_path: Path, fitconnect_shared: Path) -> None:
    attachment = OutgoingAttachment(mime_type="application/pdf", filename="antrag.pdf", content=PDF, purpose="form")
    async with e2e(tmp_path, fitconnect_shared) as gw:
        sent = await gw.send(data=None, attachments=[attachment])
        assert (await gw.outcome(sent)).event == ACCEPT
        env = (await gw.wait_stored(sent.submission_id, [MessageState.ACKNOWLEDGED])).envelope
        assert env.data is None
        assert len(env.attachments) == 1
        assert env.routing.namespace is None


async def test_legacy_sender_quirks(tmp_path: Path, fitconnect_shared: Path) -> None:
    """zip DEF, kid = RFC 7638 thumbprint, no $schema (the Python SDK 0.4.2 did all three)."""
    quirks = SenderQuirks(zip_def=True, kid_thumbprint=True, omit_metadata_schema=True)
    attachment = OutgoingAttachment(mime_type="application/pdf", content=PDF)
    async with e2e(tmp_path, fitconnect_shared) as gw:
        sent = await gw.send(attachments=[attachment], quirks=quirks)
        assert (await gw.outcome(sent)).event == ACCEPT
        env = (await gw.wait_stored(sent.submission_id, [MessageState.ACKNOWLEDGED])).envelope
        assert env.metadata["fitconnect"]["metadataVersion"] == "1.0.0"
        assert env.metadata["fitconnect"]["metadataSchemaAssumed"] is True
        assert env.attachments[0].sha512 == hashlib.sha512(PDF).hexdigest()  # inflated before hashing


async def test_key_rollover(tmp_path: Path, fitconnect_shared: Path) -> None:
    """A submission encrypted to the old key is still received after the destination switched keys."""
    new = rollover_keys()
    async with e2e(tmp_path, fitconnect_shared, start=False) as gw:
        keys = gw.sandbox.keys
        assert keys is not None
        old_sent = await gw.send()
        new_public = json.loads(new.encryption_public.read_text())
        gw.sandbox.sandbox.add_key(gw.sandbox.destination_id, new_public)
        gw.sandbox.sandbox.update_destination(gw.sandbox.destination_id, encryption_kid=new.encryption_kid)
        new_sent = await gw.send()
        # The new key first (what the destination announces now), the old one kept for the backlog.
        gw.options["decryption_keys"] = [str(new.encryption_private), str(keys.encryption_private)]
        await gw.start()
        assert (await gw.outcome(old_sent)).event == ACCEPT
        assert (await gw.outcome(new_sent)).event == ACCEPT
        assert load_private_jwk(new.encryption_private).kid == new.encryption_kid


async def test_old_key_missing_after_rollover_rejects_with_encryption_issue(
    tmp_path: Path, fitconnect_shared: Path
) -> None:
    new = rollover_keys()
    async with e2e(tmp_path, fitconnect_shared, start=False) as gw:
        sent = await gw.send()  # encrypted to the old key
        gw.options["decryption_keys"] = [str(new.encryption_private)]  # the operator dropped it too early
        await gw.start()
        assert await gw.rejected_with(sent) == [("encryption-issue", "metadata")]


async def test_poll_only_pickup_without_callbacks(tmp_path: Path, fitconnect_shared: Path) -> None:
    async with e2e(tmp_path, fitconnect_shared) as gw:
        assert gw.sandbox.sandbox.destination(gw.sandbox.destination_id).callback is None
        sent = [await gw.send() for _ in range(3)]
        for s in sent:
            assert (await gw.outcome(s)).event == ACCEPT
        polls = gw.runtime.subsystems["fitconnect"].metrics.polls.labels("fc", "ok")._value.get()  # type: ignore[union-attr]
        assert polls >= 1


async def test_callback_triggers_immediate_pickup(tmp_path: Path, fitconnect_shared: Path) -> None:
    secret_file = tmp_path / "callback.secret"
    secret = "callback-secret-" + "x" * 40
    secret_file.write_text(secret)
    # An hour between polls: only the callback can make the gateway pick this up within the test.
    async with e2e(tmp_path, fitconnect_shared, poll_interval=3600, callback_secret={"file": str(secret_file)}) as gw:
        source = gw.source
        await eventually(lambda: source.last_poll_ok is not None, what="the startup poll")
        gw.sandbox.set_destination_callback(f"{gw.url}/callbacks/fitconnect/fc", secret)
        sent = await gw.send()
        assert (await gw.outcome(sent, within=20)).event == ACCEPT
        deliveries = await gw.sandbox.wait_for_deliveries(1)
        assert deliveries[0]["state"] == "delivered"
        invalid = gw.runtime.subsystems["fitconnect"].metrics.callbacks_invalid  # type: ignore[union-attr]
        assert not [m for m in invalid.collect()[0].samples if m.name.endswith("_total") and m.value]


async def test_restart_after_intake_before_delivery(tmp_path: Path, fitconnect_shared: Path) -> None:
    """Stop after the durable intake, before delivery: the next run delivers and accepts exactly once."""
    async with e2e(tmp_path, fitconnect_shared, start=False) as gw:
        sent = await gw.send(attachments=[OutgoingAttachment(mime_type="application/pdf", content=PDF)])
        await gw.start(before_start=disable_delivery)
        stored = await gw.wait_stored(sent.submission_id, [MessageState.ROUTED])
        assert stored.envelope.ack is AckState.WAITING
        await asyncio.sleep(0.3)  # several polls list it again: recognised in the store, not received twice
        assert [e.event_name for e in gw.sandbox.events(sent.case_id)] == ["create-submission", "submit-submission"]
        await gw.stop()

        await gw.start()
        assert (await gw.outcome(sent)).event == ACCEPT
        again = await gw.wait_stored(sent.submission_id, [MessageState.ACKNOWLEDGED])
        assert again.envelope.id == stored.envelope.id
        assert gw.runtime is not None
        assert (await gw.runtime.store.count_by_state()).get("acknowledged") == 1
        events = [e.event_name for e in gw.sandbox.events(sent.case_id)]
        assert events == ["create-submission", "submit-submission", "accept-submission"]


async def test_accept_is_never_posted_twice(tmp_path: Path, fitconnect_shared: Path) -> None:
    """A repeated acknowledge (crash between the 204 and recording it) reconciles the 409 from the log."""
    async with e2e(tmp_path, fitconnect_shared) as gw:
        sent = await gw.send()
        assert (await gw.outcome(sent)).event == ACCEPT
        env = (await gw.wait_stored(sent.submission_id, [MessageState.ACKNOWLEDGED])).envelope
        result = await gw.source.acknowledge(env, AckOutcome.ACCEPT, [])
        assert result.done
        assert "already accepted" in result.reason
        result = await gw.source.acknowledge(env, AckOutcome.REJECT, [])
        assert result.done
        assert result.permanent
        assert "accepted" in result.reason
        accepts = [e for e in gw.sandbox.events(sent.case_id) if e.event in (ACCEPT, REJECT)]
        assert len(accepts) == 1


async def test_automatic_rejection_by_the_zustelldienst_is_reconciled(tmp_path: Path, fitconnect_shared: Path) -> None:
    async with e2e(tmp_path, fitconnect_shared, start=False) as gw:
        sent = await gw.send()
        await gw.start(before_start=disable_delivery)
        await gw.wait_stored(sent.submission_id, [MessageState.ROUTED])
        await gw.stop()
        gw.sandbox.advance(15 * 86400)  # nobody accepted within 14 days
        assert gw.sandbox.submission_status(sent.submission_id) == "rejected"

        runtime = await gw.start()
        stored = await gw.wait_stored(sent.submission_id, [MessageState.ACKNOWLEDGED])
        trail = await runtime.store.audit_trail(stored.envelope.id)
        ack = [r for r in trail if r.event == "ack"]
        assert ack
        assert "rejected by the Zustelldienst itself" in ack[-1].reason
        outcomes = [e for e in gw.sandbox.events(sent.case_id) if e.event in (ACCEPT, REJECT)]
        assert len(outcomes) == 1
        assert outcomes[0].claims["iss"].startswith("http")


async def test_accept_policy_stored_accepts_before_delivery(tmp_path: Path, fitconnect_shared: Path) -> None:
    async with e2e(tmp_path, fitconnect_shared, start=False, accept_policy="stored") as gw:
        sent = await gw.send()
        await gw.start(before_start=disable_delivery)
        assert (await gw.outcome(sent)).event == ACCEPT
        stored = await gw.wait_stored(sent.submission_id)
        assert stored.envelope.state is MessageState.ROUTED  # accepted, not yet delivered


async def test_listed_twice_is_received_once(tmp_path: Path, fitconnect_shared: Path) -> None:
    async with e2e(tmp_path, fitconnect_shared, start=False, poll_interval=3600) as gw:
        sent = await gw.send()
        await gw.start(before_start=disable_delivery)
        source = gw.source
        await eventually(lambda: source.last_poll_ok is not None, what="the startup poll")
        # Polls racing the startup poll's processing: in flight or already stored, never queued twice.
        assert await asyncio.gather(source.poll_once(), source.poll_once()) == [0, 0]
        await gw.wait_stored(sent.submission_id)
        await source.drain()
        # Listed again (the ZSD lists it until the accept): recognised in the store before any download.
        assert await source.poll_once() == 0
        assert await source.process(sent.submission_id, sent.case_id) is False
        assert gw.runtime is not None
        assert gw.runtime.metrics.duplicates.labels("fc")._value.get() == 0
        assert gw.runtime.metrics.received.labels("fc")._value.get() == 1


async def test_readiness_reports_the_source(tmp_path: Path, fitconnect_shared: Path) -> None:
    async with e2e(tmp_path, fitconnect_shared, poll_interval=3600) as gw:
        source = gw.source
        await eventually(lambda: source.last_poll_ok is not None, what="the startup poll")
        assert await source.check() is None
        source.api.tokens._client_secret = "wrong-secret"  # e.g. rotated in the portal, not here
        source.api.tokens._token = None
        with pytest.raises(ApiError, match="token"):
            await source.poll_once()
        reason = await source.check()
        assert reason is not None
        assert reason.startswith("last poll failed")
        assert "wrong-secret" not in reason


async def test_token_is_cached_and_refreshed_once(tmp_path: Path, fitconnect_shared: Path) -> None:
    async with e2e(tmp_path, fitconnect_shared, poll_interval=0.05) as gw:
        for _ in range(3):
            sent = await gw.send()
            assert (await gw.outcome(sent)).event == ACCEPT
        tokens = gw.source.api.tokens
        assert tokens.fetches == 1  # many polls and calls, one token
        tokens._token = "revoked-token"  # the API answers 401 once, then the source fetches a fresh one
        sent = await gw.send(service=BAU_SERVICE, data=BAU_DATA)
        assert (await gw.outcome(sent)).event == ACCEPT
        assert tokens.fetches == 2
        # Parallel callers during a refresh share one fetch.
        tokens._token = None
        await asyncio.gather(*(tokens.token() for _ in range(10)))
        assert tokens.fetches == 3
