"""One store test suite, run against every backend (fixture ``store``/``backend``: sqlite, postgresql)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from gateway.model import TRANSITIONS, AckState, InvalidTransition, MessageState
from gateway.problems import Problem
from gateway.store.base import LeaseLost, MessageNotFound, Step
from gateway.store.migrations.postgresql import MIGRATIONS as PG_MIGRATIONS
from gateway.store.sqlite import MIGRATIONS as SQLITE_MIGRATIONS

from .support import PATHS, T0, AnyStore, Backend, FakeClock, drive, make_envelope, routed_message

ALL_STATES = list(MessageState)


# insert / idempotency ------------------------------------------------------------------------


async def test_insert_stores_received_message_with_audit(store: AnyStore) -> None:
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


async def test_insert_is_idempotent_per_channel_and_key(store: AnyStore) -> None:
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


async def test_concurrent_duplicate_inserts_store_one(store: AnyStore) -> None:
    envs = [make_envelope(key="same") for _ in range(8)]
    results = await asyncio.gather(*(store.insert(e, actor="a") for e in envs))
    assert sum(created for _, created in results) == 1
    assert len({s.envelope.id for s, _ in results}) == 1
    assert (await store.count_by_state())["received"] == 1
    assert (await store.verify_audit()).checked == 1


async def test_get_unknown_and_transition_unknown(store: AnyStore) -> None:
    assert await store.get("no-such-id") is None
    with pytest.raises(MessageNotFound):
        await store.transition("no-such-id", MessageState.VALIDATED, reason="x", actor="t")
    with pytest.raises(MessageNotFound):
        await store.note("no-such-id", event="operator", reason="x", actor="t")


# transitions -----------------------------------------------------------------------------------


@pytest.mark.parametrize("current", ALL_STATES, ids=lambda s: s.value)
async def test_every_transition_from_state(store: AnyStore, clock: FakeClock, current: MessageState) -> None:
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


async def test_transition_bookkeeping(store: AnyStore, clock: FakeClock) -> None:
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
    retried = await store.transition(mid, MessageState.ROUTED, reason="operator retry", actor="op", reset_attempts=True)
    assert retried.envelope.attempts == 0
    assert retried.queued_at == clock.now  # an operator retry queues anew (its own max_age)
    problems = [Problem("urn:x:p", "P")]
    rejected_env, _ = await store.insert(make_envelope(), actor="t")
    rejected = await store.transition(
        rejected_env.envelope.id, MessageState.REJECTED, reason="bad", actor="p", problems=problems
    )
    assert rejected.problems == tuple(problems)


async def test_note_audits_without_state_change(store: AnyStore) -> None:
    mid = await routed_message(store)
    await store.note(mid, event="operator", reason="looked at it", actor="op", details={"ticket": 7})
    rec = (await store.audit_trail(mid))[-1]
    assert (rec.event, rec.from_state, rec.to_state, rec.details) == ("operator", "routed", "routed", {"ticket": 7})
    assert (await store.get(mid)).envelope.state is MessageState.ROUTED  # type: ignore[union-attr]


# claims and leases -------------------------------------------------------------------------------


async def test_claim_due_messages_per_adapter(store: AnyStore, clock: FakeClock) -> None:
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


async def test_claim_respects_limit_and_states(store: AnyStore, clock: FakeClock) -> None:
    ids = [await routed_message(store) for _ in range(5)]
    stored, _ = await store.insert(make_envelope(), actor="t")  # RECEIVED: never claimable
    await store.transition(ids[4], MessageState.DELIVERED, reason="x", actor="t")
    first = await store.claim_deliveries(owner="w", adapter="fv", limit=2, now=clock.now, lease_seconds=30)
    second = await store.claim_deliveries(owner="w", adapter="fv", limit=10, now=clock.now, lease_seconds=30)
    assert len(first) == 2
    assert len(second) == 2
    assert {c.envelope.id for c in first + second} == set(ids[:4])
    assert stored.envelope.id not in {c.envelope.id for c in first + second}


async def test_lease_expiry_reclaim_and_lease_lost(store: AnyStore, clock: FakeClock) -> None:
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


async def test_expired_lease_refuses_its_owner_too(store: AnyStore, clock: FakeClock) -> None:
    mid = await routed_message(store)
    await store.claim_deliveries(owner="w1", adapter="fv", limit=1, now=clock.now, lease_seconds=30)
    clock.advance(31)
    with pytest.raises(LeaseLost):
        await store.transition(mid, MessageState.FAILED, reason="x", actor="w1", lease_owner="w1")
    with pytest.raises(LeaseLost):
        await store.renew_lease(mid, owner="w1", until=clock.now + 30)
    with pytest.raises(LeaseLost):
        await store.renew_lease("no-such-id", owner="w1", until=clock.now + 30)


async def test_release_leases(store: AnyStore, clock: FakeClock) -> None:
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
    assert [a.envelope.id for a in await store.claim_acks(owner="w2", limit=5, now=clock.now, lease_seconds=30)] == [
        acked
    ]


# steps chained into one transaction (then=) ---------------------------------------------------


async def test_insert_then_steps_commit_together_each_audited(store: AnyStore, clock: FakeClock) -> None:
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


async def test_a_refused_step_undoes_the_whole_call(store: AnyStore) -> None:
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


async def test_if_settled_step_only_when_nothing_is_outstanding_upstream(store: AnyStore, clock: FakeClock) -> None:
    settle = Step(MessageState.ACKNOWLEDGED, "no upstream acknowledgement outstanding", "w", if_settled=True)
    plain = await routed_message(store)
    [claimed] = await store.claim_deliveries(owner="w", adapter="fv", limit=5, now=clock.now, lease_seconds=30)
    done = await store.transition(plain, MessageState.DELIVERED, reason="ok", actor="w", lease_owner="w", then=[settle])
    assert done.envelope.state is MessageState.ACKNOWLEDGED
    assert [r.to_state for r in (await store.audit_trail(plain))[-2:]] == ["delivered", "acknowledged"]
    waiting = await routed_message(store, ack=AckState.WAITING)
    await store.claim_deliveries(owner="w", adapter="fv", limit=5, now=clock.now, lease_seconds=30)
    pending = await store.transition(
        waiting, MessageState.DELIVERED, reason="ok", actor="w", lease_owner="w", ack=AckState.PENDING, then=[settle]
    )
    assert pending.envelope.state is MessageState.DELIVERED  # the ack worker finishes it
    assert pending.envelope.ack is AckState.PENDING
    assert claimed.envelope.id == plain


async def test_delivery_lease_taken_with_the_routing(store: AnyStore, clock: FakeClock) -> None:
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
    assert await store.claim_deliveries(owner="w2", adapter="fv", limit=5, now=clock.now + 59, lease_seconds=30) == []
    [taken] = await store.claim_deliveries(owner="w2", adapter="fv", limit=5, now=clock.now + 61, lease_seconds=30)
    assert taken.envelope.attempts == 2  # the lease holder died: the next attempt is counted on top
    with pytest.raises(LeaseLost):
        await store.transition(env.id, MessageState.DELIVERED, reason="late", actor="w1", lease_owner="w1")
    with pytest.raises(ValueError, match="lease needs target=ROUTED"):
        await store.insert(
            make_envelope(), actor="x", then=[Step(MessageState.VALIDATED, "ok", "p", lease=("w2", clock.now))]
        )


async def test_ack_lease_taken_with_the_delivery(store: AnyStore, clock: FakeClock) -> None:
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


async def test_ack_pending_claim_complete(store: AnyStore, clock: FakeClock) -> None:
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
    done = await store.complete_ack(mid, owner="a2", done=True, reason="accept: ok", next_attempt_at=None, actor="a2")
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


async def test_ack_of_rejected_message_keeps_state(store: AnyStore, clock: FakeClock) -> None:
    stored, _ = await store.insert(make_envelope(), actor="t")
    mid = stored.envelope.id
    await store.transition(mid, MessageState.REJECTED, reason="bad", actor="p", ack=AckState.PENDING)
    [claimed] = await store.claim_acks(owner="a", limit=5, now=clock.now, lease_seconds=30)
    assert claimed.envelope.state is MessageState.REJECTED
    done = await store.complete_ack(mid, owner="a", done=True, reason="reject: ok", next_attempt_at=None, actor="a")
    assert done.envelope.state is MessageState.REJECTED
    assert done.envelope.ack is AckState.DONE
    assert (await store.audit_trail(mid))[-1].event == "ack"


async def test_expired_ack_lease_can_be_reclaimed(store: AnyStore, clock: FakeClock) -> None:
    mid = await routed_message(store)
    await store.set_ack_pending(mid, reason="due", actor="t")
    await store.claim_acks(owner="a1", limit=5, now=clock.now, lease_seconds=30)
    [again] = await store.claim_acks(owner="a2", limit=5, now=clock.now + 31, lease_seconds=30)
    assert again.ack_attempts == 2
    with pytest.raises(LeaseLost):
        await store.complete_ack(mid, owner="a1", done=True, reason="x", next_attempt_at=None, actor="a1")


# listing -------------------------------------------------------------------------------------


async def test_list_and_count(store: AnyStore) -> None:
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


async def test_list_orders_ties_by_id_bytewise(store: AnyStore) -> None:
    # Same received_at: ordering falls back to id, compared as bytes on every backend.
    envs = [make_envelope(received_at=T0) for _ in range(6)]
    envs = [e.with_(id=i) for e, i in zip(envs, ["b-1", "B-2", "a_3", "a-3", "a3", "Z"], strict=True)]
    for env in envs:
        await store.insert(env, actor="t")
    assert [s.envelope.id for s in await store.list_messages()] == sorted(e.id for e in envs)


# audit chain -------------------------------------------------------------------------------------


async def test_audit_chain_verifies_and_links(store: AnyStore) -> None:
    assert (await store.verify_audit()).ok
    for _ in range(3):
        mid = await routed_message(store)
    result = await store.verify_audit()
    assert result.ok
    assert result.checked == 9
    trail = await store.audit_trail(mid)
    assert [r.seq for r in trail] == [7, 8, 9]
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(trail))


async def test_audit_is_append_only_in_the_database(backend: Backend) -> None:
    await routed_message(backend.store)
    for statement in ("UPDATE audit SET reason = 'forged' WHERE seq = 1", "DELETE FROM audit WHERE seq = 3"):
        with pytest.raises(Exception, match="append-only"):
            await backend.app_sql(statement)
    assert (await backend.store.verify_audit()).checked == 3


async def test_tampering_is_detected(backend: Backend) -> None:
    ids = [await routed_message(backend.store) for _ in range(2)]
    await backend.admin_sql(["UPDATE audit SET reason = 'nothing to see' WHERE seq = 2"])
    result = await backend.store.verify_audit()
    assert (result.ok, result.broken_seq, result.checked) == (False, 2, 1)
    assert "does not match its hash" in result.reason
    assert len(await backend.store.audit_trail(ids[0])) == 3


async def test_removed_record_is_detected(backend: Backend) -> None:
    await routed_message(backend.store)
    await routed_message(backend.store)
    await backend.admin_sql(["DELETE FROM audit WHERE seq = 4"])
    result = await backend.store.verify_audit()
    assert (result.ok, result.broken_seq) == (False, 5)
    assert "missing" in result.reason


async def test_cut_off_tail_is_detected(backend: Backend) -> None:
    # The newest records have no successor whose prev_hash would break: the audit head catches it.
    await routed_message(backend.store)
    await backend.admin_sql(["DELETE FROM audit WHERE seq = 3"])
    result = await backend.store.verify_audit()
    assert (result.ok, result.checked, result.broken_seq) == (False, 2, 3)
    assert "audit head" in result.reason


async def test_rewritten_first_record_is_detected(backend: Backend) -> None:
    await routed_message(backend.store)
    await backend.admin_sql(["DELETE FROM audit WHERE seq = 1"])
    result = await backend.store.verify_audit()
    assert (result.ok, result.broken_seq) == (False, 2)


# schema ------------------------------------------------------------------------------------------


async def test_schema_version_and_idempotent_migrations(backend: Backend) -> None:
    store = backend.store
    version = await store.schema_version()
    assert version == len(SQLITE_MIGRATIONS if backend.kind == "sqlite" else PG_MIGRATIONS)
    mid = await routed_message(store)
    await store.close()
    await store.open()  # re-applies nothing, keeps data
    assert await store.schema_version() == version
    assert (await store.get(mid)) is not None
    assert (await store.verify_audit()).ok


async def test_nul_in_free_text_never_blocks_recording_an_outcome(backend: Backend) -> None:
    """An adapter's error text may carry anything; recording it must work on every backend.
    (PostgreSQL text cannot hold NUL: that backend stores U+FFFD instead, and hashes what it stores.)"""
    store = backend.store
    mid = await routed_message(store)
    await store.claim_deliveries(owner="w", adapter="fv", limit=1, now=T0, lease_seconds=30)
    failed = await store.transition(
        mid, MessageState.FAILED, reason="HTTP 500: a\x00b", actor="w", lease_owner="w", last_error="a\x00b"
    )
    expected = "a\x00b" if backend.kind == "sqlite" else "a\ufffdb"
    assert failed.last_error == expected
    assert (await store.audit_trail(mid))[-1].reason == f"HTTP 500: {expected}"
    await store.note(mid, event="operator", reason="x\x00", actor="op\x00", details={"raw": "\x00"})
    rec = (await store.audit_trail(mid))[-1]
    assert rec.details == {"raw": "\x00"}  # JSON escapes it: stored exactly on every backend
    assert (await store.verify_audit()).ok
