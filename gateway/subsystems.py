"""The contract of a subsystem: a resource shared by the channels, with its own config table,
metrics and lifecycle (the XÖV schema registry and validator pool, FIT-Connect's key and schema
caches).

A plugin contributes :class:`SubsystemType` objects through the ``gateway_subsystem_types`` hook.
The type's ``name`` is its top-level table in gateway.toml (``[xoev]``), read with the type's
``options`` class in the same pass as the rest of the file. The instance is created before any
source option is read (creating it must have no side effects: the work belongs in ``start``), is
offered to option readers and sources by name (:meth:`gateway.options.ReadContext.resource`,
:meth:`gateway.sources.base.SourceContext.subsystem`), starts before the sources and stops after them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from prometheus_client import CollectorRegistry


@dataclass(frozen=True, slots=True)
class SubsystemContext:
    base_dir: Path  # directory of gateway.toml
    production: bool
    registry: CollectorRegistry  # register the subsystem's metrics here (one registry per gateway)
    hook: Any  # the plugin hook relay (pluggy), for subsystems that call plugin hooks


@runtime_checkable
class Subsystem(Protocol):
    async def start(self) -> None:
        """Do the expensive work (compile schemas, start worker processes); raise to stop start-up."""
        ...

    async def stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SubsystemType:
    """``create(ctx, options)`` gets the read options (the defaults when the table is absent and
    ``always``; None for a type without ``options``)."""

    name: str  # the config table, e.g. "xoev"; also the name sources ask for
    create: Callable[[SubsystemContext, Any], Subsystem]
    options: type | None = None  # an options class (gateway.options) for the table; None: no table
    description: str = ""
    always: bool = False  # created even without its table (e.g. caches every FIT-Connect source shares)
