"""Test doubles and a small harness for the core pipeline: real SQLite store, real blob store, real
intake/router/worker, a scripted adapter the test controls and a fake clock (no sleeping for leases
or backoff)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.adapters.base import AdapterContext, AdapterType, Delivery, DeliveryResult
from gateway.config import GatewayConfig, load_config
from gateway.delivery.acks import AckWorker
from gateway.delivery.worker import AdapterSlot, DeliveryWorker
from gateway.errors import ConfigError
from gateway.hookspecs import hookimpl
from gateway.metrics import Metrics
from gateway.model import MessageState, RoutingKeys, SourceRef
from gateway.pipeline.intake import IncomingMessage, Intake, IntakeResult
from gateway.plugins import PluginHost
from gateway.problems import Problem
from gateway.routing import Router
from gateway.sources.base import AckOutcome, AckResult, SourceContext, SourceType
from gateway.store.base import StoredMessage
from gateway.store.blobs import BlobStore
from gateway.store.sqlite import SQLiteStore

BASE_CONFIG = """
[gateway]
mode = "test"
data_dir = "var"

[delivery]
lease_seconds = 60
poll_interval = 0.05
shutdown_grace = 5

[retry.default]
max_attempts = 3
initial_delay = 1.0
max_delay = 10.0
max_age = 3600.0

[adapters.alpha]
type = "scripted"
concurrency = 2

[[routes]]
name = "all"
adapter = "alpha"
"""


class FakeClock:
    """A settable clock for the store, intake and workers: leases and backoff without sleeping."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


Step = DeliveryResult | BaseException | Callable[[Delivery], Awaitable[DeliveryResult]]


