"""Pure planners: what a step changes on a row, what a claim selects, and which audit records it writes.

No I/O here: :mod:`gateway.store.manager` runs these plans over a backend's connection, so every
backend applies the same semantics. Queries are written with ``?`` placeholders; a backend's
connection translates them (PostgreSQL: ``%s``). ``row`` is a database row indexed by column name
(``sqlite3.Row`` or a psycopg dict row).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.model import (
    AckState,
    AnswerState,
    MessageState,
    check_answer_transition,
    check_transition,
)
from gateway.problems import Problem
from gateway.store.records import AnswerStep, LeaseLost, Step


def dumps(value: Any) -> str:
    """Canonical JSON (sorted keys, compact): both backends store byte-identical text, which the
    audit hash covers."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def problems_json(problems: Sequence[Problem]) -> str:
    return dumps([p.as_dict() for p in problems])


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """An audit record before the chain gives it its seq and hashes (see ``Work.flush``)."""

    record_id: str
    event: str
    from_state: str | None
    to_state: str | None
    reason: str
    actor: str
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Planned:
    """A step's effect: the columns to set and the audit records to append, in one transaction."""

    sets: dict[str, Any]
    audits: tuple[AuditEntry, ...]


def _check_lease(record_id: str, row: Any, owner: str | None, now: float) -> None:
    if owner is not None and (row["lease_owner"] != owner or (row["lease_until"] or 0) < now):
        raise LeaseLost(record_id)


# messages ------------------------------------------------------------------------------------


def acknowledged_step(actor: str) -> Step:
    """DELIVERED → ACKNOWLEDGED once upstream confirmed (``complete_ack``)."""
    return Step(MessageState.ACKNOWLEDGED, "acknowledged upstream", actor)


def step_applies(row: Any, step: Step) -> bool:
    return not step.if_settled or row["ack"] in (AckState.NONE.value, AckState.DONE.value)


def delivery_attempt(record_id: str, state: str, *, owner: str, adapter: str | None, attempt: int) -> AuditEntry:
    """The audit record of a delivery attempt (a claim, or a lease taken with the ROUTED step)."""
    details = {"adapter": adapter, "attempt": attempt}
    return AuditEntry(record_id, "attempt", state, state, f"delivery attempt {attempt}", owner, details)


def transition_changes(message_id: str, row: Any, step: Step, *, now: float) -> tuple[MessageState, dict[str, Any]]:
    """What a step changes on a message row: checks the lease and the state machine; returns the
    current state and the column values to set (``problems`` as JSON text)."""
    _check_lease(message_id, row, step.lease_owner, now)
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
        sets["problems"] = problems_json(step.problems)
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


def plan_message_step(message_id: str, row: Any, step: Step, now: float) -> Planned | None:
    """A message step's columns and audit records; None when the step does not apply (``if_settled``)."""
    if not step_applies(row, step):
        return None
    current, sets = transition_changes(message_id, row, step, now=now)
    target = step.target.value
    audits = [AuditEntry(message_id, "transition", current.value, target, step.reason, step.actor, step.details or {})]
    if step.lease is not None:
        adapter = sets.get("adapter", row["adapter"])
        audits.append(
            delivery_attempt(message_id, target, owner=step.lease[0], adapter=adapter, attempt=sets["attempts"])
        )
    return Planned(sets, tuple(audits))


def received_audit(message_id: str, *, channel: str, reference: str, reason: str, actor: str) -> AuditEntry:
    details = {"channel": channel, "reference": reference}
    return AuditEntry(message_id, "transition", None, MessageState.RECEIVED.value, reason, actor, details)


def same_state(
    record_id: str, state: str, event: str, reason: str, actor: str, details: Mapping[str, Any]
) -> AuditEntry:
    """An audit record that changes no state (ack bookkeeping, operator notes, deferrals)."""
    return AuditEntry(record_id, event, state, state, reason, actor, details)


# Claims: due, not leased (a lease is live while lease_until >= now), oldest due first (ties: in
# arrival order, then by id, the same on every backend). The
# backend appends its row lock (PostgreSQL: FOR UPDATE SKIP LOCKED) to each selection.
DUE_DELIVERIES = (
    "SELECT id, state, attempts, adapter FROM messages WHERE adapter = ? AND state IN ('routed', 'failed')"
    " AND next_attempt_at <= ? AND (lease_until IS NULL OR lease_until < ?) ORDER BY next_attempt_at, received_at, id"
    " LIMIT ?"
)
DUE_ACKS = (
    "SELECT id FROM messages WHERE ack = 'pending' AND ack_next_at <= ?"
    " AND (ack_lease_until IS NULL OR ack_lease_until < ?) ORDER BY ack_next_at, received_at, id LIMIT ?"
)

