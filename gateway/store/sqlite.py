"""SQLite store backend (the default): WAL, group commit, one connection used on the event loop.

Each public method runs one short transaction inline; the fsync that makes it durable runs in a
worker thread and is shared by every commit made meanwhile (see :class:`SQLiteStore`). ``BEGIN
IMMEDIATE`` takes the write lock up front, which makes claim-then-update atomic even with several
processes (e.g. the admin CLI) on one file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from gateway.model import (
    AckState,
    BlobRef,
    Envelope,
    MessageState,
    RoutingKeys,
    SourceRef,
)
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
from gateway.store.blobs import fsync_dir

T = TypeVar("T")

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        channel TEXT NOT NULL,
        source_type TEXT NOT NULL,
        reference TEXT NOT NULL,
        idempotency_key TEXT NOT NULL,
        case_ref TEXT,
        received_at REAL NOT NULL,
        routing TEXT NOT NULL,
        metadata TEXT NOT NULL,
        data TEXT,
        attachments TEXT NOT NULL,
        state TEXT NOT NULL,
        ack TEXT NOT NULL,
        route TEXT,
        adapter TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL,
        queued_at REAL,
        lease_owner TEXT,
        lease_until REAL,
        last_error TEXT,
        problems TEXT NOT NULL DEFAULT '[]',
        ack_attempts INTEGER NOT NULL DEFAULT 0,
        ack_next_at REAL,
        ack_lease_owner TEXT,
        ack_lease_until REAL,
        updated_at REAL NOT NULL,
        UNIQUE (channel, idempotency_key)
    );
    CREATE INDEX messages_due ON messages (adapter, state, next_attempt_at);
    CREATE INDEX messages_ack_due ON messages (ack, ack_next_at);
    CREATE INDEX messages_state ON messages (state, updated_at);
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY,
        message_id TEXT NOT NULL,
        at REAL NOT NULL,
        event TEXT NOT NULL,
        from_state TEXT,
        to_state TEXT,
        reason TEXT NOT NULL,
        actor TEXT NOT NULL,
        details TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX audit_message ON audit (message_id, seq);
    -- The audit trail is append-only: the database itself refuses edits.
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
    """,
    # The chain's last (seq, hash), moved in the same transaction as every append: the newest
    # records have no successor whose link would break, so without it a cut-off tail verifies.
    """
    CREATE TABLE audit_head (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        seq INTEGER NOT NULL,
        hash TEXT NOT NULL
    );
    INSERT INTO audit_head (id, seq, hash)
        SELECT 1, COALESCE(MAX(seq), 0),
               COALESCE((SELECT hash FROM audit ORDER BY seq DESC LIMIT 1), hex(zeroblob(32)))  -- GENESIS_HASH
        FROM audit;
    CREATE TRIGGER audit_head_forward_only BEFORE UPDATE ON audit_head WHEN NEW.seq < OLD.seq
        BEGIN SELECT RAISE(ABORT, 'audit_head only moves forward'); END;
    CREATE TRIGGER audit_head_no_delete BEFORE DELETE ON audit_head
        BEGIN SELECT RAISE(ABORT, 'audit_head only moves forward'); END;
    """,
)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _blob_to_json(blob: BlobRef | None) -> dict[str, Any] | None:
    if blob is None:
        return None
    return {
        "name": blob.name,
        "blob_id": blob.blob_id,
        "sha512": blob.sha512,
        "size": blob.size,
        "media_type": blob.media_type,
        "filename": blob.filename,
        "attachment_id": blob.attachment_id,
    }


def _blob_from_json(raw: Mapping[str, Any]) -> BlobRef:
    return BlobRef(**raw)


