"""The store's records: what it keeps and returns, the steps that change it, and the audit chain.

Pure data and pure functions (no I/O): :mod:`gateway.store.plan` decides what a step changes,
:mod:`gateway.store.manager` applies it over a backend's connection.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway.errors import GatewayError
from gateway.model import AckState, Answer, AnswerState, Envelope, MessageState
from gateway.problems import Problem

GENESIS_HASH = "0" * 64


class LeaseLost(Exception):
    """The caller's lease expired and another worker took the message over: drop the result."""


class MessageNotFound(KeyError):
    pass


class AnswerNotFound(KeyError):
    pass


class SchemaTooNew(GatewayError):
    """The database was migrated by a newer gateway: this one does not know its schema."""

    def __init__(self, version: int, known: int) -> None:
        super().__init__(
            f"the database schema is at version {version}, but this gateway only knows versions up to {known}:"
            " run the newer gateway version (or restore a backup taken before the upgrade)"
        )
        self.version = version
        self.known = known


class StoreUnhealthy(GatewayError):
    """The readiness probe's write or read-back failed: the store cannot take work."""


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    message_id: str  # the record's id: a message's, or an answer's (whose details carry its message_id)
    at: float  # unix seconds
    event: str  # "transition", "attempt", "ack", "ack-failed", "deferred", "operator"
    from_state: str | None
    to_state: str | None
    reason: str
    actor: str
    details: Mapping[str, Any]
    prev_hash: str
    hash: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "message_id": self.message_id,
            "at": datetime.fromtimestamp(self.at).astimezone().isoformat(),
            "event": self.event,
            "from": self.from_state,
            "to": self.to_state,
            "reason": self.reason,
            "actor": self.actor,
            "details": dict(self.details),
            "hash": self.hash,
        }


def audit_hash(
    prev_hash: str,
    *,
    seq: int,
    message_id: str,
    at: float,
    event: str,
    from_state: str | None,
    to_state: str | None,
    reason: str,
    actor: str,
    details: Mapping[str, Any],
) -> str:
    body = json.dumps(
        [seq, message_id, repr(float(at)), event, from_state, to_state, reason, actor, details],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(f"{prev_hash}\n{body}".encode()).hexdigest()


def record_hash(prev_hash: str, rec: AuditRecord) -> str:
    """The hash a record must carry after ``prev_hash`` (its own ``hash`` is not read)."""
    return audit_hash(
        prev_hash,
        seq=rec.seq,
        message_id=rec.message_id,
        at=rec.at,
        event=rec.event,
        from_state=rec.from_state,
        to_state=rec.to_state,
        reason=rec.reason,
        actor=rec.actor,
        details=rec.details,
    )


@dataclass(frozen=True, slots=True)
class AuditVerification:
    ok: bool
    checked: int
    broken_seq: int | None = None
    reason: str = ""


def verify_chain(records: Sequence[AuditRecord], start_hash: str = GENESIS_HASH) -> AuditVerification:
    prev = start_hash
    expected_seq: int | None = None
    for count, rec in enumerate(records):
        if expected_seq is not None and rec.seq != expected_seq:
            return AuditVerification(False, count, rec.seq, f"record(s) missing before seq {rec.seq}")
        if rec.prev_hash != prev:
            return AuditVerification(False, count, rec.seq, "prev_hash does not link to the previous record")
        computed = record_hash(prev, rec)
        if computed != rec.hash:
            return AuditVerification(False, count, rec.seq, "record content does not match its hash")
        prev = rec.hash
        expected_seq = rec.seq + 1
    return AuditVerification(True, len(records))


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """An envelope plus the bookkeeping the store keeps beside it."""

    envelope: Envelope
    problems: tuple[Problem, ...] = ()
    next_attempt_at: float | None = None
    lease_owner: str | None = None
    lease_until: float | None = None
    last_error: str | None = None
    queued_at: float | None = None
    ack_attempts: int = 0
    updated_at: float = 0.0
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Step:
    """One state change: what :meth:`Store.transition` applies, and what ``then=`` chains after an
    insert or a transition *in the same transaction* (e.g. RECEIVED → VALIDATED → ROUTED as one
    commit: one fsync instead of three, and no crash window between them). Each step is checked
    against the state machine and audited on its own."""

    target: MessageState
    reason: str
    actor: str
    details: Mapping[str, Any] | None = None
    lease_owner: str | None = None  # the caller must still hold the delivery lease (else LeaseLost)
    route: str | None = None
    adapter: str | None = None
    next_attempt_at: float | None = None
    problems: Sequence[Problem] | None = None
    ack: AckState | None = None
    # With ack=PENDING: the acknowledgement is leased to (owner, until) in the same commit, so the
    # caller can acknowledge upstream right away without a claim_acks round trip.
    ack_lease: tuple[str, float] | None = None
    # With target=ROUTED: the delivery is leased to (owner, until) and its first attempt counted
    # and audited in the same commit, as claim_deliveries would (the intake hands the message
    # straight to its worker).
    lease: tuple[str, float] | None = None
    last_error: str | None = None
    reset_attempts: bool = False
    # Only apply when nothing is outstanding upstream (ack none/done); otherwise skip this step
    # (e.g. DELIVERED → ACKNOWLEDGED, which the ack worker does instead when an ack is pending).
    if_settled: bool = False


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """An answer plus the bookkeeping the store keeps beside it."""

    answer: Answer
    problems: tuple[Problem, ...] = ()  # the recipient's refusal problems
    next_attempt_at: float | None = None  # QUEUED/FAILED: the next send; SENT: the next confirmation poll
    lease_owner: str | None = None
    lease_until: float | None = None
    last_error: str | None = None
    queued_at: float | None = None
    sent_at: float | None = None
    confirmed_at: float | None = None
    polls: int = 0  # confirmation polls since it was sent
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True)
class AnswerStep:
    """One state change of an answer, checked against ``ANSWER_TRANSITIONS`` and audited on its own
    (record id: the answer's; ``details`` also carry its ``message_id``)."""

    target: AnswerState
    reason: str
    actor: str
    details: Mapping[str, Any] | None = None
    lease_owner: str | None = None  # the caller must still hold the answer's lease (else LeaseLost)
    channel: str | None = None  # QUEUED: the chosen channel (kept from before when None)
    fallback_reason: str | None = None  # QUEUED: why not a digital channel (cleared when None)
    next_attempt_at: float | None = None  # QUEUED/FAILED: the send; SENT: the first confirmation poll
    last_error: str | None = None
    problems: Sequence[Problem] | None = None  # REFUSED: the recipient's problems
    reference: str | None = None  # SENT: the channel's id for it (e.g. a FIT-Connect reply id)
    reset_attempts: bool = False  # an operator retry starts counting anew
