"""Hypothesis stateful test of store + intake + delivery/ack worker semantics, against a plain model.

Rules drive the real Intake, the real DeliveryWorker (two owners) and AckWorker (two owners) on a
real store with a fake clock: intake (new: routable / unroutable / invalid; duplicate), claim,
lease renewal, clock advance (lease expiry, backoff), delivery outcome (delivered / transient /
permanent), operator retry and discard of dead letters, upstream acknowledgement (done / failed);
and the way back: answers handed over (queued on one of two channels), claimed by two owners to be
sent or confirmed, finished (sent / failed / dead, confirmed / deferred) or refused for a lost lease.

After every step the store must agree with the model, and:
* every message is in exactly one state (per-state listings partition the messages);
* the audit chain verifies and holds exactly the records the model expects;
* every state change has its audit record: the transition records of a message form one path
  from ``None -> received`` to its current state;
* attempts never decrease, except by an operator retry;
* a claim never returns a message whose lease is live (so never two owners with live leases), and
  never a delivered/acknowledged message;
* answer claims hand out exactly the due answers the model expects, never answer n+1 of a message
  on a channel while an earlier one there is still queued/failed.

Bounded for the default run (see ``EXAMPLES``/``STEPS``); a longer run:
``GATEWAY_STATEFUL_EXAMPLES=2000 GATEWAY_STATEFUL_STEPS=80 pytest tests/store/test_stateful.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from gateway.config import RetryPolicy, Route, RouteMatch
from gateway.delivery.retry import backoff_ceiling
from gateway.metrics import Metrics
from gateway.model import AckState, AnswerState, MessageState, RoutingKeys, SourceRef
from gateway.pipeline.intake import IncomingMessage, Intake
from gateway.plugins import PluginHost
from gateway.problems import Problem
from gateway.routing import Router
from gateway.sources.base import AckOutcome
from gateway.store.base import AnswerStep, LeaseLost, StoredAnswer, StoredMessage
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SQLiteStore
from gateway_sandbox.store_contract import make_answer

from .conftest import BACKENDS
from .pg import PgCluster
from .support import AnyStore, FakeClock
from .workers import CHANNEL, CountingAdapter, CountingSource, make_workers

T = TypeVar("T")

EXAMPLES = int(os.environ.get("GATEWAY_STATEFUL_EXAMPLES", "0")) or None
STEPS = int(os.environ.get("GATEWAY_STATEFUL_STEPS", "30"))
LEASE = 30.0
RETRY = RetryPolicy("default", max_attempts=3, initial_delay=10.0, max_delay=60.0, max_age=1e9)
WORKERS = ("w1", "w2")
ACKERS = ("a1", "a2")
ROUTABLE = "urn:de:fim:leika:leistung:99050012104000"

S = MessageState

_plugins: PluginHost | None = None


def plugins() -> PluginHost:
    global _plugins
    if _plugins is None:
        _plugins = PluginHost.load(entry_points_enabled=False)
    return _plugins


@dataclass
class Model:
    """What the store should hold for one message."""

    index: int  # intake order
    key: str
    state: MessageState
    ack: AckState
    transitions: list[tuple[str | None, str]]
    audits: int
    attempts: int = 0
    next_attempt_at: float | None = None
    lease_owner: str | None = None
    lease_until: float | None = None
    ack_attempts: int = 0
    ack_next_at: float | None = None

    def lease_live(self, now: float) -> bool:
        return self.lease_owner is not None and self.lease_until is not None and self.lease_until >= now

    def move(self, target: MessageState) -> None:
        self.transitions.append((self.state.value, target.value))
        self.state = target
        self.audits += 1
        self.lease_owner = self.lease_until = None


@dataclass
class AnswerModel:
    """What the store should hold for one answer."""

    index: int
    message_id: str
    sequence: int
    channel: str
    state: AnswerState = AnswerState.QUEUED
    attempts: int = 0
    polls: int = 0
    next_attempt_at: float | None = None
    lease_owner: str | None = None
    lease_until: float | None = None
    audits: int = 2  # handed over, queued

    def lease_live(self, now: float) -> bool:
        return self.lease_owner is not None and self.lease_until is not None and self.lease_until >= now


A = AnswerState
ANSWER_CHANNELS = ("fc", "post")


StoreFactory = Callable[[FakeClock], tuple[AnyStore, Callable[[], None]]]


class StoreMachine(RuleBasedStateMachine):
    factory: StoreFactory

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self.store, self.cleanup = self.factory(self.clock)
        self.run(self.store.open())
        self.adapter = CountingAdapter("fv")
        self.source = CountingSource()
        self.tmp = Path(tempfile.mkdtemp(prefix="gw-stateful-"))
        self.workers = {}
        self.ackers = {}
        for owner in WORKERS + ACKERS:
            worker, acker = make_workers(
                self.store,
                owner=owner,
                adapters={"fv": self.adapter},
                source=self.source,
                blob_dir=self.tmp / "blobs",
                retry=RETRY,
                lease_seconds=LEASE,
                poll_interval=1.0,
                clock=self.clock,
            )
            if owner in WORKERS:
                self.workers[owner] = worker
            else:
                acker.owner = owner
                self.ackers[owner] = acker
        router = Router(
            (Route("r", "fv", RouteMatch(service=ROUTABLE)),), fallback=None, test_route=None, production=False
        )
        self.intake = Intake(
            store=self.store,
            router=router,
            plugins=plugins(),
            metrics=Metrics(),
            accept_policy=lambda channel: "delivered",
            clock=self.clock,
        )
        self.model: dict[str, Model] = {}
        self.in_flight: dict[str, dict[str, StoredMessage]] = {w: {} for w in WORKERS}
        self.seen_attempts: dict[str, int] = {}
        self.operator_retried: set[str] = set()
        self.dirty: set[str] = set()
        self.counter = 0
        self.answers: dict[str, AnswerModel] = {}
        self.answer_claims: dict[str, dict[str, StoredAnswer]] = {w: {} for w in WORKERS}

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        try:
            self.run(self.store.close())
        finally:
            self.loop.close()
            self.cleanup()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def ids_in(self, *states: MessageState) -> list[str]:
        return self.ordered(mid for mid, m in self.model.items() if m.state in states)

    def ordered(self, ids: Iterable[str]) -> list[str]:
        """Message ids in intake order. Ids are random UUIDs: drawing from a list sorted by id
        would make the same Hypothesis choices pick different messages on a replay."""
        return sorted(ids, key=lambda mid: self.model[mid].index)

    # intake ------------------------------------------------------------------------------------

    @initialize(
        messages=st.lists(
            st.tuples(st.sampled_from(["routable", "routable", "unroutable", "invalid"]), st.booleans()),
            min_size=1,
            max_size=4,
        )
    )
    def some_messages(self, messages: list[tuple[str, bool]]) -> None:
        """Start every run with work to do (plain rules would leave many short runs empty)."""
        for kind, needs_ack in messages:
            self.intake_new(kind, needs_ack)

    @rule(kind=st.sampled_from(["routable", "unroutable", "invalid"]), needs_ack=st.booleans())
    def intake_new(self, kind: str, needs_ack: bool) -> None:
        self.counter += 1
        key = f"sub-{self.counter}"
        incoming = IncomingMessage(
            source=SourceRef(CHANNEL, "fitconnect", key, key),
            routing=RoutingKeys(service=ROUTABLE if kind != "unroutable" else "urn:other"),
            problems=[Problem("urn:test:invalid", "Invalid")] if kind == "invalid" else [],
            needs_ack=needs_ack,
        )
        result = self.run(self.intake.receive(incoming))
        assert result.created
        mid = result.message.envelope.id
        m = Model(
            self.counter, key, S.RECEIVED, AckState.WAITING if needs_ack else AckState.NONE, [(None, "received")], 1
        )
        if kind == "invalid":
            m.move(S.REJECTED)
        else:
            m.move(S.VALIDATED)
            m.move(S.ROUTED if kind == "routable" else S.REJECTED)
        if m.state is S.ROUTED:
            m.next_attempt_at = self.clock.now
        elif m.ack is AckState.WAITING:  # rejected: upstream must be told now
            m.ack, m.ack_next_at = AckState.PENDING, self.clock.now
        assert result.message.envelope.state is m.state
        self.model[mid] = m
        self.seen_attempts[mid] = 0
        self.dirty.add(mid)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def intake_duplicate(self, data: st.DataObject) -> None:
        mid = data.draw(st.sampled_from(self.ordered(self.model)))
        key = self.model[mid].key
        incoming = IncomingMessage(source=SourceRef(CHANNEL, "fitconnect", key, key), routing=RoutingKeys())
        result = self.run(self.intake.receive(incoming))
        assert not result.created
        assert result.message.envelope.id == mid

    # delivery ----------------------------------------------------------------------------------

    @rule(worker=st.sampled_from(WORKERS))
    def claim(self, worker: str) -> None:
        now = self.clock.now
        expected = {
            mid
            for mid, m in self.model.items()
            if m.state in (S.ROUTED, S.FAILED)
            and m.next_attempt_at is not None
            and m.next_attempt_at <= now
            and not m.lease_live(now)
        }
        claimed = self.run(
            self.store.claim_deliveries(owner=worker, adapter="fv", limit=1000, now=now, lease_seconds=LEASE)
        )
        for stored in claimed:
            m = self.model[stored.envelope.id]
            assert m.state not in (S.DELIVERED, S.ACKNOWLEDGED), "a delivered message was claimed again"
            assert not m.lease_live(now), f"claimed while {m.lease_owner} holds a live lease"
        assert {c.envelope.id for c in claimed} == expected
        for stored in claimed:
            mid = stored.envelope.id
            m = self.model[mid]
            m.attempts += 1
            m.audits += 1
            m.lease_owner, m.lease_until = worker, now + LEASE
            assert (stored.envelope.attempts, stored.lease_owner) == (m.attempts, worker)
            # The other worker may still hold an older claim of this message: finishing that one
            # later must be refused (LeaseLost), which finish_delivery checks.
            self.in_flight[worker][mid] = stored
            self.dirty.add(mid)

    @precondition(lambda self: any(self.in_flight.values()))
    @rule(data=st.data(), outcome=st.sampled_from(["delivered", "transient", "permanent"]))
    def finish_delivery(self, data: st.DataObject, outcome: str) -> None:
        worker = data.draw(st.sampled_from([w for w in WORKERS if self.in_flight[w]]))
        mid = data.draw(st.sampled_from(self.ordered(self.in_flight[worker])))
        stored = self.in_flight[worker].pop(mid)
        m = self.model[mid]
        now = self.clock.now
        live = m.lease_owner == worker and m.lease_live(now)
        self.adapter.script[mid] = [outcome]
        self.run(self.workers[worker]._deliver(self.adapter, stored))
        assert self.adapter.script[mid] == []  # the adapter was called (at-least-once)
        self.dirty.add(mid)
        if not live:
            return  # LeaseLost: the worker drops its result; the model (and store) stay as they were
        if outcome == "delivered":
            m.move(S.DELIVERED)
            if m.ack is AckState.WAITING:
                m.ack, m.ack_next_at = AckState.PENDING, now
            elif m.ack in (AckState.NONE, AckState.DONE):
                m.move(S.ACKNOWLEDGED)
        elif outcome == "transient" and m.attempts < RETRY.max_attempts:
            m.move(S.FAILED)
            current = self.run(self.store.get(mid))
            assert current is not None
            assert current.next_attempt_at is not None
            assert now <= current.next_attempt_at <= now + backoff_ceiling(RETRY, m.attempts)
            m.next_attempt_at = current.next_attempt_at
        else:
            m.move(S.DEAD)

    @precondition(lambda self: any(self.in_flight.values()))
    @rule(data=st.data())
    def renew_lease(self, data: st.DataObject) -> None:
        worker = data.draw(st.sampled_from([w for w in WORKERS if self.in_flight[w]]))
        mid = data.draw(st.sampled_from(self.ordered(self.in_flight[worker])))
        m = self.model[mid]
        now = self.clock.now
        if m.lease_owner == worker and m.lease_live(now):
            self.run(self.store.renew_lease(mid, owner=worker, until=now + LEASE))
            m.lease_until = now + LEASE
        else:
            try:
                self.run(self.store.renew_lease(mid, owner=worker, until=now + LEASE))
            except LeaseLost:
                pass
            else:
                raise AssertionError("renewed a lease that was not live")

    @rule(seconds=st.sampled_from([0.5, 5.0, 20.0, 30.0, 31.0, 90.0, 600.0]))
    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: any(m.lease_until is not None for m in self.model.values()))
    @rule(data=st.data(), past=st.booleans())
    def advance_to_lease_end(self, data: st.DataObject, past: bool) -> None:
        """Jump to a lease's last live instant (or just past it): where off-by-one expiry bugs live."""
        ends = sorted({m.lease_until for m in self.model.values() if m.lease_until is not None})
        end = data.draw(st.sampled_from(ends))
        if end + (0.25 if past else 0.0) > self.clock.now:
            self.clock.now = end + (0.25 if past else 0.0)

    # operator ----------------------------------------------------------------------------------

    @precondition(lambda self: self.ids_in(S.DEAD))
    @rule(data=st.data())
    def operator_retry(self, data: st.DataObject) -> None:
        mid = data.draw(st.sampled_from(self.ids_in(S.DEAD)))
        m = self.model[mid]
        self.run(
            self.store.transition(
                mid,
                S.ROUTED,
                reason="operator retry",
                actor="cli:op",
                reset_attempts=True,
                details={"previous_attempts": m.attempts},
            )
        )
        m.move(S.ROUTED)
        m.attempts = 0
        m.next_attempt_at = self.clock.now
        self.operator_retried.add(mid)
        self.dirty.add(mid)

    @precondition(lambda self: self.ids_in(S.DEAD))
    @rule(data=st.data())
    def operator_discard(self, data: st.DataObject) -> None:
        mid = data.draw(st.sampled_from(self.ids_in(S.DEAD)))
        m = self.model[mid]
        ack = AckState.PENDING if m.ack is AckState.WAITING else None
        self.run(self.store.transition(mid, S.REJECTED, reason="operator discard", actor="cli:op", ack=ack))
        m.move(S.REJECTED)
        if ack is not None:
            m.ack, m.ack_next_at = ack, self.clock.now
        self.dirty.add(mid)

    # acknowledgements --------------------------------------------------------------------------

    @rule(acker=st.sampled_from(ACKERS), done=st.booleans())
    def acknowledge(self, acker: str, done: bool) -> None:
        now = self.clock.now
        expected = {
            mid
            for mid, m in self.model.items()
            if m.ack is AckState.PENDING and m.ack_next_at is not None and m.ack_next_at <= now
        }
        before = Counter(self.source.attempts)
        self.source.refuse = not done
        handled = self.run(self.ackers[acker].ack_once(limit=1000))
        called = set((self.source.attempts - before).elements())
        assert called == expected
        assert handled == len(expected)
        for mid in called:
            m = self.model[mid]
            expected_outcome = AckOutcome.REJECT if m.state is S.REJECTED else AckOutcome.ACCEPT
            m.ack_attempts += 1
            m.audits += 1
            if done:
                assert self.source.outcomes[mid] is expected_outcome
                m.ack = AckState.DONE
                if m.state is S.DELIVERED:
                    m.move(S.ACKNOWLEDGED)
            else:
                m.ack_next_at = now + min(3600.0, 5.0 * 2 ** max(m.ack_attempts - 1, 0))
            self.dirty.add(mid)

    # the way back ----------------------------------------------------------------------------------

    @precondition(lambda self: self.model)
    @rule(data=st.data(), channel=st.sampled_from(ANSWER_CHANNELS))
    def hand_over_answer(self, data: st.DataObject, channel: str) -> None:
        mid = data.draw(st.sampled_from(self.ordered(self.model)))
        stored, created = self.run(
            self.store.insert_answer(
                make_answer(mid),
                actor="api:t",
                then=[AnswerStep(A.QUEUED, "route", "router", channel=channel)],
            )
        )
        assert created
        sequence = 1 + sum(1 for a in self.answers.values() if a.message_id == mid)
        assert stored.answer.sequence == sequence
        self.answers[stored.answer.id] = AnswerModel(
            len(self.answers), mid, sequence, channel, next_attempt_at=self.clock.now
        )

    def answer_due(self, aid: str, now: float) -> bool:
        a = self.answers[aid]
        if a.lease_live(now) or a.next_attempt_at is None or a.next_attempt_at > now:
            return False
        if a.state is A.SENT:
            return True
        if a.state not in (A.QUEUED, A.FAILED):
            return False
        return not any(
            b.message_id == a.message_id
            and b.sequence < a.sequence
            and b.channel == a.channel
            and b.state in (A.QUEUED, A.FAILED)
            for b in self.answers.values()
        )

    @precondition(lambda self: self.answers)
    @rule(worker=st.sampled_from(WORKERS), channel=st.sampled_from(ANSWER_CHANNELS))
    def claim_answers(self, worker: str, channel: str) -> None:
        now = self.clock.now
        expected = {aid for aid, a in self.answers.items() if a.channel == channel and self.answer_due(aid, now)}
        claimed = self.run(
            self.store.claim_answers(owner=worker, channel=channel, limit=1000, now=now, lease_seconds=LEASE)
        )
        assert {c.answer.id for c in claimed} == expected
        for stored in claimed:
            a = self.answers[stored.answer.id]
            if a.state is A.SENT:
                a.polls += 1
            else:
                a.attempts += 1
            a.audits += 1
            a.lease_owner, a.lease_until = worker, now + LEASE
            self.answer_claims[worker][stored.answer.id] = stored

    @precondition(lambda self: any(self.answer_claims.values()))
    @rule(data=st.data(), outcome=st.sampled_from(["done", "retry", "dead"]))
    def finish_answer(self, data: st.DataObject, outcome: str) -> None:
        worker = data.draw(st.sampled_from([w for w in WORKERS if self.answer_claims[w]]))
        aid = data.draw(st.sampled_from(sorted(self.answer_claims[worker], key=lambda i: self.answers[i].index)))
        claimed = self.answer_claims[worker].pop(aid)
        a = self.answers[aid]
        now = self.clock.now
        sending = claimed.answer.state in (A.QUEUED, A.FAILED)
        live = a.lease_owner == worker and a.lease_live(now) and a.state is claimed.answer.state
        later = now + 10
        try:
            if outcome == "retry" and not sending:
                self.run(
                    self.store.defer_answer(aid, owner=worker, next_attempt_at=later, reason="no event", actor=worker)
                )
                target = None
            else:
                if outcome == "dead":
                    target = A.DEAD
                elif outcome == "retry":
                    target = A.FAILED
                else:
                    target = A.SENT if sending else A.CONFIRMED
                step = AnswerStep(target, outcome, worker, lease_owner=worker, next_attempt_at=later)
                self.run(self.store.apply(aid, step))
        except LeaseLost:
            assert not live, "a live answer lease was refused"
            return
        assert live, "a lost answer lease was accepted"
        a.audits += 1
        a.lease_owner = a.lease_until = None
        if target is None:
            a.next_attempt_at = later
            return
        a.state = target
        a.next_attempt_at = later if target in (A.SENT, A.FAILED) else None
        if target is A.SENT:
            a.polls = 0

    # invariants --------------------------------------------------------------------------------

    @invariant()
    def store_matches_model(self) -> None:
        rows = self.run(self.store.list_messages(limit=100_000))
        ids = [r.envelope.id for r in rows]
        assert len(ids) == len(set(ids)) == len(self.model)
        partition: list[str] = []
        for state in MessageState:
            in_state = [r.envelope.id for r in self.run(self.store.list_messages(states=[state], limit=100_000))]
            assert all(self.model[mid].state is state for mid in in_state)
            partition.extend(in_state)
        assert sorted(partition) == sorted(ids)  # each message in exactly one state
        counts = self.run(self.store.count_by_state())
        assert counts == {s.value: sum(1 for m in self.model.values() if m.state is s) for s in MessageState}
        for row in rows:
            mid = row.envelope.id
            m = self.model[mid]
            assert (row.envelope.state, row.envelope.ack) == (m.state, m.ack)
            assert row.envelope.attempts == m.attempts
            assert (row.lease_owner, row.lease_until) == (m.lease_owner, m.lease_until)
            assert row.ack_attempts == m.ack_attempts
            if m.state in (S.ROUTED, S.FAILED):
                assert row.next_attempt_at == m.next_attempt_at
            if row.envelope.attempts < self.seen_attempts[mid]:
                assert mid in self.operator_retried, "attempts decreased without an operator retry"
            self.seen_attempts[mid] = row.envelope.attempts
        self.operator_retried.clear()

    @invariant()
    def answers_match_model(self) -> None:
        rows = self.run(self.store.list_answers(limit=100_000))
        assert len(rows) == len(self.answers)
        for row in rows:
            a = self.answers[row.answer.id]
            assert (row.answer.state, row.answer.channel, row.answer.sequence) == (a.state, a.channel, a.sequence)
            assert (row.answer.attempts, row.polls) == (a.attempts, a.polls)
            assert (row.lease_owner, row.lease_until, row.next_attempt_at) == (
                a.lease_owner,
                a.lease_until,
                a.next_attempt_at,
            )

    @invariant()
    def audit_chain_holds(self) -> None:
        verification = self.run(self.store.verify_audit())
        assert verification.ok, verification
        answer_audits = sum(a.audits for a in self.answers.values())
        assert verification.checked == sum(m.audits for m in self.model.values()) + answer_audits
        for mid in sorted(self.dirty):
            trail = self.run(self.store.audit_trail(mid))
            assert len(trail) == self.model[mid].audits
            path = [(r.from_state, r.to_state) for r in trail if r.event == "transition"]
            assert path == self.model[mid].transitions
            for (_, reached), (left, _) in itertools.pairwise(path):
                assert reached == left  # one unbroken path of state changes
            assert path[-1][1] == self.model[mid].state.value
        self.dirty.clear()


