"""Upstream acknowledgements with a fake source: accept after delivery or after storage, reject,
and retries of failed acknowledgements."""

from __future__ import annotations

from pathlib import Path

from core.support import BASE_CONFIG, FakeSource, harness, incoming, make_worker, metric_value
from gateway.model import AckState, MessageState, RoutingKeys
from gateway.problems import Problem
from gateway.routing import NO_ROUTE
from gateway.sources.base import AckOutcome, AckResult


async def test_accept_after_delivery(tmp_path: Path) -> None:
    source = FakeSource("fit", accept_policy="delivered")
    async with harness(tmp_path, sources={"fit": source}) as h:
        mid = (await h.receive(incoming("fit", needs_ack=True))).message.envelope.id
        stored = await h.get(mid)
        assert (stored.envelope.state, stored.envelope.ack) == (MessageState.ROUTED, AckState.WAITING)
        assert await h.acker.ack_once() == 0  # nothing to tell upstream before delivery
        await h.worker.deliver_once()
        stored = await h.get(mid)
        assert (stored.envelope.state, stored.envelope.ack) == (MessageState.DELIVERED, AckState.PENDING)
        assert await h.acker.ack_once() == 1
        assert [(i, o) for i, o, _ in source.acks] == [(mid, AckOutcome.ACCEPT)]
        stored = await h.get(mid)
        assert (stored.envelope.state, stored.envelope.ack) == (MessageState.ACKNOWLEDGED, AckState.DONE)
        assert (await h.transitions(mid))[-2:] == [("routed", "delivered"), ("delivered", "acknowledged")]
        assert metric_value(h.metrics, "gateway_acks_total", {"source": "fit", "result": "done"}) == 1


async def test_accept_is_sent_right_after_the_delivery_commit(tmp_path: Path) -> None:
    """As in ``gateway run``: the delivery worker leases the accept to the ack worker in its
    DELIVERED commit and sends it at once: three commits after the intake's one, no ack claim."""
    source = FakeSource("fit", accept_policy="delivered")
    async with harness(tmp_path, sources={"fit": source}) as h:
        worker = make_worker(h, "worker-2", acker=h.acker)
        commits = h.store.commits
        mid = (await h.receive(incoming("fit", needs_ack=True))).message.envelope.id
        assert h.store.commits - commits == 1  # received, validated and routed in one transaction
        assert await worker.deliver_once() == 1
        assert [(i, o) for i, o, _ in source.acks] == [(mid, AckOutcome.ACCEPT)]
        stored = await h.get(mid)
        assert (stored.envelope.state, stored.envelope.ack) == (MessageState.ACKNOWLEDGED, AckState.DONE)
        assert stored.ack_attempts == 1
        assert h.store.commits - commits == 4  # + claim, delivered (with the ack lease), ack done
        assert await h.acker.ack_once() == 0
        trail = await h.store.audit_trail(mid)
        assert [(r.event, r.to_state, r.actor) for r in trail[-4:]] == [
            ("attempt", "routed", "worker-2"),
            ("transition", "delivered", "worker-2"),
            ("ack", "delivered", "acker-1"),
            ("transition", "acknowledged", "acker-1"),
        ]


async def test_accept_sent_with_the_delivery_is_retried_by_the_ack_worker(tmp_path: Path) -> None:
    source = FakeSource("fit", accept_policy="delivered")
    source.script = [AckResult(False, "HTTP 503")]
    async with harness(tmp_path, sources={"fit": source}) as h:
        worker = make_worker(h, "worker-2", acker=h.acker)
        mid = (await h.receive(incoming("fit", needs_ack=True))).message.envelope.id
        await worker.deliver_once()
        stored = await h.get(mid)
        assert (stored.envelope.state, stored.envelope.ack) == (MessageState.DELIVERED, AckState.PENDING)
        assert stored.last_error == "accept: HTTP 503"
        assert await h.acker.ack_once() == 0  # backoff after the first attempt
        h.clock.advance(5)
        assert await h.acker.ack_once() == 1
        stored = await h.get(mid)
        assert (stored.envelope.state, stored.envelope.ack, stored.ack_attempts) == (
            MessageState.ACKNOWLEDGED,
            AckState.DONE,
            2,
        )


async def test_no_accept_when_delivery_fails(tmp_path: Path) -> None:
    source = FakeSource("fit", accept_policy="delivered")
    async with harness(tmp_path, sources={"fit": source}) as h:
        from gateway.adapters.base import DeliveryResult

        h.alpha.script = [DeliveryResult.permanent("no")]
        mid = (await h.receive(incoming("fit", needs_ack=True))).message.envelope.id
        await h.worker.deliver_once()
        stored = await h.get(mid)
        assert (stored.envelope.state, stored.envelope.ack) == (MessageState.DEAD, AckState.WAITING)
        assert await h.acker.ack_once() == 0
        assert source.acks == []


