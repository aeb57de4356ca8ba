"""The store interface. SQLite is the default backend; PostgreSQL implements the same semantics.

Semantics every backend guarantees (written once in :mod:`gateway.store.manager`, checked for
every backend by the contract suite :mod:`gateway_sandbox.store_contract`):

* a method returns only after its transaction is durably committed (SQLite: the WAL fsynced, see
  :class:`gateway.store.sqlite.SQLiteStore`; PostgreSQL: ``synchronous_commit`` not ``off``);
* ``(channel, idempotency_key)`` is unique: the same source message received twice is stored once;
  an answer is stored once per ``(message_id, caller, idempotency_key)``;
* every state change and every delivery/ack/send attempt appends to one hash-chained audit trail in
  the same transaction (a state change without its audit record cannot exist);
* delivery, ack and answer work is claimed with leases: a crashed worker's claim expires and is
  retried, and the late result of a lost lease is refused (:class:`LeaseLost`).

This module is the names other modules import; the definitions live in ``records``, ``plan`` and
``manager``.
"""

from __future__ import annotations

from gateway.store.manager import Dialect, Store, Tx, Work
from gateway.store.plan import (
    CLAIMABLE_ANSWER_STATES,
    acknowledged_step,
    step_applies,
    transition_changes,
)
from gateway.store.records import (
    GENESIS_HASH,
    AnswerNotFound,
    AnswerStep,
    AuditRecord,
    AuditVerification,
    LeaseLost,
    MessageNotFound,
    SchemaTooNew,
    Step,
    StoredAnswer,
    StoredMessage,
    StoreUnhealthy,
    audit_hash,
    verify_chain,
)

__all__ = [
    "CLAIMABLE_ANSWER_STATES",
    "GENESIS_HASH",
    "AnswerNotFound",
    "AnswerStep",
    "AuditRecord",
    "AuditVerification",
    "Dialect",
    "LeaseLost",
    "MessageNotFound",
    "SchemaTooNew",
    "Step",
    "Store",
    "StoreUnhealthy",
    "StoredAnswer",
    "StoredMessage",
    "Tx",
    "Work",
    "acknowledged_step",
    "audit_hash",
    "step_applies",
    "transition_changes",
    "verify_chain",
]
