"""The delivery worker: claims due messages per adapter with leases and calls the adapter.

* bounded concurrency per adapter instance (``concurrency`` in ``[adapters.NAME]``);
* leases are renewed while an adapter call runs; if this process dies the lease expires and
  another worker (or this one after restart) delivers again: at-least-once, which is why
  adapters must be idempotent on ``Delivery.idempotency_key``;
* transient failures are retried with full-jitter backoff until the route's retry policy gives up;
  permanent failures and exhausted retries go to DEAD (the dead letters), where an operator can
  retry (``gateway dead-letters retry``) with the history kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from gateway.adapters.base import Adapter, Delivery, DeliveryOutcome, DeliveryResult
from gateway.config import RetryPolicy, Route
from gateway.delivery.acks import AckWorker
from gateway.delivery.retry import after_transient_failure
from gateway.metrics import Metrics
from gateway.model import AckState, InvalidTransition, MessageState
from gateway.plugins import PluginHost
from gateway.store.base import LeaseLost, Step, Store, StoredMessage
from gateway.store.blobs import BlobStore

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class AdapterSlot:
    adapter: Adapter
    concurrency: int


class DeliveryWorker:
    def __init__(
        self,
        *,
        store: Store,
        blobs: BlobStore,
        adapters: Mapping[str, AdapterSlot],
        routes: Mapping[str, Route],
        retry: Mapping[str, RetryPolicy],
        metrics: Metrics,
        plugins: PluginHost,
        accept_policy: Callable[[str], str],
        on_ack_due: Callable[[], None] = lambda: None,
        acker: AckWorker | None = None,
        lease_seconds: float = 120.0,
        poll_interval: float = 0.5,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.adapters = adapters
        self.routes = routes
        self.retry = retry
        self.metrics = metrics
        self.plugins = plugins
        self.accept_policy = accept_policy
        self.on_ack_due = on_ack_due
        self.acker = acker  # sends the accept right after a delivery (see _apply)
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.owner = owner or f"worker-{uuid.uuid4().hex[:12]}"
        self.clock = clock
        self._wake = asyncio.Event()
        self._stopping = False
        self._running = False
        self._loop_exited = asyncio.Event()
        self._in_flight: dict[str, set[asyncio.Task[None]]] = {name: set() for name in adapters}
        self._reserved: dict[str, int] = dict.fromkeys(adapters, 0)

    def wake(self) -> None:
        self._wake.set()

    # hand-over from the intake: the routing commit leases the message to this worker, no claim --

    def reserve(self, adapter: str) -> tuple[str, float] | None:
        """A delivery lease (owner, until) for a message about to be routed to ``adapter``, if a slot
        is free right now; follow with :meth:`hand_over` (or :meth:`unreserve` if nothing was leased)."""
        slot = self.adapters.get(adapter)
        if slot is None or not self._running or self._stopping:
            return None
        if len(self._in_flight[adapter]) + self._reserved[adapter] >= slot.concurrency:
            return None
        self._reserved[adapter] += 1
        return self.owner, self.clock() + self.lease_seconds

    def unreserve(self, adapter: str) -> None:
        self._reserved[adapter] -= 1

    def hand_over(self, stored: StoredMessage) -> None:
        """Deliver a message the intake's commit leased to this worker (see :meth:`reserve`)."""
        adapter = stored.envelope.adapter or ""
        self.unreserve(adapter)
        if stored.lease_owner != self.owner or stored.envelope.state is not MessageState.ROUTED:
            return  # not leased to us after all (e.g. stored before): the claim loop handles it
        if self._stopping:
            return  # shutting down: stop() releases our leases (or the lease expires); a claim delivers it
        # A fresh context: the caller's log context (e.g. an HTTP request's) must not leak in.
        task = asyncio.create_task(self._deliver(self.adapters[adapter].adapter, stored), context=contextvars.Context())
        self._in_flight[adapter].add(task)
        task.add_done_callback(self._in_flight[adapter].discard)
        task.add_done_callback(lambda _t: self._wake.set())

    @property
    def in_flight(self) -> int:
        return sum(len(tasks) for tasks in self._in_flight.values())

    async def run(self) -> None:
        log.info("delivery_worker_started", worker=self.owner, adapters=sorted(self.adapters))
        self._running = True
        self._loop_exited.clear()
        try:
            await self._loop()
        finally:
            self._running = False
            self._loop_exited.set()

    async def _loop(self) -> None:
        while not self._stopping:
            claimed_any = False
            for name, slot in self.adapters.items():
                free = slot.concurrency - len(self._in_flight[name]) - self._reserved[name]
                if free <= 0 or self._stopping:
                    continue
                try:
                    batch = await self.store.claim_deliveries(
                        owner=self.owner, adapter=name, limit=free, now=self.clock(), lease_seconds=self.lease_seconds
                    )
                except Exception:
                    log.exception("claim_failed", adapter=name)
                    batch = []
                for stored in batch:
                    claimed_any = True
                    task = asyncio.create_task(self._deliver(slot.adapter, stored))
                    self._in_flight[name].add(task)
                    task.add_done_callback(self._in_flight[name].discard)
                    task.add_done_callback(lambda _t: self._wake.set())
            if not claimed_any and not self._stopping:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval)

    async def stop(self, grace: float) -> None:
        """Stop claiming; let in-flight deliveries finish within ``grace``; release the rest."""
        self._stopping = True
        self._wake.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if self._running:
            # The loop may be inside a claim right now: what it claims starts as in-flight deliveries
            # and must get the grace period too, so wait for the loop to end before looking.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._loop_exited.wait(), timeout=grace)
        tasks = [t for group in self._in_flight.values() for t in group]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        released = await self.store.release_leases(self.owner)
        log.info("delivery_worker_stopped", worker=self.owner, released=released)

    async def deliver_once(self) -> int:
        """Claim and deliver everything currently due, then return (for tests and the CLI)."""
        total = 0
        for name, slot in self.adapters.items():
            batch = await self.store.claim_deliveries(
                owner=self.owner,
                adapter=name,
                limit=slot.concurrency,
                now=self.clock(),
                lease_seconds=self.lease_seconds,
            )
            await asyncio.gather(*(self._deliver(slot.adapter, s) for s in batch))
            total += len(batch)
        return total

    async def _renew(self, message_id: str) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                await self.store.renew_lease(message_id, owner=self.owner, until=self.clock() + self.lease_seconds)
            except LeaseLost:
                log.warning("lease_lost", reason="lease expired during the delivery; its result will be dropped")
                return
            except Exception:
                # E.g. a busy database: the lease is still valid for a while, so keep trying.
                log.exception("lease_renewal_failed")

    async def _deliver(self, adapter: Adapter, stored: StoredMessage) -> None:
        env = stored.envelope
        route = self.routes.get(env.route or "")
        adapter_name = env.adapter or "?"
        with structlog.contextvars.bound_contextvars(
            message_id=env.id, source=env.source.channel, route=env.route, adapter=adapter_name, attempt=env.attempts
        ):
            started = time.perf_counter()
            renewer = asyncio.create_task(self._renew(env.id))
            try:
                result = await adapter.deliver(
                    Delivery(envelope=env, blobs=self.blobs, attempt=env.attempts, idempotency_key=env.id)
                )
                if not isinstance(result, DeliveryResult):
                    result = DeliveryResult.transient(f"adapter returned {type(result).__name__}, not DeliveryResult")
            except asyncio.CancelledError:
                renewer.cancel()
                raise
            except Exception as exc:  # an adapter bug must not kill the worker; retry like a transient error
                log.exception("adapter_raised")
                result = DeliveryResult.transient(f"adapter raised {type(exc).__name__}")
            finally:
                renewer.cancel()
            duration = time.perf_counter() - started
            self.metrics.attempts.labels(adapter_name, result.outcome.value).inc()
            self.metrics.attempt_duration.labels(adapter_name).observe(duration)
            try:
                await self._apply(stored, route, result)
            except LeaseLost:
                log.warning("lease_lost", reason="another worker took the message over; result dropped")
            except InvalidTransition:
                log.warning("transition_refused", reason="message changed state during delivery")
            # The adapter's reason text is audited (operators see it via the admin API/CLI) but not
            # logged: it is plugin-written free text and may quote the payload or a person.
            log.info("delivery_attempt", outcome=result.outcome.value, duration_ms=round(duration * 1000, 1))

    async def _apply(self, stored: StoredMessage, route: Route | None, result: DeliveryResult) -> None:
        env = stored.envelope
        channel = env.source.channel
        labels = (channel, env.route or "", env.adapter or "")
        now = self.clock()
        if result.outcome is DeliveryOutcome.DELIVERED:
            ack = ack_lease = None
            if env.ack is AckState.WAITING and self.accept_policy(channel) == "delivered":
                ack = AckState.PENDING
                if self.acker is not None:
                    # Lease the accept to the ack worker in this same commit and send it right
                    # away: no claim_acks round trip. If this process dies, the lease expires
                    # and any instance's ack worker sends it.
                    ack_lease = (self.acker.owner, now + self.acker.lease_seconds)
            done = await self.store.transition(
                env.id,
                MessageState.DELIVERED,
                reason=result.reason or "delivered",
                actor=self.owner,
                lease_owner=self.owner,
                ack=ack,
                ack_lease=ack_lease,
                details={"reference": result.reference} if result.reference else None,
                # Nothing outstanding upstream (no ack, or accepted on storage already): finished
                # in the same commit.
                then=[
                    Step(
                        MessageState.ACKNOWLEDGED,
                        "no upstream acknowledgement outstanding",
                        self.owner,
                        if_settled=True,
                    )
                ],
            )
            self.metrics.delivered.labels(*labels).inc()
            self.metrics.latency.labels(env.adapter or "").observe(max(0.0, now - env.received_at.timestamp()))
            final = done.envelope
            if final.state is MessageState.ACKNOWLEDGED:
                await self.plugins.message_transition(
                    final.with_(state=MessageState.DELIVERED), env.state.value, "delivered"
                )
                await self.plugins.message_transition(final, MessageState.DELIVERED.value, "acknowledged")
            else:
                await self.plugins.message_transition(final, env.state.value, "delivered")
            if ack_lease is not None and self.acker is not None:
                try:
                    await self.acker.acknowledge(done)
                except Exception:  # e.g. the store is unavailable: the lease expires, the ack worker retries
                    log.exception("inline_ack_failed")
            elif ack is AckState.PENDING:
                self.on_ack_due()
            return
        policy = self.retry.get(route.retry if route else "default") or self.retry["default"]
        if result.outcome is DeliveryOutcome.TRANSIENT:
            age = now - (stored.queued_at or env.received_at.timestamp())
            decision = after_transient_failure(policy, attempts=env.attempts, age=age, retry_after=result.retry_after)
            if decision.retry:
                failed = await self.store.transition(
                    env.id,
                    MessageState.FAILED,
                    reason=result.reason,
                    actor=self.owner,
                    lease_owner=self.owner,
                    next_attempt_at=now + decision.delay,
                    last_error=result.reason,
                    details={"retry_in_s": round(decision.delay, 3)},
                )
                log.info("delivery_retry_scheduled", next_attempt_in_s=round(decision.delay, 3))
                await self.plugins.message_transition(failed.envelope, env.state.value, result.reason)
                return
            reason = f"{result.reason}; {decision.reason}"
            log_reason = decision.reason
        else:
            reason = f"permanent failure: {result.reason}"
            log_reason = "permanent failure"
        dead = await self.store.transition(
            env.id, MessageState.DEAD, reason=reason, actor=self.owner, lease_owner=self.owner, last_error=reason
        )
        self.metrics.dead.labels(*labels).inc()
        log.warning("message_dead", reason=log_reason)
        await self.plugins.message_transition(dead.envelope, env.state.value, reason)
