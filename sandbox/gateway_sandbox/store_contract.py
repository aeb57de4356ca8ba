"""The store contract: the test suite every store backend must pass, shipped in the development companion.

Both built-in backends run it (``tests/store/test_contract.py``); a third backend is tested the same
way, by subclassing :class:`StoreContract` and providing the ``store`` fixture::

    import pytest
    from gateway_sandbox.store_contract import FakeClock, StoreContract

    class TestMyStore(StoreContract):
        @pytest.fixture
        async def store(self, clock: FakeClock, tmp_path):
            store = MyStore(..., clock=clock)  # the store reads the contract's clock
            await store.open()
            yield store
            await store.close()

        @pytest.fixture
        def raw(self, store):  # optional: raw SQL for the tamper-detection tests (else skipped)
            return RawAccess(app_sql=..., admin_sql=...)

For vendors' unit tests that need a real store without a database server, see
:func:`gateway.store.memory.temporary_store`. Needs pytest with an asyncio plugin
(``asyncio_mode = auto``), as the gateway's own test suite has.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.model import (
    TRANSITIONS,
    AckState,
    Answer,
    AnswerKind,
    AnswerState,
    BlobRef,
    Envelope,
    InvalidAnswerTransition,
    InvalidTransition,
    MessageState,
    ReplyContext,
    RoutingKeys,
    SourceRef,
    new_message_id,
)
from gateway.problems import Problem
from gateway.store.manager import Store
from gateway.store.records import AnswerNotFound, AnswerStep, LeaseLost, MessageNotFound, Step

T0 = 1_700_000_000.0
ALL_STATES = list(MessageState)


class FakeClock:
    """The store's (and workers') notion of now; tests move it to expire leases and reach retries."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@dataclass
class RawAccess:
    """Raw statements against a backend's database, for what the store API must not allow."""

    # Run a statement as the application would (append-only protection in force).
    app_sql: Callable[[str], Awaitable[None]]
    # Run statements as an administrator who has lifted the append-only protection first.
    admin_sql: Callable[[Sequence[str]], Awaitable[None]]


def make_envelope(
    *,
    channel: str = "fitconnect-bauamt",
    key: str | None = None,
    received_at: float = T0,
    metadata: dict[str, Any] | None = None,
    with_blobs: bool = False,
    ack: AckState = AckState.NONE,
    reply: ReplyContext | None = None,
) -> Envelope:
    key = key or new_message_id()
    data = attachments = None
    if with_blobs:
        data = BlobRef("data", "a" * 128, "a" * 128, 12, "application/json", "antrag.json")
        attachments = (BlobRef("attachment:1", "b" * 128, "b" * 128, 3, "application/pdf", "../Plan ä.pdf", "1"),)
    return Envelope(
        id=new_message_id(),
        source=SourceRef(channel=channel, type="fitconnect", reference=key, idempotency_key=key, case="case-1"),
        received_at=datetime.fromtimestamp(received_at, UTC),
        routing=RoutingKeys(service="urn:de:fim:leika:leistung:99050012104000", region="064350014014"),
        metadata=metadata if metadata is not None else {"note": "Grüße", "n": 1.5},
        data=data,
        attachments=attachments or (),
        ack=ack,
        reply=reply,
    )


def make_answer(message_id: str, *, key: str | None = None, caller: str = "api:bauamt", **changes: Any) -> Answer:
    answer = Answer(
        id=new_message_id(),
        message_id=message_id,
        kind=AnswerKind.REPLY,
        caller=caller,
        idempotency_key=key or new_message_id(),
        created_at=datetime.fromtimestamp(T0, UTC),
        content={"title": "Nachforderung", "text": "Bitte reichen Sie den Lageplan nach. Grüße"},
    )
    return answer.with_(**changes)


# The shortest path from RECEIVED to each state.
PATHS: dict[MessageState, Sequence[MessageState]] = {
    MessageState.RECEIVED: (),
    MessageState.VALIDATED: (MessageState.VALIDATED,),
    MessageState.ROUTED: (MessageState.VALIDATED, MessageState.ROUTED),
    MessageState.FAILED: (MessageState.VALIDATED, MessageState.ROUTED, MessageState.FAILED),
    MessageState.DELIVERED: (MessageState.VALIDATED, MessageState.ROUTED, MessageState.DELIVERED),
    MessageState.ACKNOWLEDGED: (
        MessageState.VALIDATED,
        MessageState.ROUTED,
        MessageState.DELIVERED,
        MessageState.ACKNOWLEDGED,
    ),
    MessageState.REJECTED: (MessageState.REJECTED,),
    MessageState.DEAD: (MessageState.DEAD,),
}


async def drive(store: Store, message_id: str, states: Sequence[MessageState], *, adapter: str = "fv") -> None:
    for state in states:
        kwargs: dict[str, Any] = {}
        if state is MessageState.ROUTED:
            kwargs = {"route": "r1", "adapter": adapter}
        await store.transition(message_id, state, reason=f"to {state.value}", actor="test", **kwargs)


async def routed_message(store: Store, *, adapter: str = "fv", **envelope_kwargs: Any) -> str:
    stored, _ = await store.insert(make_envelope(**envelope_kwargs), actor="test")
    await drive(store, stored.envelope.id, PATHS[MessageState.ROUTED], adapter=adapter)
    return stored.envelope.id


async def queued_answer(store: Store, message_id: str, *, channel: str = "fitconnect", **answer: Any) -> str:
    """Hand an answer over and queue it for ``channel`` (as the router would), in one commit."""
    stored, created = await store.insert_answer(
        make_answer(message_id, **answer),
        actor="api:bauamt",
        then=[AnswerStep(AnswerState.QUEUED, "applicant's choice", "router", channel=channel)],
    )
    assert created
    return stored.answer.id


