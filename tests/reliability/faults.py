"""Fault injectors on loopback: a reverse proxy in front of the Zustelldienst, a misbehaving back office.

Both follow a **schedule**: a cyclic list of fault kinds applied to every ``every``-th eligible
request until ``budget`` faults were injected, then everything passes. Deterministic (no timing in
the decision), so every kind is exercised in every run, and a run always ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from gateway.config import load_config
from gateway.http.app import create_app
from gateway.runtime import Runtime, build_runtime

from .harness import GatewaySettings

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host", "upgrade", "te"}
)


@dataclass
class Schedule:
    """Fault ``kinds`` on every ``every``-th request *of each request class* (``classify``), ``budget``
    faults in all. Each kind is injected once first, as soon as a fault slot comes that it applies to
    (in list order: put the kinds that apply to few requests first), then the kinds take turns."""

    kinds: Sequence[str]
    every: int = 2
    budget: int = 40
    eligible: Callable[[str, str, str], bool] = lambda kind, method, path: True
    classify: Callable[[str, str], str] = lambda method, path: "all"
    seen: Counter[str] = field(default_factory=Counter)
    injected: Counter[str] = field(default_factory=Counter)
    _next: int = 0

    def decide(self, method: str, path: str) -> str:
        stream = self.classify(method, path)
        self.seen[stream] += 1
        if sum(self.injected.values()) >= self.budget or self.seen[stream] % self.every:
            return "pass"
        for kind in self.kinds:
            if not self.injected[kind] and self.eligible(kind, method, path):
                self.injected[kind] += 1
                return kind
        for offset in range(len(self.kinds)):
            kind = self.kinds[(self._next + offset) % len(self.kinds)]
            if self.eligible(kind, method, path):
                self._next = (self._next + offset + 1) % len(self.kinds)
                self.injected[kind] += 1
                return kind
        return "pass"

    @property
    def exhausted(self) -> bool:
        return sum(self.injected.values()) >= self.budget


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


# -- the Zustelldienst proxy ----------------------------------------------------------------------------

# 409 applies only to posting an event, cut-body only to GETs: they come first (see Schedule).
ZSD_FAULTS = ("409", "cut-body", "500", "closed", "lost-response", "503", "timeout", "502", "slow", "429")
_EVENTS = re.compile(r"/v[12]/cases/[^/]+/events$")
_ATTACHMENT = re.compile(r"/v[12]/submissions/[^/]+/attachments/[^/]+$")
_SUBMISSION = re.compile(r"/v[12]/submissions/[^/]+$")


def zsd_class(method: str, path: str) -> str:
    """The kind of Submission API call, so that every kind of call gets its share of faults."""
    if _EVENTS.search(path):
        return "post-event" if method == "POST" else "event-log"
    if _ATTACHMENT.search(path):
        return "attachment"
    if _SUBMISSION.search(path):
        return "submission"
    if path.endswith("/submissions"):
        return "listing"
    return "token" if path.endswith("/token") else "other"


def zsd_eligible(kind: str, method: str, path: str) -> bool:
    if kind == "409":
        return method == "POST" and _EVENTS.search(path) is not None  # only where the API knows 409
    if kind == "cut-body":
        return method == "GET"  # a response with a body to cut
    return True


class FaultProxy:
    """Forwards to ``upstream``; answers per :class:`Schedule` with a fault instead.

    Kinds: ``500``/``502``/``503``/``429``/``409`` (answered by the proxy, not forwarded),
    ``closed`` (connection closed, request not forwarded), ``lost-response`` (forwarded, then the
    connection is closed: upstream acted, the client never hears of it), ``cut-body`` (forwarded,
    the body is cut after half: the client sees a broken download), ``timeout`` (held longer than
    the client waits, not forwarded), ``slow`` (forwarded after a delay the client tolerates).
    """

    def __init__(self, upstream: str, schedule: Schedule, *, hang: float = 3.0, slow: float = 0.3) -> None:
        self.upstream = upstream.rstrip("/")
        self.schedule = schedule
        self.hang = hang
        self.slow = slow
        self.log: list[tuple[str, str, str, int | None]] = []  # (method, path, fault, upstream status)
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._session = aiohttp.ClientSession(auto_decompress=False)
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _forward(self, request: web.Request) -> tuple[int, dict[str, str], bytes]:
        assert self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, data=body or None, headers=headers, allow_redirects=False
        ) as resp:
            data = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP}
            return resp.status, out, data

    async def handle(self, request: web.Request) -> web.StreamResponse:
        fault = self.schedule.decide(request.method, request.path)
        status: int | None = None
        try:
            if fault in ("500", "502", "503", "429", "409"):
                await request.read()
                body = {"type": "about:blank", "title": "injected fault", "status": int(fault)}
                return web.json_response(body, status=int(fault), content_type="application/problem+json")
            if fault == "closed":
                _abort(request)
                return web.Response(status=500)
            if fault == "timeout":
                await asyncio.sleep(self.hang)
                _abort(request)
                return web.Response(status=504)
            if fault == "slow":
                await asyncio.sleep(self.slow)
            status, headers, data = await self._forward(request)
            if fault == "lost-response":
                _abort(request)
                return web.Response(status=502)
            if fault == "cut-body" and len(data) > 1:
                resp = web.StreamResponse(status=status, headers=headers)
                resp.content_length = len(data)
                await resp.prepare(request)
                await resp.write(data[: len(data) // 2])
                _abort(request)
                return resp
            return web.Response(status=status, headers=headers, body=data)
        finally:
            self.log.append((request.method, request.path, fault, status))


@contextlib.asynccontextmanager
async def fault_proxy(upstream: str, schedule: Schedule, **kwargs: Any) -> AsyncIterator[FaultProxy]:
    proxy = FaultProxy(upstream, schedule, **kwargs)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


# -- the misbehaving back office (webhook receiver) -----------------------------------------------------

BACK_OFFICE_FAULTS = ("500", "store-then-close", "429", "timeout", "503", "slow", "closed", "store-then-500")


class BackOffice:
    """A Fachverfahren's HTTP endpoint that keeps the webhook contract badly, on a schedule.

    ``stored``: Idempotency-Key -> submission id (source reference) of what it durably took
    (answered 2xx, or stored and then failed: ``store-then-close``, ``store-then-500``);
    ``posts``: every request's key. Submissions in ``poison`` always get 422 (a permanent refusal).
    """

    def __init__(self, schedule: Schedule, *, hang: float = 2.0, slow: float = 0.3) -> None:
        self.schedule = schedule
        self.hang = hang
        self.slow = slow
        self.poison: set[str] = set()
        self.stored: dict[str, str] = {}
        self.stored_twice: Counter[str] = Counter()  # keys it was asked to store again (dedupe worked)
        self.posts: list[tuple[str, str]] = []  # (key, fault)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/antraege", self.handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/antraege"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _store(self, key: str, reference: str) -> None:
        if key in self.stored:
            self.stored_twice[key] += 1
        self.stored[key] = reference

    async def handle(self, request: web.Request) -> web.StreamResponse:
        key = request.headers.get("Idempotency-Key", "")
        document = json.loads(await request.read())
        reference = str(document["source"]["reference"]).lower()
        if reference in self.poison:
            self.posts.append((key, "422"))
            return web.json_response({"error": "unprocessable"}, status=422)
        fault = self.schedule.decide("POST", request.path)
        self.posts.append((key, fault))
        if fault in ("500", "503", "429"):
            headers = {"Retry-After": "1"} if fault != "500" else {}
            return web.Response(status=int(fault), headers=headers, text="injected")
        if fault == "closed":
            _abort(request)
            return web.Response(status=500)
        if fault == "timeout":
            await asyncio.sleep(self.hang)
            _abort(request)
            return web.Response(status=504)
        if fault == "slow":
            await asyncio.sleep(self.slow)
        self._store(key, reference)
        if fault == "store-then-close":
            _abort(request)
            return web.Response(status=500)
        if fault == "store-then-500":
            return web.Response(status=500, text="stored, then crashed")
        return web.json_response({"id": key}, status=201)

    def deliveries(self) -> Counter[str]:
        """Submission id -> number of distinct gateway messages (Idempotency-Keys) stored for it."""
        return Counter(self.stored.values())


# -- an in-process gateway (for faults that need hooks into the running process) ------------------------


class InProcessGateway:
    """``build_runtime`` + the aiohttp app on the settings' port, in this event loop.

    Used where a fault needs the running process (SQLite ``max_page_count`` is a per-connection
    limit; the Submission API client's timeout and the ack retry pace are shortened to test
    timescales). Crashes are tested with real subprocesses (``harness.GatewayProcess``) instead.
    """

    def __init__(self, settings: GatewaySettings, *, api_timeout: float | None = None) -> None:
        self.settings = settings
        self.api_timeout = api_timeout
        self.runtime: Runtime | None = None
        self._runner: web.AppRunner | None = None

    async def start(self) -> Runtime:
        runtime = build_runtime(load_config(self.settings.write()))
        if self.api_timeout is not None:
            for source in runtime.sources.values():
                # Not an option of the fitconnect source (60 s fixed): shortened so a "timeout" fault
                # costs seconds, not minutes. Set before the first request creates the session.
                source.api._timeout = self.api_timeout  # type: ignore[attr-defined]
        self._runner = web.AppRunner(create_app(runtime), access_log=None, shutdown_timeout=2)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.settings.port).start()
        self.runtime = runtime
        return runtime

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = None


@contextlib.asynccontextmanager
async def in_process_gateway(settings: GatewaySettings, **kwargs: Any) -> AsyncIterator[InProcessGateway]:
    gateway = InProcessGateway(settings, **kwargs)
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()
