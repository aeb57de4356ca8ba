"""Assemble a running gateway from its configuration: plugins, store, adapters, sources, workers.

Everything that can be checked before a message flows is checked here, at startup: adapter and
source options are validated by their plugin types, so ``gateway check-config`` reports them too.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from gateway.adapters.base import Adapter, AdapterContext
from gateway.config import GatewayConfig
from gateway.delivery.acks import AckWorker
from gateway.delivery.worker import AdapterSlot, DeliveryWorker
from gateway.errors import ConfigError, ConfigErrors
from gateway.metrics import Metrics
from gateway.pipeline.intake import Intake
from gateway.plugins import PluginHost
from gateway.routing import Router
from gateway.secrets import secret_resolver
from gateway.sources.base import Source, SourceContext
from gateway.store.base import Store
from gateway.store.blobs import BlobStore
from gateway.store.sqlite import SQLiteStore

if TYPE_CHECKING:
    from gateway.xoev.validator import XoevValidator

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
    router: Router
    intake: Intake
    adapters: dict[str, Adapter]
    sources: dict[str, Source]
    worker: DeliveryWorker
    acker: AckWorker
    routes: list[web.RouteDef] = field(default_factory=list)
    xoev: XoevValidator | None = None  # [xoev] configured: started before the sources, closed after them
    draining: bool = False
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    def accept_policy(self, channel: str) -> str:
        source = self.sources.get(channel)
        return source.accept_policy if source is not None else "delivered"

    async def start(self) -> None:
        self.blobs.open()
        await self.store.open()
        if self.xoev is not None:
            try:
                await self.xoev.start()  # compiles/verifies the schema cache, warms the workers
            except BaseException:
                await self.xoev.close()
                await self.store.close()
                raise
        self.tasks = [
            asyncio.create_task(self.worker.run(), name="delivery-worker"),
            asyncio.create_task(self.acker.run(), name="ack-worker"),
            asyncio.create_task(self.intake.resume_loop(), name="pipeline-resume"),
        ]
        for name, source in self.sources.items():
            self.tasks.append(asyncio.create_task(_run_source(name, source), name=f"source-{name}"))
        log.info(
            "gateway_started",
            mode=self.config.gateway.mode,
            backend=self.config.store.backend,
            sources=sorted(self.sources),
            adapters=sorted(self.adapters),
            routes=[r.name for r in self.config.routes],
        )

    async def stop(self) -> None:
        """Graceful: stop intake, finish or release in-flight deliveries, close everything."""
        self.draining = True
        self.intake.draining = True
        for task in self.tasks:
            if task.get_name().startswith("source-") or task.get_name() in ("pipeline-resume", "ack-worker"):
                task.cancel()
        await self.worker.stop(self.config.delivery.shutdown_grace)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for source in self.sources.values():
            with contextlib.suppress(Exception):
                await source.close()
        for adapter in self.adapters.values():
            with contextlib.suppress(Exception):
                await adapter.close()
        if self.xoev is not None:
            with contextlib.suppress(Exception):
                await self.xoev.close()
        await self.store.release_leases(self.acker.owner)
        await self.store.close()
        log.info("gateway_stopped")


async def _run_source(name: str, source: Source) -> None:
    # A source must survive upstream errors itself; this guard only keeps a bug from killing it silently.
    while True:
        try:
            await source.run()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("source_crashed", source=name)
            await asyncio.sleep(5.0)


def build_runtime(config: GatewayConfig, *, plugins: PluginHost | None = None) -> Runtime:
    plugins = plugins or PluginHost.load(allow=config.plugins.allow, block=config.plugins.block)
    metrics = Metrics()
    store = open_store(config)
    blobs = BlobStore(config.path(config.store.blob_dir))
    router = Router.from_config(config)
    resolve = secret_resolver(config.base_dir)
    errors: list[ConfigError] = []
    routes: list[web.RouteDef] = []
    xoev: XoevValidator | None = None
    if config.xoev is not None:
        from gateway.xoev.validator import XoevValidator  # lxml/xmlschema only when [xoev] is configured

        xoev = XoevValidator(config.xoev, hook=plugins.pm.hook)

    adapters: dict[str, Adapter] = {}
    slots: dict[str, AdapterSlot] = {}
    for name, inst in config.adapters.items():
        adapter_type = plugins.adapter_types.get(inst.type)
        if adapter_type is None:
            known = ", ".join(sorted(plugins.adapter_types)) or "none"
            errors.append(
                ConfigError(f"unknown adapter type {inst.type!r} (installed: {known})", key=f"{inst.key}.type")
            )
            continue
        ctx = AdapterContext(name=name, base_dir=config.base_dir, resolve_secret=resolve, production=config.production)
        try:
            adapters[name] = adapter_type.create(ctx, inst.options)
        except ConfigError as exc:
            errors.append(exc.at(key_prefix=inst.key))
            continue
        slots[name] = AdapterSlot(adapters[name], inst.concurrency)

    sources: dict[str, Source] = {}
    route_owners: dict[tuple[str, str], str] = {}
    runtime_ref: list[Runtime] = []

    def accept_policy(channel: str) -> str:
        return runtime_ref[0].accept_policy(channel) if runtime_ref else "delivered"

    acker = AckWorker(
        store=store,
        sources=sources,
        metrics=metrics,
        lease_seconds=config.delivery.lease_seconds,
        plugins=plugins,
        retry_initial=config.delivery.ack_retry_initial,
        retry_max=config.delivery.ack_retry_max,
    )
    worker = DeliveryWorker(
        store=store,
        blobs=blobs,
        adapters=slots,
        routes={r.name: r for r in config.routes},
        retry=config.retry,
        metrics=metrics,
        plugins=plugins,
        accept_policy=accept_policy,
        lease_seconds=config.delivery.lease_seconds,
        poll_interval=config.delivery.poll_interval,
        # Unique per process: two instances sharing a database must never share a lease owner.
        owner=f"{config.gateway.instance_id or 'gw'}-{uuid.uuid4().hex[:12]}",
        acker=acker,
        on_ack_due=acker.wake,
    )
    intake = Intake(
        store=store,
        router=router,
        plugins=plugins,
        metrics=metrics,
        accept_policy=accept_policy,
        on_routed=worker.wake,
        on_ack_due=acker.wake,
        delivery=worker,
    )
    for name, inst in config.sources.items():
        source_type = plugins.source_types.get(inst.type)
        if source_type is None:
            known = ", ".join(sorted(plugins.source_types)) or "none"
            errors.append(
                ConfigError(f"unknown source type {inst.type!r} (installed: {known})", key=f"{inst.key}.type")
            )
            continue
        sctx = SourceContext(
            name=name,
            base_dir=config.base_dir,
            intake=intake,
            resolve_secret=resolve,
            production=config.production,
            add_routes=routes.extend,
            blobs=blobs,
            metrics=metrics,
            options_key=inst.key,
            xoev=xoev,
            max_body_bytes=config.http.max_body_bytes,
        )
        before = len(routes)
        try:
            sources[name] = source_type.create(sctx, inst.options)
        except ConfigError as exc:
            errors.append(exc.at(key_prefix=inst.key))
        for route in routes[before:]:
            # Two channels on one path would silently shadow each other (aiohttp serves the first).
            if isinstance(route, web.RouteDef):
                owner = route_owners.setdefault((route.method, route.path), name)
                if owner != name:
                    errors.append(
                        ConfigError(
                            f"HTTP route {route.method} {route.path} is already used by source {owner!r}",
                            key=inst.key,
                        )
                    )
    if errors:
        raise ConfigErrors([ConfigError(e.reason, key=e.key, file=str(config.file)) for e in errors])
    runtime = Runtime(
        config=config,
        plugins=plugins,
        store=store,
        blobs=blobs,
        metrics=metrics,
        router=router,
        intake=intake,
        adapters=adapters,
        sources=sources,
        worker=worker,
        acker=acker,
        routes=routes,
        xoev=xoev,
    )
    runtime_ref.append(runtime)
    return runtime


@contextlib.asynccontextmanager
async def running(runtime: Runtime) -> AsyncIterator[Runtime]:
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()