# Unfinished: every state but the terminal ones. The (state, updated_at) index serves the count
# without touching a finished row.
UNFINISHED_STATES = tuple(s.value for s in MessageState if s not in (MessageState.ACKNOWLEDGED, MessageState.REJECTED))


# answers ---------------------------------------------------------------------------------------

SEND_STATES = (AnswerState.QUEUED, AnswerState.FAILED)
CLAIMABLE_ANSWER_STATES = frozenset({*SEND_STATES, AnswerState.SENT})
# An earlier answer of the same message holds back a later one on a channel while it may still be
# sent before it: HANDED_OVER (no channel chosen yet: it may end up on this one) or QUEUED/FAILED on
# the same channel. SENT, the final states and DEAD do not block.
DUE_ANSWERS = (
    "SELECT id, message_id, state, attempts, polls, channel FROM answers a WHERE channel = ? AND {states}"
    " AND next_attempt_at <= ? AND (lease_until IS NULL OR lease_until < ?)"
    " AND (state = 'sent' OR NOT EXISTS (SELECT 1 FROM answers b WHERE b.message_id = a.message_id"
    " AND b.sequence < a.sequence AND (b.state = 'handed_over' OR (b.state IN ('queued', 'failed')"
    " AND b.channel = a.channel))))"
    " ORDER BY next_attempt_at, created_at, id LIMIT ?"
)


def answer_details(row: Any, details: Mapping[str, Any] | None) -> dict[str, Any]:
    """An answer's audit details always name its message, so a message's timeline can include it."""
    return {**(details or {}), "message_id": row["message_id"]}


def answer_attempt(row: Any, *, owner: str, attempt: int, poll: bool) -> AuditEntry:
    """The audit record of a claimed send attempt or confirmation poll."""
    what, key = ("confirmation poll", "poll") if poll else ("send attempt", "attempt")
    details = answer_details(row, {"channel": row["channel"], key: attempt})
    return AuditEntry(row["id"], "attempt", row["state"], row["state"], f"{what} {attempt}", owner, details)


def answer_changes(answer_id: str, row: Any, step: AnswerStep, *, now: float) -> dict[str, Any]:
    """What a step changes on an answer row (lease and ``ANSWER_TRANSITIONS`` checked)."""
    _check_lease(answer_id, row, step.lease_owner, now)
    current = AnswerState(row["state"])
    target = step.target
    check_answer_transition(answer_id, current, target)
    sets: dict[str, Any] = {"state": target.value, "updated_at": now, "lease_owner": None, "lease_until": None}
    if target is AnswerState.QUEUED:
        channel = step.channel or row["channel"]
        if channel is None:
            raise ValueError("an answer is queued for a channel: AnswerStep(QUEUED) needs channel=")
        sets["channel"] = channel
        sets["fallback_reason"] = step.fallback_reason  # a new choice: an old reason must not linger
        sets["queued_at"] = now
    elif step.channel is not None:
        sets["channel"] = step.channel
    if step.fallback_reason is not None:
        sets["fallback_reason"] = step.fallback_reason
    if target in SEND_STATES or target is AnswerState.SENT:
        sets["next_attempt_at"] = step.next_attempt_at if step.next_attempt_at is not None else now
    else:
        sets["next_attempt_at"] = None
    if target is AnswerState.SENT:
        sets["sent_at"] = now
        sets["polls"] = 0
    if target is AnswerState.CONFIRMED:
        sets["confirmed_at"] = now
    if step.reference is not None:
        sets["reference"] = step.reference
    if step.problems is not None:
        sets["problems"] = problems_json(step.problems)
    if step.last_error is not None:
        sets["last_error"] = step.last_error
    if step.reset_attempts:
        sets["attempts"] = 0
    return sets


def plan_answer_step(answer_id: str, row: Any, step: AnswerStep, now: float) -> Planned:
    sets = answer_changes(answer_id, row, step, now=now)
    details = answer_details(row, step.details)
    audit = AuditEntry(answer_id, "transition", row["state"], step.target.value, step.reason, step.actor, details)
    return Planned(sets, (audit,))
