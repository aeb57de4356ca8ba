"""The store interface. SQLite is the default backend; PostgreSQL implements the same semantics.

Semantics every backend guarantees:

* a method returns only after its transaction is durably committed (SQLite: the WAL fsynced, see
  :class:`gateway.store.sqlite.SQLiteStore`; PostgreSQL: ``synchronous_commit`` not ``off``);
* ``(channel, idempotency_key)`` is unique: the same source message received twice is stored once;
* every state change and every delivery/ack attempt appends to a hash-chained audit trail in the
  same transaction (a state change without its audit record cannot exist);
* delivery and ack work is claimed with leases: a crashed worker's claim expires and is retried.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from gateway.model import AckState, Envelope, MessageState, check_transition
from gateway.problems import Problem

GENESIS_HASH = "0" * 64


class LeaseLost(Exception):
    """The caller's lease expired and another worker took the message over: drop the result."""


class MessageNotFound(KeyError):
    pass


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    message_id: str
    at: float  # unix seconds
    event: str  # "transition", "attempt", "ack", "ack-failed", "operator"
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
        computed = audit_hash(
            prev,
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


def acknowledged_step(actor: str) -> Step:
    """DELIVERED → ACKNOWLEDGED once upstream confirmed (``complete_ack``)."""
    return Step(MessageState.ACKNOWLEDGED, "acknowledged upstream", actor)


def step_applies(row: Any, step: Step) -> bool:
    return not step.if_settled or row["ack"] in (AckState.NONE.value, AckState.DONE.value)


def attempt_record(step: Step, attempt: int) -> dict[str, Any]:
    """The audit record of a delivery attempt leased with a step (the same as claim_deliveries')."""
    assert step.lease is not None
    return {
        "event": "attempt",
        "from_state": step.target.value,
        "to_state": step.target.value,
        "reason": f"delivery attempt {attempt}",
        "actor": step.lease[0],
        "details": {"adapter": step.adapter, "attempt": attempt},
    }


def transition_changes(message_id: str, row: Any, step: Step, *, now: float) -> tuple[MessageState, dict[str, Any]]:
    """What a step changes on a message row: the one definition both backends apply.

    ``row`` is the message row (sqlite3.Row or a dict). Checks the lease and the state machine;
    returns the current state and the column values to set (``problems`` as JSON text).
    """
    if step.lease_owner is not None and (row["lease_owner"] != step.lease_owner or (row["lease_until"] or 0) < now):
        raise LeaseLost(message_id)
    current = MessageState(row["state"])
    target = step.target
    check_transition(message_id, current, target)
    sets: dict[str, Any] = {"state": target.value, "updated_at": now, "lease_owner": None, "lease_until": None}
    if step.route is not None:
        sets["route"] = step.route
    if step.adapter is not None:
        sets["adapter"] = step.adapter
    if target in (MessageState.ROUTED, MessageState.FAILED):
        sets["next_attempt_at"] = step.next_attempt_at if step.next_attempt_at is not None else now
    if target is MessageState.ROUTED and current is not MessageState.FAILED:
        sets["queued_at"] = now  # max_age of the retry policy counts from here (operator retry: anew)
    if step.problems is not None:
        sets["problems"] = json.dumps(
            [p.as_dict() for p in step.problems], sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
    if step.ack is not None:
        sets["ack"] = step.ack.value
        if step.ack is AckState.PENDING:
            sets["ack_next_at"] = now
    if step.ack_lease is not None:
        if step.ack is not AckState.PENDING:
            raise ValueError("ack_lease needs ack=PENDING")
        sets["ack_lease_owner"], sets["ack_lease_until"] = step.ack_lease
        sets["ack_attempts"] = (row["ack_attempts"] or 0) + 1
    if step.lease is not None:
        if target is not MessageState.ROUTED:
            raise ValueError("lease needs target=ROUTED")
        sets["lease_owner"], sets["lease_until"] = step.lease
        sets["attempts"] = (row["attempts"] or 0) + 1
    if step.last_error is not None:
        sets["last_error"] = step.last_error
    if step.reset_attempts:
        sets["attempts"] = 0
    return current, sets


class Store(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise if the store cannot serve (readiness)."""

    async def schema_version(self) -> int:
        """The highest applied schema migration (``open`` applies pending ones)."""

    async def insert(
        self,
        envelope: Envelope,
        *,
        actor: str,
        reason: str = "received",
        problems: Sequence[Problem] = (),
        then: Sequence[Step] = (),
    ) -> tuple[StoredMessage, bool]:
        """Store a new message (state RECEIVED) durably, with the problems its channel already found,
        and apply the ``then`` steps in the same transaction. Returns (message, created); an existing
        message with the same ``(channel, idempotency_key)`` is returned unchanged with ``False``."""

    async def get(self, message_id: str) -> StoredMessage | None: ...

    async def find_by_source(self, channel: str, idempotency_key: str) -> StoredMessage | None: ...

    async def transition(
        self,
        message_id: str,
        target: MessageState,
        *,
        reason: str,
        actor: str,
        details: Mapping[str, Any] | None = None,
        lease_owner: str | None = None,
        route: str | None = None,
        adapter: str | None = None,
        next_attempt_at: float | None = None,
        problems: Sequence[Problem] | None = None,
        ack: AckState | None = None,
        last_error: str | None = None,
        reset_attempts: bool = False,
        ack_lease: tuple[str, float] | None = None,
        then: Sequence[Step] = (),
    ) -> StoredMessage:
        """Change state (checked against the state machine), clear any lease, audit it; then apply
        the ``then`` steps in the same transaction (see :class:`Step`). With ``lease_owner`` the
        change only happens if the caller still holds the lease (else :class:`LeaseLost`)."""

    async def claim_deliveries(
        self, *, owner: str, adapter: str, limit: int, now: float, lease_seconds: float
    ) -> list[StoredMessage]:
        """Lease up to ``limit`` due messages (ROUTED/FAILED, next_attempt_at <= now, no live lease)
        for ``adapter``; increments ``attempts`` and audits the attempt."""

    async def renew_lease(self, message_id: str, *, owner: str, until: float) -> None:
        """Extend a delivery lease held by ``owner`` (long deliveries); :class:`LeaseLost` if gone."""

    async def release_leases(self, owner: str) -> int: ...

    async def set_ack_pending(self, message_id: str, *, reason: str, actor: str) -> StoredMessage: ...

    async def claim_acks(self, *, owner: str, limit: int, now: float, lease_seconds: float) -> list[StoredMessage]: ...

    async def complete_ack(
        self,
        message_id: str,
        *,
        owner: str,
        done: bool,
        reason: str,
        next_attempt_at: float | None,
        actor: str,
    ) -> StoredMessage:
        """Record an upstream acknowledgement attempt; when done and the message is DELIVERED it
        becomes ACKNOWLEDGED in the same transaction."""

    async def list_messages(
        self, *, states: Sequence[MessageState] | None = None, limit: int = 100, offset: int = 0
    ) -> list[StoredMessage]: ...

    async def count_by_state(self) -> dict[str, int]: ...

    async def audit_trail(self, message_id: str) -> list[AuditRecord]: ...

    async def verify_audit(self) -> AuditVerification: ...

    async def note(
        self,
        message_id: str,
        *,
        event: str,
        reason: str,
        actor: str,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Append an audit record without a state change (e.g. an operator action)."""
