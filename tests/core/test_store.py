"""The SQLite store on a real file: durability settings, idempotent insert, delivery and ack leases
(driven by the store's clock, never by sleeping), listing and counting."""

from __future__ import annotations

import asyncio
import errno
import sqlite3
import threading
from pathlib import Path

import pytest

import gateway.store.sqlite as sqlite_module
from core.storehelp import envelope, message_in
from core.support import FakeClock
from gateway.model import AckState, MessageState
from gateway.problems import Problem
from gateway.store.base import LeaseLost
from gateway.store.sqlite import MIGRATIONS, SQLiteStore


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_700_000_000.0)


@pytest.fixture
async def store(tmp_path: Path, clock: FakeClock) -> SQLiteStore:
    s = SQLiteStore(tmp_path / "data" / "gateway.db", clock=clock)
    await s.open()
    yield s  # type: ignore[misc]
    await s.close()


async def test_pragmas_on_a_real_file(store: SQLiteStore, tmp_path: Path) -> None:
    assert store.pragma("journal_mode") == "wal"
    # NORMAL: COMMIT does not fsync; the store fsyncs the WAL itself before answering (group commit).
    assert store.pragma("synchronous") == 1
    assert store.pragma("wal_autocheckpoint") == 0  # checkpoints run off the loop
    await store.insert(envelope(), actor="t")
    db = tmp_path / "data" / "gateway.db"
    assert db.is_file()
    assert (tmp_path / "data" / "gateway.db-wal").exists()
    other = sqlite3.connect(db)  # WAL is a property of the file, seen by every connection
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    other.close()


