"""PostgreSQL store backend: the SQLite backend's semantics, for several gateway instances on one database.

* Every public method is one transaction (``READ COMMITTED``) on a connection from a small pool;
  it returns after COMMIT, and the store makes sure its sessions run with a durable
  ``synchronous_commit`` (it switches ``off`` back to ``on``).
* ``(channel, idempotency_key)`` is unique: ``INSERT ... ON CONFLICT DO NOTHING``, then the existing
  row is read in the same transaction.
* Claims use ``SELECT ... FOR UPDATE SKIP LOCKED``: instances never wait for each other's candidate
  rows and never claim the same row twice; a lease (owner, until) marks the claim for later checks.
* Each transaction collects its audit records and appends them at the very end under the
  ``audit_head`` row lock, so the global hash chain is serialised across instances and seq/prev_hash
  never fork. Locks are always taken in the order message rows → ``audit_head``, so these
  transactions cannot deadlock with each other; a deadlock or serialisation failure from anything
  else is retried (the transaction was rolled back, nothing was committed).
* The schema lives in :mod:`gateway.store.migrations.postgresql` (versioned, applied on open).

Row mapping and JSON encoding are shared with the SQLite backend, so both store byte-identical JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, LiteralString, TypeVar

import psycopg
import structlog
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow, dict_row

from gateway.model import AckState, Envelope, MessageState
from gateway.problems import Problem
from gateway.store.base import (
    GENESIS_HASH,
    AuditRecord,
    AuditVerification,
    LeaseLost,
    MessageNotFound,
    Step,
    StoredMessage,
    acknowledged_step,
    attempt_record,
    audit_hash,
    step_applies,
    transition_changes,
    verify_chain,
)
from gateway.store.migrations.postgresql import migrate
from gateway.store.sqlite import envelope_columns, row_to_message

log = structlog.get_logger(__name__)

T = TypeVar("T")
Conn = psycopg.AsyncConnection[DictRow]
Query = LiteralString | sql.SQL | sql.Composed

_TX_RETRIES = 5
_VERIFY_BATCH = 5000
CLOCK_SKEW_WARNING = 2.0  # seconds between this host and the database server


class StoreNotOpen(RuntimeError):
    def __init__(self) -> None:
        super().__init__("the PostgreSQL store is not open")


class UnstorableText(ValueError):
    """A message identity field holds a NUL character, which PostgreSQL text cannot store."""

    def __init__(self, field_name: str) -> None:
        super().__init__(f"message field {field_name!r} contains a NUL character, which PostgreSQL cannot store")
        self.field_name = field_name


# Envelope columns that identify or route a message: refused (not altered) when they hold NUL,
# since changing them could make two different upstream keys collide.
_IDENTITY_COLUMNS = ("id", "channel", "source_type", "reference", "idempotency_key", "case_ref", "route", "adapter")


def _clean(text: str) -> str:
    """Free text (reasons, actors, errors) with NUL replaced by U+FFFD: PostgreSQL text cannot hold
    NUL, and an adapter's error text must never make recording its outcome fail. The audit hash
    covers the cleaned text, so the chain verifies."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def check_dsn(dsn: str) -> None:
    """Raise ``ValueError`` (without echoing the DSN, which may hold a password) when it cannot be parsed."""
    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise ValueError("not a valid libpq connection string or postgresql:// URI") from None


class _Pool:
    """A few connections, opened lazily and handed out one per transaction.

    Small on purpose: the store serialises its audit appends anyway, so many connections buy little.
    A connection that comes back broken or not idle (e.g. cancelled mid-query) is closed, not reused.
    """

    def __init__(self, dsn: str, size: int, configure: Callable[[Conn], Awaitable[None]]) -> None:
        self._dsn = dsn
        self._configure = configure
        self._slots = asyncio.Semaphore(size)
        self._idle: list[Conn] = []
        self.closed = False

    async def _connect(self) -> Conn:
        params = conninfo_to_dict(self._dsn)
        extra: dict[str, Any] = {}
        if "application_name" not in params:
            extra["application_name"] = "ozg-gateway"
        if "connect_timeout" not in params:
            extra["connect_timeout"] = 10
        conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True, row_factory=dict_row, **extra)
        try:
            await self._configure(conn)
        except BaseException:
            await conn.close()
            raise
        return conn

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Conn]:
        if self.closed:
            raise StoreNotOpen()
        async with self._slots:
            conn = self._idle.pop() if self._idle else await self._connect()
            try:
                yield conn
            finally:
                reusable = (
                    not self.closed
                    and not conn.closed
                    and not conn.broken
                    and conn.info.transaction_status == TransactionStatus.IDLE
                )
                if reusable:
                    self._idle.append(conn)
                else:
                    with contextlib.suppress(Exception):
                        await conn.close()

    async def close(self) -> None:
        self.closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                await conn.close()


