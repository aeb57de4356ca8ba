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
    # How the applicant can be answered, as the channel found it at intake (see :class:`ReplyContext`);
    # kept with the message because upstream may delete its copy once the message is accepted.
    reply: ReplyContext | None = None

    @property
    def blobs(self) -> tuple[BlobRef, ...]:
        return ((self.data,) if self.data else ()) + self.attachments

    def with_(self, **changes: Any) -> Envelope:
        return replace(self, **changes)


def new_message_id() -> str:
    return str(uuid.uuid4())


# The way back --------------------------------------------------------------------------------
# An answer (status note, reply, Bescheid) goes from the Fachverfahren through the gateway to the
# applicant. It is its own record, linked to the inbound message, with its own state machine.


@dataclass(frozen=True, slots=True)
class ReplyContext:
    """What a reply channel needs to answer the applicant of one inbound message.

    Filled in by the inbound channel at intake (e.g. from FIT-Connect metadata: ``replyChannel``,
    ``additionalReferenceInfo``; for XÖV: the authenticated sender) and stored with the message.
    ``choice`` is the applicant's channel, exactly as the upstream format names it (FIT-Connect:
    ``fitConnect``, ``idBundDeMailbox``, ``eMail``, ``deMail``, ``fink``, ``elster``), with its
    parameters in ``details`` (may hold personal data: addresses, keys, mailbox ids).
    """

    source_type: str  # the inbound channel type, e.g. "fitconnect", "xoev-http"
    choice: str | None = None  # None: the applicant chose no digital channel (answer by post)
    details: Mapping[str, Any] = field(default_factory=dict)
    case: str | None = None  # FIT-Connect case id / XÖV Vorgang the answer belongs to
    destination: str | None = None  # FIT-Connect destination / XÖV reader the application went to
    sender: str | None = None  # authenticated sender (XÖV) the answer goes back to
    consent_digital_bescheid: bool | None = None  # zustimmungZumDigitalenBescheid; None: not stated
    application_id: str | None = None  # idBundDeApplicationId (DeutschlandID Statusmonitor)

    def as_dict(self) -> dict[str, Any]:
        return {
            "source_type": self.source_type,
            "choice": self.choice,
            "details": dict(self.details),
            "case": self.case,
            "destination": self.destination,
            "sender": self.sender,
            "consent_digital_bescheid": self.consent_digital_bescheid,
            "application_id": self.application_id,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ReplyContext:
        return cls(
            source_type=raw["source_type"],
            choice=raw.get("choice"),
            details=raw.get("details") or {},
            case=raw.get("case"),
            destination=raw.get("destination"),
            sender=raw.get("sender"),
            consent_digital_bescheid=raw.get("consent_digital_bescheid"),
            application_id=raw.get("application_id"),
        )


class AnswerKind(enum.StrEnum):
    STATUS = "status"  # a processing state ("in Bearbeitung", "Unterlagen fehlen", ...), no documents
    REPLY = "reply"  # text and/or structured data and attachments (e.g. a request, a Bescheid PDF)


class AnswerState(enum.StrEnum):
    HANDED_OVER = "handed_over"  # durably stored; no channel chosen yet
    QUEUED = "queued"  # a channel (or the fallback) is chosen; waiting to be sent
    FAILED = "failed"  # the last send attempt failed transiently; retried after backoff
    SENT = "sent"  # the channel took it; waiting for the recipient's confirmation
    CONFIRMED = "confirmed"  # the recipient confirmed (or the channel confirms on sending) (terminal)
    REFUSED = "refused"  # the recipient refused it, with problems (terminal; never retried blindly)
    DEAD = "dead"  # permanent failure or retries exhausted; an operator decides
    DISCARDED = "discarded"  # an operator gave a dead answer up (terminal)


# DEAD -> QUEUED is the operator's "retry" (the router chooses again), DEAD -> DISCARDED the "discard".
ANSWER_TRANSITIONS: Mapping[AnswerState, frozenset[AnswerState]] = {
    AnswerState.HANDED_OVER: frozenset({AnswerState.QUEUED, AnswerState.DEAD}),
    AnswerState.QUEUED: frozenset({AnswerState.SENT, AnswerState.FAILED, AnswerState.DEAD}),
    AnswerState.FAILED: frozenset({AnswerState.SENT, AnswerState.FAILED, AnswerState.DEAD}),
    AnswerState.SENT: frozenset({AnswerState.CONFIRMED, AnswerState.REFUSED, AnswerState.DEAD}),
    AnswerState.CONFIRMED: frozenset(),
    AnswerState.REFUSED: frozenset(),
    AnswerState.DEAD: frozenset({AnswerState.QUEUED, AnswerState.DISCARDED}),
    AnswerState.DISCARDED: frozenset(),
}

ANSWER_FINAL_STATES = frozenset({AnswerState.CONFIRMED, AnswerState.REFUSED, AnswerState.DISCARDED})


class InvalidAnswerTransition(Exception):
    def __init__(self, answer_id: str, current: AnswerState, target: AnswerState) -> None:
        super().__init__(f"answer {answer_id}: transition {current} -> {target} is not allowed")
        self.answer_id = answer_id
        self.current = current
        self.target = target


def check_answer_transition(answer_id: str, current: AnswerState, target: AnswerState) -> None:
    if target not in ANSWER_TRANSITIONS[current]:
        raise InvalidAnswerTransition(answer_id, current, target)


@dataclass(frozen=True, slots=True)
class Answer:
    """One answer to one inbound message, as the Fachverfahren handed it over.

    ``(message_id, caller, idempotency_key)`` is unique: handing the same answer over twice stores it
    once. ``content`` is JSON-safe and may hold personal data (the text to the applicant): it is
    never logged. Payload parts are blobs like the inbound message's.
    """

    id: str
    message_id: str  # the inbound message this answers
    kind: AnswerKind
    caller: str  # who handed it over: an API caller's name, an adapter instance, an outbox
    idempotency_key: str  # the caller's key for this answer
    created_at: datetime
    content: Mapping[str, Any] = field(default_factory=dict)  # e.g. {"status": ...} or {"title", "text"}
    data: BlobRef | None = None  # structured data (e.g. an XÖV answer document, JSON)
    attachments: tuple[BlobRef, ...] = ()  # e.g. the Bescheid PDF
    bescheid: bool = False  # a Bescheid: electronic channels need the applicant's consent
    sequence: int = 0  # order among the answers of one message (answers are sent in this order)
    state: AnswerState = AnswerState.HANDED_OVER
    channel: str | None = None  # the chosen reply channel instance (or the fallback)
    fallback_reason: str | None = None  # why no digital channel was possible (the Medienbruch, visible)
    attempts: int = 0
    reference: str | None = None  # the channel's id for it once sent (e.g. a FIT-Connect reply id)

    @property
    def blobs(self) -> tuple[BlobRef, ...]:
        return ((self.data,) if self.data else ()) + self.attachments

    def with_(self, **changes: Any) -> Answer:
        return replace(self, **changes)
