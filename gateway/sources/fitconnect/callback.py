"""The destination's callback endpoint: verify, answer at once, trigger a poll. Never trust the content.

Receiver rules (digest §2.6): HMAC-SHA512 over ``timestamp + "." + raw body`` (the bytes as received,
never re-serialised JSON), compared in constant time; the timestamp within 5 minutes in either
direction; invalid callbacks are ignored (not acted upon), counted per reason in
``gateway_callbacks_invalid`` and logged without content. A valid ``new-submissions`` callback only
means "go and poll now": the submissions are always fetched with GET. A valid ``new-events``
callback naming ``replies`` (reply profile, :mod:`gateway.fitconnect.replies`) tells the reply
channel to look at those replies' event logs now; the ids are a hint, the outcome is always read
from the verified log.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from gateway.fitconnect import replies as reply_profile
from gateway.fitconnect.callbacks import (
    CALLBACK_NEW_EVENTS,
    CALLBACK_NEW_SUBMISSIONS,
    HEADER_AUTHENTICATION,
    HEADER_TIMESTAMP,
    verify_callback,
)
from gateway.http.problem import problem_response

if TYPE_CHECKING:
    from gateway.sources.fitconnect.subsystem import FitConnectMetrics

log = structlog.get_logger(__name__)

MAX_CALLBACK_BODY = 256 * 1024  # a callback lists submission ids; anything larger is not one


async def _read_bounded(request: web.Request, limit: int) -> bytes | None:
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def callback_handler(
    *,
    name: str,
    secret: str,
    metrics: FitConnectMetrics,
    trigger: Callable[[], None],
    on_reply_events: Callable[[Sequence[str]], None] = lambda reply_ids: None,
    clock: Callable[[], float] = time.time,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    def ignored(reason: str) -> None:
        metrics.callbacks_invalid.labels(name, reason).inc()
        log.warning("fitconnect_callback_ignored", source=name, reason=reason)

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await _read_bounded(request, MAX_CALLBACK_BODY)
        if body is None:
            ignored("too-large")
            return problem_response(413, "payload-too-large", "Callback body too large")
        verdict = verify_callback(
            secret,
            request.headers.get(HEADER_TIMESTAMP),
            request.headers.get(HEADER_AUTHENTICATION),
            body,
            now=clock(),
        )
        if not verdict.ok:
            ignored(verdict.reason)
            return problem_response(401, "callback-not-authenticated", "Callback ignored")
        # Authentic from here on; still only the type is used, never ids or other content.
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        kind = parsed.get("type") if isinstance(parsed, dict) else None
        if kind == CALLBACK_NEW_SUBMISSIONS:
            trigger()
            log.info("fitconnect_callback", source=name, reason="new-submissions")
        elif kind == CALLBACK_NEW_EVENTS:
            if isinstance(parsed, dict) and "replies" in parsed:  # accept-/reject-reply of our replies
                reply_ids = reply_profile.callback_reply_ids(parsed)
                on_reply_events(reply_ids)
                log.info("fitconnect_callback", source=name, reason="reply-events", count=len(reply_ids))
            else:
                log.info("fitconnect_callback", source=name, reason="new-events")  # about submissions: nothing to do
        else:
            ignored("malformed" if parsed is None or not isinstance(kind, str) else "unknown-type")
        return web.json_response({"status": "ok"})

    return handle
