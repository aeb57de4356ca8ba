"""Callback (webhook) delivery: HMAC-SHA512 signed POSTs, retried with exponential backoff.

Each delivery is one logical callback (one body). An attempt succeeds on any 2xx answer; otherwise
it is retried after ``initial_delay * 2**(n-1)`` (capped at ``max_delay``) real seconds, at most
``max_attempts`` times, then marked ``failed``. Every attempt is recorded in the delivery log that
``GET /_sandbox/callbacks`` shows.

Fault injection (``PUT /_sandbox/callbacks/faults``) applies to deliveries created while a switch is
on: ``wrong-hmac`` signs with a different secret, ``stale-timestamp`` sends (and signs) a
``callback-timestamp`` one hour old, ``duplicate`` sends every attempt twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
import structlog

from gateway.fitconnect import replies as reply_profile
from gateway.fitconnect.callbacks import HEADER_AUTHENTICATION, HEADER_TIMESTAMP, sign_callback
from gateway_sandbox.zustelldienst.clock import SandboxClock
from gateway_sandbox.zustelldienst.config import CallbackPolicy
from gateway_sandbox.zustelldienst.state import (
    MAX_DELIVERY_LOG,
    DeliveryAttempt,
    DeliveryRecord,
    ReplyRecord,
    SandboxState,
    SubmissionRecord,
)

log = structlog.get_logger(__name__)

STALE_SECONDS = 3600
USER_AGENT = "fitconnect-sandbox-zustelldienst"


def callback_body(callback_type: str, submissions: list[SubmissionRecord]) -> str:
    """Compact JSON, as in the documentation's HMAC test vector (field order included)."""
    body = {
        "type": callback_type,
        "submissionIds": [s.id for s in submissions],  # deprecated, still sent
        "submissions": [s.for_pickup() for s in submissions],
    }
    return json.dumps(body, separators=(",", ":"))


def reply_callback_body(callback_type: str, replies: Sequence[ReplyRecord]) -> str:
    """A callback about replies (new-replies, reply events): shape from the reply profile."""
    return json.dumps(reply_profile.callback_body(callback_type, [r.item() for r in replies]), separators=(",", ":"))


