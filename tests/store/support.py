"""Helpers shared by the store tests: a controllable clock, envelopes, and per-backend admin access."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from gateway.model import AckState, BlobRef, Envelope, MessageState, RoutingKeys, SourceRef, new_message_id
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SQLiteStore

T0 = 1_700_000_000.0

AnyStore = SQLiteStore | PostgresStore


class FakeClock:
    """The store's (and workers') notion of now; tests move it to expire leases and reach retries."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def make_envelope(
    *,
    channel: str = "fitconnect-bauamt",
    key: str | None = None,
    received_at: float = T0,
    metadata: dict[str, Any] | None = None,
    with_blobs: bool = False,
    ack: AckState = AckState.NONE,
) -> Envelope:
    key = key or new_message_id()
    data = attachments = None
    if with_blobs:
        data = BlobRef("data", "a" * 128, "a" * 128, 12, "application/json", "antrag.json")
        attachments = (BlobRef("attachment:1", "b" * 128, "b" * 128, 3, "application/pdf", "../Plan ä.pdf", "1"),)
    return Envelope(
        id=new_message_id(),
        source=SourceRef(channel=channel, type="fitconnect", reference=key, idempotency_key=key, case="case-1"),
        received_at=datetime.fromtimestamp(received_at, UTC),
        routing=RoutingKeys(service="urn:de:fim:leika:leistung:99050012104000", region="064350014014"),
        metadata=metadata if metadata is not None else {"note": "Grüße", "n": 1.5},
        data=data,
        attachments=attachments or (),
        ack=ack,
    )


# The shortest path from RECEIVED to each state, as (target, extra transition kwargs).
PATHS: dict[MessageState, Sequence[MessageState]] = {
    MessageState.RECEIVED: (),
    MessageState.VALIDATED: (MessageState.VALIDATED,),
    MessageState.ROUTED: (MessageState.VALIDATED, MessageState.ROUTED),
    MessageState.FAILED: (MessageState.VALIDATED, MessageState.ROUTED, MessageState.FAILED),
    MessageState.DELIVERED: (MessageState.VALIDATED, MessageState.ROUTED, MessageState.DELIVERED),
    MessageState.ACKNOWLEDGED: (
        MessageState.VALIDATED,
        MessageState.ROUTED,
        MessageState.DELIVERED,
        MessageState.ACKNOWLEDGED,
    ),
    MessageState.REJECTED: (MessageState.REJECTED,),
    MessageState.DEAD: (MessageState.DEAD,),
}


async def drive(store: AnyStore, message_id: str, states: Sequence[MessageState], *, adapter: str = "fv") -> None:
    for state in states:
        kwargs: dict[str, Any] = {}
        if state is MessageState.ROUTED:
            kwargs = {"route": "r1", "adapter": adapter}
        await store.transition(message_id, state, reason=f"to {state.value}", actor="test", **kwargs)


async def routed_message(store: AnyStore, *, adapter: str = "fv", **envelope_kwargs: Any) -> str:
    stored, _ = await store.insert(make_envelope(**envelope_kwargs), actor="test")
    await drive(store, stored.envelope.id, PATHS[MessageState.ROUTED], adapter=adapter)
    return stored.envelope.id


@dataclass
class Backend:
    """One store under test plus raw access to its database, for what the store API must not allow."""

    kind: str  # "sqlite" | "postgresql"
    store: AnyStore
    # Run statements as the application would (append-only protection in force).
    app_sql: Callable[[str], Awaitable[None]]
    # Run statements as an administrator who has lifted the append-only protection first.
    admin_sql: Callable[[Sequence[str]], Awaitable[None]]


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

    return Backend("sqlite", store, app_sql, admin_sql)


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

    return Backend("postgresql", store, app_sql, admin_sql)
