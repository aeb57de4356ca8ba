"""Assemble a running gateway from its configuration: a list of components in dependency order.

:func:`build_runtime` reads the whole file (:mod:`gateway.assembly`: every error of core tables,
subsystem tables, adapter and source options in one pass), creates the instances and orders the
components: store → subsystems → adapters → sources (instances) → the flow (delivery worker, resume
loop, ack worker) → the sources' receive loops. :class:`Runtime` starts them in that order and stops
them in reverse after setting the one drain state.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web

from gateway.adapters.base import Adapter, AdapterContext
from gateway.assembly import Plan, progress, read_plugins
from gateway.components import Components, Drain, Hooks, Task
from gateway.config import GatewayConfig
from gateway.delivery.acks import AckWorker
from gateway.delivery.worker import AdapterSlot, DeliveryWorker
from gateway.errors import ConfigError, ConfigErrors
from gateway.flow import Flow, run_source
from gateway.metrics import Metrics
from gateway.options import Reader
from gateway.pipeline.intake import Intake
from gateway.plugins import PluginHost
from gateway.routing import Router
from gateway.secrets import secret_resolver
from gateway.sources.base import Source, SourceContext, StoredMessages
from gateway.store.base import Store
from gateway.store.blobs import BlobStore
from gateway.store.sqlite import SQLiteStore
from gateway.subsystems import Subsystem

log = structlog.get_logger(__name__)


def open_store(config: GatewayConfig) -> Store:
    if config.store.backend == "sqlite":
        return SQLiteStore(config.path(config.store.path))
    try:
        from gateway.store.postgres import PostgresStore  # psycopg is only imported when it is used
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("psycopg"):
            raise
        raise ConfigError(
            "backend 'postgresql' needs psycopg, which is not installed: pip install 'ozg-gateway[postgresql]'",
            key="store.backend",
            file=str(config.file),
        ) from None

    if config.store.dsn is None:  # parse_config already refuses this; keep the message if built by hand
        raise ConfigError("is required for backend 'postgresql'", key="store.dsn", file=str(config.file))
    try:
        return PostgresStore(config.store.dsn.resolve())
    except ConfigError as exc:
        raise ConfigError(exc.reason, key="store.dsn", file=str(config.file)) from None
    except ValueError as exc:  # the message never contains the DSN (it may hold a password)
        raise ConfigError(
            f"from {config.store.dsn.describe()}: {exc}", key="store.dsn", file=str(config.file)
        ) from None


@dataclass
class Runtime:
    config: GatewayConfig
    plugins: PluginHost
    store: Store
    blobs: BlobStore
    metrics: Metrics
    flow: Flow
    adapters: dict[str, Adapter]
    sources: dict[str, Source]
    subsystems: dict[str, Subsystem]
    components: Components
    drain: Drain
    routes: list[web.RouteDef] = field(default_factory=list)

    @property
    def intake(self) -> Intake:
        return self.flow.intake

    @property
    def worker(self) -> DeliveryWorker:
        return self.flow.worker

    @property
    def acker(self) -> AckWorker:
        return self.flow.acker

    @property
    def router(self) -> Router:
        return self.flow.intake.router

    @property
    def draining(self) -> bool:
        return self.drain.active

    def accept_policy(self, channel: str) -> str:
        return self.flow.accept_policy(channel)

    async def start(self) -> None:
        began = time.perf_counter()
        log.info("gateway_starting", components=len(self.components.components))
        await self.components.start()
        log.info(
            "gateway_started",
            mode=self.config.gateway.mode,
            backend=self.config.store.backend,
            sources=sorted(self.sources),
            adapters=sorted(self.adapters),
            routes=[r.name for r in self.config.routes],
            seconds=round(time.perf_counter() - began, 3),
        )

    async def stop(self) -> None:
        """Graceful: stop intake, finish or release in-flight deliveries, close everything."""
        self.drain.begin()
        await self.components.stop()
        log.info("gateway_stopped")


def _closer(name: str, closables: Mapping[str, Any]) -> Hooks:
    async def close() -> None:
        for item in closables.values():
            with contextlib.suppress(Exception):
                await item.close()

    return Hooks(name, on_stop=close)


def _store_component(store: Store, blobs: BlobStore, flow: Flow) -> Hooks:
    async def start() -> None:
        blobs.open()
        await store.open()

    async def stop() -> None:
        await store.release_leases(flow.acker.owner)
        await store.close()

    return Hooks("store", start, stop)


def _subsystem_component(name: str, subsystem: Subsystem) -> Hooks:
    return Hooks(f"subsystem:{name}", subsystem.start, subsystem.stop)


def build_runtime(config: GatewayConfig, *, plugins: PluginHost | None = None) -> Runtime:
    plugins = plugins or PluginHost.load(allow=config.plugins.allow, block=config.plugins.block)
    began = time.perf_counter()
    metrics = Metrics()
    reader = Reader(config.read_context())
    plan = read_plugins(config, plugins, reader, metrics)
    log.info(
        "config_read",
        sources=len(plan.sources),
        adapters=len(plan.adapters),
        seconds=round(time.perf_counter() - began, 3),
    )
    errors = reader.errors
    store = open_store(config)
    blobs = BlobStore(config.path(config.store.blob_dir))
    resolve = secret_resolver(config.base_dir)
    drain = Drain()

    adapters = _create_adapters(plan, errors, resolve)
    slots = {name: AdapterSlot(a, config.adapters[name].concurrency) for name, a in adapters.items()}
    flow = Flow(config, store=store, blobs=blobs, metrics=metrics, plugins=plugins, adapters=slots, drain=drain)
    sources, routes = _create_sources(plan, flow, store, blobs, errors, resolve)
    if errors:
        raise ConfigErrors([ConfigError(e.reason, key=e.key, file=str(config.file)) for e in errors])
    flow.connect(sources)
    components = Components(
        [
            _store_component(store, blobs, flow),
            *(_subsystem_component(n, s) for n, s in plan.subsystems.items()),
            _closer("adapters", adapters),
            _closer("sources", sources),
            *flow.components(),
            *(Task(f"source-{name}", functools.partial(run_source, name, source)) for name, source in sources.items()),
        ]
    )
    return Runtime(
        config=config,
        plugins=plugins,
        store=store,
        blobs=blobs,
        metrics=metrics,
        flow=flow,
        adapters=adapters,
        sources=sources,
        subsystems=plan.subsystems,
        components=components,
        drain=drain,
        routes=routes,
    )


def check_legacy_instances(plan: Plan) -> None:
    """``gateway check-config`` for plugin types without declared options: only their ``create`` checks
    the raw table, so it is called (it may have side effects; declared types never need this)."""
    legacy = Plan(
        plan.config,
        plan.plugins,
        plan.reader,
        plan.metrics,
        plan.subsystems,
        {n: r for n, r in plan.adapters.items() if r.type.options is None},
        {n: r for n, r in plan.sources.items() if r.type.options is None},
        plan.http_paths,
    )
    if not legacy.adapters and not legacy.sources:
        return
    config = plan.config
    errors: list[ConfigError] = []
    resolve = secret_resolver(config.base_dir)
    store = open_store(config)  # not opened
    blobs = BlobStore(config.path(config.store.blob_dir))
    _create_adapters(legacy, errors, resolve)
    flow = Flow(
        config, store=store, blobs=blobs, metrics=plan.metrics, plugins=plan.plugins, adapters={}, drain=Drain()
    )
    _create_sources(legacy, flow, store, blobs, errors, resolve)
    plan.reader.errors.extend(ConfigError(e.reason, key=e.key, file=str(config.file)) for e in errors)


def _create_adapters(plan: Plan, errors: list[ConfigError], resolve: Any) -> dict[str, Adapter]:
    config = plan.config
    adapters: dict[str, Adapter] = {}
    for name, read in plan.adapters.items():
        ctx = AdapterContext(name=name, base_dir=config.base_dir, resolve_secret=resolve, production=config.production)
        try:
            adapters[name] = read.type.create(ctx, read.options)
        except ConfigError as exc:
            errors.append(ConfigError(exc.reason, key=_under(read.instance.key, exc.key), file=str(config.file)))
    return adapters


def _under(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if key else prefix


def _create_sources(
    plan: Plan, flow: Flow, store: Store, blobs: BlobStore, errors: list[ConfigError], resolve: Any
) -> tuple[dict[str, Source], list[web.RouteDef]]:
    config = plan.config
    sources: dict[str, Source] = {}
    routes: list[web.RouteDef] = []
    for name, read in progress(plan.sources.items(), "runtime_progress", "sources"):
        added: list[web.RouteDef] = []
        sctx = SourceContext(
            name=name,
            base_dir=config.base_dir,
            intake=flow.intake,
            resolve_secret=resolve,
            production=config.production,
            add_routes=added.extend,
            blobs=blobs,
            metrics=plan.metrics,
            options_key=read.instance.key,
            max_body_bytes=config.http.max_body_bytes,
            messages=StoredMessages(store, name),
            subsystems=plan.subsystems,
        )
        try:
            sources[name] = read.type.create(sctx, read.options)
        except ConfigError as exc:
            errors.append(ConfigError(exc.reason, key=_under(read.instance.key, exc.key)))
        for route in added:
            # Two channels on one path would silently shadow each other (aiohttp serves the first).
            path = getattr(route, "path", None)
            if isinstance(path, str):
                owner = plan.http_paths.owners.setdefault(f"{route.method} {path}", name)
                if owner != name:
                    errors.append(
                        ConfigError(
                            f"HTTP route {route.method} {path} is already used by source {owner!r}",
                            key=read.instance.key,
                        )
                    )
        routes.extend(added)
    return sources, routes


@contextlib.asynccontextmanager
async def running(runtime: Runtime) -> AsyncIterator[Runtime]:
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()