class CallbackDispatcher:
    def __init__(
        self, state: SandboxState, clock: SandboxClock, policy: CallbackPolicy, save: Callable[[], None]
    ) -> None:
        self.state = state
        self.clock = clock
        self.policy = policy
        self.save = save
        self._due: dict[str, float] = {}  # delivery id -> monotonic time of the next attempt
        self._in_flight: set[str] = set()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        for record in self.state.deliveries:
            if record.state == "pending":  # resumed after a restart
                self._due[record.id] = 0.0

    def enqueue(
        self,
        *,
        target: str,
        url: str,
        secret: str,
        callback_type: str,
        submissions: Sequence[SubmissionRecord] = (),
        replies: Sequence[ReplyRecord] = (),
    ) -> DeliveryRecord:
        """One callback about ``submissions`` or (reply profile) about ``replies``."""
        record = DeliveryRecord(
            id=str(uuid.uuid4()),
            target=target,  # type: ignore[arg-type]
            url=url,
            secret=secret,
            type=callback_type,
            body=(
                reply_callback_body(callback_type, replies)
                if replies
                else callback_body(callback_type, list(submissions))
            ),
            submission_ids=[s.id for s in submissions],
            reply_ids=[r.id for r in replies],
            created_at=self.clock.wall(),
        )
        record.faults = self.state.faults.active()
        self.state.deliveries.append(record)
        if len(self.state.deliveries) > MAX_DELIVERY_LOG:  # keep the log bounded; never drop pending ones
            excess = len(self.state.deliveries) - MAX_DELIVERY_LOG
            finished = [d for d in self.state.deliveries if d.state != "pending"][:excess]
            drop = {d.id for d in finished}
            self.state.deliveries = [d for d in self.state.deliveries if d.id not in drop]
        self._due[record.id] = 0.0
        self._idle.clear()
        self._wake.set()
        return record

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.policy.timeout)
        async with aiohttp.ClientSession(timeout=timeout, headers={"User-Agent": USER_AGENT}) as session:
            self._session = session
            try:
                while True:
                    self._wake.clear()
                    now = time.monotonic()
                    for delivery_id, due in list(self._due.items()):
                        if due <= now and delivery_id not in self._in_flight:
                            self._start(delivery_id)
                    if not self._due and not self._in_flight:
                        self._idle.set()
                    waits = [due - now for d, due in self._due.items() if d not in self._in_flight]
                    wait = max(0.0, min(waits)) if waits else None
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout=wait)
            finally:
                for task in list(self._tasks):
                    task.cancel()
                if self._tasks:
                    await asyncio.gather(*self._tasks, return_exceptions=True)
                self._session = None

    def _start(self, delivery_id: str) -> None:
        self._in_flight.add(delivery_id)
        task = asyncio.create_task(self._attempt(delivery_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait_idle(self, within: float) -> bool:
        """Until no delivery is pending (tests); False when that takes longer than ``within`` seconds."""
        try:
            await asyncio.wait_for(self._idle.wait(), within)
        except TimeoutError:
            return False
        return True

    def _record(self, delivery_id: str) -> DeliveryRecord | None:
        return next((d for d in self.state.deliveries if d.id == delivery_id), None)

    async def _attempt(self, delivery_id: str) -> None:
        try:
            record = self._record(delivery_id)
            if record is None or record.state != "pending":
                self._due.pop(delivery_id, None)
                return
            faults = record.faults
            sends = 2 if "duplicate" in faults else 1
            headers = self._headers(record, faults)
            ok = False
            for _ in range(sends):  # a duplicate is a byte-identical replay (same timestamp and HMAC)
                attempt = await self._send(record, headers, faults)
                record.attempts.append(attempt)
                ok = ok or (attempt.status is not None and 200 <= attempt.status < 300)
            if ok:
                record.state = "delivered"
                self._due.pop(delivery_id, None)
            elif len(record.attempts) >= self.policy.max_attempts * sends:
                record.state = "failed"
                self._due.pop(delivery_id, None)
                log.warning(
                    "callback_delivery_failed", target=record.target, url=record.url, count=len(record.attempts)
                )
            else:
                n = len(record.attempts) // sends
                delay = min(self.policy.initial_delay * 2 ** (n - 1), self.policy.max_delay)
                self._due[delivery_id] = time.monotonic() + delay
            self.save()
        finally:
            self._in_flight.discard(delivery_id)
            self._wake.set()

    def _headers(self, record: DeliveryRecord, faults: list[str]) -> dict[str, str]:
        # Wall clock, not sandbox time: the receiver compares the timestamp with its own clock.
        timestamp = int(self.clock.wall())
        if "stale-timestamp" in faults:
            timestamp -= STALE_SECONDS
        secret = record.secret + "-wrong" if "wrong-hmac" in faults else record.secret
        return {
            "Content-Type": "application/json",
            HEADER_AUTHENTICATION: sign_callback(secret, record.body.encode("utf-8"), timestamp),
            HEADER_TIMESTAMP: str(timestamp),
        }

    async def _send(self, record: DeliveryRecord, headers: dict[str, str], faults: list[str]) -> DeliveryAttempt:
        assert self._session is not None
        body = record.body.encode("utf-8")
        attempt = DeliveryAttempt(at=self.clock.wall(), timestamp=int(headers[HEADER_TIMESTAMP]), faults=list(faults))
        try:
            async with self._session.post(record.url, data=body, headers=headers, allow_redirects=False) as resp:
                await resp.read()
                attempt.status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            attempt.error = type(exc).__name__
        log.info(
            "callback_attempt",
            url=record.url,
            target=record.target,
            status=attempt.status,
            reason=attempt.error,
        )
        return attempt

    def public_log(self) -> list[dict[str, Any]]:
        return [record.public() for record in self.state.deliveries]
