"""The typed contract between the gateway and an adapter plugin (one per Fachverfahren).

A plugin contributes :class:`AdapterType` objects through the ``gateway_adapter_types`` hook; the
operator declares instances in ``gateway.toml`` (``[adapters.NAME] type = "..."``). At startup every
instance's options are validated by its type (``create`` raises :class:`gateway.errors.ConfigError`);
at run time the delivery worker calls :meth:`Adapter.deliver`, at least once per message.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from gateway.model import BlobRef, Envelope


class DeliveryOutcome(enum.StrEnum):
    DELIVERED = "delivered"  # the Fachverfahren has it; never delivered again
    TRANSIENT = "transient"  # try again later (backoff); e.g. 5xx, timeout, 429
    PERMANENT = "permanent"  # will never work; goes to the dead letters at once


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    outcome: DeliveryOutcome
    reason: str = ""  # short, technical, no personal data: it is logged and audited
    reference: str | None = None  # the Fachverfahren's id for the message, if it gives one
    retry_after: float | None = None  # TRANSIENT only: the Fachverfahren asked to wait this long (Retry-After)

    @classmethod
    def delivered(cls, reference: str | None = None, reason: str = "") -> DeliveryResult:
        return cls(DeliveryOutcome.DELIVERED, reason, reference)

    @classmethod
    def transient(cls, reason: str, retry_after: float | None = None) -> DeliveryResult:
        return cls(DeliveryOutcome.TRANSIENT, reason, retry_after=retry_after)

    @classmethod
    def permanent(cls, reason: str) -> DeliveryResult:
        return cls(DeliveryOutcome.PERMANENT, reason)


class BlobReader(Protocol):
    """Read access to a message's payload parts without loading them whole into memory."""

    def path(self, blob: BlobRef) -> Path:
        """The read-only file holding the blob (adapters may hard-link or copy it)."""
        ...

    def iter_chunks(self, blob: BlobRef, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        """The blob's bytes in chunks."""
        ...


@dataclass(frozen=True, slots=True)
class Delivery:
    envelope: Envelope
    blobs: BlobReader
    attempt: int  # 1 for the first attempt
    idempotency_key: str  # stable across attempts and replays: the envelope id


@dataclass(frozen=True, slots=True)
class AdapterContext:
    """What an adapter instance gets from the host when it is created."""

    name: str  # the instance name from gateway.toml
    base_dir: Path  # directory of gateway.toml: resolve relative paths against it
    resolve_secret: Callable[[Mapping[str, Any], str], str | None]  # (options, key) -> secret value
    production: bool


@runtime_checkable
class Adapter(Protocol):
    name: str

    async def deliver(self, delivery: Delivery) -> DeliveryResult:
        """Hand the message over. Must be idempotent on ``delivery.idempotency_key``."""
        ...

    async def check(self) -> str | None:
        """Readiness probe: ``None`` when ready, else a short reason (no secrets)."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class AdapterType:
    """An adapter type contributed by a plugin.

    ``create`` validates ``options`` (raise ``ConfigError`` with the offending key) and returns the
    instance; it is called once per configured instance at startup, before any message flows.
    """

    name: str
    # With ``options`` (an options class, see gateway.options): ``create`` gets the read options; the
    # gateway reads and checks them with the rest of the file (``gateway check-config`` without calling
    # ``create``: no side effects). Without: ``create`` gets the raw table and raises ConfigError itself.
    create: Callable[[AdapterContext, Any], Adapter]
    description: str = ""
    options: type | None = None
