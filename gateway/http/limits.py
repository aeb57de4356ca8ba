"""Bounds on how a client may send a request: header time, body time, content coding.

aiohttp has no request-header timeout of its own, but its keep-alive timer already closes a
connection that has no complete request when it fires, from the moment the connection is accepted
(and again after every response). Setting it to ``[http] header_timeout`` therefore bounds both an
idle kept-alive connection and one that trickles its headers (slowloris) — the connection is closed
without an answer, as no request was ever received.

The body is bounded by :func:`limits_middleware`: a timer started when the handler begins sets
:class:`BodyTimeout` on the request's payload stream if the body is not complete by then; whoever is
reading it gets the exception, and the request is answered ``408 request-timeout``.

Request bodies are never decompressed (``auto_decompress=False``): a ``Content-Encoding`` other than
``identity`` is ``415 unsupported-content-encoding`` (RFC 7694: ``Accept-Encoding: identity``) for
every endpoint, before aiohttp's own decoder could answer with text/plain or inflate a zip bomb.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway.http.problem import problem_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

BODY_TIMEOUT: web.AppKey[float] = web.AppKey("body_timeout", float)


class BodyTimeout(Exception):
    """The request body did not arrive within ``[http] body_timeout``."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the request body was not received within {seconds:g} s")
        self.seconds = seconds


def handler_args(header_timeout: float) -> dict[str, Any]:
    """aiohttp ``RequestHandler`` settings: see the module docstring."""
    return {"keepalive_timeout": header_timeout, "auto_decompress": False}


def request_timeout_response(exc: BodyTimeout) -> web.Response:
    response = problem_response(408, "request-timeout", "Request body too slow", str(exc))
    response.force_close()  # the rest of the body may still trickle in: do not read it
    return response


def unsupported_encoding(request: web.Request) -> str | None:
    """The request's content coding when it is not ``identity`` (None: fine)."""
    raw = request.headers.get("Content-Encoding")
    if raw is None:
        return None
    codings = [c.strip().lower() for c in raw.split(",") if c.strip()]
    return None if all(c == "identity" for c in codings) else raw.strip()[:64]


@web.middleware
async def limits_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    coding = unsupported_encoding(request)
    if coding is not None:
        response = problem_response(
            415,
            "unsupported-content-encoding",
            "Unsupported content coding",
            "request bodies must not be content-encoded (Content-Encoding: identity)",
            headers={"Accept-Encoding": "identity"},
        )
        response.force_close()
        return response
    if not request.body_exists:
        return await handler(request)
    seconds = request.app[BODY_TIMEOUT]
    payload = request.content

    def expire() -> None:
        if not payload.is_eof():
            payload.set_exception(BodyTimeout(seconds))

    timer = asyncio.get_running_loop().call_later(seconds, expire)
    try:
        return await handler(request)
    except BodyTimeout as exc:
        return request_timeout_response(exc)
    finally:
        timer.cancel()