class StoreContract:
    """The store's semantics as tests; run for a backend by providing the ``store`` fixture."""

    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def raw(self) -> RawAccess:
        pytest.skip("this backend gives the contract no raw SQL access (tamper-detection tests)")

    # insert / idempotency ------------------------------------------------------------------------

    async def test_insert_stores_received_message_with_audit(self, store: Store) -> None:
        env = make_envelope(with_blobs=True, metadata={"antrag": {"name": "Jürgen", "werte": [1, 2.5, None]}})
        problem = Problem("urn:x:bad", "Bad", "detail", instance="data")
        stored, created = await store.insert(env, actor="source:fc", problems=[problem])
        assert created
        assert stored.envelope == env.with_(state=MessageState.RECEIVED)
        assert stored.problems == (problem,)
        assert stored.updated_at == T0
        again = await store.get(env.id)
        assert again == stored
        trail = await store.audit_trail(env.id)
        assert [(r.event, r.from_state, r.to_state, r.actor, r.reason) for r in trail] == [
            ("transition", None, "received", "source:fc", "received")
        ]
        assert trail[0].details == {"channel": env.source.channel, "reference": env.source.reference}

    async def test_insert_is_idempotent_per_channel_and_key(self, store: Store) -> None:
        first, created = await store.insert(make_envelope(key="sub-1"), actor="a")
        assert created
        dup_env = make_envelope(key="sub-1", metadata={"different": True})
        dup, created_again = await store.insert(dup_env, actor="a")
        assert not created_again
        assert dup.envelope.id == first.envelope.id != dup_env.id
        assert dup.envelope.metadata == first.envelope.metadata  # the stored message is unchanged
        assert await store.get(dup_env.id) is None
        assert len(await store.audit_trail(first.envelope.id)) == 1
        other, created_other = await store.insert(make_envelope(key="sub-1", channel="xoev-http"), actor="a")
        assert created_other
        assert other.envelope.id != first.envelope.id
        found = await store.find_by_source("fitconnect-bauamt", "sub-1")
        assert found is not None
        assert found.envelope.id == first.envelope.id
        assert await store.find_by_source("fitconnect-bauamt", "nope") is None
        assert (await store.count_by_state())["received"] == 2

    async def test_concurrent_duplicate_inserts_store_one(self, store: Store) -> None:
        envs = [make_envelope(key="same") for _ in range(8)]
        results = await asyncio.gather(*(store.insert(e, actor="a") for e in envs))
        assert sum(created for _, created in results) == 1
        assert len({s.envelope.id for s, _ in results}) == 1
        assert (await store.count_by_state())["received"] == 1
        assert (await store.verify_audit()).checked == 1

    async def test_get_unknown_and_transition_unknown(self, store: Store) -> None:
        assert await store.get("no-such-id") is None
        with pytest.raises(MessageNotFound):
            await store.transition("no-such-id", MessageState.VALIDATED, reason="x", actor="t")
        with pytest.raises(MessageNotFound):
            await store.note("no-such-id", event="operator", reason="x", actor="t")

    # transitions -----------------------------------------------------------------------------------

    @pytest.mark.parametrize("current", ALL_STATES, ids=lambda s: s.value)
    async def test_every_transition_from_state(self, store: Store, clock: FakeClock, current: MessageState) -> None:
        """Every target from ``current``: allowed ones change state and append exactly their audit record;
        refused ones raise InvalidTransition and leave state and audit untouched."""
        for target in ALL_STATES:
            stored, _ = await store.insert(make_envelope(), actor="t")
            mid = stored.envelope.id
            await drive(store, mid, PATHS[current])
            before = await store.get(mid)
            assert before is not None
            assert before.envelope.state is current
            trail_before = await store.audit_trail(mid)
            clock.advance(1)
            if target in TRANSITIONS[current]:
                after = await store.transition(
                    mid, target, reason=f"go {target.value}", actor="tester", details={"k": target.value}
                )
                assert after.envelope.state is target
                assert after.updated_at == clock.now
                assert after.lease_owner is None
                assert after.lease_until is None
                trail = await store.audit_trail(mid)
                assert len(trail) == len(trail_before) + 1
                rec = trail[-1]
                assert (rec.event, rec.from_state, rec.to_state, rec.reason, rec.actor, rec.at) == (
                    "transition",
                    current.value,
                    target.value,
                    f"go {target.value}",
                    "tester",
                    clock.now,
                )
                assert rec.details == {"k": target.value}
            else:
                with pytest.raises(InvalidTransition) as info:
                    await store.transition(mid, target, reason="nope", actor="tester")
                assert (info.value.current, info.value.target) == (current, target)
                assert await store.get(mid) == before
                assert await store.audit_trail(mid) == trail_before
        assert (await store.verify_audit()).ok

    async def test_transition_bookkeeping(self, store: Store, clock: FakeClock) -> None:
        stored, _ = await store.insert(make_envelope(), actor="t")
        mid = stored.envelope.id
        await store.transition(mid, MessageState.VALIDATED, reason="ok", actor="p")
        clock.advance(5)
        routed = await store.transition(
            mid, MessageState.ROUTED, reason="rule", actor="p", route="r1", adapter="fv", ack=AckState.PENDING
        )
        assert (routed.envelope.route, routed.envelope.adapter) == ("r1", "fv")
        assert routed.next_attempt_at == clock.now
        assert routed.queued_at == clock.now
        assert routed.envelope.ack is AckState.PENDING
        claimed = await store.claim_deliveries(owner="w", adapter="fv", limit=5, now=clock.now, lease_seconds=30)
        clock.advance(1)
        failed = await store.transition(
            mid,
            MessageState.FAILED,
            reason="503",
            actor="w",
            lease_owner="w",
            next_attempt_at=clock.now + 60,
            last_error="503",
        )
        assert [c.envelope.id for c in claimed] == [mid]
        assert failed.next_attempt_at == clock.now + 60
        assert failed.last_error == "503"
        assert failed.queued_at == routed.queued_at  # queued_at is the first queueing, kept across retries
        assert failed.envelope.attempts == 1
        dead = await store.transition(mid, MessageState.DEAD, reason="gave up", actor="w")
        assert dead.envelope.attempts == 1
        clock.advance(1)
        retried = await store.transition(
            mid, MessageState.ROUTED, reason="operator retry", actor="op", reset_attempts=True
        )
        assert retried.envelope.attempts == 0
        assert retried.queued_at == clock.now  # an operator retry queues anew (its own max_age)
        problems = [Problem("urn:x:p", "P")]
        rejected_env, _ = await store.insert(make_envelope(), actor="t")
        rejected = await store.transition(
            rejected_env.envelope.id, MessageState.REJECTED, reason="bad", actor="p", problems=problems
        )
        assert rejected.problems == tuple(problems)

    async def test_note_audits_without_state_change(self, store: Store) -> None:
        mid = await routed_message(store)
        await store.note(mid, event="operator", reason="looked at it", actor="op", details={"ticket": 7})
        rec = (await store.audit_trail(mid))[-1]
        assert (rec.event, rec.from_state, rec.to_state, rec.details) == ("operator", "routed", "routed", {"ticket": 7})
        assert (await store.get(mid)).envelope.state is MessageState.ROUTED  # type: ignore[union-attr]

    # claims and leases -------------------------------------------------------------------------------

    async def test_claim_due_messages_per_adapter(self, store: Store, clock: FakeClock) -> None:
        a1 = await routed_message(store, adapter="fv")
        clock.advance(1)
        a2 = await routed_message(store, adapter="fv")
        b1 = await routed_message(store, adapter="other")
        now = clock.now
        later = await routed_message(store, adapter="fv")
        await store.transition(later, MessageState.FAILED, reason="x", actor="t", next_attempt_at=now + 100)
        claimed = await store.claim_deliveries(owner="w1", adapter="fv", limit=10, now=now, lease_seconds=30)
        assert [c.envelope.id for c in claimed] == [a1, a2]  # oldest due first; not other adapters, not future
        for c in claimed:
            assert (c.lease_owner, c.lease_until, c.envelope.attempts) == ("w1", now + 30, 1)
            rec = (await store.audit_trail(c.envelope.id))[-1]
            assert (rec.event, rec.from_state, rec.to_state, rec.actor, rec.reason) == (
                "attempt",
                "routed",
                "routed",
                "w1",
                "delivery attempt 1",
            )
            assert rec.details == {"adapter": "fv", "attempt": 1}
        assert await store.claim_deliveries(owner="w2", adapter="fv", limit=10, now=now, lease_seconds=30) == []
        other = await store.claim_deliveries(owner="w2", adapter="other", limit=10, now=now, lease_seconds=30)
        assert [c.envelope.id for c in other] == [b1]
        # At now+100 the leases of a1/a2 (until now+30) have expired and ``later`` is due: all three, by due time.
        due_later = await store.claim_deliveries(owner="w2", adapter="fv", limit=10, now=now + 100, lease_seconds=30)
        assert [(c.envelope.id, c.envelope.attempts) for c in due_later] == [(a1, 2), (a2, 2), (later, 1)]

    async def test_claim_respects_limit_and_states(self, store: Store, clock: FakeClock) -> None:
        ids = [await routed_message(store) for _ in range(5)]
        stored, _ = await store.insert(make_envelope(), actor="t")  # RECEIVED: never claimable
        await store.transition(ids[4], MessageState.DELIVERED, reason="x", actor="t")
        first = await store.claim_deliveries(owner="w", adapter="fv", limit=2, now=clock.now, lease_seconds=30)
        second = await store.claim_deliveries(owner="w", adapter="fv", limit=10, now=clock.now, lease_seconds=30)
        assert len(first) == 2
        assert len(second) == 2
        assert {c.envelope.id for c in first + second} == set(ids[:4])
        assert stored.envelope.id not in {c.envelope.id for c in first + second}

    async def test_lease_expiry_reclaim_and_lease_lost(self, store: Store, clock: FakeClock) -> None:
        mid = await routed_message(store)
        [c1] = await store.claim_deliveries(owner="w1", adapter="fv", limit=1, now=clock.now, lease_seconds=30)
        clock.advance(30)  # lease_until == now: still live (expires strictly after)
        assert await store.claim_deliveries(owner="w2", adapter="fv", limit=1, now=clock.now, lease_seconds=30) == []
        clock.advance(0.5)
        [c2] = await store.claim_deliveries(owner="w2", adapter="fv", limit=1, now=clock.now, lease_seconds=30)
        assert (c2.lease_owner, c2.envelope.attempts) == ("w2", 2)
        assert c1.envelope.attempts == 1
        with pytest.raises(LeaseLost):
            await store.transition(mid, MessageState.DELIVERED, reason="late", actor="w1", lease_owner="w1")
        with pytest.raises(LeaseLost):
            await store.renew_lease(mid, owner="w1", until=clock.now + 60)
        current = await store.get(mid)
        assert current is not None
        assert current.envelope.state is MessageState.ROUTED
        assert current.lease_owner == "w2"
        await store.renew_lease(mid, owner="w2", until=clock.now + 90)
        assert (await store.get(mid)).lease_until == clock.now + 90  # type: ignore[union-attr]
        done = await store.transition(mid, MessageState.DELIVERED, reason="ok", actor="w2", lease_owner="w2")
        assert done.envelope.state is MessageState.DELIVERED
        assert done.lease_owner is None
        attempts = [r for r in await store.audit_trail(mid) if r.event == "attempt"]
        assert [(r.actor, r.details["attempt"]) for r in attempts] == [("w1", 1), ("w2", 2)]
        # Delivered messages are never claimed again, whatever the clock says.
        clock.advance(10_000)
        assert await store.claim_deliveries(owner="w3", adapter="fv", limit=5, now=clock.now, lease_seconds=30) == []

    async def test_expired_lease_refuses_its_owner_too(self, store: Store, clock: FakeClock) -> None:
        mid = await routed_message(store)
        await store.claim_deliveries(owner="w1", adapter="fv", limit=1, now=clock.now, lease_seconds=30)
        clock.advance(31)
        with pytest.raises(LeaseLost):
            await store.transition(mid, MessageState.FAILED, reason="x", actor="w1", lease_owner="w1")
        with pytest.raises(LeaseLost):
            await store.renew_lease(mid, owner="w1", until=clock.now + 30)
        with pytest.raises(LeaseLost):
            await store.renew_lease("no-such-id", owner="w1", until=clock.now + 30)

    async def test_release_leases(self, store: Store, clock: FakeClock) -> None:
        m1, m2 = await routed_message(store), await routed_message(store)
        await store.claim_deliveries(owner="w1", adapter="fv", limit=5, now=clock.now, lease_seconds=300)
        acked = await routed_message(store)
        await store.set_ack_pending(acked, reason="due", actor="t")
        await store.claim_acks(owner="w1", limit=5, now=clock.now, lease_seconds=300)
        assert await store.release_leases("someone-else") == 0
        # acked's delivery lease was never taken (claimed after); 2 delivery + 1 ack lease are released.
        assert await store.release_leases("w1") == 3
        again = await store.claim_deliveries(owner="w2", adapter="fv", limit=5, now=clock.now, lease_seconds=30)
        assert {c.envelope.id for c in again} == {m1, m2, acked}
        assert {c.envelope.attempts for c in again if c.envelope.id != acked} == {2}
        assert [
            a.envelope.id for a in await store.claim_acks(owner="w2", limit=5, now=clock.now, lease_seconds=30)
        ] == [acked]

    # steps chained into one transaction (then=) ---------------------------------------------------

    async def test_insert_then_steps_commit_together_each_audited(self, store: Store, clock: FakeClock) -> None:
        env = make_envelope(ack=AckState.WAITING)
        stored, created = await store.insert(
            env,
            actor="source:fc",
            then=[
                Step(MessageState.VALIDATED, "all checks passed", "pipeline"),
                Step(MessageState.ROUTED, "rule r1", "pipeline", route="r1", adapter="fv", details={"route": "r1"}),
            ],
        )
        assert created
        assert stored.envelope.state is MessageState.ROUTED
        assert (stored.envelope.route, stored.envelope.adapter, stored.next_attempt_at) == ("r1", "fv", clock.now)
        assert stored == await store.get(env.id)
        trail = await store.audit_trail(env.id)
        assert [(r.from_state, r.to_state, r.actor, r.reason) for r in trail] == [
            (None, "received", "source:fc", "received"),
            ("received", "validated", "pipeline", "all checks passed"),
            ("validated", "routed", "pipeline", "rule r1"),
        ]
        assert trail[2].details == {"route": "r1"}
        assert (await store.verify_audit()).ok
        # A duplicate applies none of its steps.
        again, created_again = await store.insert(
            make_envelope(key=env.source.idempotency_key), actor="x", then=[Step(MessageState.REJECTED, "no", "p")]
        )
        assert not created_again
        assert again.envelope.state is MessageState.ROUTED
        assert len(await store.audit_trail(env.id)) == 3

    async def test_a_refused_step_undoes_the_whole_call(self, store: Store) -> None:
        env = make_envelope()
        with pytest.raises(InvalidTransition):
            await store.insert(env, actor="t", then=[Step(MessageState.DELIVERED, "skips routing", "p")])
        assert await store.get(env.id) is None  # not even the insert stands
        mid = await routed_message(store)
        before = await store.audit_trail(mid)
        with pytest.raises(InvalidTransition):
            await store.transition(
                mid, MessageState.FAILED, reason="x", actor="w", then=[Step(MessageState.VALIDATED, "back", "w")]
            )
        current = await store.get(mid)
        assert current is not None
        assert current.envelope.state is MessageState.ROUTED
        assert await store.audit_trail(mid) == before
        assert (await store.verify_audit()).ok

    async def test_if_settled_step_only_when_nothing_is_outstanding_upstream(
        self, store: Store, clock: FakeClock
    ) -> None:
        settle = Step(MessageState.ACKNOWLEDGED, "no upstream acknowledgement outstanding", "w", if_settled=True)
        plain = await routed_message(store)
        [claimed] = await store.claim_deliveries(owner="w", adapter="fv", limit=5, now=clock.now, lease_seconds=30)
        done = await store.transition(
            plain, MessageState.DELIVERED, reason="ok", actor="w", lease_owner="w", then=[settle]
        )
        assert done.envelope.state is MessageState.ACKNOWLEDGED
        assert [r.to_state for r in (await store.audit_trail(plain))[-2:]] == ["delivered", "acknowledged"]
        waiting = await routed_message(store, ack=AckState.WAITING)
        await store.claim_deliveries(owner="w", adapter="fv", limit=5, now=clock.now, lease_seconds=30)
        pending = await store.transition(
            waiting,
            MessageState.DELIVERED,
            reason="ok",
            actor="w",
            lease_owner="w",
            ack=AckState.PENDING,
            then=[settle],
        )
        assert pending.envelope.state is MessageState.DELIVERED  # the ack worker finishes it
        assert pending.envelope.ack is AckState.PENDING
        assert claimed.envelope.id == plain

    async def test_delivery_lease_taken_with_the_routing(self, store: Store, clock: FakeClock) -> None:
        env = make_envelope()
        stored, _ = await store.insert(
            env,
            actor="source:x",
            then=[
                Step(MessageState.VALIDATED, "ok", "pipeline"),
                Step(MessageState.ROUTED, "r1", "pipeline", route="r1", adapter="fv", lease=("w1", clock.now + 60)),
            ],
        )
        assert (stored.lease_owner, stored.lease_until, stored.envelope.attempts) == ("w1", clock.now + 60, 1)
        last = (await store.audit_trail(env.id))[-1]
        assert (last.event, last.to_state, last.actor, last.reason, last.details) == (
            "attempt",
            "routed",
            "w1",
            "delivery attempt 1",
            {"adapter": "fv", "attempt": 1},
        )
        assert (
            await store.claim_deliveries(owner="w2", adapter="fv", limit=5, now=clock.now + 59, lease_seconds=30) == []
        )
        [taken] = await store.claim_deliveries(owner="w2", adapter="fv", limit=5, now=clock.now + 61, lease_seconds=30)
        assert taken.envelope.attempts == 2  # the lease holder died: the next attempt is counted on top
        with pytest.raises(LeaseLost):
            await store.transition(env.id, MessageState.DELIVERED, reason="late", actor="w1", lease_owner="w1")
        with pytest.raises(ValueError, match="lease needs target=ROUTED"):
            await store.insert(
                make_envelope(), actor="x", then=[Step(MessageState.VALIDATED, "ok", "p", lease=("w2", clock.now))]
            )

    async def test_ack_lease_taken_with_the_delivery(self, store: Store, clock: FakeClock) -> None:
        mid = await routed_message(store, ack=AckState.WAITING)
        await store.claim_deliveries(owner="w", adapter="fv", limit=5, now=clock.now, lease_seconds=30)
        delivered = await store.transition(
            mid,
            MessageState.DELIVERED,
            reason="ok",
            actor="w",
            lease_owner="w",
            ack=AckState.PENDING,
            ack_lease=("acker-1", clock.now + 60),
        )
        assert delivered.envelope.ack is AckState.PENDING
        assert delivered.ack_attempts == 1
        # Leased: no other ack worker claims it while the lease lives ...
        assert await store.claim_acks(owner="acker-2", limit=5, now=clock.now + 59, lease_seconds=30) == []
        with pytest.raises(LeaseLost):
            await store.complete_ack(mid, owner="acker-2", done=True, reason="x", next_attempt_at=None, actor="a")
        done = await store.complete_ack(
            mid, owner="acker-1", done=True, reason="accept: ok", next_attempt_at=None, actor="acker-1"
        )
        assert done.envelope.state is MessageState.ACKNOWLEDGED
        # ... and if its holder died, the lease expires and anyone's ack worker takes it over.
        other = await routed_message(store, ack=AckState.WAITING)
        await store.claim_deliveries(owner="w", adapter="fv", limit=5, now=clock.now, lease_seconds=30)
        await store.transition(
            other,
            MessageState.DELIVERED,
            reason="ok",
            actor="w",
            lease_owner="w",
            ack=AckState.PENDING,
            ack_lease=("acker-dead", clock.now + 60),
        )
        [taken] = await store.claim_acks(owner="acker-2", limit=5, now=clock.now + 61, lease_seconds=30)
        assert taken.envelope.id == other
        assert taken.ack_attempts == 2
        with pytest.raises(ValueError, match="ack_lease needs ack=PENDING"):
            await store.transition(other, MessageState.ACKNOWLEDGED, reason="x", actor="w", ack_lease=("a", 1.0))

    # acknowledgements ----------------------------------------------------------------------------

    async def test_ack_pending_claim_complete(self, store: Store, clock: FakeClock) -> None:
        mid = await routed_message(store)
        await store.transition(mid, MessageState.DELIVERED, reason="ok", actor="w")
        assert await store.claim_acks(owner="a1", limit=5, now=clock.now, lease_seconds=30) == []
        pending = await store.set_ack_pending(mid, reason="accept due", actor="w")
        assert pending.envelope.ack is AckState.PENDING
        rec = (await store.audit_trail(mid))[-1]
        assert (rec.event, rec.reason, rec.details) == ("ack", "accept due", {"ack": "pending"})
        [claimed] = await store.claim_acks(owner="a1", limit=5, now=clock.now, lease_seconds=30)
        assert claimed.ack_attempts == 1
        assert await store.claim_acks(owner="a2", limit=5, now=clock.now, lease_seconds=30) == []
        with pytest.raises(LeaseLost):
            await store.complete_ack(mid, owner="a2", done=True, reason="x", next_attempt_at=None, actor="a2")
        retry_at = clock.now + 5
        failed = await store.complete_ack(
            mid, owner="a1", done=False, reason="accept: upstream 503", next_attempt_at=retry_at, actor="a1"
        )
        assert failed.envelope.ack is AckState.PENDING
        assert failed.last_error == "accept: upstream 503"
        rec = (await store.audit_trail(mid))[-1]
        assert (rec.event, rec.details) == ("ack-failed", {"attempt": 1})
        with pytest.raises(LeaseLost):  # the lease was released with the failed attempt
            await store.complete_ack(mid, owner="a1", done=True, reason="x", next_attempt_at=None, actor="a1")
        assert await store.claim_acks(owner="a2", limit=5, now=retry_at - 0.001, lease_seconds=30) == []
        [again] = await store.claim_acks(owner="a2", limit=5, now=retry_at, lease_seconds=30)
        assert again.ack_attempts == 2
        clock.advance(7)
        done = await store.complete_ack(
            mid, owner="a2", done=True, reason="accept: ok", next_attempt_at=None, actor="a2"
        )
        assert done.envelope.state is MessageState.ACKNOWLEDGED
        assert done.envelope.ack is AckState.DONE
        tail = (await store.audit_trail(mid))[-2:]
        assert [(r.event, r.from_state, r.to_state) for r in tail] == [
            ("ack", "delivered", "delivered"),
            ("transition", "delivered", "acknowledged"),
        ]
        assert tail[1].at == clock.now
        # Done is done: no further claim, and asking again changes nothing.
        clock.advance(10_000)
        assert await store.claim_acks(owner="a3", limit=5, now=clock.now, lease_seconds=30) == []
        same = await store.set_ack_pending(mid, reason="again", actor="w")
        assert same.envelope.ack is AckState.DONE
        assert (await store.audit_trail(mid))[-1] == tail[1]

    async def test_ack_of_rejected_message_keeps_state(self, store: Store, clock: FakeClock) -> None:
        stored, _ = await store.insert(make_envelope(), actor="t")
        mid = stored.envelope.id
        await store.transition(mid, MessageState.REJECTED, reason="bad", actor="p", ack=AckState.PENDING)
        [claimed] = await store.claim_acks(owner="a", limit=5, now=clock.now, lease_seconds=30)
        assert claimed.envelope.state is MessageState.REJECTED
        done = await store.complete_ack(mid, owner="a", done=True, reason="reject: ok", next_attempt_at=None, actor="a")
        assert done.envelope.state is MessageState.REJECTED
        assert done.envelope.ack is AckState.DONE
        assert (await store.audit_trail(mid))[-1].event == "ack"

    async def test_ack_done_before_delivery_keeps_state(self, store: Store, clock: FakeClock) -> None:
        mid = await routed_message(store, ack=AckState.WAITING)
        await store.set_ack_pending(mid, reason="stored", actor="t")
        await store.claim_acks(owner="a", limit=1, now=clock.now, lease_seconds=30)
        done = await store.complete_ack(mid, owner="a", done=True, reason="ok", next_attempt_at=None, actor="a")
        assert (done.envelope.state, done.envelope.ack) == (MessageState.ROUTED, AckState.DONE)

    async def test_expired_ack_lease_can_be_reclaimed(self, store: Store, clock: FakeClock) -> None:
        mid = await routed_message(store)
        await store.set_ack_pending(mid, reason="due", actor="t")
        await store.claim_acks(owner="a1", limit=5, now=clock.now, lease_seconds=30)
        [again] = await store.claim_acks(owner="a2", limit=5, now=clock.now + 31, lease_seconds=30)
        assert again.ack_attempts == 2
        with pytest.raises(LeaseLost):
            await store.complete_ack(mid, owner="a1", done=True, reason="x", next_attempt_at=None, actor="a1")

    # listing -------------------------------------------------------------------------------------

    async def test_list_and_count(self, store: Store) -> None:
        ids = []
        for index in range(7):
            stored, _ = await store.insert(make_envelope(received_at=T0 + index), actor="t")
            ids.append(stored.envelope.id)
        await drive(store, ids[1], PATHS[MessageState.DEAD])
        await drive(store, ids[4], PATHS[MessageState.DEAD])
        await drive(store, ids[5], PATHS[MessageState.ROUTED])
        listed = await store.list_messages()
        assert [s.envelope.id for s in listed] == ids  # by received_at
        page = await store.list_messages(limit=3, offset=2)
        assert [s.envelope.id for s in page] == ids[2:5]
        dead = await store.list_messages(states=[MessageState.DEAD])
        assert [s.envelope.id for s in dead] == [ids[1], ids[4]]
        mixed = await store.list_messages(states=[MessageState.DEAD, MessageState.ROUTED], limit=2, offset=1)
        assert [s.envelope.id for s in mixed] == [ids[4], ids[5]]
        counts = await store.count_by_state()
        assert counts == {s.value: 0 for s in MessageState} | {"received": 4, "dead": 2, "routed": 1}

    async def test_list_orders_ties_by_id_bytewise(self, store: Store) -> None:
        # Same received_at: ordering falls back to id, compared as bytes on every backend.
        envs = [make_envelope(received_at=T0) for _ in range(6)]
        envs = [e.with_(id=i) for e, i in zip(envs, ["b-1", "B-2", "a_3", "a-3", "a3", "Z"], strict=True)]
        for env in envs:
            await store.insert(env, actor="t")
        assert [s.envelope.id for s in await store.list_messages()] == sorted(e.id for e in envs)

    # audit chain -------------------------------------------------------------------------------------

    async def test_audit_chain_verifies_and_links(self, store: Store) -> None:
        assert (await store.verify_audit()).ok
        for _ in range(3):
            mid = await routed_message(store)
        result = await store.verify_audit()
        assert result.ok
        assert result.checked == 9
        trail = await store.audit_trail(mid)
        assert [r.seq for r in trail] == [7, 8, 9]
        assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(trail))

    async def test_audit_is_append_only_in_the_database(self, store: Store, raw: RawAccess) -> None:
        await routed_message(store)
        for statement in ("UPDATE audit SET reason = 'forged' WHERE seq = 1", "DELETE FROM audit WHERE seq = 3"):
            with pytest.raises(Exception, match="append-only"):
                await raw.app_sql(statement)
        assert (await store.verify_audit()).checked == 3

    async def test_tampering_is_detected(self, store: Store, raw: RawAccess) -> None:
        ids = [await routed_message(store) for _ in range(2)]
        await raw.admin_sql(["UPDATE audit SET reason = 'nothing to see' WHERE seq = 2"])
        result = await store.verify_audit()
        assert (result.ok, result.broken_seq, result.checked) == (False, 2, 1)
        assert "does not match its hash" in result.reason
        assert len(await store.audit_trail(ids[0])) == 3

    async def test_removed_record_is_detected(self, store: Store, raw: RawAccess) -> None:
        await routed_message(store)
        await routed_message(store)
        await raw.admin_sql(["DELETE FROM audit WHERE seq = 4"])
        result = await store.verify_audit()
        assert (result.ok, result.broken_seq) == (False, 5)
        assert "missing" in result.reason

    async def test_cut_off_tail_is_detected(self, store: Store, raw: RawAccess) -> None:
        # The newest records have no successor whose prev_hash would break: the audit head catches it.
        await routed_message(store)
        await raw.admin_sql(["DELETE FROM audit WHERE seq = 3"])
        result = await store.verify_audit()
        assert (result.ok, result.checked, result.broken_seq) == (False, 2, 3)
        assert "audit head" in result.reason

    async def test_rewritten_first_record_is_detected(self, store: Store, raw: RawAccess) -> None:
        await routed_message(store)
        await raw.admin_sql(["DELETE FROM audit WHERE seq = 1"])
        result = await store.verify_audit()
        assert (result.ok, result.broken_seq) == (False, 2)

    # schema ------------------------------------------------------------------------------------------

    async def test_schema_version_and_idempotent_migrations(self, store: Store) -> None:
        version = await store.schema_version()
        assert version >= 1
        mid = await routed_message(store)
        await store.close()
        await store.open()  # re-applies nothing, keeps data
        assert await store.schema_version() == version
        assert (await store.get(mid)) is not None
        assert (await store.verify_audit()).ok

    async def test_nul_in_free_text_never_blocks_recording_an_outcome(self, store: Store) -> None:
        """An adapter's error text may carry anything; recording it must work on every backend.
        (PostgreSQL text cannot hold NUL: that backend stores U+FFFD instead, and hashes what it stores.)"""
        mid = await routed_message(store)
        await store.claim_deliveries(owner="w", adapter="fv", limit=1, now=T0, lease_seconds=30)
        failed = await store.transition(
            mid, MessageState.FAILED, reason="HTTP 500: a\x00b", actor="w", lease_owner="w", last_error="a\x00b"
        )
        expected = failed.last_error
        assert expected in ("a\x00b", "a\ufffdb")  # kept, or U+FFFD where text cannot hold NUL
        assert (await store.audit_trail(mid))[-1].reason == f"HTTP 500: {expected}"
        await store.note(mid, event="operator", reason="x\x00", actor="op\x00", details={"raw": "\x00"})
        rec = (await store.audit_trail(mid))[-1]
        assert rec.details == {"raw": "\x00"}  # JSON escapes it: stored exactly on every backend
        assert (await store.verify_audit()).ok

    # the inbound message's reply context ----------------------------------------------------------

    async def test_reply_context_is_stored_with_the_message(self, store: Store) -> None:
        reply = ReplyContext(
            source_type="fitconnect",
            choice="fitConnect",
            details={"encryptionPublicKey": {"kty": "RSA", "n": "0vx7", "e": "AQAB"}, "processStandards": ["x"]},
            case="case-1",
            destination="dest-1",
            consent_digital_bescheid=True,
        )
        with_reply, _ = await store.insert(make_envelope(reply=reply), actor="t")
        without, _ = await store.insert(make_envelope(), actor="t")
        assert with_reply.envelope.reply == reply
        assert (await store.get(with_reply.envelope.id)).envelope.reply == reply  # type: ignore[union-attr]
        assert (await store.get(without.envelope.id)).envelope.reply is None  # type: ignore[union-attr]

    # health and queue depth ---------------------------------------------------------------------

    async def test_probe_writes_and_reads_back(self, store: Store) -> None:
        await store.probe()
        await store.probe()  # the health row is overwritten, not added
        assert (await store.verify_audit()).checked == 0  # no audit records: no message changed

    async def test_count_unfinished_is_the_queue_depth(self, store: Store) -> None:
        for state in (MessageState.RECEIVED, MessageState.ROUTED, MessageState.DEAD, MessageState.ACKNOWLEDGED):
            stored, _ = await store.insert(make_envelope(), actor="t")
            await drive(store, stored.envelope.id, PATHS[state])
        stored, _ = await store.insert(make_envelope(), actor="t")
        await drive(store, stored.envelope.id, PATHS[MessageState.REJECTED])
        unfinished = await store.count_unfinished()
        assert unfinished == {
            "received": 1,
            "validated": 0,
            "routed": 1,
            "failed": 0,
            "delivered": 0,
            "dead": 1,
        }

    async def test_apply_takes_the_steps_of_one_record(self, store: Store) -> None:
        mid = await routed_message(store)
        aid = await queued_answer(store, mid)
        with pytest.raises(TypeError, match="one record"):
            await store.apply(mid, Step(MessageState.DEAD, "x", "t"), AnswerStep(AnswerState.DEAD, "x", "t"))  # type: ignore[call-overload]
        with pytest.raises(ValueError, match="at least one step"):
            await store.apply(mid)
        with pytest.raises(MessageNotFound):
            await store.apply(aid, Step(MessageState.DEAD, "x", "t"))  # an answer id is no message id
        with pytest.raises(AnswerNotFound):
            await store.apply(mid, AnswerStep(AnswerState.DEAD, "x", "t"))

    # answers: hand-over ----------------------------------------------------------------------------

    async def test_insert_answer_is_idempotent_and_numbered_per_message(self, store: Store, clock: FakeClock) -> None:
        mid = await routed_message(store)
        blob = BlobRef("attachment:bescheid", "c" * 128, "c" * 128, 9, "application/pdf", "Bescheid.pdf", "b1")
        first = make_answer(mid, key="k-1", bescheid=True, attachments=(blob,), kind=AnswerKind.REPLY)
        stored, created = await store.insert_answer(first, actor="api:bauamt")
        assert created
        assert stored.answer == first.with_(sequence=1)  # state HANDED_OVER, no channel yet
        assert (stored.updated_at, stored.next_attempt_at, stored.lease_owner) == (clock.now, None, None)
        assert await store.get_answer(first.id) == stored
        again, created_again = await store.insert_answer(make_answer(mid, key="k-1", content={"x": 1}), actor="a")
        assert not created_again
        assert again == stored  # the stored answer, unchanged: the caller compares content (409 if it differs)
        other_caller, created_other = await store.insert_answer(
            make_answer(mid, key="k-1", caller="adapter:fv"), actor="a"
        )
        second, _ = await store.insert_answer(make_answer(mid, key="k-2", kind=AnswerKind.STATUS), actor="a")
        assert created_other
        assert (other_caller.answer.sequence, second.answer.sequence) == (2, 3)
        other_message = await routed_message(store)
        first_of_other, _ = await store.insert_answer(make_answer(other_message, key="k-1"), actor="a")
        assert first_of_other.answer.sequence == 1
        assert await store.find_answer(mid, "api:bauamt", "k-1") == stored
        assert await store.find_answer(mid, "api:bauamt", "nope") is None
        trail = await store.audit_trail(first.id)
        assert [(r.event, r.from_state, r.to_state, r.actor, r.reason) for r in trail] == [
            ("transition", None, "handed_over", "api:bauamt", "handed over")
        ]
        assert trail[0].details == {"message_id": mid, "kind": "reply", "caller": "api:bauamt", "sequence": 1}
        assert (await store.verify_audit()).ok
        with pytest.raises(MessageNotFound):
            await store.insert_answer(make_answer("no-such-message"), actor="a")

    async def test_concurrent_hand_overs_store_one_and_number_densely(self, store: Store) -> None:
        mid = await routed_message(store)
        same = await asyncio.gather(*(store.insert_answer(make_answer(mid, key="same"), actor="a") for _ in range(6)))
        assert sum(created for _, created in same) == 1
        assert len({s.answer.id for s, _ in same}) == 1
        others = await asyncio.gather(*(store.insert_answer(make_answer(mid), actor="a") for _ in range(6)))
        assert sorted(s.answer.sequence for s, _ in others) == list(range(2, 8))

    async def test_answer_steps_follow_the_state_machine_and_are_audited(self, store: Store, clock: FakeClock) -> None:
        mid = await routed_message(store)
        stored, _ = await store.insert_answer(make_answer(mid), actor="api:bauamt")
        aid = stored.answer.id
        with pytest.raises(InvalidAnswerTransition):
            await store.apply(aid, AnswerStep(AnswerState.SENT, "skips queueing", "w"))
        with pytest.raises(ValueError, match="needs channel"):
            await store.apply(aid, AnswerStep(AnswerState.QUEUED, "no channel", "router"))
        clock.advance(1)
        queued = await store.apply(
            aid,
            AnswerStep(
                AnswerState.QUEUED, "fallback", "router", channel="post", fallback_reason="no key", details={"r": 1}
            ),
        )
        assert (queued.answer.state, queued.answer.channel, queued.answer.fallback_reason) == (
            AnswerState.QUEUED,
            "post",
            "no key",
        )
        assert (queued.queued_at, queued.next_attempt_at) == (clock.now, clock.now)
        sent = await store.apply(
            aid,
            AnswerStep(AnswerState.SENT, "sent", "w", reference="reply-1", next_attempt_at=clock.now + 60),
            AnswerStep(AnswerState.REFUSED, "reject-reply", "w", problems=[Problem("urn:x:bad-tag", "Bad tag")]),
        )
        assert sent.answer.state is AnswerState.REFUSED
        assert (sent.answer.reference, sent.sent_at, sent.next_attempt_at) == ("reply-1", clock.now, None)
        assert sent.problems == (Problem("urn:x:bad-tag", "Bad tag"),)
        trail = await store.audit_trail(aid)
        assert [(r.from_state, r.to_state) for r in trail] == [
            (None, "handed_over"),
            ("handed_over", "queued"),
            ("queued", "sent"),
            ("sent", "refused"),
        ]
        assert all(r.details["message_id"] == mid for r in trail)
        assert trail[1].details == {"r": 1, "message_id": mid}
        before = await store.get_answer(aid)
        with pytest.raises(InvalidAnswerTransition):  # REFUSED is final: never retried blindly
            await store.apply(aid, AnswerStep(AnswerState.QUEUED, "again", "op", channel="fitconnect"))
        assert await store.get_answer(aid) == before
        # One chain: the message's timeline can include its answers, in commit order.
        timeline = await store.audit_trail(mid, with_answers=True)
        assert [r.message_id for r in timeline][-4:] == [aid] * 4
        assert [r.seq for r in timeline] == sorted(r.seq for r in timeline)
        assert len(timeline) == len(await store.audit_trail(mid)) + 4
        assert (await store.verify_audit()).ok

    async def test_operator_retry_of_a_dead_answer_routes_anew(self, store: Store, clock: FakeClock) -> None:
        mid = await routed_message(store)
        aid = await queued_answer(store, mid, channel="fitconnect")
        await store.claim_answers(owner="w", channel="fitconnect", limit=5, now=clock.now, lease_seconds=30)
        failed = await store.apply(
            aid, AnswerStep(AnswerState.FAILED, "503", "w", lease_owner="w", last_error="503", next_attempt_at=T0 + 9)
        )
        assert (failed.last_error, failed.next_attempt_at, failed.answer.attempts) == ("503", T0 + 9, 1)
        dead = await store.apply(aid, AnswerStep(AnswerState.DEAD, "gave up", "w"))
        assert dead.next_attempt_at is None
        clock.advance(100)
        retried = await store.apply(
            aid, AnswerStep(AnswerState.QUEUED, "operator retry", "cli:op", channel="post", reset_attempts=True)
        )
        assert (retried.answer.channel, retried.answer.attempts, retried.queued_at) == ("post", 0, clock.now)
        assert retried.answer.fallback_reason is None
        discarded_id = await queued_answer(store, mid)
        await store.apply(discarded_id, AnswerStep(AnswerState.DEAD, "x", "w"))
        discarded = await store.apply(discarded_id, AnswerStep(AnswerState.DISCARDED, "operator discard", "cli:op"))
        assert discarded.answer.state is AnswerState.DISCARDED

    # answers: claims and leases -------------------------------------------------------------------

    async def test_claim_answers_to_send_and_to_confirm(self, store: Store, clock: FakeClock) -> None:
        m1, m2 = await routed_message(store), await routed_message(store)
        a1 = await queued_answer(store, m1, channel="fitconnect")
        clock.advance(1)
        a2 = await queued_answer(store, m2, channel="fitconnect")
        await queued_answer(store, m2, channel="xoev")  # another channel: not claimed here
        handed_over, _ = await store.insert_answer(make_answer(await routed_message(store)), actor="a")
        now = clock.now
        claimed = await store.claim_answers(owner="w1", channel="fitconnect", limit=10, now=now, lease_seconds=30)
        assert [c.answer.id for c in claimed] == [a1, a2]  # oldest due first; HANDED_OVER has no channel
        for c in claimed:
            assert (c.lease_owner, c.lease_until, c.answer.attempts, c.polls) == ("w1", now + 30, 1, 0)
            rec = (await store.audit_trail(c.answer.id))[-1]
            assert (rec.event, rec.from_state, rec.to_state, rec.actor, rec.reason) == (
                "attempt",
                "queued",
                "queued",
                "w1",
                "send attempt 1",
            )
            assert rec.details == {"channel": "fitconnect", "attempt": 1, "message_id": c.answer.message_id}
        assert await store.claim_answers(owner="w2", channel="fitconnect", limit=10, now=now, lease_seconds=30) == []
        # a1 is sent and waits for its confirmation: due for a poll at now + 60.
        await store.apply(a1, AnswerStep(AnswerState.SENT, "sent", "w1", lease_owner="w1", next_attempt_at=now + 60))
        only_send = await store.claim_answers(
            owner="w2", channel="fitconnect", limit=10, now=now + 60, lease_seconds=30, states={AnswerState.QUEUED}
        )
        assert [c.answer.id for c in only_send] == [a2]  # a2's lease expired; a1 is not a send now
        assert only_send[0].answer.attempts == 2
        [poll] = await store.claim_answers(owner="w2", channel="fitconnect", limit=10, now=now + 60, lease_seconds=30)
        assert (poll.answer.id, poll.answer.state, poll.polls, poll.answer.attempts) == (a1, AnswerState.SENT, 1, 1)
        rec = (await store.audit_trail(a1))[-1]
        assert (rec.event, rec.reason, rec.details["poll"]) == ("attempt", "confirmation poll 1", 1)
        # Nothing from the recipient yet: poll again later, no state change.
        clock.now = now + 61
        deferred = await store.defer_answer(
            a1, owner="w2", next_attempt_at=now + 120, reason="no reply event yet", actor="w2"
        )
        assert (deferred.answer.state, deferred.next_attempt_at, deferred.lease_owner) == (
            AnswerState.SENT,
            now + 120,
            None,
        )
        assert (await store.audit_trail(a1))[-1].event == "deferred"
        with pytest.raises(LeaseLost):  # the lease went with the deferral
            await store.defer_answer(a1, owner="w2", next_attempt_at=now, reason="x", actor="w2")
        [again] = await store.claim_answers(
            owner="w3", channel="fitconnect", limit=10, now=now + 120, lease_seconds=30, states={AnswerState.SENT}
        )
        assert again.polls == 2
        confirmed = await store.apply(a1, AnswerStep(AnswerState.CONFIRMED, "accept-reply", "w3", lease_owner="w3"))
        assert (confirmed.confirmed_at, confirmed.next_attempt_at) == (clock.now, None)
        clock.advance(10_000)
        assert (
            await store.claim_answers(
                owner="w4", channel="fitconnect", limit=10, now=clock.now, lease_seconds=30, states={AnswerState.SENT}
            )
            == []
        )
        assert handed_over.answer.state is AnswerState.HANDED_OVER
        with pytest.raises(ValueError, match="claims states among"):
            await store.claim_answers(
                owner="w", channel="x", limit=1, now=now, lease_seconds=1, states={AnswerState.HANDED_OVER}
            )

    async def test_answer_n_plus_1_waits_for_answer_n_on_its_channel(self, store: Store, clock: FakeClock) -> None:
        mid = await routed_message(store)
        first = await queued_answer(store, mid, channel="fitconnect")
        second = await queued_answer(store, mid, channel="fitconnect")
        elsewhere = await queued_answer(store, mid, channel="post")  # another channel: its own order
        now = clock.now
        claimed = await store.claim_answers(owner="w", channel="fitconnect", limit=10, now=now, lease_seconds=30)
        assert [c.answer.id for c in claimed] == [first]
        # Leased or failed, the first still holds the second back.
        clock.advance(31)
        await store.claim_answers(owner="w", channel="fitconnect", limit=10, now=clock.now, lease_seconds=30)
        await store.apply(first, AnswerStep(AnswerState.FAILED, "503", "w", lease_owner="w", next_attempt_at=T0 + 500))
        assert (
            await store.claim_answers(owner="w", channel="fitconnect", limit=10, now=T0 + 499, lease_seconds=30) == []
        )
        # The post channel's answer was held back by the first (QUEUED on another channel: no).
        [post] = await store.claim_answers(owner="p", channel="post", limit=10, now=clock.now, lease_seconds=30)
        assert post.answer.id == elsewhere
        # An earlier answer without a channel yet (HANDED_OVER) holds back later ones everywhere.
        other = await routed_message(store)
        await store.insert_answer(make_answer(other), actor="a")
        held = await queued_answer(store, other, channel="post")
        assert await store.claim_answers(owner="p", channel="post", limit=10, now=clock.now, lease_seconds=30) == []
        # Once the first is sent the second goes; a dead first does not block either.
        [due] = await store.claim_answers(owner="w", channel="fitconnect", limit=10, now=T0 + 500, lease_seconds=30)
        await store.apply(first, AnswerStep(AnswerState.SENT, "sent", "w", lease_owner="w", next_attempt_at=T0 + 9999))
        [nxt] = await store.claim_answers(owner="w", channel="fitconnect", limit=10, now=T0 + 500, lease_seconds=30)
        assert (due.answer.id, nxt.answer.id) == (first, second)
        third = await queued_answer(store, mid, channel="fitconnect")
        await store.apply(second, AnswerStep(AnswerState.DEAD, "permanent", "w", lease_owner="w"))
        [after_dead] = await store.claim_answers(
            owner="w", channel="fitconnect", limit=10, now=T0 + 500, lease_seconds=30
        )
        assert after_dead.answer.id == third
        assert held not in {c.answer.id for c in claimed}

    async def test_expired_answer_lease_goes_to_one_other_owner_and_the_late_result_is_dropped(
        self, store: Store, clock: FakeClock
    ) -> None:
        mid = await routed_message(store)
        aid = await queued_answer(store, mid)
        [c1] = await store.claim_answers(owner="w1", channel="fitconnect", limit=5, now=clock.now, lease_seconds=30)
        await store.renew_answer_lease(aid, owner="w1", until=clock.now + 40)
        clock.advance(40)  # lease_until == now: still live
        assert (
            await store.claim_answers(owner="w2", channel="fitconnect", limit=5, now=clock.now, lease_seconds=30) == []
        )
        clock.advance(0.5)  # w1 died mid-send: its lease expires; exactly one other owner takes it over
        takers = await asyncio.gather(
            *(
                store.claim_answers(owner=f"w{n}", channel="fitconnect", limit=5, now=clock.now, lease_seconds=30)
                for n in (2, 3, 4)
            )
        )
        winners = [batch for batch in takers if batch]
        assert len(winners) == 1
        [c2] = winners[0]
        assert (c1.answer.attempts, c2.answer.attempts) == (1, 2)
        owner = c2.lease_owner
        assert owner is not None
        with pytest.raises(LeaseLost):
            await store.apply(aid, AnswerStep(AnswerState.SENT, "late", "w1", lease_owner="w1"))
        with pytest.raises(LeaseLost):
            await store.renew_answer_lease(aid, owner="w1", until=clock.now + 60)
        with pytest.raises(LeaseLost):
            await store.defer_answer(aid, owner="w1", next_attempt_at=clock.now, reason="x", actor="w1")
        current = await store.get_answer(aid)
        assert current is not None
        assert (current.answer.state, current.lease_owner) == (AnswerState.QUEUED, owner)
        done = await store.apply(aid, AnswerStep(AnswerState.SENT, "sent", owner, lease_owner=owner))
        assert done.answer.state is AnswerState.SENT
        attempts = [r for r in await store.audit_trail(aid) if r.event == "attempt"]
        assert [(r.actor, r.details["attempt"]) for r in attempts] == [("w1", 1), (owner, 2)]
        assert [r.to_state for r in await store.audit_trail(aid) if r.event == "transition"].count("sent") == 1
        assert (await store.verify_audit()).ok

    async def test_release_leases_includes_answers(self, store: Store, clock: FakeClock) -> None:
        mid = await routed_message(store)
        aid = await queued_answer(store, mid)
        await store.claim_answers(owner="w1", channel="fitconnect", limit=5, now=clock.now, lease_seconds=300)
        await store.claim_deliveries(owner="w1", adapter="fv", limit=5, now=clock.now, lease_seconds=300)
        assert await store.release_leases("w1") == 2
        [again] = await store.claim_answers(owner="w2", channel="fitconnect", limit=5, now=clock.now, lease_seconds=30)
        assert (again.answer.id, again.answer.attempts) == (aid, 2)

    # answers: listing ------------------------------------------------------------------------------

    async def test_list_and_count_answers(self, store: Store, clock: FakeClock) -> None:
        m1, m2 = await routed_message(store), await routed_message(store)
        a = await queued_answer(store, m1, channel="fitconnect", created_at=datetime.fromtimestamp(T0 + 3, UTC))
        b, _ = await store.insert_answer(make_answer(m2, created_at=datetime.fromtimestamp(T0 + 1, UTC)), actor="x")
        c = await queued_answer(store, m1, channel="post", created_at=datetime.fromtimestamp(T0 + 2, UTC))
        await store.apply(c, AnswerStep(AnswerState.DEAD, "x", "w"))
        assert [s.answer.id for s in await store.list_answers()] == [b.answer.id, c, a]  # hand-over order
        assert [s.answer.id for s in await store.list_answers(message_id=m1)] == [a, c]  # by sequence
        assert [s.answer.id for s in await store.list_answers(states=[AnswerState.DEAD])] == [c]
        assert [s.answer.id for s in await store.list_answers(channel="fitconnect")] == [a]
        assert [s.answer.id for s in await store.list_answers(message_id=m1, states=[AnswerState.QUEUED])] == [a]
        assert [s.answer.id for s in await store.list_answers(limit=1, offset=1)] == [c]
        counts = await store.count_answers_by_state()
        assert counts == {s.value: 0 for s in AnswerState} | {"handed_over": 1, "queued": 1, "dead": 1}
        await store.note_answer(a, event="operator", reason="looked", actor="op", details={"ticket": 1})
        rec = (await store.audit_trail(a))[-1]
        assert (rec.event, rec.from_state, rec.to_state, rec.details) == (
            "operator",
            "queued",
            "queued",
            {"ticket": 1, "message_id": m1},
        )
        assert await store.get_answer("no-such-answer") is None
        with pytest.raises(AnswerNotFound):
            await store.note_answer("no-such-answer", event="operator", reason="x", actor="op")
        assert (await store.verify_audit()).ok
