"""The store's semantics, written once over a backend's dialect primitives.

A backend (:mod:`gateway.store.sqlite`, :mod:`gateway.store.postgres`) subclasses :class:`Store` and
supplies only what differs between databases: how a transaction is run and made durable
(``_write``/``_read``/``_snapshot``/``_read_fresh``), its :class:`Dialect` (placeholders, row locks,
lists, what text it can hold) and its migrations. Everything a step changes, what a claim selects,
which audit records are written and how they are chained lives here and in
:mod:`gateway.store.plan`, so every backend behaves the same; :mod:`gateway_sandbox.store_contract` is the
test suite that checks it.

Lock order (PostgreSQL, several instances): a transaction locks the record rows it changes first
(a message before its answers) and the ``audit_head`` row last, when it appends its audit records
just before COMMIT; so these transactions cannot deadlock with each other.
"""

from __future__ import annotations

import abc
import uuid
from collections.abc import Callable, Collection, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, overload

from gateway.model import Answer, AnswerState, Envelope, MessageState
from gateway.problems import Problem
from gateway.store.plan import (
    CLAIMABLE_ANSWER_STATES,
    DUE_ACKS,
    DUE_ANSWERS,
    DUE_DELIVERIES,
    UNFINISHED_STATES,
    AuditEntry,
    acknowledged_step,
    answer_attempt,
    answer_details,
    delivery_attempt,
    dumps,
    plan_answer_step,
    plan_message_step,
    problems_json,
    received_audit,
    same_state,
)
from gateway.store.records import (
    GENESIS_HASH,
    AnswerNotFound,
    AnswerStep,
    AuditRecord,
    AuditVerification,
    LeaseLost,
    MessageNotFound,
    Step,
    StoredAnswer,
    StoredMessage,
    StoreUnhealthy,
    record_hash,
    verify_chain,
)
from gateway.store.rows import answer_columns, envelope_columns, row_to_answer, row_to_audit, row_to_message

T = TypeVar("T")
Row = Any  # a database row indexed by column name (sqlite3.Row, a psycopg dict row)

VERIFY_BATCH = 5000
# Free text a backend may have to adjust (PostgreSQL cannot store NUL); identities are refused instead.
FREE_TEXT_COLUMNS = frozenset({"last_error", "fallback_reason"})
MESSAGE_IDENTITY = ("id", "channel", "source_type", "reference", "idempotency_key", "case_ref", "route", "adapter")
ANSWER_IDENTITY = ("id", "message_id", "caller", "idempotency_key")


class Tx(Protocol):
    """A backend's statements inside one transaction (``?`` placeholders)."""

    async def one(self, query: str, params: Sequence[Any] = ()) -> Row | None: ...

    async def all(self, query: str, params: Sequence[Any] = ()) -> list[Row]: ...

    async def rowcount(self, query: str, params: Sequence[Any] = ()) -> int: ...

    async def many(self, query: str, rows: Sequence[Sequence[Any]]) -> None: ...


TxFn = Callable[[Tx], Coroutine[Any, Any, T]]


