"""The intake → delivery → acknowledgement fast path, owned in one place.

The one-commit contract. A source hands a message to :meth:`Intake.receive`; it returns only after
ONE commit has stored the message together with its steps RECEIVED → VALIDATED → ROUTED (or →
REJECTED), each audited, and, when the delivery worker has a free slot for the route's adapter, the
delivery lease for this worker. The worker then delivers the leased message at once, without a claim
commit or a poll delay. A successful delivery commits DELIVERED and, where the source accepts on
delivery, leases the upstream acknowledgement to the ack worker in that same commit; the ack worker
tells upstream right away and commits ACKNOWLEDGED. A crash between any two commits leaves a state
that the resume loop (RECEIVED/VALIDATED, DELIVERED without an ack outstanding), the worker's claims
(expired delivery leases) or the ack worker's claims (pending acks) pick up: nothing accepted is
lost, nothing is delivered or acknowledged twice except as at-least-once redelivery to an
idempotent adapter.

:class:`Flow` builds the three parts with what they share and gives the runtime its components.
It is built before the sources (they hand messages to its intake) and :meth:`connect`-ed to them
once they exist (it acknowledges upstream and asks their accept policy through them).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping

import structlog

from gateway.components import Component, Drain, Task
from gateway.config import GatewayConfig
from gateway.delivery.acks import AckWorker
from gateway.delivery.worker import AdapterSlot, DeliveryWorker
from gateway.metrics import Metrics
from gateway.pipeline.intake import Intake
from gateway.plugins import PluginHost
from gateway.routing import Router
from gateway.sources.base import Source
from gateway.store.base import Store
from gateway.store.blobs import BlobStore

log = structlog.get_logger(__name__)


class Flow:
    def __init__(
        self,
        config: GatewayConfig,
        *,
        store: Store,
        blobs: BlobStore,
        metrics: Metrics,
        plugins: PluginHost,
        adapters: Mapping[str, AdapterSlot],
        drain: Drain,
    ) -> None:
        self.config = config
        self._sources: dict[str, Source] = {}
        self._connected = False
        delivery = config.delivery
        self.acker = AckWorker(
            store=store,
            sources=self._sources,
            metrics=metrics,
            lease_seconds=delivery.lease_seconds,
            plugins=plugins,
            retry_initial=delivery.ack_retry_initial,
            retry_max=delivery.ack_retry_max,
        )
        self.worker = DeliveryWorker(
            store=store,
            blobs=blobs,
            adapters=adapters,
            routes={r.name: r for r in config.routes},
            retry=config.retry,
            metrics=metrics,
            plugins=plugins,
            accept_policy=self.accept_policy,
            lease_seconds=delivery.lease_seconds,
            poll_interval=delivery.poll_interval,
            # Unique per process: two instances sharing a database must never share a lease owner.
            owner=f"{config.gateway.instance_id or 'gw'}-{uuid.uuid4().hex[:12]}",
            acker=self.acker,
            on_ack_due=self.acker.wake,
        )
        self.intake = Intake(
            store=store,
            router=Router.from_config(config),
            plugins=plugins,
            metrics=metrics,
            accept_policy=self.accept_policy,
            on_routed=self.worker.wake,
            on_ack_due=self.acker.wake,
            delivery=self.worker,
            drain=drain,
        )

    def connect(self, sources: Mapping[str, Source]) -> None:
        """The sources, once created; before :meth:`components` start."""
        if self._connected:
            raise RuntimeError("the flow is connected to its sources once")
        self._sources.update(sources)
        self._connected = True

    @property
    def sources(self) -> Mapping[str, Source]:
        return self._sources

    def accept_policy(self, channel: str) -> str:
        """When upstream is told "accepted": "delivered" (default, safest) or "stored" (the source's choice)."""
        source = self._sources.get(channel)
        return source.accept_policy if source is not None else "delivered"

    def components(self) -> list[Component]:
        """Start order worker, resume, acks; so on stop the ack worker and the resume loop end first and
        the worker gets the grace period for in-flight deliveries (their fast-path acks still go out)."""
        if not self._connected:
            raise RuntimeError("connect() the flow to its sources before starting it")
        grace = self.config.delivery.shutdown_grace
        # lambdas: the parts' methods are looked up when the task starts (tests replace them)
        return [
            Task("delivery-worker", lambda: self.worker.run(), before_cancel=lambda: self.worker.stop(grace)),
            Task("pipeline-resume", lambda: self.intake.resume_loop()),
            Task("ack-worker", lambda: self.acker.run()),
        ]


async def run_source(name: str, source: Source) -> None:
    """A source's receive loop. A source must survive upstream errors itself; this guard only keeps a
    bug from killing it silently."""
    while True:
        try:
            await source.run()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("source_crashed", source=name)
            await asyncio.sleep(5.0)
