"""Several gateway instances on one PostgreSQL database: each message is delivered and acknowledged once.

Each "instance" is its own PostgresStore (its own connections, so its own database sessions) with
its own DeliveryWorker and AckWorker, all running at once. The adapters and the source stand for
the back-office systems and upstream: shared by all instances, they count what reaches them.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest

from gateway.config import RetryPolicy
from gateway.model import AckState, MessageState
from gateway.sources.base import AckOutcome
from gateway.store.postgres import PostgresStore

from .support import make_envelope
from .workers import CHANNEL, ROUTES, CountingAdapter, CountingSource, make_workers

pytestmark = pytest.mark.postgres

N = 200
INSTANCES = 3
SPEED = 20.0  # the shared clock runs 20x real time, so backoff and ack retry delays pass quickly


class FastClock:
    """Wall-clock time, sped up; one instance is shared by every store and worker of the test."""

    def __init__(self) -> None:
        self.origin = time.time()
        self.start = time.monotonic()

    def __call__(self) -> float:
        return self.origin + (time.monotonic() - self.start) * SPEED


async def seed(store: PostgresStore, n: int) -> list[tuple[str, str, bool]]:
    """n routed messages: (id, adapter, needs_ack)."""

    async def one(index: int) -> tuple[str, str, bool]:
        needs_ack = index % 2 == 0
        env = make_envelope(channel=CHANNEL, ack=AckState.WAITING if needs_ack else AckState.NONE)
        stored, _ = await store.insert(env, actor=f"source:{CHANNEL}")
        await store.transition(env.id, MessageState.VALIDATED, reason="ok", actor="pipeline")
        route = ROUTES["r-a"] if index % 3 else ROUTES["r-b"]
        await store.transition(
            env.id, MessageState.ROUTED, reason="rule", actor="pipeline", route=route.name, adapter=route.adapter
        )
        return stored.envelope.id, route.adapter, needs_ack

    out: list[tuple[str, str, bool]] = []
    for start in range(0, n, 20):
        out.extend(await asyncio.gather(*(one(i) for i in range(start, min(n, start + 20)))))
    return out


async def wait_until_settled(store: PostgresStore, n: int, deadline_s: float = 120.0) -> dict[str, int]:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while True:
        counts = await store.count_by_state()
        if counts["acknowledged"] == n:
            return counts
        if loop.time() > end:  # a generous bound: only a stuck message gets here
            pytest.fail(f"messages did not settle: {counts}")
        await asyncio.sleep(0.05)


async def test_instances_deliver_and_acknowledge_each_message_exactly_once(pg_dsn: str, tmp_path: Path) -> None:
    clock = FastClock()
    seeder = PostgresStore(pg_dsn, clock=clock)
    await seeder.open()
    messages = await seed(seeder, N)
    # Every 10th message fails transiently once (a retry, possibly on another instance); every 7th
    # message that needs an acknowledgement is refused upstream once (an ack retry).
    adapters = {"fv-a": CountingAdapter("fv-a", pause=0.004), "fv-b": CountingAdapter("fv-b", pause=0.004)}
    for index, (mid, adapter, _) in enumerate(messages):
        if index % 10 == 0:
            adapters[adapter].script[mid] = ["transient"]
    source = CountingSource(fail_first={mid for i, (mid, _, ack) in enumerate(messages) if ack and i % 7 == 0})
    retry = RetryPolicy("default", max_attempts=5, initial_delay=0.5, max_delay=1.0, max_age=86400.0)

    stores = [PostgresStore(pg_dsn, clock=clock, pool_size=4) for _ in range(INSTANCES)]
    pairs = []
    for index, store in enumerate(stores):
        await store.open()
        pairs.append(
            make_workers(
                store,
                owner=f"gw-{index}",
                adapters=adapters,
                source=source,
                blob_dir=tmp_path / f"blobs-{index}",
                retry=retry,
                lease_seconds=600.0,  # 30 s of real time: no lease can expire during this test
                poll_interval=0.02,
                clock=clock,
            )
        )
    tasks = [asyncio.create_task(w.run()) for w, _ in pairs] + [asyncio.create_task(a.run()) for _, a in pairs]
    try:
        counts = await wait_until_settled(seeder, N)
    finally:
        for worker, _ in pairs:
            await worker.stop(5.0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for store in stores:
            await store.close()

    try:
        assert counts == {s.value: 0 for s in MessageState} | {"acknowledged": N}
        stored = await seeder.list_messages(limit=N + 1)
        assert len(stored) == N
        owners: Counter[str] = Counter()
        for msg in stored:
            mid = msg.envelope.id
            adapter = adapters[msg.envelope.adapter or ""]
            transient = 1 if mid in adapters["fv-a"].script or mid in adapters["fv-b"].script else 0
            assert adapter.delivered[mid] == 1, mid  # exactly one successful hand-off per key
            assert adapter.calls[mid] == 1 + transient, mid  # no duplicate call: leases never expired
            assert msg.lease_owner is None
            trail = await seeder.audit_trail(mid)
            attempts = [r for r in trail if r.event == "attempt"]
            assert len(attempts) == adapter.calls[mid]  # every claim was one call, every call one claim
            owners.update(r.actor for r in attempts)
            transitions = [(r.from_state, r.to_state) for r in trail if r.event == "transition"]
            assert transitions[-2:] == [
                ("routed" if not transient else "failed", "delivered"),
                ("delivered", "acknowledged"),
            ]
            if msg.envelope.ack is AckState.DONE:
                assert source.acks[mid] == 1  # acknowledged upstream exactly once
                assert source.outcomes[mid] is AckOutcome.ACCEPT
                assert source.attempts[mid] == (2 if mid in source.fail_first else 1)
                assert msg.ack_attempts == source.attempts[mid]
            else:
                assert msg.envelope.ack is AckState.NONE
                assert source.attempts[mid] == 0
        assert sum(source.acks.values()) == N // 2
        assert len(owners) >= 2, owners  # the work really was shared between instances
        verification = await seeder.verify_audit()
        assert verification.ok, verification
    finally:
        await seeder.close()


async def test_concurrent_claims_never_overlap(pg_dsn: str) -> None:
    """Many claims racing from several instances: SKIP LOCKED hands every due message to exactly one."""
    seeder = PostgresStore(pg_dsn)
    await seeder.open()
    ids = {mid for mid, _, _ in await seed(seeder, 60)}
    for mid in list(ids)[:30]:
        await seeder.set_ack_pending(mid, reason="due", actor="t")
    stores = [PostgresStore(pg_dsn, pool_size=4) for _ in range(3)]
    for store in stores:
        await store.open()
    try:
        now = time.time() + 1
        claims = await asyncio.gather(
            *(
                store.claim_deliveries(owner=f"o{i}-{k}", adapter=adapter, limit=3, now=now, lease_seconds=60)
                for i, store in enumerate(stores)
                for k in range(12)
                for adapter in ("fv-a", "fv-b")
            )
        )
        claimed = [c.envelope.id for batch in claims for c in batch]
        assert len(claimed) == len(set(claimed)) == len(ids)
        acks = await asyncio.gather(
            *(
                store.claim_acks(owner=f"a{i}-{k}", limit=2, now=now, lease_seconds=60)
                for i, store in enumerate(stores)
                for k in range(10)
            )
        )
        acked = [c.envelope.id for batch in acks for c in batch]
        assert len(acked) == len(set(acked)) == 30
        assert (await seeder.verify_audit()).ok
    finally:
        for store in stores:
            await store.close()
        await seeder.close()