@dataclass(slots=True)
class _PendingAudit:
    message_id: str
    event: str
    from_state: str | None
    to_state: str | None
    reason: str
    actor: str
    details: dict[str, Any]
    at: float


@dataclass(slots=True)
class _Tx:
    """One transaction: queries plus the audit records to append when it is about to commit."""

    conn: Conn
    audits: list[_PendingAudit] = field(default_factory=list)

    async def one(self, query: Query, params: Sequence[Any] = ()) -> DictRow | None:
        cur = await self.conn.execute(query, params)
        return await cur.fetchone()

    async def all(self, query: Query, params: Sequence[Any] = ()) -> list[DictRow]:
        cur = await self.conn.execute(query, params)
        return await cur.fetchall()

    async def rowcount(self, query: Query, params: Sequence[Any] = ()) -> int:
        cur = await self.conn.execute(query, params)
        return cur.rowcount

    async def load(self, message_id: str) -> DictRow:
        """The message row, locked until COMMIT (always the first lock a transaction takes)."""
        row = await self.one("SELECT * FROM messages WHERE id = %s FOR UPDATE", (message_id,))
        if row is None:
            raise MessageNotFound(message_id)
        return row

    def audit(
        self,
        *,
        message_id: str,
        event: str,
        from_state: str | None,
        to_state: str | None,
        reason: str,
        actor: str,
        details: Mapping[str, Any] | None,
        at: float,
    ) -> None:
        self.audits.append(
            _PendingAudit(
                message_id, _clean(event), from_state, to_state, _clean(reason), _clean(actor), dict(details or {}), at
            )
        )

    async def flush_audit(self) -> None:
        """Append the collected records to the global chain. Runs last: the head lock is held until COMMIT."""
        if not self.audits:
            return
        head = await self.one("SELECT seq, hash FROM audit_head FOR UPDATE")
        assert head is not None, "audit_head row is missing (schema damaged)"
        seq, prev_hash = int(head["seq"]), str(head["hash"])
        rows = []
        for rec in self.audits:
            seq += 1
            digest = audit_hash(
                prev_hash,
                seq=seq,
                message_id=rec.message_id,
                at=rec.at,
                event=rec.event,
                from_state=rec.from_state,
                to_state=rec.to_state,
                reason=rec.reason,
                actor=rec.actor,
                details=rec.details,
            )
            rows.append(
                (
                    seq,
                    rec.message_id,
                    rec.at,
                    rec.event,
                    rec.from_state,
                    rec.to_state,
                    rec.reason,
                    rec.actor,
                    _dumps(rec.details),
                    prev_hash,
                    digest,
                )
            )
            prev_hash = digest
        async with self.conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO audit (seq, message_id, at, event, from_state, to_state, reason, actor, details,"
                " prev_hash, hash) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                rows,
            )
        await self.conn.execute("UPDATE audit_head SET seq = %s, hash = %s", (seq, prev_hash))
        self.audits.clear()


def _audit_from_row(row: Mapping[str, Any]) -> AuditRecord:
    return AuditRecord(
        seq=int(row["seq"]),
        message_id=row["message_id"],
        at=row["at"],
        event=row["event"],
        from_state=row["from_state"],
        to_state=row["to_state"],
        reason=row["reason"],
        actor=row["actor"],
        details=json.loads(row["details"]),
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )


