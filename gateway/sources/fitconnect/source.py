"""The ``fitconnect`` source: one instance per destination; polling (with callbacks as a trigger), bounded
parallel receipt, and the upstream acknowledgement.

Pickup: every ``poll_interval`` (±20 % jitter) the source lists the destination's submissions page by
page; a valid callback wakes it at once. Each listed submission that is neither being processed nor
already in the store is queued; ``max_parallel`` workers receive them. The store's idempotency on
``(channel, submission id)`` and the in-memory in-flight set make a submission listed twice (or by a
duplicate callback) processed once; after a restart, stored submissions are recognised before any
download and left to the ack worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from aiohttp import web

from gateway.fitconnect.keys import own_certificates
from gateway.model import Envelope
from gateway.pipeline.intake import IntakeClosed
from gateway.problems import Problem
from gateway.sources.base import AckOutcome, AckResult, SourceContext
from gateway.sources.fitconnect.acks import Acknowledger
from gateway.sources.fitconnect.callback import callback_handler
from gateway.sources.fitconnect.client import ApiError, SubmissionApi
from gateway.sources.fitconnect.eventlog import KeyResolver
from gateway.sources.fitconnect.options import SubscriberOptions
from gateway.sources.fitconnect.receiver import DestinationCache, Receiver, Skip
from gateway.sources.fitconnect.subsystem import FitConnectSubsystem
from gateway.trust.crl import CrlDirectory
from gateway.trust.expiry import expiry_gauge, report_expiry
from gateway.trust.ocsp import OcspChecker
from gateway.xoev.subsystem import XoevSubsystem

log = structlog.get_logger(__name__)

JITTER = 0.2
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
MAX_LISTED = 100_000  # a listing longer than this is paged over several polls


class FitConnectSource:
    needs_ack = True

    def __init__(self, ctx: SourceContext, options: SubscriberOptions) -> None:
        self.ctx = ctx
        shared = ctx.subsystem("fitconnect", FitConnectSubsystem) or FitConnectSubsystem()
        self.metrics = shared.metrics
        self.options = options
        self.name = ctx.name
        self.accept_policy = options.accept_policy
        self.api = SubmissionApi(
            base_url=options.submission_api_url,
            profile=options.profile,
            timeout=options.request_timeout,
            tokens_for=lambda session: shared.token_provider(
                options.token_url, options.client_id, options.client_secret, session
            ),
        )
        self.expiry = expiry_gauge(ctx.metrics.registry)
        self.ocsp = OcspChecker(options.ocsp, timeout=options.request_timeout) if options.ocsp != "off" else None
        self.keys = KeyResolver(
            self.api,
            options.trust_anchors,
            options.allow_self_signed,
            zsd_issuer=options.zustelldienst_issuer,
            crls=CrlDirectory(options.crl_dir) if options.crl_dir is not None else None,
            ocsp=self.ocsp,
            on_validated=lambda chain: report_expiry(self.expiry, self.name, "issuer-key", chain),
        )
        report_expiry(self.expiry, self.name, "trust-anchor", options.trust_anchors)
        for own in (*options.decryption_keys, options.signing_key):
            report_expiry(self.expiry, self.name, "own-key", own_certificates(own.public_jwk))
        self.destination = DestinationCache(self.api, options.destination_id)
        xoev = ctx.subsystem("xoev", XoevSubsystem)
        self.receiver = Receiver(
            options, self.api, self.keys, ctx.blobs, self.destination, xoev=xoev.validator if xoev else None
        )
        self.acknowledger = Acknowledger(options, self.api, self.keys)
        self._wake = asyncio.Event()
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._in_flight: set[str] = set()
        self._workers: list[asyncio.Task[None]] = []
        self.last_poll_ok: bool | None = None
        self.last_poll_error = ""
        self.last_poll_at: float | None = None
        self._reply_listeners: list[Callable[[Sequence[str]], None]] = []
        if options.callback_secret is not None:
            handler = callback_handler(
                name=self.name,
                secret=options.callback_secret,
                metrics=self.metrics,
                trigger=self.trigger,
                on_reply_events=self.reply_events,
            )
            ctx.add_routes([web.post(options.callback_path, handler)])

    # -- Source protocol ---------------------------------------------------------------------------

    def trigger(self) -> None:
        """Poll now (a valid callback arrived)."""
        self._wake.set()

    def subscribe_reply_events(self, listener: Callable[[Sequence[str]], None]) -> Callable[[], None]:
        """``listener(reply_ids)`` is called when a valid callback says replies of this destination
        have new events (the ``fitconnect`` reply channel subscribes); returns the unsubscriber."""
        self._reply_listeners.append(listener)
        return lambda: self._reply_listeners.remove(listener) if listener in self._reply_listeners else None

    def reply_events(self, reply_ids: Sequence[str]) -> None:
        for listener in list(self._reply_listeners):
            try:
                listener(reply_ids)
            except Exception:  # a listener's bug must not fail the callback
                log.exception("fitconnect_reply_listener_failed", source=self.name)

    async def run(self) -> None:
        self._start_workers()
        failures = 0
        while True:
            self._wake.clear()
            try:
                await self.poll_once()
                failures = 0
                delay = self.options.poll_interval
            except ApiError as exc:
                failures += 1
                delay = min(self.options.poll_interval, 2.0 ** min(failures, 10))
                log.warning("fitconnect_poll_failed", source=self.name, reason=str(exc), delay_s=round(delay, 1))
            delay *= random.uniform(1 - JITTER, 1 + JITTER)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)

    async def acknowledge(self, envelope: Envelope, outcome: AckOutcome, problems: list[Problem]) -> AckResult:
        return await self.acknowledger.acknowledge(envelope, outcome, problems)

    async def check(self) -> str | None:
        if self.last_poll_ok:
            return None
        if self.last_poll_ok is False:
            return f"last poll failed: {self.last_poll_error}"
        try:
            await self.api.tokens.token()
        except ApiError as exc:
            return f"no access token: {exc.detail}"
        return None

    async def close(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()
        await self.api.close()
        if self.ocsp is not None:
            await self.ocsp.close()

    # -- polling ---------------------------------------------------------------------------------

    async def poll_once(self) -> int:
        """List every page once and queue what is new; returns how many were queued."""
        queued = 0
        offset = 0
        try:
            while offset < MAX_LISTED:
                page = await self.api.list_submissions(
                    self.options.destination_id, limit=self.options.page_size, offset=offset
                )
                items = page.get("submissions")
                if not isinstance(items, list):
                    raise ApiError("list-submissions", "response has no submissions array")
                for item in items:
                    if await self._enqueue(item):
                        queued += 1
                offset += len(items)
                total = page.get("totalCount")
                if not items or not isinstance(total, int) or offset >= total:
                    break
        except ApiError as exc:
            self.last_poll_ok, self.last_poll_error = False, str(exc)
            self.metrics.polls.labels(self.name, "error").inc()
            raise
        self.last_poll_ok, self.last_poll_error, self.last_poll_at = True, "", time.time()
        self.metrics.polls.labels(self.name, "ok").inc()
        if queued:
            log.info("fitconnect_poll", source=self.name, count=queued)
        return queued

    async def _enqueue(self, item: Any) -> bool:
        if not isinstance(item, dict):
            return False
        submission_id, case_id = item.get("submissionId"), item.get("caseId")
        destination = item.get("destinationId")
        if not isinstance(submission_id, str) or not isinstance(case_id, str):
            return False
        if not (_UUID.fullmatch(submission_id.lower()) and _UUID.fullmatch(case_id.lower())):
            log.warning("fitconnect_listing_ignored", source=self.name, reason="ids are not UUIDs")
            return False  # they would end up in request paths
        if isinstance(destination, str) and destination.lower() != self.options.destination_id:
            return False  # a token for several destinations lists all of them: not ours
        key = submission_id.lower()
        if key in self._in_flight:
            return False
        self._in_flight.add(key)  # before the await: a concurrent poll must not queue it too
        if await self.ctx.lookup().find(key) is not None:
            self._in_flight.discard(key)
            return False  # stored, waiting for delivery/acknowledgement: still listed upstream until then
        self._queue.put_nowait((key, case_id.lower()))
        return True

    def _start_workers(self) -> None:
        if self._workers:
            return
        self._workers = [
            asyncio.create_task(self._worker(), name=f"fitconnect-{self.name}-{i}")
            for i in range(self.options.max_parallel)
        ]

    async def _worker(self) -> None:
        while True:
            submission_id, case_id = await self._queue.get()
            try:
                await self.process(submission_id, case_id)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not kill the worker; the submission is listed again
                log.exception("fitconnect_receive_crashed", source=self.name, submission_id=submission_id)
            finally:
                self._in_flight.discard(submission_id)
                self._queue.task_done()

    async def process(self, submission_id: str, case_id: str) -> bool:
        """Receive one listed submission unless it is stored already; True if it was handed to the intake."""
        existing = await self.ctx.lookup().find(submission_id)
        if existing is not None:
            return False  # stored before (maybe before a restart): the ack worker takes it from here
        with structlog.contextvars.bound_contextvars(source=self.name, submission_id=submission_id):
            try:
                incoming = await self.receiver.receive(submission_id, case_id)
            except Skip as exc:
                log.info("fitconnect_submission_skipped", reason=str(exc))
                return False
            except ApiError as exc:
                log.warning("fitconnect_receive_deferred", reason=str(exc))
                return False
            try:
                result = await self.ctx.intake.receive(incoming)
            except IntakeClosed:
                log.info("fitconnect_receive_deferred", reason="gateway is draining")
                return False
            log.info(
                "fitconnect_submission_received",
                message_id=result.message.envelope.id,
                outcome="stored" if result.created else "duplicate",
                count=len(incoming.problems),
            )
            return result.created

    async def drain(self) -> None:
        """Wait until every queued submission is processed (tests, orderly shutdown)."""
        await self._queue.join()


def create(ctx: SourceContext, options: SubscriberOptions) -> FitConnectSource:
    return FitConnectSource(ctx, options)