async def test_no_write_returns_before_the_wal_fsync_covering_it(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, release = threading.Event(), threading.Event()
    real = store._sync_wal

    def slow_sync() -> None:
        started.set()
        assert release.wait(10)
        real()

    monkeypatch.setattr(store, "_sync_wal", slow_sync)
    task = asyncio.create_task(store.insert(envelope(), actor="t"))
    assert await asyncio.to_thread(started.wait, 10)
    await asyncio.sleep(0.05)
    assert not task.done()  # committed in SQLite, but not yet on disk: the caller must not know yet
    assert store.commits > store._synced_seq
    release.set()
    _stored, created = await task
    assert created
    assert store._synced_seq == store.commits


async def test_concurrent_writes_share_fsyncs(store: SQLiteStore) -> None:
    commits, syncs = store.commits, store.syncs
    results = await asyncio.gather(*(store.insert(envelope(), actor="t") for _ in range(50)))
    assert all(created for _, created in results)
    assert store.commits - commits == 50
    assert 1 <= store.syncs - syncs < 50  # grouped: each fsync covered every commit before it
    assert store._synced_seq == store.commits


async def test_failed_fsync_fails_the_write_and_the_next_write_syncs_again(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = store._sync_wal

    def broken() -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(store, "_sync_wal", broken)
    with pytest.raises(OSError, match="Input/output error"):
        await store.insert(envelope(), actor="t")  # its caller must not report success
    monkeypatch.setattr(store, "_sync_wal", real)
    await store.insert(envelope(), actor="t")
    assert store._synced_seq == store.commits  # the earlier commit is covered by this fsync too


async def test_checkpoint_runs_off_the_loop_once_the_wal_grows(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sqlite_module, "CHECKPOINT_BYTES", 64 * 1024)
    db = tmp_path / "data" / "gateway.db"
    before = db.stat().st_size
    for _ in range(40):
        await store.insert(envelope(metadata={"pad": "x" * 4000}), actor="t")
    assert store._checkpoint_task is not None
    await store._checkpoint_task
    # Without a checkpoint the rows would only be in the WAL; now they are in the database file.
    assert db.stat().st_size - before > 100_000


async def test_schema_version_and_reopen(tmp_path: Path, clock: FakeClock) -> None:
    s = SQLiteStore(tmp_path / "g.db", clock=clock)
    await s.open()
    stored, _ = await s.insert(envelope(), actor="t")
    assert await s.schema_version() == len(MIGRATIONS)
    await s.close()
    s = SQLiteStore(tmp_path / "g.db", clock=clock)
    await s.open()  # migrations are not applied twice; the data survived
    try:
        assert await s.schema_version() == len(MIGRATIONS)
        again = await s.get(stored.envelope.id)
        assert again is not None
        assert again.envelope == stored.envelope
    finally:
        await s.close()


async def test_insert_is_idempotent_per_channel_and_key(store: SQLiteStore) -> None:
    first, created = await store.insert(envelope("fit", "sub-1"), actor="source:fit")
    assert created
    assert first.envelope.state is MessageState.RECEIVED
    again, created = await store.insert(envelope("fit", "sub-1", metadata={"x": 1}), actor="source:fit")
    assert not created
    assert again.envelope.id == first.envelope.id
    assert again.envelope.metadata == {}
    other, created = await store.insert(envelope("xoev", "sub-1"), actor="source:xoev")
    assert created
    assert other.envelope.id != first.envelope.id
    assert (await store.count_by_state())["received"] == 2
    found = await store.find_by_source("fit", "sub-1")
    assert found is not None
    assert found.envelope.id == first.envelope.id
    assert await store.find_by_source("fit", "sub-2") is None
    assert len(await store.audit_trail(first.envelope.id)) == 1  # the duplicate left no trace


async def test_insert_round_trips_the_envelope(store: SQLiteStore) -> None:
    problem = Problem("https://x/p", "t", "d", "data")
    env = envelope(metadata={"a": ["ü", 1, None]}, ack=AckState.WAITING)
    stored, _ = await store.insert(env, actor="t", problems=[problem])
    assert stored.envelope.metadata == {"a": ["ü", 1, None]}
    assert stored.envelope.ack is AckState.WAITING
    assert stored.envelope.received_at.timestamp() == pytest.approx(env.received_at.timestamp(), abs=1e-5)
    assert stored.problems == (problem,)


async def test_claim_lease_expiry_and_redelivery(store: SQLiteStore, clock: FakeClock) -> None:
    mid = (await message_in(store, MessageState.ROUTED)).envelope.id  # adapter "a", due now
    claimed = await store.claim_deliveries(owner="w1", adapter="a", limit=10, now=clock(), lease_seconds=60)
    assert [c.envelope.id for c in claimed] == [mid]
    assert claimed[0].envelope.attempts == 1
    assert claimed[0].lease_owner == "w1"
    assert claimed[0].lease_until == clock() + 60
    # Not claimable by anyone while the lease lives (also not by another adapter name).
    assert await store.claim_deliveries(owner="w2", adapter="a", limit=10, now=clock(), lease_seconds=60) == []
    clock.advance(59.9)
    assert await store.claim_deliveries(owner="w2", adapter="a", limit=10, now=clock(), lease_seconds=60) == []
    assert await store.claim_deliveries(owner="w2", adapter="b", limit=10, now=clock() + 100, lease_seconds=60) == []
    # The lease expires: the message is delivered again (at least once), attempts + 1.
    clock.advance(0.2)
    again = await store.claim_deliveries(owner="w2", adapter="a", limit=10, now=clock(), lease_seconds=60)
    assert [c.envelope.id for c in again] == [mid]
    assert again[0].envelope.attempts == 2
    assert again[0].lease_owner == "w2"
    attempts = [r for r in await store.audit_trail(mid) if r.event == "attempt"]
    assert [(r.actor, r.details["attempt"]) for r in attempts] == [("w1", 1), ("w2", 2)]
    # The first worker comes back late: its result is refused, its renewal too.
    with pytest.raises(LeaseLost):
        await store.transition(mid, MessageState.DELIVERED, reason="late", actor="w1", lease_owner="w1")
    with pytest.raises(LeaseLost):
        await store.renew_lease(mid, owner="w1", until=clock() + 60)
    done = await store.transition(mid, MessageState.DELIVERED, reason="ok", actor="w2", lease_owner="w2")
    assert done.envelope.state is MessageState.DELIVERED
    assert done.lease_owner is None


async def test_own_expired_lease_is_lost(store: SQLiteStore, clock: FakeClock) -> None:
    mid = (await message_in(store, MessageState.ROUTED)).envelope.id
    await store.claim_deliveries(owner="w1", adapter="a", limit=1, now=clock(), lease_seconds=10)
    await store.renew_lease(mid, owner="w1", until=clock() + 20)
    clock.advance(15)  # renewed: still ours
    assert await store.claim_deliveries(owner="w2", adapter="a", limit=1, now=clock(), lease_seconds=10) == []
    clock.advance(6)  # expired, nobody else claimed yet: still refused (the result may be stale)
    with pytest.raises(LeaseLost):
        await store.renew_lease(mid, owner="w1", until=clock() + 20)
    with pytest.raises(LeaseLost):
        await store.transition(mid, MessageState.FAILED, reason="x", actor="w1", lease_owner="w1")


async def test_not_due_is_not_claimed_and_limit_applies(store: SQLiteStore, clock: FakeClock) -> None:
    ids = [(await message_in(store, MessageState.ROUTED)).envelope.id for _ in range(3)]
    later = (await message_in(store, MessageState.ROUTED)).envelope.id
    await store.claim_deliveries(owner="w", adapter="a", limit=1, now=clock(), lease_seconds=1)
    clock.advance(2)  # that lease is gone again
    failed = await store.transition(
        later, MessageState.FAILED, reason="x", actor="t", next_attempt_at=clock() + 100, last_error="boom"
    )
    assert failed.next_attempt_at == clock() + 100
    assert failed.last_error == "boom"
    first = await store.claim_deliveries(owner="w", adapter="a", limit=2, now=clock(), lease_seconds=600)
    second = await store.claim_deliveries(owner="w", adapter="a", limit=5, now=clock(), lease_seconds=600)
    assert len(first) == 2
    assert len(second) == 1
    assert {m.envelope.id for m in first + second} == set(ids)
    clock.advance(100)
    due = await store.claim_deliveries(owner="w", adapter="a", limit=5, now=clock(), lease_seconds=60)
    assert [m.envelope.id for m in due] == [later]


async def test_release_leases(store: SQLiteStore, clock: FakeClock) -> None:
    mid = (await message_in(store, MessageState.ROUTED)).envelope.id
    other = (await message_in(store, MessageState.ROUTED)).envelope.id
    await store.claim_deliveries(owner="w1", adapter="a", limit=1, now=clock(), lease_seconds=600)
    await store.claim_deliveries(owner="w2", adapter="a", limit=1, now=clock(), lease_seconds=600)
    assert await store.release_leases("w1") == 1
    released = await store.get(mid)
    assert released is not None
    assert released.lease_owner is None
    assert released.lease_until is None
    assert released.envelope.state is MessageState.ROUTED
    again = await store.claim_deliveries(owner="w3", adapter="a", limit=5, now=clock(), lease_seconds=60)
    assert [m.envelope.id for m in again] == [mid]
    assert again[0].envelope.attempts == 2
    held = await store.get(other)
    assert held is not None
    assert held.lease_owner == "w2"


async def test_ack_claim_and_complete(store: SQLiteStore, clock: FakeClock) -> None:
    stored = await message_in(store, MessageState.DELIVERED, ack=AckState.WAITING)
    mid = stored.envelope.id
    assert await store.claim_acks(owner="a1", limit=5, now=clock(), lease_seconds=30) == []  # not due yet
    pending = await store.set_ack_pending(mid, reason="delivered", actor="t")
    assert pending.envelope.ack is AckState.PENDING
    claimed = await store.claim_acks(owner="a1", limit=5, now=clock(), lease_seconds=30)
    assert [c.envelope.id for c in claimed] == [mid]
    assert claimed[0].ack_attempts == 1
    assert await store.claim_acks(owner="a2", limit=5, now=clock(), lease_seconds=30) == []  # leased
    with pytest.raises(LeaseLost):
        await store.complete_ack(mid, owner="a2", done=True, reason="x", next_attempt_at=None, actor="a2")
    failed = await store.complete_ack(
        mid, owner="a1", done=False, reason="upstream 503", next_attempt_at=clock() + 50, actor="a1"
    )
    assert failed.envelope.ack is AckState.PENDING
    assert failed.envelope.state is MessageState.DELIVERED
    assert await store.claim_acks(owner="a1", limit=5, now=clock() + 49, lease_seconds=30) == []
    clock.advance(50)
    claimed = await store.claim_acks(owner="a2", limit=5, now=clock(), lease_seconds=30)
    assert claimed[0].ack_attempts == 2
    done = await store.complete_ack(mid, owner="a2", done=True, reason="accepted", next_attempt_at=None, actor="a2")
    assert done.envelope.ack is AckState.DONE
    assert done.envelope.state is MessageState.ACKNOWLEDGED
    trail = await store.audit_trail(mid)
    assert [(r.event, r.to_state) for r in trail[-4:]] == [
        ("ack", "delivered"),
        ("ack-failed", "delivered"),
        ("ack", "delivered"),
        ("transition", "acknowledged"),
    ]
    assert await store.claim_acks(owner="a1", limit=5, now=clock() + 1e6, lease_seconds=30) == []
    # Once done, a late "pending" does not reopen the acknowledgement.
    assert (await store.set_ack_pending(mid, reason="again", actor="t")).envelope.ack is AckState.DONE


async def test_ack_done_before_delivery_keeps_state(store: SQLiteStore, clock: FakeClock) -> None:
    stored = await message_in(store, MessageState.ROUTED, ack=AckState.WAITING)
    await store.set_ack_pending(stored.envelope.id, reason="stored", actor="t")
    await store.claim_acks(owner="a", limit=1, now=clock(), lease_seconds=30)
    done = await store.complete_ack(
        stored.envelope.id, owner="a", done=True, reason="ok", next_attempt_at=None, actor="a"
    )
    assert done.envelope.state is MessageState.ROUTED
    assert done.envelope.ack is AckState.DONE


async def test_ack_lease_released(store: SQLiteStore, clock: FakeClock) -> None:
    stored = await message_in(store, MessageState.REJECTED, ack=AckState.WAITING)
    await store.set_ack_pending(stored.envelope.id, reason="rejected", actor="t")
    await store.claim_acks(owner="a1", limit=1, now=clock(), lease_seconds=300)
    assert await store.release_leases("a1") == 1
    assert len(await store.claim_acks(owner="a2", limit=1, now=clock(), lease_seconds=300)) == 1


async def test_list_and_count(store: SQLiteStore, clock: FakeClock) -> None:
    made = {}
    for state in (MessageState.DEAD, MessageState.ROUTED, MessageState.DEAD, MessageState.REJECTED):
        clock.advance(1)
        made.setdefault(state, []).append((await message_in(store, state)).envelope.id)
    counts = await store.count_by_state()
    assert counts == {s.value: 0 for s in MessageState} | {"dead": 2, "routed": 1, "rejected": 1}
    dead = await store.list_messages(states=[MessageState.DEAD])
    assert [m.envelope.id for m in dead] == made[MessageState.DEAD]
    everything = await store.list_messages()
    assert len(everything) == 4
    assert [m.envelope.id for m in await store.list_messages(limit=2, offset=1)] == [
        m.envelope.id for m in everything[1:3]
    ]
    both = await store.list_messages(states=[MessageState.ROUTED, MessageState.REJECTED])
    assert {m.envelope.state for m in both} == {MessageState.ROUTED, MessageState.REJECTED}
    assert await store.get("no-such-id") is None


async def test_note_appends_without_state_change(store: SQLiteStore) -> None:
    stored = await message_in(store, MessageState.DEAD)
    await store.note(stored.envelope.id, event="operator", reason="called the vendor", actor="cli:anna")
    last = (await store.audit_trail(stored.envelope.id))[-1]
    assert (last.event, last.from_state, last.to_state, last.actor) == ("operator", "dead", "dead", "cli:anna")
    assert (await store.verify_audit()).ok


async def test_operator_retry_resets_attempts_and_queue_age(store: SQLiteStore, clock: FakeClock) -> None:
    stored = await message_in(store, MessageState.ROUTED)
    first_queued = stored.queued_at
    await store.claim_deliveries(owner="w", adapter="a", limit=1, now=clock(), lease_seconds=10)
    await store.transition(stored.envelope.id, MessageState.DEAD, reason="x", actor="w", lease_owner="w")
    clock.advance(1000)
    retried = await store.transition(
        stored.envelope.id, MessageState.ROUTED, reason="operator retry", actor="op", reset_attempts=True
    )
    assert retried.envelope.attempts == 0
    assert retried.next_attempt_at == clock()
    assert retried.queued_at == clock()
    assert retried.queued_at != first_queued
