"""Upstream acknowledgements (e.g. FIT-Connect accept-/reject-submission SETs), retried until done.

An ack is due (``ack = pending``) when a message is rejected, or accepted per the source's policy:
after delivery (default: never accept what the gateway could still lose) or after durable storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import structlog

from gateway.metrics import Metrics
from gateway.model import MessageState
from gateway.sources.base import AckOutcome, Source
from gateway.store.base import LeaseLost, Store, StoredMessage

if TYPE_CHECKING:
    from gateway.plugins import PluginHost

log = structlog.get_logger(__name__)

ACK_RETRY_INITIAL = 5.0
ACK_RETRY_MAX = 3600.0


class AckWorker:
    def __init__(
        self,
        *,
        store: Store,
        sources: Mapping[str, Source],
        metrics: Metrics,
        lease_seconds: float = 120.0,
        poll_interval: float = 1.0,
        retry_initial: float = ACK_RETRY_INITIAL,
        retry_max: float = ACK_RETRY_MAX,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
        plugins: PluginHost | None = None,
    ) -> None:
        self.store = store
        self.plugins = plugins  # for gateway_message_transition (delivered -> acknowledged)
        self.sources = sources
        self.metrics = metrics
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.owner = owner or f"acker-{uuid.uuid4().hex[:12]}"
        self.clock = clock
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                handled = await self.ack_once()
            except Exception:
                log.exception("ack_cycle_failed")
                handled = 0
            if not handled:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval)

    async def ack_once(self, limit: int = 16) -> int:
        batch = await self.store.claim_acks(
            owner=self.owner, limit=limit, now=self.clock(), lease_seconds=self.lease_seconds
        )
        await asyncio.gather(*(self.acknowledge(stored) for stored in batch))
        return len(batch)

    async def acknowledge(self, stored: StoredMessage) -> None:
        """Send the acknowledgement of a message whose ack lease this worker holds (claimed here, or
        taken by the delivery worker in its DELIVERED commit) and record the outcome."""
        env = stored.envelope
        channel = env.source.channel
        outcome = AckOutcome.REJECT if env.state is MessageState.REJECTED else AckOutcome.ACCEPT
        with structlog.contextvars.bound_contextvars(message_id=env.id, source=channel, outcome=outcome.value):
            source = self.sources.get(channel)
            permanent = False
            if source is None:
                done, reason = False, f"source {channel!r} is not configured"
            else:
                try:
                    result = await source.acknowledge(env, outcome, list(stored.problems))
                    done, reason = result.done, result.reason or ("acknowledged" if result.done else "not done")
                    permanent = result.permanent and not result.done
                except Exception as exc:
                    log.exception("ack_raised")
                    done, reason = False, f"acknowledge raised {type(exc).__name__}"
            delay = min(self.retry_max, self.retry_initial * 2 ** max(stored.ack_attempts - 1, 0))
            if permanent:
                # Upstream says retrying cannot help. The ack stays pending (never dropped: the
                # application's outcome must reach upstream), retried at the slowest pace and
                # visible to operators in metrics (result="permanent") and the audit trail.
                delay = self.retry_max
                log.error("ack_refused_permanently", source=channel)
            try:
                after = await self.store.complete_ack(
                    env.id,
                    owner=self.owner,
                    done=done,
                    reason=f"{outcome.value}: {reason}",
                    next_attempt_at=None if done else self.clock() + delay,
                    actor=self.owner,
                )
            except LeaseLost:
                log.warning("ack_lease_lost")
                return
            self.metrics.acks.labels(channel, "done" if done else ("permanent" if permanent else "retry")).inc()
            if self.plugins is not None and after.envelope.state is not env.state:
                await self.plugins.message_transition(after.envelope, env.state.value, "acknowledged upstream")
            # The source's reason text is audited, not logged: it may quote an upstream error body.
            log.info("ack_attempt", ack="done" if done else "retry")
