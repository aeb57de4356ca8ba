"""PostgreSQL store backend: the store's semantics for several gateway instances on one database.

Only the dialect primitives live here (the semantics are :class:`gateway.store.manager.Store`'s):

* Every public method is one transaction (``READ COMMITTED``) on a connection from a small pool;
  it returns after COMMIT, and the store makes sure its sessions run with a durable
  ``synchronous_commit`` (it switches ``off`` back to ``on``).
* Rows a transaction changes are locked (``SELECT ... FOR UPDATE``); claims use ``SELECT ... FOR
  UPDATE SKIP LOCKED``: instances never wait for each other's candidate rows and never claim the
  same row twice; a lease (owner, until) marks the claim for later checks.
* Each transaction appends its audit records at the very end under the ``audit_head`` row lock, so
  the global hash chain is serialised across instances and seq/prev_hash never fork. Locks are
  always taken in the order record rows → ``audit_head``, so these transactions cannot deadlock
  with each other; a deadlock or serialisation failure from anything else is retried (the
  transaction was rolled back, nothing was committed).
* Text cannot hold NUL: free text gets U+FFFD instead, identities with NUL are refused.
* The database must be UTF8 (``SQL_ASCII`` would hand back bytes); ``open`` refuses anything else.
* The schema lives in :mod:`gateway.store.migrations.postgresql` (versioned, applied on open).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import psycopg
import structlog
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow, dict_row

from gateway.errors import GatewayError
from gateway.store.manager import Dialect, Store, Tx, TxFn
from gateway.store.migrations.postgresql import migrate

log = structlog.get_logger(__name__)

T = TypeVar("T")
Conn = psycopg.AsyncConnection[DictRow]

_TX_RETRIES = 5
CLOCK_SKEW_WARNING = 2.0  # seconds between this host and the database server


class StoreNotOpen(RuntimeError):
    def __init__(self) -> None:
        super().__init__("the PostgreSQL store is not open")


class UnstorableText(ValueError):
    """A message identity field holds a NUL character, which PostgreSQL text cannot store."""

    def __init__(self, field_name: str) -> None:
        super().__init__(f"message field {field_name!r} contains a NUL character, which PostgreSQL cannot store")
        self.field_name = field_name


class DatabaseNotUTF8(GatewayError):
    """The database's encoding is not UTF8: text would come back as bytes (``SQL_ASCII``) or fail."""

    def __init__(self, encoding: str, database: str) -> None:
        super().__init__(
            f"the PostgreSQL database {database!r} has encoding {encoding}, the gateway needs UTF8:"
            f" create it with 'createdb -E UTF8 -T template0 --locale=C.UTF-8 {database}'"
            " (or CREATE DATABASE ... ENCODING 'UTF8' TEMPLATE template0) and point store.dsn at it"
        )
        self.encoding = encoding
        self.database = database


class _PgDialect(Dialect):
    lock = " FOR UPDATE"
    claim_lock = " FOR UPDATE SKIP LOCKED"

    def any_of(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return f"{column} = ANY(?)", [list(values)]

    def text(self, value: str) -> str:
        """Free text (reasons, actors, errors) with NUL replaced by U+FFFD: PostgreSQL text cannot
        hold NUL, and an adapter's error text must never make recording its outcome fail."""
        return value.replace("\x00", "\ufffd") if "\x00" in value else value

    def check_identity(self, columns: Mapping[str, Any], names: Sequence[str]) -> None:
        # Refused, not altered: changing them could make two different upstream keys collide.
        for name in names:
            value = columns.get(name)
            if isinstance(value, str) and "\x00" in value:
                raise UnstorableText(name)


_QUERIES: dict[str, bytes] = {}


def _pg(query: str) -> bytes:
    """The query with psycopg's placeholders (``?`` → ``%s``), cached: queries are a fixed set."""
    sent = _QUERIES.get(query)
    if sent is None:
        sent = _QUERIES[query] = query.replace("%", "%%").replace("?", "%s").encode()
    return sent


class _Tx:
    """Statements on one pooled connection."""

    __slots__ = ("conn",)

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def one(self, query: str, params: Sequence[Any] = ()) -> DictRow | None:
        cur = await self.conn.execute(_pg(query), params)
        return await cur.fetchone()

    async def all(self, query: str, params: Sequence[Any] = ()) -> list[DictRow]:
        cur = await self.conn.execute(_pg(query), params)
        return await cur.fetchall()

    async def rowcount(self, query: str, params: Sequence[Any] = ()) -> int:
        cur = await self.conn.execute(_pg(query), params)
        return cur.rowcount

    async def many(self, query: str, rows: Sequence[Sequence[Any]]) -> None:
        async with self.conn.cursor() as cur:
            await cur.executemany(_pg(query), rows)


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


class PostgresStore(Store):
    """The :class:`gateway.store.base.Store` on PostgreSQL (psycopg 3, async)."""

    dialect = _PgDialect()

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

    async def _write(self, fn: TxFn[T]) -> T:
        pool = self._require_pool()
        for attempt in range(1, _TX_RETRIES + 1):
            began = False
            async with pool.connection() as conn:
                try:
                    async with conn.transaction():
                        began = True
                        result = await fn(_Tx(conn))
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

    async def _read(self, fn: TxFn[T]) -> T:
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
                await _require_utf8(conn)
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

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def _snapshot(self, fn: TxFn[T]) -> T:
        async def read(tx: Tx) -> T:
            assert isinstance(tx, _Tx)
            async with tx.conn.transaction():
                await tx.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                return await fn(tx)

        return await self._read(read)

    async def _read_fresh(self, fn: TxFn[T]) -> T:
        return await self._read(fn)  # the server reads its storage: no client-side cache to bypass


async def _require_utf8(conn: Conn) -> None:
    cur = await conn.execute(
        "SELECT pg_encoding_to_char(encoding) AS encoding, datname FROM pg_database WHERE datname = current_database()"
    )
    row = await cur.fetchone()
    if row is None:
        return

    def text(value: object) -> str:  # a SQL_ASCII database hands back bytes, not str
        return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)

    if text(row["encoding"]) != "UTF8":
        raise DatabaseNotUTF8(text(row["encoding"]), text(row["datname"]))
