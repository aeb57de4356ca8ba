"""The message model: one envelope type for every channel, and its lifecycle state machine.

Payloads (data part, attachments) are never held in the envelope: they are blobs on disk,
referenced by :class:`BlobRef` and read in chunks through the blob store.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any


class MessageState(enum.StrEnum):
    RECEIVED = "received"  # durably stored, nothing checked yet
    VALIDATED = "validated"  # every check passed
    ROUTED = "routed"  # a route/adapter is chosen; waiting for (re)delivery
    FAILED = "failed"  # last delivery attempt failed transiently; retried after backoff
    DELIVERED = "delivered"  # the adapter confirmed the hand-off
    ACKNOWLEDGED = "acknowledged"  # delivered and acknowledged upstream (terminal)
    REJECTED = "rejected"  # refused by a check or by routing (terminal; upstream is told)
    DEAD = "dead"  # permanent failure or retries exhausted; an operator decides


# Allowed transitions. DEAD -> ROUTED is the operator's "retry", DEAD -> REJECTED the "discard";
# the history stays in the audit trail.
TRANSITIONS: Mapping[MessageState, frozenset[MessageState]] = {
    MessageState.RECEIVED: frozenset({MessageState.VALIDATED, MessageState.REJECTED, MessageState.DEAD}),
    MessageState.VALIDATED: frozenset({MessageState.ROUTED, MessageState.REJECTED, MessageState.DEAD}),
    MessageState.ROUTED: frozenset({MessageState.DELIVERED, MessageState.FAILED, MessageState.DEAD}),
    MessageState.FAILED: frozenset({MessageState.DELIVERED, MessageState.FAILED, MessageState.DEAD}),
    MessageState.DELIVERED: frozenset({MessageState.ACKNOWLEDGED}),
    MessageState.ACKNOWLEDGED: frozenset(),
    MessageState.REJECTED: frozenset(),
    MessageState.DEAD: frozenset({MessageState.ROUTED, MessageState.REJECTED}),  # retry / discard
}

TERMINAL_STATES = frozenset({MessageState.ACKNOWLEDGED, MessageState.REJECTED})


class InvalidTransition(Exception):
    def __init__(self, message_id: str, current: MessageState, target: MessageState) -> None:
        super().__init__(f"message {message_id}: transition {current} -> {target} is not allowed")
        self.message_id = message_id
        self.current = current
        self.target = target


def check_transition(message_id: str, current: MessageState, target: MessageState) -> None:
    if target not in TRANSITIONS[current]:
        raise InvalidTransition(message_id, current, target)


class AckState(enum.StrEnum):
    """Upstream acknowledgement (e.g. FIT-Connect accept-/reject-submission), tracked beside the state."""

    NONE = "none"  # the source needs no acknowledgement
    WAITING = "waiting"  # will be due once the outcome is known (accept/reject policy of the source)
    PENDING = "pending"  # due, not yet confirmed by upstream
    DONE = "done"  # upstream confirmed


@dataclass(frozen=True, slots=True)
class RoutingKeys:
    """What routing rules may match on. All optional: a channel fills in what it knows."""

    service: str | None = None  # LeiKa/FIM service URN, e.g. urn:de:fim:leika:leistung:99050012104000
    region: str | None = None  # ARS/AGS, digits only (a leading "DE" is stripped on input)
    destination: str | None = None  # FIT-Connect destination id or XÖV reader authority id
    message_type: str | None = None  # e.g. "baugenehmigung.antrag.0200" or a FIT-Connect data schema URI
    namespace: str | None = None  # XML namespace / JSON schema URI of the data part
    sender: str | None = None  # authenticated sender / author authority id
    test: bool = False  # XÖV test attribute / sandbox submission

    def as_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "region": self.region,
            "destination": self.destination,
            "message_type": self.message_type,
            "namespace": self.namespace,
            "sender": self.sender,
            "test": self.test,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> RoutingKeys:
        region = raw.get("region")
        if isinstance(region, str) and region.upper().startswith("DE"):
            region = region[2:]
        return cls(
            service=raw.get("service"),
            region=region,
            destination=raw.get("destination"),
            message_type=raw.get("message_type"),
            namespace=raw.get("namespace"),
            sender=raw.get("sender"),
            test=bool(raw.get("test", False)),
        )


@dataclass(frozen=True, slots=True)
class SourceRef:
    """Where a message came from. ``(channel, idempotency_key)`` is unique in the store."""

    channel: str  # the source instance name from gateway.toml, e.g. "fitconnect-bauamt"
    type: str  # the source type, e.g. "fitconnect", "xoev-http", "spool"
    reference: str  # the upstream id: FIT-Connect submission id, XÖV message UUID, file name
    idempotency_key: str  # usually == reference; a channel may add a content hash
    case: str | None = None  # FIT-Connect case id, XÖV Vorgang, ...


@dataclass(frozen=True, slots=True)
class BlobRef:
    """A payload part stored on disk. ``name`` is the part's role: "data" or "attachment:<id>"."""

    name: str
    blob_id: str  # the store's file name (content addressed: the SHA-512 hex)
    sha512: str
    size: int
    media_type: str = "application/octet-stream"
    filename: str | None = None  # the sender's file name: untrusted, sanitise before use
    attachment_id: str | None = None


@dataclass(frozen=True, slots=True)
class Envelope:
    id: str
    source: SourceRef
    received_at: datetime
    routing: RoutingKeys
    metadata: Mapping[str, Any] = field(default_factory=dict)  # JSON-safe; may hold personal data
    data: BlobRef | None = None
    attachments: tuple[BlobRef, ...] = ()
    state: MessageState = MessageState.RECEIVED
    ack: AckState = AckState.NONE
    route: str | None = None
    adapter: str | None = None
    attempts: int = 0

    @property
    def blobs(self) -> tuple[BlobRef, ...]:
        return ((self.data,) if self.data else ()) + self.attachments

    def with_(self, **changes: Any) -> Envelope:
        return replace(self, **changes)


def new_message_id() -> str:
    return str(uuid.uuid4())