def row_to_message(row: Any) -> StoredMessage:
    data = json.loads(row["data"]) if row["data"] else None
    envelope = Envelope(
        id=row["id"],
        source=SourceRef(
            channel=row["channel"],
            type=row["source_type"],
            reference=row["reference"],
            idempotency_key=row["idempotency_key"],
            case=row["case_ref"],
        ),
        received_at=datetime.fromtimestamp(row["received_at"], UTC),
        routing=RoutingKeys.from_dict(json.loads(row["routing"])),
        metadata=json.loads(row["metadata"]),
        data=_blob_from_json(data) if data else None,
        attachments=tuple(_blob_from_json(a) for a in json.loads(row["attachments"])),
        state=MessageState(row["state"]),
        ack=AckState(row["ack"]),
        route=row["route"],
        adapter=row["adapter"],
        attempts=row["attempts"],
    )
    return StoredMessage(
        envelope=envelope,
        problems=tuple(Problem.from_dict(p) for p in json.loads(row["problems"])),
        next_attempt_at=row["next_attempt_at"],
        lease_owner=row["lease_owner"],
        lease_until=row["lease_until"],
        last_error=row["last_error"],
        queued_at=row["queued_at"],
        ack_attempts=row["ack_attempts"],
        updated_at=row["updated_at"],
    )


def envelope_columns(envelope: Envelope) -> dict[str, Any]:
    return {
        "id": envelope.id,
        "channel": envelope.source.channel,
        "source_type": envelope.source.type,
        "reference": envelope.source.reference,
        "idempotency_key": envelope.source.idempotency_key,
        "case_ref": envelope.source.case,
        "received_at": envelope.received_at.timestamp(),
        "routing": _dumps(envelope.routing.as_dict()),
        "metadata": _dumps(dict(envelope.metadata)),
        "data": _dumps(_blob_to_json(envelope.data)) if envelope.data else None,
        "attachments": _dumps([_blob_to_json(a) for a in envelope.attachments]),
        "state": envelope.state.value,
        "ack": envelope.ack.value,
        "route": envelope.route,
        "adapter": envelope.adapter,
        "attempts": envelope.attempts,
    }


BUSY_WAIT_MAX = 30.0  # seconds a statement waits for another process's lock before failing
CHECKPOINT_BYTES = 8 << 20  # checkpoint (in a worker thread) once the WAL has grown past this


