"""The contract between the gateway and an inbound channel (FIT-Connect, XÖV over HTTP, ...).

A source instance is created at startup from ``[sources.NAME]`` in ``gateway.toml``. It runs as a
background task (:meth:`Source.run`) and hands messages to :class:`SourceContext.intake`, which
returns only after the message is durably committed. Upstream acknowledgement (e.g. FIT-Connect
accept/reject SET) is done by :meth:`Source.acknowledge`, called by the ack worker with retries.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from aiohttp import web

if TYPE_CHECKING:
    from gateway.metrics import Metrics
    from gateway.model import Envelope
    from gateway.pipeline.intake import Intake
    from gateway.problems import Problem
    from gateway.store.base import Store, StoredMessage
    from gateway.store.blobs import BlobStore

T = TypeVar("T")


class AckOutcome(enum.StrEnum):
    ACCEPT = "accept"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class AckResult:
    done: bool  # upstream confirmed (or already had this outcome): stop retrying
    reason: str = ""
    permanent: bool = False  # retrying cannot help (e.g. upstream says already rejected)


class MessageLookup(Protocol):
    """A source's view of what the gateway already stored from it (never another source's messages)."""

    async def find(self, reference: str) -> StoredMessage | None:
        """The message stored under this source's upstream reference (e.g. a submission id)."""
        ...

    async def get(self, message_id: str) -> StoredMessage | None:
        """The message with this gateway id, if it came through this source."""
        ...


class StoredMessages:
    """:class:`MessageLookup` over the store, scoped to one channel."""

    def __init__(self, store: Store, channel: str) -> None:
        self._store = store
        self._channel = channel

    async def find(self, reference: str) -> StoredMessage | None:
        return await self._store.find_by_source(self._channel, reference)

    async def get(self, message_id: str) -> StoredMessage | None:
        stored = await self._store.get(message_id)
        return stored if stored is not None and stored.envelope.source.channel == self._channel else None


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
    max_body_bytes: int = 20 * 1024 * 1024  # [http] max_body_bytes: default body limit of HTTP channels
    messages: MessageLookup | None = None  # what this source stored before (None only in unit tests)
    # The configured subsystems by name ("xoev", "fitconnect"): started before any source runs or any
    # HTTP request is served, stopped after the sources.
    subsystems: Mapping[str, object] = field(default_factory=dict)

    def subsystem(self, name: str, kind: type[T]) -> T | None:
        """The subsystem ``name`` if it is configured (and a ``kind``), else None."""
        value = self.subsystems.get(name)
        return value if isinstance(value, kind) else None

    def lookup(self) -> MessageLookup:
        if self.messages is None:
            raise RuntimeError(f"source {self.name!r} was created without a message lookup")
        return self.messages


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
    # With ``options`` (an options class, see gateway.options): ``create`` gets the read options; the
    # gateway reads and checks them with the rest of the file (``gateway check-config`` without calling
    # ``create``: no side effects). Without: ``create`` gets the raw table and raises ConfigError itself.
    create: Callable[[SourceContext, Any], Source]
    description: str = ""
    options: type | None = None