class ScriptedAdapter:
    """An adapter whose answers come from ``script`` (then ``default``); it records every call and the
    highest number of concurrent ``deliver`` calls. ``gate`` (when set) holds every call until opened."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.script: list[Step] = []
        self.default: Step = DeliveryResult.delivered("fv-ref")
        self.calls: list[Delivery] = []
        self.active = 0
        self.max_active = 0
        self.gate: asyncio.Event | None = None
        self.check_result: str | None = None
        self.closed = False

    async def deliver(self, delivery: Delivery) -> DeliveryResult:
        self.calls.append(delivery)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.gate is not None:
                await self.gate.wait()
            step = self.script.pop(0) if self.script else self.default
            if isinstance(step, BaseException):
                raise step
            if callable(step):
                return await step(delivery)
            return step
        finally:
            self.active -= 1

    async def check(self) -> str | None:
        return self.check_result

    async def close(self) -> None:
        self.closed = True


class ScriptedPlugin:
    """A plugin object (registered with ``PluginHost.load(extra=[...])``) providing adapter type
    ``scripted``; the created instances are kept by name so a test can script them."""

    def __init__(self, name: str = "scripted-plugin") -> None:
        self.__name__ = name
        self.instances: dict[str, ScriptedAdapter] = {}

    @hookimpl
    def gateway_adapter_types(self) -> list[AdapterType]:
        return [AdapterType("scripted", self._create, "test adapter driven by a script")]

    def _create(self, ctx: AdapterContext, options: Mapping[str, Any]) -> ScriptedAdapter:
        unknown = sorted(set(options) - {"check"})
        if unknown:
            raise ConfigError("unknown option (known: check)", key=unknown[0])
        adapter = ScriptedAdapter(ctx.name)
        adapter.check_result = options.get("check")
        self.instances[ctx.name] = adapter
        return adapter


class FakeSource:
    """A source that only acknowledges: answers come from ``script`` (then done)."""

    def __init__(self, name: str, accept_policy: str = "delivered") -> None:
        self.name = name
        self.needs_ack = True
        self.accept_policy = accept_policy
        self.acks: list[tuple[str, AckOutcome, list[Problem]]] = []
        self.script: list[AckResult | BaseException] = []
        self.check_result: str | None = None

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def acknowledge(self, envelope: Any, outcome: AckOutcome, problems: list[Problem]) -> AckResult:
        self.acks.append((envelope.id, outcome, problems))
        step = self.script.pop(0) if self.script else AckResult(True, "upstream confirmed")
        if isinstance(step, BaseException):
            raise step
        return step

    async def check(self) -> str | None:
        return self.check_result

    async def close(self) -> None:
        return None


class FakeSourcePlugin:
    """Provides source type ``fake`` (option ``accept_policy``)."""

    def __init__(self) -> None:
        self.__name__ = "fake-source-plugin"
        self.instances: dict[str, FakeSource] = {}
        self.contexts: dict[str, SourceContext] = {}

    @hookimpl
    def gateway_source_types(self) -> list[SourceType]:
        return [SourceType("fake", self._create, "test source")]

    def _create(self, ctx: SourceContext, options: Mapping[str, Any]) -> FakeSource:
        policy = options.get("accept_policy", "delivered")
        if policy not in ("delivered", "stored"):
            raise ConfigError("must be 'delivered' or 'stored'", key="accept_policy")
        source = FakeSource(ctx.name, policy)
        self.instances[ctx.name] = source
        self.contexts[ctx.name] = ctx

        async def intake(request: web.Request) -> web.Response:  # a public channel route
            body = await request.read()
            if request.query.get("fail"):
                raise RuntimeError(f"cannot parse {body[:40]!r}")
            return web.json_response({"size": len(body)})

        ctx.add_routes([web.post(f"/{ctx.name}/intake", intake)])
        return source


def write_config(directory: Path, text: str, name: str = "gateway.toml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def incoming(
    channel: str = "test-channel",
    reference: str | None = None,
    *,
    routing: RoutingKeys | None = None,
    metadata: Mapping[str, Any] | None = None,
    problems: Iterable[Problem] = (),
    needs_ack: bool = False,
    **kwargs: Any,
) -> IncomingMessage:
    reference = reference or str(uuid.uuid4())
    return IncomingMessage(
        source=SourceRef(channel=channel, type="test", reference=reference, idempotency_key=reference),
        routing=routing or RoutingKeys(service="urn:de:fim:leika:leistung:99050012104000"),
        metadata=dict(metadata or {}),
        problems=tuple(problems),
        needs_ack=needs_ack,
        **kwargs,
    )


@dataclass
class Harness:
    """Intake + router + delivery worker + ack worker on one real SQLite file, all on ``clock``."""

    config: GatewayConfig
    clock: FakeClock
    store: SQLiteStore
    blobs: BlobStore
    plugins: PluginHost
    adapters: ScriptedPlugin
    metrics: Metrics
    intake: Intake
    worker: DeliveryWorker
    acker: AckWorker
    sources: dict[str, FakeSource] = field(default_factory=dict)

    @property
    def alpha(self) -> ScriptedAdapter:
        return self.adapters.instances["alpha"]

    async def receive(self, message: IncomingMessage | None = None) -> IntakeResult:
        return await self.intake.receive(message or incoming())

    async def get(self, message_id: str) -> StoredMessage:
        stored = await self.store.get(message_id)
        assert stored is not None
        return stored

    async def state(self, message_id: str) -> MessageState:
        return (await self.get(message_id)).envelope.state

    def new_worker(self, owner: str) -> DeliveryWorker:
        return make_worker(self, owner)

    async def transitions(self, message_id: str) -> list[tuple[str | None, str | None]]:
        return [(r.from_state, r.to_state) for r in await self.store.audit_trail(message_id) if r.event == "transition"]


def make_worker(
    h: Harness, owner: str, *, lease_seconds: float | None = None, acker: AckWorker | None = None
) -> DeliveryWorker:
    return DeliveryWorker(
        store=h.store,
        blobs=h.blobs,
        adapters={
            name: AdapterSlot(a, h.config.adapters[name].concurrency) for name, a in h.adapters.instances.items()
        },
        routes={r.name: r for r in h.config.routes},
        retry=h.config.retry,
        metrics=h.metrics,
        plugins=h.plugins,
        accept_policy=lambda ch: h.sources[ch].accept_policy if ch in h.sources else "delivered",
        lease_seconds=lease_seconds if lease_seconds is not None else h.config.delivery.lease_seconds,
        poll_interval=h.config.delivery.poll_interval,
        owner=owner,
        clock=h.clock,
        acker=acker,
    )


@asynccontextmanager
async def harness(
    tmp_path: Path,
    config_text: str = BASE_CONFIG,
    *,
    extra_plugins: Iterable[object] = (),
    sources: Mapping[str, FakeSource] | None = None,
    clock: FakeClock | None = None,
) -> AsyncIterator[Harness]:
    config = load_config(write_config(tmp_path, config_text))
    clock = clock or FakeClock()
    scripted = ScriptedPlugin()
    plugins = PluginHost.load(entry_points_enabled=False, extra=[scripted, *extra_plugins])
    for name, inst in config.adapters.items():
        plugins.adapter_types[inst.type].create(
            AdapterContext(name=name, base_dir=config.base_dir, resolve_secret=lambda o, k: None, production=False),
            inst.options,
        )
    store = SQLiteStore(config.path(config.store.path), clock=clock)
    blobs = BlobStore(config.path(config.store.blob_dir))
    blobs.open()
    await store.open()
    metrics = Metrics()
    source_map = dict(sources or {})
    intake = Intake(
        store=store,
        router=Router.from_config(config),
        plugins=plugins,
        metrics=metrics,
        accept_policy=lambda ch: source_map[ch].accept_policy if ch in source_map else "delivered",
        clock=clock,
    )
    acker = AckWorker(store=store, sources=source_map, metrics=metrics, owner="acker-1", clock=clock, plugins=plugins)
    h = Harness(config, clock, store, blobs, plugins, scripted, metrics, intake, None, acker, source_map)  # type: ignore[arg-type]
    h.worker = make_worker(h, "worker-1")
    try:
        yield h
    finally:
        await store.close()


async def eventually(predicate: Callable[[], Any], limit: float = 20.0) -> None:
    """Poll a sync or async predicate until it holds. ``limit`` only guards against a hang (the
    condition is expected to come true quickly); it never decides a test's outcome otherwise."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def run_cli(argv: list[str]) -> int:
    """``gateway.cli.main`` from an async test: the CLI runs its own event loop, so use a thread."""
    from gateway.cli import main

    return await asyncio.to_thread(main, argv)


def metric_value(metrics: Metrics, name: str, labels: Mapping[str, str] | None = None) -> float:
    value = metrics.registry.get_sample_value(name, dict(labels or {}))
    return 0.0 if value is None else value
