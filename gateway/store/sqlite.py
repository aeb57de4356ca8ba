"""SQLite store backend (the default): WAL, group commit, one connection used on the event loop.

Only the dialect primitives live here (the semantics are :class:`gateway.store.manager.Store`'s).
Each public method runs one short transaction inline; the fsync that makes it durable runs in a
worker thread and is shared by every commit made meanwhile (see :class:`SQLiteStore`). ``BEGIN
IMMEDIATE`` takes the write lock up front, which makes claim-then-update atomic even with several
processes (e.g. the admin CLI) on one file, so no row locks are needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from gateway.store.blobs import fsync_dir
from gateway.store.manager import Store, TxFn
from gateway.store.migrations.sqlite import MIGRATIONS, migrate
from gateway.store.records import StoreUnhealthy
from gateway.store.rows import envelope_columns, row_to_message

__all__ = ["MIGRATIONS", "SQLiteStore", "envelope_columns", "row_to_message"]

T = TypeVar("T")


def run_inline(coro: Coroutine[Any, Any, T]) -> T:
    """Run a transaction's coroutine to its end right now. Every statement on this connection is
    synchronous, so it never suspends; if it did, another task could interleave statements into
    this transaction: refuse that loudly instead."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("a SQLite transaction awaited something: it must run without yielding to the event loop")


class _Tx:
    """Statements on one sqlite3 connection (inside a transaction the caller began)."""

    __slots__ = ("conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    async def one(self, query: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(query, params).fetchone()

    async def all(self, query: str, params: Sequence[Any] = ()) -> list[Any]:
        return self.conn.execute(query, params).fetchall()

    async def rowcount(self, query: str, params: Sequence[Any] = ()) -> int:
        return self.conn.execute(query, params).rowcount

    async def many(self, query: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.executemany(query, rows)


BUSY_WAIT_MAX = 30.0  # seconds a statement waits for another process's lock before failing
CHECKPOINT_BYTES = 8 << 20  # checkpoint (in a worker thread) once the WAL has grown past this


class SQLiteStore(Store):
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
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file we opened
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

    async def _write(self, fn: TxFn[T]) -> T:
        """One transaction on the loop; returns after it (and all commits before it) is on disk."""
        result = await self._retry_busy(lambda: self._tx(self._require(), lambda conn: run_inline(fn(_Tx(conn)))))
        await self._durable()
        return result

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A raw statement on the store's own connection, on the loop (pragmas; fault tests)."""
        return await self._retry_busy(lambda: fn(self._require()))

    async def _read(self, fn: TxFn[T]) -> T:
        """A read, on the loop."""
        return await self._retry_busy(lambda: run_inline(fn(_Tx(self._require()))))

    def _apart(self, fn: TxFn[T], *, snapshot: bool, uri: bool = False) -> T:
        """Run ``fn`` on a connection of its own (in a worker thread: the loop stays free)."""
        if uri:  # mode=rw: a missing file is an error, not a new empty database
            conn = sqlite3.connect(f"file:{self.path}?mode=rw", uri=True, timeout=BUSY_WAIT_MAX)
            conn.row_factory = sqlite3.Row
        else:
            conn = self._connect(busy_timeout_ms=int(BUSY_WAIT_MAX * 1000))
        try:
            if snapshot:
                conn.execute("BEGIN")  # one snapshot for every statement of fn
            try:
                return run_inline(fn(_Tx(conn)))
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
        finally:
            conn.close()

    async def _snapshot(self, fn: TxFn[T]) -> T:
        return await asyncio.to_thread(self._apart, fn, snapshot=True)

    async def _read_fresh(self, fn: TxFn[T]) -> T:
        return await asyncio.to_thread(self._fresh, fn)

    def _fresh(self, fn: TxFn[T]) -> T:
        """Read from the file as it is on disk now: a new connection, after checking that the path
        still names the file this store has open (a deleted or replaced file would otherwise go
        unnoticed: our open connection keeps writing to the old inode)."""
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            raise StoreUnhealthy(f"the database file {self.path} was deleted while the gateway had it open") from None
        if self._identity is not None and (info.st_dev, info.st_ino) != self._identity:
            raise StoreUnhealthy(f"the database file {self.path} was replaced while the gateway had it open")
        with open(self.path, "rb") as fh:
            if fh.read(16) != b"SQLite format 3\x00":
                raise StoreUnhealthy(f"the database file {self.path} is not an SQLite database any more (overwritten)")
        return self._apart(fn, snapshot=False, uri=True)

    def pragma(self, name: str) -> Any:
        return self._require().execute(f"PRAGMA {name}").fetchone()[0]

    async def open(self) -> None:
        conn = await asyncio.to_thread(self._connect, busy_timeout_ms=int(BUSY_WAIT_MAX * 1000))
        try:
            # Opening runs WAL recovery and the migrations: may wait for locks, so off the loop.
            await asyncio.to_thread(self._tx, conn, migrate)
            conn.execute("PRAGMA busy_timeout=0")
            conn.execute("PRAGMA wal_autocheckpoint=0")
            await asyncio.to_thread(self._open_wal)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        info = os.stat(self.path)
        self._identity = (info.st_dev, info.st_ino)
        await self._durable()

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


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)
