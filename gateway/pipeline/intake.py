"""Intake: every channel hands messages here; nothing is answered before the commit is durable.

``receive`` decides checks and routing first, then inserts the message (idempotent per
``(channel, idempotency_key)``) together with those steps in one transaction: RECEIVED → VALIDATED →
ROUTED (or → REJECTED), each step audited. Messages left in RECEIVED/VALIDATED (stored by an older
version, or a check plugin that raised) are continued by :meth:`Intake.resume` (run at startup and
periodically).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from gateway.metrics import Metrics
from gateway.model import (
    AckState,
    BlobRef,
    Envelope,
    InvalidTransition,
    MessageState,
    ReplyContext,
    RoutingKeys,
    SourceRef,
    new_message_id,
)
from gateway.plugins import PluginHost
from gateway.problems import Problem
from gateway.routing import Router, signature_refusal
from gateway.store.base import Step, Store, StoredMessage

log = structlog.get_logger(__name__)

ACCEPT_POLICIES = ("delivered", "stored")


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    source: SourceRef
    routing: RoutingKeys
    metadata: Mapping[str, Any] = field(default_factory=dict)
    data: BlobRef | None = None
    attachments: Sequence[BlobRef] = ()
    problems: Sequence[Problem] = ()  # what the channel's own checks found (e.g. FIT-Connect receipt checks)
    needs_ack: bool = False  # upstream must be told accept/reject
    received_at: datetime | None = None
    reply: ReplyContext | None = None  # how the applicant can be answered (stored with the message)


class HandOver(Protocol):
    """The delivery worker, as the intake sees it (:class:`gateway.delivery.worker.DeliveryWorker`)."""

    def reserve(self, adapter: str) -> tuple[str, float] | None: ...

    def unreserve(self, adapter: str) -> None: ...

    def hand_over(self, stored: StoredMessage) -> None: ...


@dataclass(frozen=True, slots=True)
class IntakeResult:
    message: StoredMessage
    created: bool


class Intake:
    def __init__(
        self,
        *,
        store: Store,
        router: Router,
        plugins: PluginHost,
        metrics: Metrics,
        accept_policy: Callable[[str], str],
        on_routed: Callable[[], None] = lambda: None,
        on_ack_due: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        delivery: HandOver | None = None,
    ) -> None:
        self.store = store
        self.router = router
        self.plugins = plugins
        self.metrics = metrics
        self.accept_policy = accept_policy  # channel -> "delivered" | "stored"
        self.on_routed = on_routed
        self.on_ack_due = on_ack_due
        self.clock = clock
        # With a worker: a message routed by receive() is leased to it in the same commit and
        # delivered right away (no claim commit, no poll delay) when it has a free slot.
        self.delivery = delivery
        self.draining = False

    async def receive(self, incoming: IncomingMessage) -> IntakeResult:
        if self.draining:
            raise IntakeClosed()
        envelope = Envelope(
            id=new_message_id(),
            source=incoming.source,
            received_at=incoming.received_at or datetime.fromtimestamp(self.clock(), UTC),
            routing=incoming.routing,
            metadata=dict(incoming.metadata),
            data=incoming.data,
            attachments=tuple(incoming.attachments),
            ack=AckState.WAITING if incoming.needs_ack else AckState.NONE,
        )
        # Checks and routing only read the envelope, so they are decided before the insert and the
        # message is stored RECEIVED → VALIDATED → ROUTED (or → REJECTED) in ONE transaction: one
        # commit instead of three, each step still audited on its own.
        try:
            plan = await self._plan(envelope, incoming.problems, hand_over=True)
        except Exception:
            # A check plugin broke: keep the message anyway (RECEIVED); resume() tries again later.
            log.exception("pipeline_checks_failed", source=incoming.source.channel)
            plan = []
        leased = plan[-1].adapter if plan and plan[-1].lease is not None else None
        try:
            stored, created = await self.store.insert(
                envelope, actor=f"source:{incoming.source.channel}", problems=incoming.problems, then=plan
            )
        except BaseException:
            if leased is not None and self.delivery is not None:
                self.delivery.unreserve(leased)
            raise
        if leased is not None and self.delivery is not None:
            if created:
                self.delivery.hand_over(stored)
            else:  # a duplicate: the stored message is left as it is (maybe in delivery right now)
                self.delivery.unreserve(leased)
        channel = incoming.source.channel
        if not created:
            self.metrics.duplicates.labels(channel).inc()
            log.info("duplicate_received", message_id=stored.envelope.id, source=channel, state=stored.envelope.state)
            return IntakeResult(stored, False)
        self.metrics.received.labels(channel).inc()
        log.info("message_received", message_id=envelope.id, source=channel, source_type=incoming.source.type)
        await self._after(MessageState.RECEIVED, plan, stored)
        return IntakeResult(stored, True)

    async def process(self, stored: StoredMessage) -> StoredMessage:
        """Advance a message left in RECEIVED/VALIDATED (a crash, an older version) as far as the
        pipeline goes, in one transaction."""
        env = stored.envelope
        if env.state not in (MessageState.RECEIVED, MessageState.VALIDATED):
            return stored
        plan = await self._plan(env, stored.problems)
        first, *rest = plan
        try:
            stored = await self.store.transition(
                env.id,
                first.target,
                reason=first.reason,
                actor=first.actor,
                details=first.details,
                route=first.route,
                adapter=first.adapter,
                problems=first.problems,
                ack=first.ack,
                then=rest,
            )
        except InvalidTransition:
            # Someone else (another instance, the resume job) advanced it first: that's fine.
            current = await self.store.get(env.id)
            assert current is not None
            return current
        await self._after(env.state, plan, stored)
        return stored

    async def _plan(self, env: Envelope, problems: Sequence[Problem], *, hand_over: bool = False) -> list[Step]:
        """The steps from ``env.state`` (RECEIVED or VALIDATED) to ROUTED or REJECTED; with
        ``hand_over`` the ROUTED step leases the delivery to the worker if it has a slot free."""
        actor = "pipeline"
        steps: list[Step] = []
        if env.state is MessageState.RECEIVED:
            found = list(problems) or await self.plugins.validate_message(env, {})
            if found:
                return [self._rejection(env, found, "checks failed")]
            steps.append(Step(MessageState.VALIDATED, "all checks passed", actor))
        decision = self.router.decide(env.routing, env.source.channel)
        if decision.route is None:
            assert decision.rejection is not None
            problem = Problem(decision.rejection, "Message could not be routed", decision.reason)
            return [*steps, self._rejection(env, [problem], decision.reason)]
        refusal = signature_refusal(decision.route, env.metadata)
        if refusal is not None:
            return [*steps, self._rejection(env, [refusal], refusal.detail)]
        ack = None
        if env.ack is AckState.WAITING and self.accept_policy(env.source.channel) == "stored":
            ack = AckState.PENDING
        lease = None
        if hand_over and self.delivery is not None:
            lease = self.delivery.reserve(decision.route.adapter)
        steps.append(
            Step(
                MessageState.ROUTED,
                decision.reason,
                actor,
                route=decision.route.name,
                adapter=decision.route.adapter,
                ack=ack,
                lease=lease,
                details={"route": decision.route.name, "adapter": decision.route.adapter},
            )
        )
        return steps

    @staticmethod
    def _rejection(env: Envelope, problems: list[Problem], reason: str) -> Step:
        return Step(
            MessageState.REJECTED,
            reason,
            "pipeline",
            problems=problems,
            ack=AckState.PENDING if env.ack is AckState.WAITING else None,
            details={"problems": [p.type for p in problems]},
        )

    async def _after(self, previous: MessageState, plan: Sequence[Step], stored: StoredMessage) -> None:
        """Metrics, logs, observer hooks and wake-ups for committed steps (never before the commit)."""
        env = stored.envelope
        channel = env.source.channel
        for step in plan:
            view = env if step is plan[-1] else env.with_(state=step.target, route=None, adapter=None)
            if step.target is MessageState.ROUTED:
                assert step.route is not None
                self.metrics.routed.labels(channel, step.route).inc()
                log.info("message_routed", message_id=env.id, route=step.route, adapter=step.adapter)
            elif step.target is MessageState.REJECTED:
                problems = list(step.problems or ())
                for problem in problems:
                    self.metrics.rejected.labels(channel, problem.type.rsplit("/", 1)[-1]).inc()
                log.info(
                    "message_rejected",
                    message_id=env.id,
                    source=channel,
                    problem_types=sorted({p.type for p in problems}),
                    instances=sorted({p.instance or "" for p in problems}),
                )
            await self.plugins.message_transition(view, previous.value, step.reason)
            previous = step.target
        if env.state is MessageState.ROUTED and stored.lease_owner is None:
            self.on_routed()  # not handed over: the worker's claim loop picks it up
        if env.ack is AckState.PENDING:
            self.on_ack_due()

    async def resume(self, *, older_than: float = 30.0) -> int:
        """Continue messages left in RECEIVED/VALIDATED (a crash between steps), and finish deliveries
        whose "acknowledged" step was lost; returns how many."""
        count = 0
        cutoff = self.clock() - older_than
        stalled = (MessageState.RECEIVED, MessageState.VALIDATED)
        offset = 0
        while True:
            batch = await self.store.list_messages(states=list(stalled), limit=200, offset=offset)
            if not batch:
                break
            for stored in batch:
                if stored.updated_at <= cutoff:
                    try:
                        stored = await self.process(stored)
                    except Exception:  # e.g. a check plugin raising: keep it, go on with the others
                        log.exception("pipeline_resume_failed", message_id=stored.envelope.id)
                        offset += 1
                        continue
                    count += 1
                if stored.envelope.state in stalled:
                    offset += 1  # still in the listed states: page past it (processed ones leave the list)
        count += await self._finish_delivered(cutoff)
        if count:
            log.info("pipeline_resumed", count=count)
        return count

    async def _finish_delivered(self, cutoff: float) -> int:
        """DELIVERED with no upstream acknowledgement outstanding becomes ACKNOWLEDGED in a second
        commit after the delivery; a crash in between would leave it DELIVERED forever."""
        count = 0
        offset = 0
        while True:
            batch = await self.store.list_messages(states=[MessageState.DELIVERED], limit=200, offset=offset)
            if not batch:
                break
            for stored in batch:
                env = stored.envelope
                if stored.updated_at > cutoff or env.ack not in (AckState.NONE, AckState.DONE):
                    offset += 1  # not ours (yet): the worker or the ack worker finishes it
                    continue
                try:
                    done = await self.store.transition(
                        env.id,
                        MessageState.ACKNOWLEDGED,
                        reason="no upstream acknowledgement outstanding",
                        actor="pipeline",
                    )
                except InvalidTransition:
                    continue  # finished meanwhile
                count += 1
                await self.plugins.message_transition(done.envelope, MessageState.DELIVERED.value, "acknowledged")
        return count

    async def resume_loop(self, interval: float = 30.0) -> None:
        await self.resume(older_than=0.0)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.resume(older_than=interval)
            except Exception:
                log.exception("pipeline_resume_failed")


class IntakeClosed(Exception):
    """The gateway is draining for shutdown: the channel must answer 503 / retry later."""