class SQLiteStore:
    """SQLite backend: one connection, used directly on the event loop; the slow parts are not.

    Statements take microseconds, so running them inline is cheaper than any thread hop (a hop costs
    ~60 µs of CPU in futex wake-ups and GIL hand-offs; measured in bench/RESULTS.md). What can take
    long never runs on the loop:

    * **The fsync (group commit).** The connection runs WAL with ``synchronous=NORMAL``: a COMMIT
      writes its WAL frames without syncing. Every write call then awaits :meth:`_durable`: one
      ``fdatasync`` of the WAL file in a worker thread covers every commit made before it started,
      however many callers committed meanwhile. Nobody is answered before the fsync covering their
      commit returned, so each call still returns only after its transaction is on disk (what
      ``synchronous=FULL`` gives), with one fsync per group instead of one per transaction. A write
      also waits for the commits before it: work claimed from the store (e.g. a delivery) never
      starts before the message it came from is durable.
    * **Checkpoints.** Auto-checkpoint is off on this connection; once the WAL has grown past
      ``CHECKPOINT_BYTES`` a second connection checkpoints in a worker thread (PASSIVE: writers go on).
    * **Another process's lock** (the admin CLI writing): ``busy_timeout`` is 0 here; a busy statement
      is retried after ``asyncio.sleep`` for up to ``BUSY_WAIT_MAX`` seconds.
    * **Whole-table reads** (audit verification) run in a worker thread on their own connection.
    """

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self._conn: sqlite3.Connection | None = None
        self._wal_fd: int | None = None
        self._wal_ino: int | None = None
        self._commit_seq = 0  # commits made on this connection
        self._synced_seq = 0  # commits known to be on disk
        self._sync_task: asyncio.Task[None] | None = None
        self._checkpoint_task: asyncio.Task[None] | None = None
        self.syncs = 0  # WAL fsyncs done (tests and benchmarks compare them with the commits)

    @property
    def commits(self) -> int:
        return self._commit_seq

    # plumbing --------------------------------------------------------------------------------

    def _connect(self, *, busy_timeout_ms: int = 0) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL: COMMIT does not fsync; _durable() does, for a whole group of commits, before any
        # caller is answered. (Plain NORMAL without it could lose acknowledged applications.)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def _open_wal(self) -> None:
        """Open the WAL file for our fsyncs (it exists while our connection is open in WAL mode)."""
        wal = Path(f"{self.path}-wal")
        fd = os.open(wal, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        old, self._wal_fd, self._wal_ino = self._wal_fd, fd, os.fstat(fd).st_ino
        if old is not None:
            os.close(old)
        fsync_dir(wal.parent)  # the WAL file's directory entry must survive a power loss too

    def _sync_wal(self) -> None:
        """fdatasync the WAL (worker thread). Reopened first if it is not the file SQLite uses now."""
        try:
            current = os.stat(f"{self.path}-wal").st_ino
        except FileNotFoundError:
            current = None
        if current is not None and current != self._wal_ino:
            self._open_wal()
        assert self._wal_fd is not None
        os.fdatasync(self._wal_fd)

    async def _durable(self) -> None:
        """Return once every commit made so far on this connection is on disk (group commit)."""
        target = self._commit_seq
        while self._synced_seq < target:
            task = self._sync_task
            if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
                task = self._sync_task = asyncio.ensure_future(self._sync())
            await asyncio.shield(task)

    async def _sync(self) -> None:
        upto = self._commit_seq
        await asyncio.to_thread(self._sync_wal)
        self.syncs += 1
        self._synced_seq = max(self._synced_seq, upto)
        if self._wal_fd is not None and os.fstat(self._wal_fd).st_size > CHECKPOINT_BYTES:
            task = self._checkpoint_task
            if task is None or task.done():
                self._checkpoint_task = asyncio.ensure_future(asyncio.to_thread(self._checkpoint))

    def _checkpoint(self) -> None:
        conn = self._connect(busy_timeout_ms=int(BUSY_WAIT_MAX * 1000))
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            conn.close()

    def _require(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("store is not open")
        return self._conn

    async def _retry_busy(self, attempt: Callable[[], T]) -> T:
        deadline = time.monotonic() + BUSY_WAIT_MAX
        delay = 0.001
        while True:
            try:
                return attempt()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A read (or a statement managing its own transaction), on the loop."""
        return await self._retry_busy(lambda: fn(self._require()))

    def _tx(self, conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
        changes = conn.total_changes
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (SQLITE_FULL, SQLITE_IOERR): a second ROLLBACK would
            # fail and hide the real error ("database or disk is full") from logs and callers.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if conn.total_changes != changes:  # e.g. an empty claim wrote nothing: nothing to fsync
            self._commit_seq += 1
        return result

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """One transaction on the loop; returns after it (and all commits before it) is on disk."""
        result = await self._retry_busy(lambda: self._tx(self._require(), fn))
        await self._durable()
        return result

    async def _read_apart(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A long read in a worker thread on its own connection (the loop stays free)."""

        def work() -> T:
            conn = self._connect(busy_timeout_ms=int(BUSY_WAIT_MAX * 1000))
            try:
                return fn(conn)
            finally:
                conn.close()

        return await asyncio.to_thread(work)

    def pragma(self, name: str) -> Any:
        return self._require().execute(f"PRAGMA {name}").fetchone()[0]

    async def open(self) -> None:
        conn = await asyncio.to_thread(self._connect, busy_timeout_ms=int(BUSY_WAIT_MAX * 1000))
        try:
            # Opening runs WAL recovery and the migrations: may wait for locks, so off the loop.
            await asyncio.to_thread(self._tx, conn, self._migrate)
            conn.execute("PRAGMA busy_timeout=0")
            conn.execute("PRAGMA wal_autocheckpoint=0")
            await asyncio.to_thread(self._open_wal)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        await self._durable()

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL)")
        done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
        for version, script in enumerate(MIGRATIONS, start=1):
            if version in done:
                continue
            for statement in _split_sql(script):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, time.time()))

    async def schema_version(self) -> int:
        return await self._run(lambda c: int(c.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]))

    async def close(self) -> None:
        for task in (self._sync_task, self._checkpoint_task):
            if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
                with contextlib.suppress(Exception):
                    await task
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.to_thread(conn.close)  # the last connection checkpoints and removes the WAL
        if self._wal_fd is not None:
            fd, self._wal_fd = self._wal_fd, None
            os.close(fd)

    async def ping(self) -> None:
        await self._run(lambda c: c.execute("SELECT 1").fetchone())

    # audit -------------------------------------------------------------------------------------

    def _append_audit(
        self,
        conn: sqlite3.Connection,
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
        head = conn.execute("SELECT seq, hash FROM audit_head").fetchone()
        seq = head["seq"] + 1
        prev_hash = head["hash"]
        details = dict(details or {})
        digest = audit_hash(
            prev_hash,
            seq=seq,
            message_id=message_id,
            at=at,
            event=event,
            from_state=from_state,
            to_state=to_state,
            reason=reason,
            actor=actor,
            details=details,
        )
        conn.execute(
            "INSERT INTO audit (seq, message_id, at, event, from_state, to_state, reason, actor, details,"
            " prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                seq,
                message_id,
                at,
                event,
                from_state,
                to_state,
                reason,
                actor,
                _dumps(details),
                prev_hash,
                digest,
            ),
        )
        conn.execute("UPDATE audit_head SET seq = ?, hash = ?", (seq, digest))

    @staticmethod
    def _audit_from_row(row: Any) -> AuditRecord:
        return AuditRecord(
            seq=row["seq"],
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

    async def audit_trail(self, message_id: str) -> list[AuditRecord]:
        rows = await self._run(
            lambda c: c.execute("SELECT * FROM audit WHERE message_id = ? ORDER BY seq", (message_id,)).fetchall()
        )
        return [self._audit_from_row(r) for r in rows]

    async def verify_audit(self) -> AuditVerification:
        """Check the hash chain, and that the audit head points at its last record."""

        def read(conn: sqlite3.Connection) -> tuple[list[sqlite3.Row], sqlite3.Row | None]:
            conn.execute("BEGIN")  # one snapshot for the records and the head
            try:
                return conn.execute("SELECT * FROM audit ORDER BY seq").fetchall(), conn.execute(
                    "SELECT seq, hash FROM audit_head"
                ).fetchone()
            finally:
                conn.execute("ROLLBACK")

        # The whole table: read (and hashed below) off the loop, on a connection of its own.
        rows, head = await self._read_apart(read)
        return await asyncio.to_thread(self._verify_rows, rows, head)

    def _verify_rows(self, rows: list[sqlite3.Row], head: sqlite3.Row | None) -> AuditVerification:
        records = [self._audit_from_row(r) for r in rows]
        if records and records[0].seq != 1:
            return AuditVerification(False, 0, records[0].seq, "the chain does not start at seq 1")
        result = verify_chain(records)
        if not result.ok:
            return result
        last_seq, last_hash = (records[-1].seq, records[-1].hash) if records else (0, GENESIS_HASH)
        if head is None:
            return AuditVerification(False, result.checked, last_seq + 1, "the audit head row is missing")
        if head["seq"] != last_seq or head["hash"] != last_hash:
            return AuditVerification(
                False,
                result.checked,
                min(head["seq"], last_seq) + 1,
                f"the audit head (seq {head['seq']}) does not match the last record (seq {last_seq}):"
                " records were removed or added outside the store",
            )
        return result

    async def note(
        self,
        message_id: str,
        *,
        event: str,
        reason: str,
        actor: str,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        def fn(conn: sqlite3.Connection) -> None:
            row = self._load(conn, message_id)
            self._append_audit(
                conn,
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

    @staticmethod
    def _load(conn: sqlite3.Connection, message_id: str) -> sqlite3.Row:
        row = conn.execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()
        if row is None:
            raise MessageNotFound(message_id)
        return row  # type: ignore[no-any-return]

    def _apply_steps(
        self, conn: sqlite3.Connection, message_id: str, row: Any, steps: Sequence[Step], now: float
    ) -> None:
        """Apply steps to a loaded row inside the caller's transaction: UPDATE + audit record each."""
        current_row = {k: row[k] for k in row.keys()}  # noqa: SIM118 (sqlite3.Row is not a Mapping)
        for step in steps:
            if not step_applies(current_row, step):
                continue
            current, sets = transition_changes(message_id, current_row, step, now=now)
            assignments = ", ".join(f"{k} = ?" for k in sets)
            conn.execute(f"UPDATE messages SET {assignments} WHERE id = ?", (*sets.values(), message_id))  # noqa: S608
            self._append_audit(
                conn,
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
                self._append_audit(conn, message_id=message_id, at=now, **attempt_record(step, sets["attempts"]))
            current_row.update(sets)

    async def insert(
        self,
        envelope: Envelope,
        *,
        actor: str,
        reason: str = "received",
        problems: Sequence[Problem] = (),
        then: Sequence[Step] = (),
    ) -> tuple[StoredMessage, bool]:
        def fn(conn: sqlite3.Connection) -> tuple[StoredMessage, bool]:
            existing = conn.execute(
                "SELECT * FROM messages WHERE channel = ? AND idempotency_key = ?",
                (envelope.source.channel, envelope.source.idempotency_key),
            ).fetchone()
            if existing is not None:
                return row_to_message(existing), False
            now = self.clock()
            cols = envelope_columns(envelope.with_(state=MessageState.RECEIVED))
            cols["updated_at"] = now
            cols["problems"] = _dumps([p.as_dict() for p in problems])
            names = ", ".join(cols)
            marks = ", ".join("?" * len(cols))  # column names are ours, values are bound
            conn.execute(f"INSERT INTO messages ({names}) VALUES ({marks})", tuple(cols.values()))  # noqa: S608
            self._append_audit(
                conn,
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
                self._apply_steps(conn, envelope.id, self._load(conn, envelope.id), then, now)
            return row_to_message(self._load(conn, envelope.id)), True

        return await self._write(fn)

    async def get(self, message_id: str) -> StoredMessage | None:
        row = await self._run(lambda c: c.execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone())
        return row_to_message(row) if row else None

    async def find_by_source(self, channel: str, idempotency_key: str) -> StoredMessage | None:
        row = await self._run(
            lambda c: c.execute(
                "SELECT * FROM messages WHERE channel = ? AND idempotency_key = ?", (channel, idempotency_key)
            ).fetchone()
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

        def fn(conn: sqlite3.Connection) -> StoredMessage:
            self._apply_steps(conn, message_id, self._load(conn, message_id), (first, *then), self.clock())
            return row_to_message(self._load(conn, message_id))

        return await self._write(fn)

    async def claim_deliveries(
        self, *, owner: str, adapter: str, limit: int, now: float, lease_seconds: float
    ) -> list[StoredMessage]:
        def fn(conn: sqlite3.Connection) -> list[StoredMessage]:
            rows = conn.execute(
                "SELECT id, state, attempts FROM messages WHERE adapter = ? AND state IN ('routed', 'failed')"
                " AND next_attempt_at <= ? AND (lease_until IS NULL OR lease_until < ?)"
                " ORDER BY next_attempt_at LIMIT ?",
                (adapter, now, now, limit),
            ).fetchall()
            claimed = []
            for row in rows:
                conn.execute(
                    "UPDATE messages SET lease_owner = ?, lease_until = ?, attempts = attempts + 1, updated_at = ?"
                    " WHERE id = ?",
                    (owner, now + lease_seconds, now, row["id"]),
                )
                self._append_audit(
                    conn,
                    message_id=row["id"],
                    event="attempt",
                    from_state=row["state"],
                    to_state=row["state"],
                    reason=f"delivery attempt {row['attempts'] + 1}",
                    actor=owner,
                    details={"adapter": adapter, "attempt": row["attempts"] + 1},
                    at=now,
                )
                claimed.append(row_to_message(self._load(conn, row["id"])))
            return claimed

        return await self._write(fn)

    async def renew_lease(self, message_id: str, *, owner: str, until: float) -> None:
        def fn(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "UPDATE messages SET lease_until = ? WHERE id = ? AND lease_owner = ? AND lease_until >= ?",
                (until, message_id, owner, self.clock()),
            )
            if cur.rowcount != 1:
                raise LeaseLost(message_id)

        await self._write(fn)

    async def release_leases(self, owner: str) -> int:
        def fn(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "UPDATE messages SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?", (owner,)
            )
            cur2 = conn.execute(
                "UPDATE messages SET ack_lease_owner = NULL, ack_lease_until = NULL WHERE ack_lease_owner = ?",
                (owner,),
            )
            return cur.rowcount + cur2.rowcount

        return await self._write(fn)

    async def set_ack_pending(self, message_id: str, *, reason: str, actor: str) -> StoredMessage:
        def fn(conn: sqlite3.Connection) -> StoredMessage:
            row = self._load(conn, message_id)
            if row["ack"] != AckState.DONE.value:
                now = self.clock()
                conn.execute(
                    "UPDATE messages SET ack = 'pending', ack_next_at = ?, updated_at = ? WHERE id = ?",
                    (now, now, message_id),
                )
                self._append_audit(
                    conn,
                    message_id=message_id,
                    event="ack",
                    from_state=row["state"],
                    to_state=row["state"],
                    reason=reason,
                    actor=actor,
                    details={"ack": "pending"},
                    at=now,
                )
            return row_to_message(self._load(conn, message_id))

        return await self._write(fn)

    async def claim_acks(self, *, owner: str, limit: int, now: float, lease_seconds: float) -> list[StoredMessage]:
        def fn(conn: sqlite3.Connection) -> list[StoredMessage]:
            rows = conn.execute(
                "SELECT id FROM messages WHERE ack = 'pending' AND ack_next_at <= ?"
                " AND (ack_lease_until IS NULL OR ack_lease_until < ?) ORDER BY ack_next_at LIMIT ?",
                (now, now, limit),
            ).fetchall()
            for row in rows:
                conn.execute(
                    "UPDATE messages SET ack_lease_owner = ?, ack_lease_until = ?, ack_attempts = ack_attempts + 1"
                    " WHERE id = ?",
                    (owner, now + lease_seconds, row["id"]),
                )
            return [row_to_message(self._load(conn, r["id"])) for r in rows]

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
        def fn(conn: sqlite3.Connection) -> StoredMessage:
            row = self._load(conn, message_id)
            now = self.clock()
            if row["ack_lease_owner"] != owner:
                raise LeaseLost(message_id)
            state = MessageState(row["state"])
            if done:
                conn.execute(
                    "UPDATE messages SET ack = 'done', ack_lease_owner = NULL, ack_lease_until = NULL, updated_at = ?"
                    " WHERE id = ?",
                    (now, message_id),
                )
                self._append_audit(
                    conn,
                    message_id=message_id,
                    event="ack",
                    from_state=state.value,
                    to_state=state.value,
                    reason=reason,
                    actor=actor,
                    details={"ack": "done"},
                    at=now,
                )
                if state is MessageState.DELIVERED:
                    self._apply_steps(conn, message_id, self._load(conn, message_id), [acknowledged_step(actor)], now)
            else:
                conn.execute(
                    "UPDATE messages SET ack_next_at = ?, ack_lease_owner = NULL, ack_lease_until = NULL,"
                    " last_error = ?, updated_at = ? WHERE id = ?",
                    (next_attempt_at if next_attempt_at is not None else now, reason, now, message_id),
                )
                self._append_audit(
                    conn,
                    message_id=message_id,
                    event="ack-failed",
                    from_state=state.value,
                    to_state=state.value,
                    reason=reason,
                    actor=actor,
                    details={"attempt": row["ack_attempts"]},
                    at=now,
                )
            return row_to_message(self._load(conn, message_id))

        return await self._write(fn)

    async def list_messages(
        self, *, states: Sequence[MessageState] | None = None, limit: int = 100, offset: int = 0
    ) -> list[StoredMessage]:
        def fn(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            if states:
                marks = ", ".join("?" * len(states))
                return conn.execute(
                    f"SELECT * FROM messages WHERE state IN ({marks}) ORDER BY received_at, id LIMIT ? OFFSET ?",  # noqa: S608
                    (*[s.value for s in states], limit, offset),
                ).fetchall()
            return conn.execute(
                "SELECT * FROM messages ORDER BY received_at, id LIMIT ? OFFSET ?", (limit, offset)
            ).fetchall()

        return [row_to_message(r) for r in await self._run(fn)]

    async def count_by_state(self) -> dict[str, int]:
        rows = await self._run(
            lambda c: c.execute("SELECT state, count(*) AS n FROM messages GROUP BY state").fetchall()
        )
        counts = {s.value: 0 for s in MessageState}
        counts.update({r["state"]: r["n"] for r in rows})
        return counts


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements, keeping trigger bodies (``BEGIN ... END;``) whole."""
    statements: list[str] = []
    current: list[str] = []
    for line in script.strip().splitlines():
        if line.strip().startswith("--"):
            continue
        current.append(line)
        text = "\n".join(current).strip()
        if text.endswith(";") and sqlite3.complete_statement(text):
            statements.append(text)
            current = []
    if "\n".join(current).strip():
        statements.append("\n".join(current).strip())
    return statements


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)
