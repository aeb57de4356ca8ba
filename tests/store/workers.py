"""Real delivery/ack workers wired to a store, with counting adapters and sources the tests inspect."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway.adapters.base import Delivery, DeliveryResult
from gateway.config import RetryPolicy, Route, RouteMatch
from gateway.delivery.acks import AckWorker
from gateway.delivery.worker import AdapterSlot, DeliveryWorker
from gateway.metrics import Metrics
from gateway.model import Envelope
from gateway.plugins import PluginHost
from gateway.problems import Problem
from gateway.sources.base import AckOutcome, AckResult
from gateway.store.blobs import BlobStore

from .support import AnyStore

CHANNEL = "fitconnect-bauamt"


@dataclass
class CountingAdapter:
    """Idempotent test adapter: counts every call and every successful hand-off per idempotency key.

    ``script`` maps a key to the outcomes of its first calls (e.g. ``["transient"]``); later calls
    deliver. ``pause`` (seconds, randomised) lets other instances run while a delivery is in flight.
    """

    name: str
    calls: Counter[str] = field(default_factory=Counter)
    delivered: Counter[str] = field(default_factory=Counter)
    script: dict[str, list[str]] = field(default_factory=dict)
    pause: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    async def deliver(self, delivery: Delivery) -> DeliveryResult:
        key = delivery.idempotency_key
        self.calls[key] += 1
        if self.pause:
            await asyncio.sleep(self.rng.uniform(0, self.pause))
        planned = self.script.get(key, [])
        outcome = planned.pop(0) if planned else "delivered"
        if outcome == "transient":
            return DeliveryResult.transient("503 from the Fachverfahren")
        if outcome == "permanent":
            return DeliveryResult.permanent("422 schema refused")
        self.delivered[key] += 1
        return DeliveryResult.delivered(reference=f"fv-{key[:8]}")

    async def close(self) -> None:
        return None


@dataclass
class CountingSource:
    """A source that only acknowledges, counting per message; ``fail_first`` keys fail once."""

    name: str = CHANNEL
    needs_ack: bool = True
    accept_policy: str = "delivered"
    acks: Counter[str] = field(default_factory=Counter)
    attempts: Counter[str] = field(default_factory=Counter)
    fail_first: set[str] = field(default_factory=set)
    refuse: bool = False  # every call fails (upstream down)
    pause: float = 0.0
    outcomes: dict[str, AckOutcome] = field(default_factory=dict)

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def acknowledge(self, envelope: Envelope, outcome: AckOutcome, problems: list[Problem]) -> AckResult:
        self.attempts[envelope.id] += 1
        if self.pause:
            await asyncio.sleep(self.pause)
        if self.refuse or (envelope.id in self.fail_first and self.attempts[envelope.id] == 1):
            return AckResult(False, "upstream 503")
        self.acks[envelope.id] += 1
        self.outcomes[envelope.id] = outcome
        return AckResult(True, "ok")

    async def check(self) -> str | None:
        return None

    async def close(self) -> None:
        return None


ROUTES = {
    "r-a": Route("r-a", "fv-a", RouteMatch()),
    "r-b": Route("r-b", "fv-b", RouteMatch()),
}


def make_workers(
    store: AnyStore,
    *,
    owner: str,
    adapters: Mapping[str, CountingAdapter],
    source: CountingSource,
    blob_dir: Path,
    retry: RetryPolicy,
    lease_seconds: float,
    poll_interval: float,
    clock: Callable[[], float],
    concurrency: int = 4,
) -> tuple[DeliveryWorker, AckWorker]:
    metrics = Metrics()
    acker = AckWorker(
        store=store,
        sources={source.name: source},
        metrics=metrics,
        lease_seconds=lease_seconds,
        poll_interval=poll_interval,
        owner=f"{owner}-acks",
        clock=clock,
    )
    worker = DeliveryWorker(
        store=store,
        blobs=BlobStore(blob_dir),
        adapters={name: AdapterSlot(adapter, concurrency) for name, adapter in adapters.items()},
        routes=ROUTES,
        retry={"default": retry},
        metrics=metrics,
        plugins=PluginHost.load(entry_points_enabled=False),
        accept_policy=lambda channel: source.accept_policy,
        on_ack_due=acker.wake,
        lease_seconds=lease_seconds,
        poll_interval=poll_interval,
        owner=owner,
        clock=clock,
    )
    return worker, acker
