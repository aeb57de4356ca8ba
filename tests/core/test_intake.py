"""Intake: durable, idempotent receipt; channel and plugin checks; routing; resuming after a crash."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from core.storehelp import envelope
from core.support import BASE_CONFIG, harness, incoming, metric_value
from gateway.hookspecs import hookimpl
from gateway.model import AckState, Envelope, MessageState, RoutingKeys
from gateway.pipeline.intake import IntakeClosed
from gateway.problems import Problem
from gateway.routing import NO_ROUTE

BAD_IBAN = Problem("https://example.org/problems/iban", "IBAN invalid", "checksum mismatch", "metadata/iban")


class IbanCheck:
    """A validation plugin (sync hook)."""

    __name__ = "iban-check"

    def __init__(self) -> None:
        self.seen: list[Envelope] = []

    @hookimpl
    def gateway_validate_message(self, envelope: Envelope, config: Mapping[str, Any]) -> Sequence[Problem]:
        self.seen.append(envelope)
        return [BAD_IBAN] if envelope.metadata.get("iban") == "bad" else []


class AsyncCheck:
    """A validation plugin whose hook returns an awaitable (the async convention)."""

    __name__ = "async-check"

    @hookimpl
    def gateway_validate_message(self, envelope: Envelope, config: Mapping[str, Any]) -> Any:
        async def check() -> list[Problem]:
            if envelope.routing.sender == "blocked":
                return [Problem("https://example.org/problems/sender", "Sender blocked", instance="sender")]
            return []

        return check()


async def test_receive_is_idempotent(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        first = await h.receive(incoming("fit", "sub-1"))
        again = await h.receive(incoming("fit", "sub-1", metadata={"changed": True}))
        other = await h.receive(incoming("xoev", "sub-1"))
        assert first.created
        assert not again.created
        assert other.created
        assert again.message.envelope.id == first.message.envelope.id
        assert again.message.envelope.state is MessageState.ROUTED  # returned as it is now, not re-processed
        assert other.message.envelope.id != first.message.envelope.id
        assert (await h.store.count_by_state())["routed"] == 2
        assert metric_value(h.metrics, "gateway_messages_received_total", {"source": "fit"}) == 1
        assert metric_value(h.metrics, "gateway_messages_duplicate_total", {"source": "fit"}) == 1
        assert len(await h.store.audit_trail(first.message.envelope.id)) == 3


async def test_channel_problems_reject(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        problems = [
            Problem("https://x/problems/missing-data", "no data", "", "data"),
            Problem("https://x/problems/bad-hash", "hash mismatch", "", "attachment:1"),
        ]
        result = await h.receive(incoming("fit", problems=problems))
        stored = result.message
        assert stored.envelope.state is MessageState.REJECTED
        assert stored.problems == tuple(problems)
        assert stored.envelope.ack is AckState.NONE
        assert stored.envelope.route is None
        assert await h.transitions(stored.envelope.id) == [(None, "received"), ("received", "rejected")]
        trail = await h.store.audit_trail(stored.envelope.id)
        assert trail[-1].details == {"problems": [p.type for p in problems]}
        for reason in ("missing-data", "bad-hash"):
            assert metric_value(h.metrics, "gateway_messages_rejected_total", {"source": "fit", "reason": reason}) == 1
        assert await h.worker.deliver_once() == 0


async def test_validate_hook_problems_reject(tmp_path: Path) -> None:
    check = IbanCheck()
    async with harness(tmp_path, extra_plugins=[check, AsyncCheck()]) as h:
        ok = await h.receive(incoming(metadata={"iban": "DE89370400440532013000"}))
        bad = await h.receive(incoming(metadata={"iban": "bad"}))
        blocked = await h.receive(incoming(routing=RoutingKeys(service="urn:x", sender="blocked")))
        assert ok.message.envelope.state is MessageState.ROUTED
        assert bad.message.envelope.state is MessageState.REJECTED
        assert bad.message.problems == (BAD_IBAN,)
        assert blocked.message.envelope.state is MessageState.REJECTED
        assert [p.instance for p in blocked.message.problems] == ["sender"]
        assert [e.id for e in check.seen] == [
            ok.message.envelope.id,
            bad.message.envelope.id,
            blocked.message.envelope.id,
        ]
        assert check.seen[1].metadata == {"iban": "bad"}  # the hook sees the stored envelope


async def test_channel_problems_skip_the_hooks(tmp_path: Path) -> None:
    check = IbanCheck()
    async with harness(tmp_path, extra_plugins=[check]) as h:
        await h.receive(incoming(problems=[BAD_IBAN]))
        assert check.seen == []


async def test_unroutable_is_rejected_with_no_route(tmp_path: Path) -> None:
    config = BASE_CONFIG.replace('adapter = "alpha"\n', 'adapter = "alpha"\n[routes.match]\nservice = "urn:de:*"\n')
    async with harness(tmp_path, config) as h:
        stored = (await h.receive(incoming(routing=RoutingKeys(service="urn:at:1")))).message
        assert stored.envelope.state is MessageState.REJECTED
        (problem,) = stored.problems
        assert problem.type == NO_ROUTE
        assert problem.detail == "no rule matches and no fallback is configured"
        assert await h.transitions(stored.envelope.id) == [
            (None, "received"),
            ("received", "validated"),
            ("validated", "rejected"),
        ]


async def test_draining_intake_refuses(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        h.intake.drain.begin()
        with pytest.raises(IntakeClosed):
            await h.receive()
        assert (await h.store.count_by_state())["received"] == 0


async def test_resume_continues_messages_left_between_steps(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        # A crash right after the durable insert, and one after the "validated" commit.
        received, _ = await h.store.insert(envelope("fit"), actor="source:fit")
        validated, _ = await h.store.insert(envelope("fit"), actor="source:fit")
        await h.store.transition(validated.envelope.id, MessageState.VALIDATED, reason="checks", actor="pipeline")
        bad, _ = await h.store.insert(envelope("fit"), actor="source:fit", problems=[BAD_IBAN])
        assert await h.intake.resume(older_than=30.0) == 0  # too fresh: the live pipeline may still own them
        h.clock.advance(31)
        assert await h.intake.resume(older_than=30.0) == 3
        assert await h.state(received.envelope.id) is MessageState.ROUTED
        assert await h.state(validated.envelope.id) is MessageState.ROUTED
        assert await h.state(bad.envelope.id) is MessageState.REJECTED
        assert await h.transitions(validated.envelope.id) == [
            (None, "received"),
            ("received", "validated"),
            ("validated", "routed"),
        ]
        assert await h.intake.resume(older_than=0.0) == 0
        assert await h.worker.deliver_once() == 2


class FlakyCheck:
    """A check plugin that raises until fixed."""

    __name__ = "flaky-check"

    def __init__(self) -> None:
        self.broken = True

    @hookimpl
    def gateway_validate_message(self, envelope: Envelope, config: Mapping[str, Any]) -> Sequence[Problem]:
        if self.broken:
            raise RuntimeError("plugin bug")
        return []


async def test_a_raising_check_plugin_keeps_the_message_received_until_resume(tmp_path: Path) -> None:
    flaky = FlakyCheck()
    async with harness(tmp_path, extra_plugins=[flaky]) as h:
        result = await h.receive(incoming("fit", "sub-1"))
        assert result.created  # stored durably although the checks could not run
        mid = result.message.envelope.id
        assert result.message.envelope.state is MessageState.RECEIVED
        other = (await h.receive(incoming("fit", "sub-2"))).message.envelope.id
        h.clock.advance(31)
        assert await h.intake.resume(older_than=30.0) == 0  # still broken: both stay, neither blocks the pass
        assert await h.state(mid) is MessageState.RECEIVED
        assert await h.state(other) is MessageState.RECEIVED
        flaky.broken = False
        assert await h.intake.resume(older_than=30.0) == 2
        assert await h.state(mid) is MessageState.ROUTED


async def test_resume_handles_more_than_one_page(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        ids = []
        for _ in range(230):  # the resume job pages through 200 at a time
            stored, _ = await h.store.insert(envelope("fit"), actor="source:fit")
            ids.append(stored.envelope.id)
        h.clock.advance(60)
        assert await h.intake.resume(older_than=30.0) == 230
        assert (await h.store.count_by_state())["routed"] == 230


async def test_resume_finishes_a_delivery_left_unacknowledged(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        # A crash between the "delivered" commit and the "acknowledged" one (no upstream ack needed).
        mid = (await h.receive()).message.envelope.id
        await h.store.claim_deliveries(owner="w", adapter="alpha", limit=1, now=h.clock(), lease_seconds=60)
        await h.store.transition(mid, MessageState.DELIVERED, reason="delivered", actor="w", lease_owner="w")
        # ... and one whose upstream ack is still outstanding: that one is the ack worker's business.
        waiting = (await h.receive(incoming(needs_ack=True))).message.envelope.id
        await h.store.claim_deliveries(owner="w", adapter="alpha", limit=1, now=h.clock(), lease_seconds=60)
        await h.store.transition(
            waiting, MessageState.DELIVERED, reason="delivered", actor="w", lease_owner="w", ack=AckState.PENDING
        )
        h.clock.advance(60)
        assert await h.intake.resume(older_than=30.0) == 1
        assert await h.state(mid) is MessageState.ACKNOWLEDGED
        assert await h.state(waiting) is MessageState.DELIVERED