class Dialect:
    """What SQL differs between backends. The defaults are SQLite's (which locks the whole
    database with ``BEGIN IMMEDIATE``, so it needs no row locks)."""

    lock = ""  # appended to a SELECT of a row the transaction will change
    claim_lock = ""  # appended to a claim's selection of candidate rows

    def any_of(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return f"{column} IN ({', '.join('?' * len(values))})", list(values)

    def text(self, value: str) -> str:
        """Free text as this backend can store it (the audit hash covers what is stored)."""
        return value

    def check_identity(self, columns: Mapping[str, Any], names: Sequence[str]) -> None:
        """Refuse identity values this backend cannot store exactly (never alter an identity)."""


@dataclass(frozen=True, slots=True)
class _Kind:
    table: str
    not_found: type[KeyError]


MESSAGES = _Kind("messages", MessageNotFound)
ANSWERS = _Kind("answers", AnswerNotFound)


class Work:
    """One transaction: the backend's statements plus the audit records to append when it is about
    to commit (under the ``audit_head`` lock, as its last step)."""

    def __init__(self, tx: Tx, dialect: Dialect) -> None:
        self.tx = tx
        self.dialect = dialect
        self._audits: list[tuple[AuditEntry, float]] = []

    async def load(self, kind: _Kind, record_id: str) -> Row:
        """The record's row, locked until COMMIT where the backend locks rows."""
        row = await self.tx.one(f"SELECT * FROM {kind.table} WHERE id = ?{self.dialect.lock}", (record_id,))  # noqa: S608
        if row is None:
            raise kind.not_found(record_id)
        return row

    async def insert(self, table: str, columns: Mapping[str, Any], *, unless: str = "") -> Row | None:
        """INSERT ... RETURNING *; with ``unless`` (a unique key) None when that key exists."""
        names = ", ".join(columns)  # column names are ours, values are bound
        marks = ", ".join("?" * len(columns))
        conflict = f" ON CONFLICT {unless} DO NOTHING" if unless else ""
        query = f"INSERT INTO {table} ({names}) VALUES ({marks}){conflict} RETURNING *"  # noqa: S608
        return await self.tx.one(query, tuple(columns.values()))

    async def update(self, table: str, record_id: str, sets: Mapping[str, Any]) -> Row:
        values = [self.dialect.text(v) if k in FREE_TEXT_COLUMNS and isinstance(v, str) else v for k, v in sets.items()]
        assignments = ", ".join(f"{k} = ?" for k in sets)
        row = await self.tx.one(f"UPDATE {table} SET {assignments} WHERE id = ? RETURNING *", (*values, record_id))  # noqa: S608
        assert row is not None, f"{table} row {record_id} vanished inside its transaction"
        return row

    async def lease(self, table: str, ids: Sequence[str], assignments: str, params: Sequence[Any]) -> list[Row]:
        """Update the claimed rows; returns them in the order they were selected."""
        where, id_params = self.dialect.any_of("id", ids)
        rows = await self.tx.all(f"UPDATE {table} SET {assignments} WHERE {where} RETURNING *", (*params, *id_params))  # noqa: S608
        by_id = {r["id"]: r for r in rows}
        return [by_id[i] for i in ids]

    def audit(self, *entries: AuditEntry, at: float) -> None:
        self._audits.extend((entry, at) for entry in entries)

    async def flush(self) -> None:
        """Append the collected records to the global hash chain (the head row moves with them)."""
        if not self._audits:
            return
        head = await self.tx.one(f"SELECT seq, hash FROM audit_head{self.dialect.lock}")  # noqa: S608
        assert head is not None, "audit_head row is missing (schema damaged)"
        seq, prev_hash = int(head["seq"]), str(head["hash"])
        text = self.dialect.text
        rows: list[tuple[Any, ...]] = []
        for entry, at in self._audits:
            seq += 1
            rec = AuditRecord(
                seq=seq,
                message_id=entry.record_id,
                at=at,
                event=text(entry.event),
                from_state=entry.from_state,
                to_state=entry.to_state,
                reason=text(entry.reason),
                actor=text(entry.actor),
                details=dict(entry.details),
                prev_hash=prev_hash,
                hash="",
            )
            prev_hash = record_hash(prev_hash, rec)
            states = (rec.from_state, rec.to_state)
            rows.append((seq, rec.message_id, at, rec.event, *states, rec.reason, rec.actor, dumps(rec.details)))
            rows[-1] += (rec.prev_hash, prev_hash)
        await self.tx.many(
            "INSERT INTO audit (seq, message_id, at, event, from_state, to_state, reason, actor, details,"
            " prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        await self.tx.rowcount("UPDATE audit_head SET seq = ?, hash = ?", (seq, prev_hash))
        self._audits.clear()


class Store(abc.ABC):
    """The durable store of messages, answers and their audit trail (see :mod:`gateway.store.base`).

    Every public method is one transaction and returns only after it is durably committed.
    """

    dialect: Dialect = Dialect()
    clock: Callable[[], float]

    # backend primitives ------------------------------------------------------------------------

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and apply pending migrations (refusing a schema newer than this code)."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def _write(self, fn: TxFn[T]) -> T:
        """Run ``fn`` in one write transaction; return after its COMMIT is durable."""

    @abc.abstractmethod
    async def _read(self, fn: TxFn[T]) -> T:
        """Run a short read."""

    @abc.abstractmethod
    async def _snapshot(self, fn: TxFn[T]) -> T:
        """Run a long read in one consistent snapshot, without holding up writers."""

    @abc.abstractmethod
    async def _read_fresh(self, fn: TxFn[T]) -> T:
        """Run a read against the database as it is now in storage (not through cached pages)."""

    async def _transact(self, fn: Callable[[Work], Coroutine[Any, Any, T]]) -> T:
        async def body(tx: Tx) -> T:
            work = Work(tx, self.dialect)
            result = await fn(work)
            await work.flush()
            return result

        return await self._write(body)

    # health and schema -------------------------------------------------------------------------

    async def ping(self) -> None:
        """Raise if the store cannot answer a query (cheap; see :meth:`probe` for readiness)."""
        await self._read(lambda tx: tx.one("SELECT 1"))

    async def probe(self) -> None:
        """Readiness: durably write a fresh token into the health row and read it back from storage.

        Raises :class:`StoreUnhealthy` when the write fails (disk full, I/O error, lost database) or
        the read-back does not return the token (the database file was deleted, replaced or
        overwritten). Audits nothing: it changes no message.
        """
        token = uuid.uuid4().hex
        now = self.clock()

        async def write(tx: Tx) -> None:
            await tx.rowcount(
                "INSERT INTO health (id, token, at) VALUES (1, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET token = excluded.token, at = excluded.at",
                (token, now),
            )

        try:
            await self._write(write)
            row = await self._read_fresh(lambda tx: tx.one("SELECT token FROM health WHERE id = 1"))
        except StoreUnhealthy:
            raise
        except Exception as exc:
            raise StoreUnhealthy(f"the store's health write/read failed: {type(exc).__name__}: {exc}") from exc
        if row is None or row["token"] != token:
            raise StoreUnhealthy("the health row read back is not the one just written: the database was replaced")

    async def schema_version(self) -> int:
        """The highest applied schema migration (``open`` applies pending ones)."""
        row = await self._read(lambda tx: tx.one("SELECT max(version) AS v FROM schema_migrations"))
        return int(row["v"]) if row is not None and row["v"] is not None else 0

    # steps -------------------------------------------------------------------------------------

    async def _apply_steps(
        self, work: Work, record_id: str, row: Row, steps: Sequence[Step | AnswerStep], now: float
    ) -> Row:
        """Apply steps to a loaded row inside the caller's transaction: UPDATE + audit record(s) each."""
        for step in steps:
            if isinstance(step, Step):
                table, planned = MESSAGES.table, plan_message_step(record_id, row, step, now)
            else:
                table, planned = ANSWERS.table, plan_answer_step(record_id, row, step, now)
            if planned is None:
                continue
            row = await work.update(table, record_id, planned.sets)
            work.audit(*planned.audits, at=now)
        return row

    @overload
    async def apply(self, record_id: str, *steps: Step) -> StoredMessage: ...

    @overload
    async def apply(self, record_id: str, *steps: AnswerStep) -> StoredAnswer: ...

    async def apply(self, record_id: str, *steps: Step | AnswerStep) -> StoredMessage | StoredAnswer:
        """Apply steps to one record (a message: :class:`Step`; an answer: :class:`AnswerStep`) in
        one transaction: each checked against its state machine (a refused one rolls back all),
        each audited. A step with ``lease_owner`` needs that caller's lease still live (else
        :class:`LeaseLost`); any lease is cleared by a state change."""
        if not steps:
            raise ValueError("apply() needs at least one step")
        if all(isinstance(s, Step) for s in steps):
            kind, to_model = MESSAGES, row_to_message
        elif all(isinstance(s, AnswerStep) for s in steps):
            kind, to_model = ANSWERS, row_to_answer  # type: ignore[assignment]
        else:
            raise TypeError("apply() takes the steps of one record: all Step (message) or all AnswerStep (answer)")

        async def fn(work: Work) -> StoredMessage | StoredAnswer:
            row = await work.load(kind, record_id)
            return to_model(await self._apply_steps(work, record_id, row, steps, self.clock()))

        return await self._transact(fn)

    async def transition(
        self,
        message_id: str,
        target: MessageState,
        *,
        reason: str,
        actor: str,
        then: Sequence[Step] = (),
        **changes: Any,
    ) -> StoredMessage:
        """``apply(message_id, Step(target, reason, actor, **changes), *then)``: the fields of
        :class:`Step` are the keywords."""
        return await self.apply(message_id, Step(target, reason, actor, **changes), *then)

    # messages ----------------------------------------------------------------------------------

    async def insert(
        self,
        envelope: Envelope,
        *,
        actor: str,
        reason: str = "received",
        problems: Sequence[Problem] = (),
        then: Sequence[Step] = (),
    ) -> tuple[StoredMessage, bool]:
        """Store a new message (state RECEIVED, with its ``reply`` context and the problems its
        channel already found) and apply the ``then`` steps in the same transaction. Returns
        (message, created); an existing message with the same ``(channel, idempotency_key)`` is
        returned unchanged with ``False``."""

        async def fn(work: Work) -> tuple[StoredMessage, bool]:
            now = self.clock()
            cols = envelope_columns(envelope.with_(state=MessageState.RECEIVED))
            self.dialect.check_identity(cols, MESSAGE_IDENTITY)
            cols["updated_at"] = now
            cols["problems"] = problems_json(problems)
            row = await work.insert("messages", cols, unless="(channel, idempotency_key)")
            if row is None:
                # Stored before (on PostgreSQL, READ COMMITTED: ON CONFLICT waited for that commit).
                existing = await work.tx.one(
                    "SELECT * FROM messages WHERE channel = ? AND idempotency_key = ?",
                    (envelope.source.channel, envelope.source.idempotency_key),
                )
                assert existing is not None, "conflicting row vanished (messages are never deleted)"
                return row_to_message(existing), False
            source = envelope.source
            work.audit(
                received_audit(
                    envelope.id, channel=source.channel, reference=source.reference, reason=reason, actor=actor
                ),
                at=now,
            )
            return row_to_message(await self._apply_steps(work, envelope.id, row, then, now)), True

        return await self._transact(fn)

    async def get(self, message_id: str) -> StoredMessage | None:
        row = await self._read(lambda tx: tx.one("SELECT * FROM messages WHERE id = ?", (message_id,)))
        return row_to_message(row) if row else None

    async def find_by_source(self, channel: str, idempotency_key: str) -> StoredMessage | None:
        row = await self._read(
            lambda tx: tx.one(
                "SELECT * FROM messages WHERE channel = ? AND idempotency_key = ?", (channel, idempotency_key)
            )
        )
        return row_to_message(row) if row else None

    async def claim_deliveries(
        self, *, owner: str, adapter: str, limit: int, now: float, lease_seconds: float
    ) -> list[StoredMessage]:
        """Lease up to ``limit`` due messages (ROUTED/FAILED, next_attempt_at <= now, no live lease)
        for ``adapter``, oldest due first; increments ``attempts`` and audits the attempt."""

        async def fn(work: Work) -> list[StoredMessage]:
            rows = await work.tx.all(DUE_DELIVERIES + self.dialect.claim_lock, (adapter, now, now, limit))
            if not rows:
                return []
            taken = await work.lease(
                "messages",
                [r["id"] for r in rows],
                "lease_owner = ?, lease_until = ?, attempts = attempts + 1, updated_at = ?",
                (owner, now + lease_seconds, now),
            )
            for r in rows:
                work.audit(
                    delivery_attempt(r["id"], r["state"], owner=owner, adapter=adapter, attempt=r["attempts"] + 1),
                    at=now,
                )
            return [row_to_message(r) for r in taken]

        return await self._transact(fn)

    async def _renew(self, table: str, record_id: str, owner: str, until: float) -> None:
        async def fn(tx: Tx) -> None:
            count = await tx.rowcount(
                f"UPDATE {table} SET lease_until = ? WHERE id = ? AND lease_owner = ? AND lease_until >= ?",  # noqa: S608
                (until, record_id, owner, self.clock()),
            )
            if count != 1:
                raise LeaseLost(record_id)

        await self._write(fn)

    async def renew_lease(self, message_id: str, *, owner: str, until: float) -> None:
        """Extend a delivery lease held by ``owner`` (long deliveries); :class:`LeaseLost` if gone."""
        await self._renew("messages", message_id, owner, until)

    async def release_leases(self, owner: str) -> int:
        """Give up every lease ``owner`` holds (delivery, acknowledgement, answer): on shutdown."""

        async def fn(tx: Tx) -> int:
            released = 0
            for statement in (
                "UPDATE messages SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?",
                "UPDATE messages SET ack_lease_owner = NULL, ack_lease_until = NULL WHERE ack_lease_owner = ?",
                "UPDATE answers SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?",
            ):
                released += await tx.rowcount(statement, (owner,))
            return released

        return await self._write(fn)

    async def set_ack_pending(self, message_id: str, *, reason: str, actor: str) -> StoredMessage:
        """Make the upstream acknowledgement due now (unless it is done already)."""

        async def fn(work: Work) -> StoredMessage:
            row = await work.load(MESSAGES, message_id)
            if row["ack"] == "done":
                return row_to_message(row)
            now = self.clock()
            updated = await work.update(
                "messages", message_id, {"ack": "pending", "ack_next_at": now, "updated_at": now}
            )
            work.audit(same_state(message_id, row["state"], "ack", reason, actor, {"ack": "pending"}), at=now)
            return row_to_message(updated)

        return await self._transact(fn)

    async def claim_acks(self, *, owner: str, limit: int, now: float, lease_seconds: float) -> list[StoredMessage]:
        """Lease up to ``limit`` due upstream acknowledgements (ack pending, ack_next_at <= now)."""

        async def fn(work: Work) -> list[StoredMessage]:
            rows = await work.tx.all(DUE_ACKS + self.dialect.claim_lock, (now, now, limit))
            if not rows:
                return []
            taken = await work.lease(
                "messages",
                [r["id"] for r in rows],
                "ack_lease_owner = ?, ack_lease_until = ?, ack_attempts = ack_attempts + 1",
                (owner, now + lease_seconds),
            )
            return [row_to_message(r) for r in taken]

        return await self._transact(fn)

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

        async def fn(work: Work) -> StoredMessage:
            row = await work.load(MESSAGES, message_id)
            now = self.clock()
            if row["ack_lease_owner"] != owner:
                raise LeaseLost(message_id)
            state = row["state"]
            released = {"ack_lease_owner": None, "ack_lease_until": None, "updated_at": now}
            if not done:
                retry_at = next_attempt_at if next_attempt_at is not None else now
                updated = await work.update(
                    "messages", message_id, {"ack_next_at": retry_at, "last_error": reason, **released}
                )
                work.audit(
                    same_state(message_id, state, "ack-failed", reason, actor, {"attempt": row["ack_attempts"]}), at=now
                )
                return row_to_message(updated)
            updated = await work.update("messages", message_id, {"ack": "done", **released})
            work.audit(same_state(message_id, state, "ack", reason, actor, {"ack": "done"}), at=now)
            if state == MessageState.DELIVERED.value:
                updated = await self._apply_steps(work, message_id, updated, [acknowledged_step(actor)], now)
            return row_to_message(updated)

        return await self._transact(fn)

    async def list_messages(
        self, *, states: Sequence[MessageState] | None = None, limit: int = 100, offset: int = 0
    ) -> list[StoredMessage]:
        """Messages in intake order (``received_at``, then id bytewise), optionally of some states."""
        where, params = self.dialect.any_of("state", [s.value for s in states]) if states else ("1 = 1", [])
        query = f"SELECT * FROM messages WHERE {where} ORDER BY received_at, id LIMIT ? OFFSET ?"  # noqa: S608
        return [row_to_message(r) for r in await self._read(lambda tx: tx.all(query, (*params, limit, offset)))]

    async def _count(self, query: str, params: Sequence[Any], states: Collection[str]) -> dict[str, int]:
        counts = dict.fromkeys(states, 0)
        counts.update({r["state"]: int(r["n"]) for r in await self._read(lambda tx: tx.all(query, params))})
        return counts

    async def count_by_state(self) -> dict[str, int]:
        """Messages per state (every state listed; counts the whole table)."""
        return await self._count(
            "SELECT state, count(*) AS n FROM messages GROUP BY state", (), [s.value for s in MessageState]
        )

    async def count_unfinished(self) -> dict[str, int]:
        """Messages per unfinished state (all but ACKNOWLEDGED/REJECTED; DEAD included): the queue
        depth. An index range scan over the unfinished states only: finished rows, however many,
        are never read."""
        where, params = self.dialect.any_of("state", UNFINISHED_STATES)
        query = f"SELECT state, count(*) AS n FROM messages WHERE {where} GROUP BY state"  # noqa: S608
        return await self._count(query, params, UNFINISHED_STATES)

    # audit -------------------------------------------------------------------------------------

    async def _note(self, kind: _Kind, record_id: str, event: str, reason: str, actor: str, details: Any) -> None:
        async def fn(work: Work) -> None:
            row = await work.load(kind, record_id)
            details_ = answer_details(row, details) if kind is ANSWERS else dict(details or {})
            work.audit(same_state(record_id, row["state"], event, reason, actor, details_), at=self.clock())

        await self._transact(fn)

    async def note(
        self, message_id: str, *, event: str, reason: str, actor: str, details: Mapping[str, Any] | None = None
    ) -> None:
        """Append an audit record without a state change (e.g. an operator action)."""
        await self._note(MESSAGES, message_id, event, reason, actor, details)

    async def audit_trail(self, message_id: str, *, with_answers: bool = False) -> list[AuditRecord]:
        """The audit records of one record (a message or an answer), oldest first; with
        ``with_answers`` a message's timeline includes the records of its answers."""
        if with_answers:
            query = (
                "SELECT * FROM audit WHERE message_id = ? OR message_id IN"
                " (SELECT id FROM answers WHERE message_id = ?) ORDER BY seq"
            )
            params: tuple[str, ...] = (message_id, message_id)
        else:
            query, params = "SELECT * FROM audit WHERE message_id = ? ORDER BY seq", (message_id,)
        return [row_to_audit(r) for r in await self._read(lambda tx: tx.all(query, params))]

    async def verify_audit(self) -> AuditVerification:
        """Check the whole chain in batches inside one snapshot (concurrent appends do not matter),
        and that ``audit_head`` points at the last record (a cut-off tail would otherwise verify)."""
        return await self._snapshot(verify_in)

    # answers -------------------------------------------------------------------------------------

    async def insert_answer(
        self, answer: Answer, *, actor: str, reason: str = "handed over", then: Sequence[AnswerStep] = ()
    ) -> tuple[StoredAnswer, bool]:
        """Store a handed-over answer (state HANDED_OVER, ``sequence`` = the next number among its
        message's answers) and apply the ``then`` steps in the same transaction. Idempotent on
        ``(message_id, caller, idempotency_key)``: an existing answer is returned unchanged with
        ``False`` (compare its content to tell a repeat from a conflicting reuse of the key).
        The store sets state, sequence, channel, attempts and reference itself (the ``answer``'s
        values of these are ignored). :class:`MessageNotFound` for an unknown message."""

        async def fn(work: Work) -> tuple[StoredAnswer, bool]:
            now = self.clock()
            # Locks the message: the answers of one message are numbered one at a time.
            await work.load(MESSAGES, answer.message_id)
            existing = await work.tx.one(
                "SELECT * FROM answers WHERE message_id = ? AND caller = ? AND idempotency_key = ?",
                (answer.message_id, answer.caller, answer.idempotency_key),
            )
            if existing is not None:
                return row_to_answer(existing), False
            last = await work.tx.one(
                "SELECT max(sequence) AS n FROM answers WHERE message_id = ?", (answer.message_id,)
            )
            sequence = (int(last["n"]) if last is not None and last["n"] is not None else 0) + 1
            cols = answer_columns(answer, sequence=sequence, now=now)
            self.dialect.check_identity(cols, ANSWER_IDENTITY)
            row = await work.insert("answers", cols)
            details: dict[str, Any] = {"message_id": answer.message_id, "kind": answer.kind.value}
            details.update(caller=answer.caller, sequence=sequence)
            handed_over = AnswerState.HANDED_OVER.value
            work.audit(AuditEntry(answer.id, "transition", None, handed_over, reason, actor, details), at=now)
            return row_to_answer(await self._apply_steps(work, answer.id, row, then, now)), True

        return await self._transact(fn)

    async def get_answer(self, answer_id: str) -> StoredAnswer | None:
        row = await self._read(lambda tx: tx.one("SELECT * FROM answers WHERE id = ?", (answer_id,)))
        return row_to_answer(row) if row else None

    async def find_answer(self, message_id: str, caller: str, idempotency_key: str) -> StoredAnswer | None:
        """The answer a caller handed over for a message under its idempotency key."""
        row = await self._read(
            lambda tx: tx.one(
                "SELECT * FROM answers WHERE message_id = ? AND caller = ? AND idempotency_key = ?",
                (message_id, caller, idempotency_key),
            )
        )
        return row_to_answer(row) if row else None

    async def list_answers(
        self,
        *,
        message_id: str | None = None,
        states: Sequence[AnswerState] | None = None,
        channel: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[StoredAnswer]:
        """Answers, filtered; in hand-over order (``created_at``, then id; one message's: ``sequence``)."""
        where: list[str] = []
        params: list[Any] = []
        if message_id is not None:
            where.append("message_id = ?")
            params.append(message_id)
        if states:
            clause, values = self.dialect.any_of("state", [s.value for s in states])
            where.append(clause)
            params.extend(values)
        if channel is not None:
            where.append("channel = ?")
            params.append(channel)
        order = "sequence" if message_id is not None else "created_at, id"
        query = f"SELECT * FROM answers WHERE {' AND '.join(where) or '1 = 1'} ORDER BY {order} LIMIT ? OFFSET ?"  # noqa: S608
        return [row_to_answer(r) for r in await self._read(lambda tx: tx.all(query, (*params, limit, offset)))]

    async def count_answers_by_state(self) -> dict[str, int]:
        return await self._count(
            "SELECT state, count(*) AS n FROM answers GROUP BY state", (), [s.value for s in AnswerState]
        )

    async def claim_answers(
        self,
        *,
        owner: str,
        channel: str,
        limit: int,
        now: float,
        lease_seconds: float,
        states: Collection[AnswerState] = CLAIMABLE_ANSWER_STATES,
    ) -> list[StoredAnswer]:
        """Lease up to ``limit`` due answers on ``channel``, oldest due first:

        * QUEUED/FAILED with ``next_attempt_at <= now``: to be **sent** (``attempts`` + 1);
        * SENT with ``next_attempt_at <= now``: due for a **confirmation poll** (``polls`` + 1).

        ``states`` narrows this (e.g. ``{SENT}`` for a poller only). Never an answer whose lease is
        live, and never answer n+1 of a message to be sent while an earlier answer of that message
        is still HANDED_OVER, or QUEUED/FAILED on the same channel (DEAD, SENT and the final states
        do not hold it back). Each claim is audited as an "attempt" record."""
        wanted = [s.value for s in states]
        if not wanted or not set(states) <= CLAIMABLE_ANSWER_STATES:
            raise ValueError(f"claim_answers claims states among {sorted(CLAIMABLE_ANSWER_STATES)}, not {wanted}")
        state_clause, state_params = self.dialect.any_of("state", wanted)
        query = DUE_ANSWERS.format(states=state_clause) + self.dialect.claim_lock

        async def fn(work: Work) -> list[StoredAnswer]:
            rows = await work.tx.all(query, (channel, *state_params, now, now, limit))
            if not rows:
                return []
            taken = await work.lease(
                "answers",
                [r["id"] for r in rows],
                "lease_owner = ?, lease_until = ?, updated_at = ?,"
                " attempts = attempts + CASE WHEN state = 'sent' THEN 0 ELSE 1 END,"
                " polls = polls + CASE WHEN state = 'sent' THEN 1 ELSE 0 END",
                (owner, now + lease_seconds, now),
            )
            for r in rows:
                poll = r["state"] == AnswerState.SENT.value
                attempt = (r["polls"] if poll else r["attempts"]) + 1
                work.audit(answer_attempt(r, owner=owner, attempt=attempt, poll=poll), at=now)
            return [row_to_answer(r) for r in taken]

        return await self._transact(fn)

    async def renew_answer_lease(self, answer_id: str, *, owner: str, until: float) -> None:
        """Extend an answer's lease held by ``owner``; :class:`LeaseLost` if it is gone."""
        await self._renew("answers", answer_id, owner, until)

    async def defer_answer(
        self, answer_id: str, *, owner: str, next_attempt_at: float, reason: str, actor: str
    ) -> StoredAnswer:
        """The claimed work is not done yet and no state changes (e.g. a confirmation poll found no
        answer from the recipient yet): release the lease, due again at ``next_attempt_at``; audited
        as a "deferred" record. :class:`LeaseLost` if ``owner``'s lease is no longer live."""

        async def fn(work: Work) -> StoredAnswer:
            row = await work.load(ANSWERS, answer_id)
            now = self.clock()
            if row["lease_owner"] != owner or (row["lease_until"] or 0) < now:
                raise LeaseLost(answer_id)
            sets = {"next_attempt_at": next_attempt_at, "lease_owner": None, "lease_until": None, "updated_at": now}
            updated = await work.update("answers", answer_id, sets)
            details = answer_details(row, {"next_attempt_at": next_attempt_at})
            work.audit(same_state(answer_id, row["state"], "deferred", reason, actor, details), at=now)
            return row_to_answer(updated)

        return await self._transact(fn)

    async def note_answer(
        self, answer_id: str, *, event: str, reason: str, actor: str, details: Mapping[str, Any] | None = None
    ) -> None:
        """Append an audit record to an answer without a state change (e.g. an operator action)."""
        await self._note(ANSWERS, answer_id, event, reason, actor, details)


async def verify_in(tx: Tx) -> AuditVerification:
    """Verify the chain through ``tx`` (one snapshot), a batch at a time (memory stays bounded)."""
    checked = 0
    prev_hash, last_seq = GENESIS_HASH, 0
    while True:
        rows = await tx.all("SELECT * FROM audit WHERE seq > ? ORDER BY seq LIMIT ?", (last_seq, VERIFY_BATCH))
        if not rows:
            break
        records = [row_to_audit(r) for r in rows]
        if records[0].seq != last_seq + 1:
            what = (
                "the chain does not start at seq 1"
                if last_seq == 0
                else f"record(s) missing before seq {records[0].seq}"
            )
            return AuditVerification(False, checked, records[0].seq, what)
        result = verify_chain(records, start_hash=prev_hash)
        if not result.ok:
            return AuditVerification(False, checked + result.checked, result.broken_seq, result.reason)
        checked += len(records)
        prev_hash, last_seq = records[-1].hash, records[-1].seq
    head = await tx.one("SELECT seq, hash FROM audit_head")
    if head is None:
        return AuditVerification(False, checked, last_seq + 1, "the audit head row is missing")
    if int(head["seq"]) != last_seq or head["hash"] != prev_hash:
        return AuditVerification(
            False,
            checked,
            min(int(head["seq"]), last_seq) + 1,  # the first seq beyond what both agree on
            f"the audit head (seq {head['seq']}) does not match the last record (seq {last_seq}):"
            " records were removed or added outside the store",
        )
    return AuditVerification(True, checked)