class PostgresStore:
    """The :class:`gateway.store.base.Store` on PostgreSQL (psycopg 3, async)."""

    def __init__(self, dsn: str, *, clock: Callable[[], float] = time.time, pool_size: int = 4) -> None:
        check_dsn(dsn)
        if pool_size < 1:
            raise ValueError("pool_size must be >= 1")
        self._dsn = dsn
        self._pool_size = pool_size
        self.clock = clock
        self._pool: _Pool | None = None

    def __repr__(self) -> str:  # never show the DSN: it may carry a password
        return f"PostgresStore(pool_size={self._pool_size})"

    # plumbing --------------------------------------------------------------------------------

    @staticmethod
    async def _configure(conn: Conn) -> None:
        cur = await conn.execute("SHOW synchronous_commit")
        row = await cur.fetchone()
        # "off" acknowledges commits before they reach disk: an acknowledged application could
        # vanish on a crash. Every other value (local, remote_write, on, remote_apply) is durable here.
        if row is not None and row["synchronous_commit"] == "off":
            await conn.execute("SET synchronous_commit = on")

    def _require_pool(self) -> _Pool:
        if self._pool is None or self._pool.closed:
            raise StoreNotOpen()
        return self._pool

    async def _write(self, fn: Callable[[_Tx], Awaitable[T]]) -> T:
        pool = self._require_pool()
        for attempt in range(1, _TX_RETRIES + 1):
            began = False
            async with pool.connection() as conn:
                try:
                    async with conn.transaction():
                        began = True
                        tx = _Tx(conn)
                        result = await fn(tx)
                        await tx.flush_audit()
                    return result
                except (errors.DeadlockDetected, errors.SerializationFailure) as exc:
                    # Raised before COMMIT: the transaction was rolled back, so running it again is safe.
                    if attempt == _TX_RETRIES:
                        raise
                    log.warning("store_tx_retry", error=type(exc).__name__, attempt=attempt)
                    await asyncio.sleep(0.01 * attempt)
                except psycopg.OperationalError:
                    # A pooled connection the server has dropped (restart, idle timeout) fails on
                    # BEGIN, before anything of ours was sent: retry on a fresh one. A failure after
                    # BEGIN may have been a COMMIT whose answer was lost, so it is never retried.
                    if began or not conn.broken or attempt == _TX_RETRIES:
                        raise
                    log.warning("store_reconnect", attempt=attempt)
        raise AssertionError("unreachable")

    async def _read(self, fn: Callable[[_Tx], Awaitable[T]]) -> T:
        """A read-only statement (autocommit); retried on a fresh connection if a pooled one had gone stale."""
        pool = self._require_pool()
        for attempt in range(1, _TX_RETRIES + 1):
            async with pool.connection() as conn:
                try:
                    return await fn(_Tx(conn))
                except psycopg.OperationalError:
                    if attempt == _TX_RETRIES or not conn.broken:
                        raise
                    log.warning("store_reconnect", attempt=attempt)
        raise AssertionError("unreachable")

    async def open(self) -> None:
        if self._pool is not None and not self._pool.closed:
            return
        pool = _Pool(self._dsn, self._pool_size, self._configure)
        try:
            async with pool.connection() as conn:
                await migrate(conn)
                cur = await conn.execute(
                    "SELECT current_setting('fsync') AS fsync, extract(epoch FROM clock_timestamp())::float8 AS now"
                )
                row = await cur.fetchone()
                if row is not None and row["fsync"] == "off":
                    log.warning("postgres_fsync_off", reason="the server does not fsync: commits are not crash-safe")
                # Leases compare the instances' own clocks (each writes now + lease_seconds): a large
                # skew between instances shortens or stretches leases. The server is the common reference.
                if row is not None and abs(float(row["now"]) - time.time()) > CLOCK_SKEW_WARNING:
                    log.warning(
                        "clock_skew", skew_s=round(float(row["now"]) - time.time(), 3), reason="sync clocks (NTP)"
                    )
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def upgrade(self) -> int:
        """Apply pending migrations (``open`` does this too); returns the schema version."""
        pool = self._require_pool()
        async with pool.connection() as conn:
            return await migrate(conn)

    async def schema_version(self) -> int:
        row = await self._read(lambda tx: tx.one("SELECT max(version) AS v FROM schema_migrations"))
        return int(row["v"]) if row is not None and row["v"] is not None else 0

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def ping(self) -> None:
        await self._read(lambda tx: tx.one("SELECT 1"))

    # audit -------------------------------------------------------------------------------------

    async def audit_trail(self, message_id: str) -> list[AuditRecord]:
        rows = await self._read(
            lambda tx: tx.all("SELECT * FROM audit WHERE message_id = %s ORDER BY seq", (message_id,))
        )
        return [_audit_from_row(r) for r in rows]

    async def verify_audit(self) -> AuditVerification:
        """Check the whole chain in batches, inside one snapshot (so concurrent appends do not matter),
        and that ``audit_head`` points at the last record (a cut-off tail would otherwise verify)."""
        return await self._read(self._verify)

    @staticmethod
    async def _verify(tx: _Tx) -> AuditVerification:
        async with tx.conn.transaction():
            await tx.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            checked = 0
            prev_hash, last_seq = GENESIS_HASH, 0
            while True:
                rows = await tx.all(
                    "SELECT * FROM audit WHERE seq > %s ORDER BY seq LIMIT %s", (last_seq, _VERIFY_BATCH)
                )
                if not rows:
                    break
                records = [_audit_from_row(r) for r in rows]
                if records[0].seq != last_seq + 1:
                    if last_seq == 0:
                        return AuditVerification(False, checked, records[0].seq, "the chain does not start at seq 1")
                    return AuditVerification(
                        False, checked, records[0].seq, f"record(s) missing before seq {records[0].seq}"
                    )
                result = verify_chain(records, start_hash=prev_hash)
                if not result.ok:
                    return AuditVerification(False, checked + result.checked, result.broken_seq, result.reason)
                checked += len(records)
                prev_hash, last_seq = records[-1].hash, records[-1].seq
            head = await tx.one("SELECT seq, hash FROM audit_head")
            if head is None:
                return AuditVerification(False, checked, None, "the audit head row is missing")
            if int(head["seq"]) != last_seq or head["hash"] != prev_hash:
                return AuditVerification(
                    False,
                    checked,
                    min(int(head["seq"]), last_seq) + 1,  # the first seq beyond what both agree on
                    f"the audit head (seq {head['seq']}) does not match the last record (seq {last_seq}):"
                    " records were removed or added outside the store",
                )
            return AuditVerification(True, checked)

    async def note(
        self,
        message_id: str,
        *,
        event: str,
        reason: str,
        actor: str,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        async def fn(tx: _Tx) -> None:
            row = await tx.load(message_id)
            tx.audit(
                message_id=message_id,
                event=event,
                from_state=row["state"],
                to_state=row["state"],
                reason=reason,
                actor=actor,
                details=details,
                at=self.clock(),
            )

        await self._write(fn)

    # messages ----------------------------------------------------------------------------------

    async def _apply_steps(self, tx: _Tx, message_id: str, row: DictRow, steps: Sequence[Step], now: float) -> DictRow:
        """Apply steps to a loaded (locked) row inside the caller's transaction; returns the final row."""
        for step in steps:
            if not step_applies(row, step):
                continue
            if step.last_error is not None:
                step = replace(step, last_error=_clean(step.last_error))
            current, sets = transition_changes(message_id, row, step, now=now)
            query = sql.SQL("UPDATE messages SET {} WHERE id = %s RETURNING *").format(
                sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in sets)
            )
            updated = await tx.one(query, (*sets.values(), message_id))
            assert updated is not None
            tx.audit(
                message_id=message_id,
                event="transition",
                from_state=current.value,
                to_state=step.target.value,
                reason=step.reason,
                actor=step.actor,
                details=step.details,
                at=now,
            )
            if step.lease is not None:
                tx.audit(message_id=message_id, at=now, **attempt_record(step, sets["attempts"]))
            row = updated
        return row

    async def insert(
        self,
        envelope: Envelope,
        *,
        actor: str,
        reason: str = "received",
        problems: Sequence[Problem] = (),
        then: Sequence[Step] = (),
    ) -> tuple[StoredMessage, bool]:
        async def fn(tx: _Tx) -> tuple[StoredMessage, bool]:
            now = self.clock()
            cols = envelope_columns(envelope.with_(state=MessageState.RECEIVED))
            for name in _IDENTITY_COLUMNS:
                if isinstance(cols[name], str) and "\x00" in cols[name]:
                    raise UnstorableText(name)
            cols["updated_at"] = now
            cols["problems"] = _dumps([p.as_dict() for p in problems])
            query = sql.SQL(
                "INSERT INTO messages ({}) VALUES ({}) ON CONFLICT (channel, idempotency_key) DO NOTHING RETURNING *"
            ).format(
                sql.SQL(", ").join(sql.Identifier(c) for c in cols),
                sql.SQL(", ").join(sql.Placeholder() for _ in cols),
            )
            row = await tx.one(query, tuple(cols.values()))
            if row is None:
                # Someone stored this (channel, idempotency_key) first; READ COMMITTED lets this
                # statement see it (ON CONFLICT waited for that transaction to commit).
                existing = await tx.one(
                    "SELECT * FROM messages WHERE channel = %s AND idempotency_key = %s",
                    (envelope.source.channel, envelope.source.idempotency_key),
                )
                assert existing is not None, "conflicting row vanished (messages are never deleted)"
                return row_to_message(existing), False
            tx.audit(
                message_id=envelope.id,
                event="transition",
                from_state=None,
                to_state=MessageState.RECEIVED.value,
                reason=reason,
                actor=actor,
                details={"channel": envelope.source.channel, "reference": envelope.source.reference},
                at=now,
            )
            if then:
                row = await self._apply_steps(tx, envelope.id, row, then, now)
            return row_to_message(row), True

        return await self._write(fn)

    async def get(self, message_id: str) -> StoredMessage | None:
        row = await self._read(lambda tx: tx.one("SELECT * FROM messages WHERE id = %s", (message_id,)))
        return row_to_message(row) if row else None

    async def find_by_source(self, channel: str, idempotency_key: str) -> StoredMessage | None:
        row = await self._read(
            lambda tx: tx.one(
                "SELECT * FROM messages WHERE channel = %s AND idempotency_key = %s", (channel, idempotency_key)
            )
        )
        return row_to_message(row) if row else None

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
        first = Step(
            target,
            reason,
            actor,
            details=details,
            lease_owner=lease_owner,
            route=route,
            adapter=adapter,
            next_attempt_at=next_attempt_at,
            problems=problems,
            ack=ack,
            ack_lease=ack_lease,
            last_error=last_error,
            reset_attempts=reset_attempts,
        )

        async def fn(tx: _Tx) -> StoredMessage:
            row = await tx.load(message_id)
            return row_to_message(await self._apply_steps(tx, message_id, row, (first, *then), self.clock()))

        return await self._write(fn)

    async def claim_deliveries(
        self, *, owner: str, adapter: str, limit: int, now: float, lease_seconds: float
    ) -> list[StoredMessage]:
        async def fn(tx: _Tx) -> list[StoredMessage]:
            # SKIP LOCKED: rows another instance is claiming or transitioning right now are simply
            # not candidates for this claim; FOR UPDATE keeps them ours until COMMIT.
            rows = await tx.all(
                "SELECT id, state, attempts FROM messages WHERE adapter = %s AND state IN ('routed', 'failed')"
                " AND next_attempt_at <= %s AND (lease_until IS NULL OR lease_until < %s)"
                " ORDER BY next_attempt_at, id LIMIT %s FOR UPDATE SKIP LOCKED",
                (adapter, now, now, limit),
            )
            if not rows:
                return []
            ids = [r["id"] for r in rows]
            updated = await tx.all(
                "UPDATE messages SET lease_owner = %s, lease_until = %s, attempts = attempts + 1, updated_at = %s"
                " WHERE id = ANY(%s) RETURNING *",
                (owner, now + lease_seconds, now, ids),
            )
            by_id = {r["id"]: r for r in updated}
            for row in rows:
                attempt = row["attempts"] + 1
                tx.audit(
                    message_id=row["id"],
                    event="attempt",
                    from_state=row["state"],
                    to_state=row["state"],
                    reason=f"delivery attempt {attempt}",
                    actor=owner,
                    details={"adapter": adapter, "attempt": attempt},
                    at=now,
                )
            return [row_to_message(by_id[i]) for i in ids]

        return await self._write(fn)

    async def renew_lease(self, message_id: str, *, owner: str, until: float) -> None:
        async def fn(tx: _Tx) -> None:
            count = await tx.rowcount(
                "UPDATE messages SET lease_until = %s WHERE id = %s AND lease_owner = %s AND lease_until >= %s",
                (until, message_id, owner, self.clock()),
            )
            if count != 1:
                raise LeaseLost(message_id)

        await self._write(fn)

    async def release_leases(self, owner: str) -> int:
        async def fn(tx: _Tx) -> int:
            delivery = await tx.rowcount(
                "UPDATE messages SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = %s", (owner,)
            )
            acks = await tx.rowcount(
                "UPDATE messages SET ack_lease_owner = NULL, ack_lease_until = NULL WHERE ack_lease_owner = %s",
                (owner,),
            )
            return delivery + acks

        return await self._write(fn)

    async def set_ack_pending(self, message_id: str, *, reason: str, actor: str) -> StoredMessage:
        async def fn(tx: _Tx) -> StoredMessage:
            row = await tx.load(message_id)
            if row["ack"] == AckState.DONE.value:
                return row_to_message(row)
            now = self.clock()
            updated = await tx.one(
                "UPDATE messages SET ack = 'pending', ack_next_at = %s, updated_at = %s WHERE id = %s RETURNING *",
                (now, now, message_id),
            )
            assert updated is not None
            tx.audit(
                message_id=message_id,
                event="ack",
                from_state=row["state"],
                to_state=row["state"],
                reason=reason,
                actor=actor,
                details={"ack": "pending"},
                at=now,
            )
            return row_to_message(updated)

        return await self._write(fn)

    async def claim_acks(self, *, owner: str, limit: int, now: float, lease_seconds: float) -> list[StoredMessage]:
        async def fn(tx: _Tx) -> list[StoredMessage]:
            rows = await tx.all(
                "SELECT id FROM messages WHERE ack = 'pending' AND ack_next_at <= %s"
                " AND (ack_lease_until IS NULL OR ack_lease_until < %s) ORDER BY ack_next_at, id LIMIT %s"
                " FOR UPDATE SKIP LOCKED",
                (now, now, limit),
            )
            if not rows:
                return []
            ids = [r["id"] for r in rows]
            updated = await tx.all(
                "UPDATE messages SET ack_lease_owner = %s, ack_lease_until = %s, ack_attempts = ack_attempts + 1"
                " WHERE id = ANY(%s) RETURNING *",
                (owner, now + lease_seconds, ids),
            )
            by_id = {r["id"]: r for r in updated}
            return [row_to_message(by_id[i]) for i in ids]

        return await self._write(fn)

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
        async def fn(tx: _Tx) -> StoredMessage:
            row = await tx.load(message_id)
            now = self.clock()
            if row["ack_lease_owner"] != owner:
                raise LeaseLost(message_id)
            state = MessageState(row["state"])
            if not done:
                updated = await tx.one(
                    "UPDATE messages SET ack_next_at = %s, ack_lease_owner = NULL, ack_lease_until = NULL,"
                    " last_error = %s, updated_at = %s WHERE id = %s RETURNING *",
                    (next_attempt_at if next_attempt_at is not None else now, _clean(reason), now, message_id),
                )
                tx.audit(
                    message_id=message_id,
                    event="ack-failed",
                    from_state=state.value,
                    to_state=state.value,
                    reason=reason,
                    actor=actor,
                    details={"attempt": row["ack_attempts"]},
                    at=now,
                )
                assert updated is not None
                return row_to_message(updated)
            tx.audit(
                message_id=message_id,
                event="ack",
                from_state=state.value,
                to_state=state.value,
                reason=reason,
                actor=actor,
                details={"ack": "done"},
                at=now,
            )
            updated = await tx.one(
                "UPDATE messages SET ack = 'done', ack_lease_owner = NULL, ack_lease_until = NULL,"
                " updated_at = %s WHERE id = %s RETURNING *",
                (now, message_id),
            )
            assert updated is not None
            if state is MessageState.DELIVERED:
                updated = await self._apply_steps(tx, message_id, updated, [acknowledged_step(actor)], now)
            return row_to_message(updated)

        return await self._write(fn)

    async def list_messages(
        self, *, states: Sequence[MessageState] | None = None, limit: int = 100, offset: int = 0
    ) -> list[StoredMessage]:
        async def fn(tx: _Tx) -> list[DictRow]:
            if states:
                return await tx.all(
                    "SELECT * FROM messages WHERE state = ANY(%s) ORDER BY received_at, id LIMIT %s OFFSET %s",
                    ([s.value for s in states], limit, offset),
                )
            return await tx.all("SELECT * FROM messages ORDER BY received_at, id LIMIT %s OFFSET %s", (limit, offset))

        return [row_to_message(r) for r in await self._read(fn)]

    async def count_by_state(self) -> dict[str, int]:
        rows = await self._read(lambda tx: tx.all("SELECT state, count(*) AS n FROM messages GROUP BY state"))
        counts = {s.value: 0 for s in MessageState}
        counts.update({r["state"]: int(r["n"]) for r in rows})
        return counts
