"""Helpers shared by the store tests: per-backend raw access (the clock, envelopes and state paths
are the contract suite's, re-exported here)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg

from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SQLiteStore
from gateway_sandbox.store_contract import PATHS, T0, FakeClock, RawAccess, drive, make_envelope, routed_message

AnyStore = SQLiteStore | PostgresStore


@dataclass
class Backend:
    """One store under test plus raw access to its database, for what the store API must not allow."""

    kind: str  # "sqlite" | "postgresql"
    store: AnyStore
    raw: RawAccess


def sqlite_backend(store: SQLiteStore) -> Backend:
    path: Path = store.path

    def run(statements: Sequence[str], drop_triggers: bool) -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            if drop_triggers:
                conn.execute("DROP TRIGGER IF EXISTS audit_no_update")
                conn.execute("DROP TRIGGER IF EXISTS audit_no_delete")
            for statement in statements:
                conn.execute(statement)
        finally:
            conn.close()

    async def app_sql(statement: str) -> None:
        await asyncio.to_thread(run, [statement], False)

    async def admin_sql(statements: Sequence[str]) -> None:
        await asyncio.to_thread(run, statements, True)

    return Backend("sqlite", store, RawAccess(app_sql, admin_sql))


def postgres_backend(store: PostgresStore, *, app_dsn: str, admin_dsn: str) -> Backend:
    async def app_sql(statement: str) -> None:
        async with await psycopg.AsyncConnection.connect(app_dsn, autocommit=True) as conn:
            await conn.execute(statement.encode())

    async def admin_sql(statements: Sequence[str]) -> None:
        # A superuser (or the table owner) can disable the triggers: the tamper a real attacker
        # with database admin rights could do, which only the hash chain can reveal.
        async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as conn:
            await conn.execute(b"ALTER TABLE audit DISABLE TRIGGER USER")
            try:
                for statement in statements:
                    await conn.execute(statement.encode())
            finally:
                await conn.execute(b"ALTER TABLE audit ENABLE TRIGGER USER")

    return Backend("postgresql", store, RawAccess(app_sql, admin_sql))


__all__ = ["PATHS", "T0", "AnyStore", "Backend", "FakeClock", "drive", "make_envelope", "routed_message"]
