"""Reading the whole file: core tables, subsystem tables, every adapter's and source's options.

One :class:`~gateway.options.Reader` collects the errors of all of them, so ``gateway check-config``
and ``gateway run`` report every problem of the file in one pass. Reading has no side effects:
subsystems are created (not started), adapters and sources are not created at all; that is the
runtime's job (:mod:`gateway.runtime`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog

from gateway.config import CORE_TABLES, GatewayConfig, PluginInstance, read_config
from gateway.errors import ConfigError
from gateway.http.paths import HttpPaths
from gateway.metrics import Metrics
from gateway.options import ReadContext, Reader
from gateway.plugins import PluginHost
from gateway.subsystems import Subsystem, SubsystemContext

log = structlog.get_logger(__name__)

T = TypeVar("T")
PROGRESS_EVERY = 2.0  # seconds between progress lines while many instances are read


@dataclass
class ReadInstance:
    """One adapter or source: its type and its options (read; the raw table for legacy types)."""

    instance: PluginInstance
    type: Any  # AdapterType | SourceType (their create() takes different contexts)
    options: Any


@dataclass
class Plan:
    """Everything the file says, read and checked; nothing started."""

    config: GatewayConfig
    plugins: PluginHost
    reader: Reader
    metrics: Metrics
    subsystems: dict[str, Subsystem] = field(default_factory=dict)
    adapters: dict[str, ReadInstance] = field(default_factory=dict)
    sources: dict[str, ReadInstance] = field(default_factory=dict)
    http_paths: HttpPaths = field(default_factory=HttpPaths)

    @property
    def resources(self) -> Mapping[str, Any]:
        return {**self.subsystems, HttpPaths.RESOURCE: self.http_paths}


def read_plugins(config: GatewayConfig, plugins: PluginHost, reader: Reader, metrics: Metrics) -> Plan:
    """Read the subsystem tables and every instance's options into ``reader`` (errors collected)."""
    plan = Plan(config, plugins, reader, metrics)
    ctx = reader.ctx
    _read_subsystems(plan, ctx)
    ctx = ReadContext(ctx.base_dir, ctx.file, config.production, resources=plan.resources)
    for section, types, into in (
        ("adapters", plugins.adapter_types, plan.adapters),
        ("sources", plugins.source_types, plan.sources),
    ):
        instances: Mapping[str, PluginInstance] = getattr(config, section)
        for name, inst in progress(instances.items(), "config_progress", section):
            read = _read_instance(inst, types, reader, ctx.instance(name), section[:-1])
            if read is not None:
                into[name] = read
    return plan


def progress(items: Iterable[T], event: str, section: str) -> Iterator[T]:
    """``items``, with a progress line every few seconds (a start with 500 sources is not silent)."""
    listed = list(items)
    last = time.monotonic()
    for done, item in enumerate(listed, start=1):
        yield item
        if time.monotonic() - last >= PROGRESS_EVERY:
            log.info(event, section=section, done=done, total=len(listed))
            last = time.monotonic()


def _read_subsystems(plan: Plan, ctx: ReadContext) -> None:
    known = plan.plugins.subsystem_types
    for table in plan.config.tables:
        if table not in known:
            names = ", ".join(sorted({*CORE_TABLES, *known}))
            plan.reader.error(table, f"unknown key (known: {names})")
    for name, stype in known.items():
        raw = plan.config.tables.get(name)
        if raw is None and not stype.always:
            continue
        options = None
        if stype.options is not None:
            options = plan.reader.read(stype.options, raw if raw is not None else {}, name, ctx)
            if options is None:
                continue
        elif raw:
            plan.reader.error(name, f"subsystem {name!r} takes no options")
            continue
        sctx = SubsystemContext(
            base_dir=ctx.base_dir, production=ctx.production, registry=plan.metrics.registry, hook=plan.plugins.pm.hook
        )
        try:
            plan.subsystems[name] = stype.create(sctx, options)
        except ConfigError as exc:
            plan.reader.error((exc.key and f"{name}.{exc.key}") or name, exc.reason)


def _read_instance(
    inst: PluginInstance, types: Mapping[str, Any], reader: Reader, ctx: ReadContext, kind: str
) -> ReadInstance | None:
    itype = types.get(inst.type)
    if itype is None:
        known = ", ".join(sorted(types)) or "none"
        reader.error(f"{inst.key}.type", f"unknown {kind} type {inst.type!r} (installed: {known})")
        return None
    if itype.options is None:
        return ReadInstance(inst, itype, inst.options)  # a legacy type: its create() checks the raw table
    options = reader.read(itype.options, inst.options, inst.key, ctx)
    return None if options is None else ReadInstance(inst, itype, options)


def plan_file(path: Path | str, *, plugins: PluginHost | None = None) -> Plan:
    """Read and check the whole file (``gateway check-config``): ``plan.reader`` holds every error and
    warning. Raises ConfigErrors only when the file cannot be read as TOML at all."""
    config, reader = read_config(path)
    errors: list[ConfigError] = []
    if plugins is None:
        try:
            plugins = PluginHost.load(allow=config.plugins.allow, block=config.plugins.block)
        except ConfigError as exc:
            errors.append(ConfigError(exc.reason, key=exc.key, file=str(config.file)))
            plugins = PluginHost.load(allow=(), block=(), entry_points_enabled=False)
    reader.errors.extend(errors)
    return read_plugins(config, plugins, reader, Metrics())
