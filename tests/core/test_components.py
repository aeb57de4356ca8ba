"""The runtime of components: order, rollback, one drain state; subsystems through their hook."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from core.support import FakeSource, ScriptedPlugin, write_config
from gateway.assembly import plan_file
from gateway.components import Components, Drain, Hooks
from gateway.config import load_config
from gateway.errors import ConfigErrors
from gateway.hookspecs import hookimpl
from gateway.options import At, option, options
from gateway.options.checks import positive
from gateway.plugins import PluginHost
from gateway.runtime import build_runtime
from gateway.sources.base import SourceContext, SourceType
from gateway.subsystems import SubsystemContext, SubsystemType

EVENTS: list[str] = []


@options
class PoolOptions:
    size: int = option(default=2, doc="Workers in the pool.", check=positive)


class Pool:
    def __init__(self, options: PoolOptions) -> None:
        self.options = options

    async def start(self) -> None:
        EVENTS.append("pool started")

    async def stop(self) -> None:
        EVENTS.append("pool stopped")


class PooledSource(FakeSource):
    async def close(self) -> None:
        EVENTS.append(f"source {self.name} closed")


@options
class PooledOptions:
    weight: int = option(default=1, doc="A weight.")

    def finish(self, at: At) -> PooledOptions:
        if at.ctx.resource("pool", Pool) is None:
            at.error("needs the [pool] table", "type")
        return self


class PoolPlugin:
    """A vendor's channel with a shared subsystem: one place (this plugin), no core change."""

    __name__ = "pool-plugin"

    def __init__(self) -> None:
        self.seen: dict[str, Pool | None] = {}

    @hookimpl
    def gateway_subsystem_types(self) -> list[SubsystemType]:
        return [SubsystemType("pool", lambda ctx, options: self._pool(ctx, options), options=PoolOptions)]

    @hookimpl
    def gateway_source_types(self) -> list[SourceType]:
        return [SourceType("pooled", self._source, options=PooledOptions)]

    def _pool(self, ctx: SubsystemContext, options: PoolOptions) -> Pool:
        EVENTS.append("pool created")  # no side effects: created (not started) while the file is read
        return Pool(options)

    def _source(self, ctx: SourceContext, options: Mapping[str, Any]) -> PooledSource:
        self.seen[ctx.name] = ctx.subsystem("pool", Pool)
        return PooledSource(ctx.name)


ADAPTER = '[adapters.alpha]\ntype = "scripted"\n[[routes]]\nname = "all"\nadapter = "alpha"\n'


def host(plugin: PoolPlugin) -> PluginHost:
    return PluginHost.load(entry_points_enabled=False, extra=[plugin, ScriptedPlugin()])


async def test_subsystem_starts_before_the_sources_and_stops_after_them(tmp_path: Path) -> None:
    EVENTS.clear()
    plugin = PoolPlugin()
    text = ADAPTER + '[pool]\nsize = 3\n[sources.a]\ntype = "pooled"\n'
    runtime = build_runtime(load_config(write_config(tmp_path, text)), plugins=host(plugin))
    pool = runtime.subsystems["pool"]
    assert isinstance(pool, Pool)
    assert pool.options.size == 3
    assert plugin.seen == {"a": pool}  # through the source's context, by name
    await runtime.start()
    assert runtime.intake.drain is runtime.drain  # one drain state for intake and HTTP
    await runtime.stop()
    assert runtime.draining
    assert EVENTS == ["pool created", "pool started", "source a closed", "pool stopped"]


def test_subsystem_table_errors_come_with_the_rest_of_the_file(tmp_path: Path) -> None:
    text = (
        ADAPTER
        + '[pool]\nsize = 0\nextra = 1\n[sources.a]\ntype = "pooled"\n[sources.b]\ntype = "pooled"\nweight = "x"\n'
    )
    plan = plan_file(write_config(tmp_path, text), plugins=host(PoolPlugin()))
    assert sorted((e.key, e.reason) for e in plan.reader.errors) == [
        ("pool.extra", "unknown key (known: size)"),
        ("pool.size", "must be > 0"),
        ("sources.a.type", "needs the [pool] table"),  # the pool is not there: its table has errors
        ("sources.b.weight", "expected int, got str"),
    ]


def test_unclaimed_top_level_table_is_an_unknown_key(tmp_path: Path) -> None:
    plan = plan_file(write_config(tmp_path, ADAPTER + "[pol]\nsize = 1\n"), plugins=host(PoolPlugin()))
    ((key, reason),) = [(e.key, e.reason) for e in plan.reader.errors]
    assert key == "pol"
    assert reason.startswith(
        "unknown key (known: adapters, delivery, fitconnect, gateway, http, logging, plugins, pool,"
    )


async def test_components_start_in_order_stop_in_reverse_and_roll_back() -> None:
    events: list[str] = []

    def part(name: str, fail: bool = False) -> Hooks:
        async def start() -> None:
            if fail:
                raise RuntimeError(f"{name} cannot start")
            events.append(f"start {name}")

        async def stop() -> None:
            events.append(f"stop {name}")

        return Hooks(name, start, stop)

    ok = Components([part("store"), part("subsystem"), part("sources")])
    await ok.start()
    await ok.stop()
    assert events == ["start store", "start subsystem", "start sources", "stop sources", "stop subsystem", "stop store"]
    events.clear()
    broken = Components([part("store"), part("subsystem", fail=True), part("sources")])
    with pytest.raises(RuntimeError, match="subsystem cannot start"):
        await broken.start()
    assert events == ["start store", "stop store"]  # what started is stopped again, nothing else


def test_drain_is_set_once() -> None:
    drain = Drain()
    assert not drain.active
    drain.begin()
    drain.begin()
    assert drain.active


def test_runtime_refuses_unknown_subsystem_options(tmp_path: Path) -> None:
    with pytest.raises(ConfigErrors) as info:
        build_runtime(load_config(write_config(tmp_path, ADAPTER + "[pool]\nsize = -1\n")), plugins=host(PoolPlugin()))
    assert [(e.key, e.reason) for e in info.value.errors] == [("pool.size", "must be > 0")]


def test_reading_many_instances_logs_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway import assembly

    logs: list[dict[str, Any]] = []

    class Recorder:  # the module's logger may be a cached structlog logger: record at the call itself
        def info(self, event: str, **fields: Any) -> None:
            logs.append({"event": event, **fields})

    monkeypatch.setattr(assembly, "PROGRESS_EVERY", 0.0)  # a line after every instance
    monkeypatch.setattr(assembly, "log", Recorder())
    text = ADAPTER + "[pool]\n" + "".join(f'[sources.s{i}]\ntype = "pooled"\n' for i in range(3))
    plan_file(write_config(tmp_path, text), plugins=host(PoolPlugin()))
    progress = [(e["section"], e["done"], e["total"]) for e in logs if e["event"] == "config_progress"]
    assert progress[-3:] == [("sources", 1, 3), ("sources", 2, 3), ("sources", 3, 3)]