async def test_accept_after_storage(tmp_path: Path) -> None:
    source = FakeSource("fit", accept_policy="stored")
    async with harness(tmp_path, sources={"fit": source}) as h:
        mid = (await h.receive(incoming("fit", needs_ack=True))).message.envelope.id
        stored = await h.get(mid)
        assert (stored.envelope.state, stored.envelope.ack) == (MessageState.ROUTED, AckState.PENDING)
        assert await h.acker.ack_once() == 1  # accepted before delivery
        stored = await h.get(mid)
        assert (stored.envelope.state, stored.envelope.ack) == (MessageState.ROUTED, AckState.DONE)
        await h.worker.deliver_once()
        stored = await h.get(mid)
        assert (stored.envelope.state, stored.envelope.ack) == (MessageState.ACKNOWLEDGED, AckState.DONE)
        assert [o for _, o, _ in source.acks] == [AckOutcome.ACCEPT]


async def test_reject_is_acknowledged_with_problems(tmp_path: Path) -> None:
    source = FakeSource("fit")
    async with harness(tmp_path, sources={"fit": source}) as h:
        problem = Problem(
            "https://schema.fitko.de/fit-connect/events/problems/incorrect-metadata", "bad", "x", "metadata"
        )
        mid = (await h.receive(incoming("fit", needs_ack=True, problems=[problem]))).message.envelope.id
        stored = await h.get(mid)
        assert (stored.envelope.state, stored.envelope.ack) == (MessageState.REJECTED, AckState.PENDING)
        assert await h.acker.ack_once() == 1
        assert source.acks == [(mid, AckOutcome.REJECT, [problem])]
        stored = await h.get(mid)
        assert (stored.envelope.state, stored.envelope.ack) == (MessageState.REJECTED, AckState.DONE)


async def test_unroutable_message_is_rejected_upstream(tmp_path: Path) -> None:
    source = FakeSource("fit")
    config = BASE_CONFIG.replace('adapter = "alpha"\n', 'adapter = "alpha"\n[routes.match]\nservice = "urn:de:*"\n')
    async with harness(tmp_path, config, sources={"fit": source}) as h:
        result = await h.receive(incoming("fit", needs_ack=True, routing=RoutingKeys(service="urn:other")))
        mid = result.message.envelope.id
        assert result.message.envelope.state is MessageState.REJECTED
        assert await h.acker.ack_once() == 1
        ((acked, outcome, problems),) = source.acks
        assert (acked, outcome) == (mid, AckOutcome.REJECT)
        assert [p.type for p in problems] == [NO_ROUTE]


async def test_failed_acks_are_retried_with_backoff(tmp_path: Path) -> None:
    source = FakeSource("fit")
    source.script = [AckResult(False, "HTTP 503"), ConnectionError("reset by peer")]
    async with harness(tmp_path, sources={"fit": source}) as h:
        mid = (await h.receive(incoming("fit", needs_ack=True))).message.envelope.id
        await h.worker.deliver_once()
        assert await h.acker.ack_once() == 1
        stored = await h.get(mid)
        assert stored.envelope.ack is AckState.PENDING
        assert stored.last_error == "accept: HTTP 503"
        assert await h.acker.ack_once() == 0  # backoff: 5 s after the first failure
        h.clock.advance(5)
        assert await h.acker.ack_once() == 1  # raises: treated as not done
        assert (await h.get(mid)).last_error == "accept: acknowledge raised ConnectionError"
        h.clock.advance(9.9)
        assert await h.acker.ack_once() == 0  # 10 s after the second failure
        h.clock.advance(0.1)
        assert await h.acker.ack_once() == 1
        stored = await h.get(mid)
        assert (stored.envelope.state, stored.envelope.ack) == (MessageState.ACKNOWLEDGED, AckState.DONE)
        assert stored.ack_attempts == 3
        assert len(source.acks) == 3
        events = [r.event for r in await h.store.audit_trail(mid) if r.event.startswith("ack")]
        assert events == ["ack-failed", "ack-failed", "ack"]
        assert metric_value(h.metrics, "gateway_acks_total", {"source": "fit", "result": "retry"}) == 2


async def test_ack_for_an_unconfigured_source_stays_pending(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:  # no sources configured
        mid = (await h.receive(incoming("gone", needs_ack=True))).message.envelope.id
        await h.worker.deliver_once()
        assert await h.acker.ack_once() == 1
        stored = await h.get(mid)
        assert stored.envelope.ack is AckState.PENDING
        assert stored.last_error == "accept: source 'gone' is not configured"
