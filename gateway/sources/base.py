"""The contract between the gateway and an inbound channel (FIT-Connect, XÖV over HTTP, ...).

A source instance is created at startup from ``[sources.NAME]`` in ``gateway.toml``. It runs as a
background task (:meth:`Source.run`) and hands messages to :class:`SourceContext.intake`, which
returns only after the message is durably committed. Upstream acknowledgement (e.g. FIT-Connect
accept/reject SET) is done by :meth:`Source.acknowledge`, called by the ack worker with retries.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from aiohttp import web

if TYPE_CHECKING:
    from gateway.metrics import Metrics
    from gateway.model import Envelope
    from gateway.pipeline.intake import Intake
    from gateway.problems import Problem
    from gateway.store.blobs import BlobStore
    from gateway.xoev.validator import XoevValidator


class AckOutcome(enum.StrEnum):
    ACCEPT = "accept"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class AckResult:
    done: bool  # upstream confirmed (or already had this outcome): stop retrying
    reason: str = ""
    permanent: bool = False  # retrying cannot help (e.g. upstream says already rejected)


@dataclass(frozen=True, slots=True)
class SourceContext:
    name: str
    base_dir: Path
    intake: Intake
    resolve_secret: Callable[[Mapping[str, Any], str], str | None]
    production: bool
    add_routes: Callable[[list[web.RouteDef]], None]  # public HTTP routes (callbacks, intake)
    blobs: BlobStore  # write payloads here (streamed, hashed, fsynced) before calling intake
    metrics: Metrics
    options_key: str = ""  # "sources.NAME": prefix for ConfigError keys
    # The running XÖV validator (worker processes, schema registry) when [xoev] is configured, else None.
    # Started by Runtime.start before any source runs or any HTTP request is served.
    xoev: XoevValidator | None = None
    max_body_bytes: int = 20 * 1024 * 1024  # [http] max_body_bytes: default body limit of HTTP channels


@runtime_checkable
class Source(Protocol):
    name: str
    needs_ack: bool  # False: messages go straight to ACKNOWLEDGED after delivery
    accept_policy: str  # when to accept upstream: "delivered" (default, safest) or "stored"

    async def run(self) -> None:
        """Receive until cancelled. Must survive upstream errors (log, back off, go on)."""
        ...

    async def acknowledge(self, envelope: Envelope, outcome: AckOutcome, problems: list[Problem]) -> AckResult:
        """Tell upstream the outcome. Called until it returns ``done``; must be idempotent."""
        ...

    async def check(self) -> str | None:
        """Readiness: ``None`` when ready, else a short reason."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SourceType:
    name: str
    create: Callable[[SourceContext, Mapping[str, Any]], Source]
    description: str = ""