def machine_for(factory: StoreFactory) -> type[StoreMachine]:
    return type("StoreMachineUnderTest", (StoreMachine,), {"factory": staticmethod(factory)})


def sqlite_factory(clock: FakeClock) -> tuple[AnyStore, Callable[[], None]]:
    root = Path(tempfile.mkdtemp(prefix="gw-stateful-db-"))
    return SQLiteStore(root / "gateway.db", clock=clock), lambda: shutil.rmtree(root, ignore_errors=True)


def postgres_factory(cluster: PgCluster) -> StoreFactory:
    def factory(clock: FakeClock) -> tuple[AnyStore, Callable[[], None]]:
        dsn = cluster.create_database("hyp")
        return PostgresStore(dsn, clock=clock, pool_size=2), lambda: cluster.drop_database(dsn)

    return factory


@pytest.mark.parametrize("kind", BACKENDS)
def test_store_and_workers_match_the_model(kind: str, request: pytest.FixtureRequest) -> None:
    if kind == "sqlite":
        factory: StoreFactory = sqlite_factory
        examples = EXAMPLES or 60
    else:
        factory = postgres_factory(request.getfixturevalue("pg_cluster"))
        examples = EXAMPLES or 25
    run_state_machine_as_test(
        machine_for(factory),
        settings=settings(
            max_examples=examples,
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
