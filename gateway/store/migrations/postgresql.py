"""PostgreSQL schema migrations: versioned, append-only list, applied on open and by ``gateway db upgrade``.

Same layout as the SQLite schema (:mod:`gateway.store.migrations.sqlite`), with these deliberate choices:

* times are ``double precision`` unix seconds, like SQLite's REAL: the audit hash covers
  ``repr(float(at))``, so the stored value must round-trip bit-exactly (``timestamptz`` keeps
  microseconds only);
* JSON columns are ``text`` holding the canonical JSON the store wrote (sorted keys, compact), not
  ``jsonb``: jsonb re-normalises numbers (``1e300`` comes back as an integer) and rejects ``\\u0000``,
  which would change audit hashes and make input that SQLite accepts fail only on PostgreSQL;
* ``id`` uses the "C" collation so ``ORDER BY received_at, id`` is byte order, as in SQLite,
  whatever the database's locale;
* ``audit_head`` is a one-row table holding the chain's last ``(seq, hash)``. Every transaction that
  appends audit records locks it (``FOR UPDATE``) as its last step, which serialises the global hash
  chain across all gateway instances; it also lets verification notice a cut-off tail;
* triggers refuse UPDATE/DELETE/TRUNCATE on ``audit`` and any backwards move of ``audit_head``.

Migrations run inside one transaction holding ``pg_advisory_xact_lock(MIGRATION_LOCK)``, so two
instances starting at once apply each version exactly once (the second waits, then finds it done).
Never edit a released migration: append a new one.
"""

from __future__ import annotations

import time
from typing import Any, LiteralString

import structlog
from psycopg import AsyncConnection, errors
from psycopg.rows import tuple_row

from gateway.errors import GatewayError
from gateway.store.records import SchemaTooNew

log = structlog.get_logger(__name__)

# An arbitrary constant (ASCII "gatewaym"), the same in every gateway version.
MIGRATION_LOCK = 0x67617465_7761796D

MIGRATIONS: tuple[LiteralString, ...] = (
    """
    CREATE TABLE messages (
        id text COLLATE "C" PRIMARY KEY,
        channel text NOT NULL,
        source_type text NOT NULL,
        reference text NOT NULL,
        idempotency_key text NOT NULL,
        case_ref text,
        received_at double precision NOT NULL,
        routing text NOT NULL,
        metadata text NOT NULL,
        data text,
        attachments text NOT NULL,
        state text NOT NULL CHECK (state IN
            ('received', 'validated', 'routed', 'failed', 'delivered', 'acknowledged', 'rejected', 'dead')),
        ack text NOT NULL CHECK (ack IN ('none', 'waiting', 'pending', 'done')),
        route text,
        adapter text,
        attempts integer NOT NULL DEFAULT 0,
        next_attempt_at double precision,
        queued_at double precision,
        lease_owner text,
        lease_until double precision,
        last_error text,
        problems text NOT NULL DEFAULT '[]',
        ack_attempts integer NOT NULL DEFAULT 0,
        ack_next_at double precision,
        ack_lease_owner text,
        ack_lease_until double precision,
        updated_at double precision NOT NULL,
        UNIQUE (channel, idempotency_key)
    );
    CREATE INDEX messages_due ON messages (adapter, state, next_attempt_at);
    CREATE INDEX messages_ack_due ON messages (ack_next_at) WHERE ack = 'pending';
    CREATE INDEX messages_state ON messages (state, updated_at);
    CREATE INDEX messages_order ON messages (received_at, id);
    CREATE INDEX messages_lease_owner ON messages (lease_owner) WHERE lease_owner IS NOT NULL;
    CREATE INDEX messages_ack_lease_owner ON messages (ack_lease_owner) WHERE ack_lease_owner IS NOT NULL;

    CREATE TABLE audit (
        seq bigint PRIMARY KEY CHECK (seq > 0),
        message_id text NOT NULL,
        at double precision NOT NULL,
        event text NOT NULL,
        from_state text,
        to_state text,
        reason text NOT NULL,
        actor text NOT NULL,
        details text NOT NULL,
        prev_hash text NOT NULL,
        hash text NOT NULL
    );
    CREATE INDEX audit_message ON audit (message_id, seq);

    CREATE TABLE audit_head (
        id boolean PRIMARY KEY DEFAULT true CHECK (id),
        seq bigint NOT NULL,
        hash text NOT NULL
    );
    INSERT INTO audit_head (id, seq, hash) VALUES (true, 0, repeat('0', 64));

    -- The audit trail is append-only: the database itself refuses edits (triggers fire for
    -- superusers too; only disabling them, which needs table ownership, gets past this).
    CREATE FUNCTION gateway_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'audit is append-only (% refused)', TG_OP USING ERRCODE = 'restrict_violation';
    END
    $$;
    CREATE TRIGGER audit_no_update BEFORE UPDATE OR DELETE ON audit
        FOR EACH ROW EXECUTE FUNCTION gateway_audit_append_only();
    CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
        FOR EACH STATEMENT EXECUTE FUNCTION gateway_audit_append_only();

    CREATE FUNCTION gateway_audit_head_forward_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP <> 'UPDATE' OR NEW.seq < OLD.seq THEN
            RAISE EXCEPTION 'audit_head only moves forward (% refused)', TG_OP USING ERRCODE = 'restrict_violation';
        END IF;
        RETURN NEW;
    END
    $$;
    CREATE TRIGGER audit_head_forward_only BEFORE UPDATE OR DELETE ON audit_head
        FOR EACH ROW EXECUTE FUNCTION gateway_audit_head_forward_only();
    CREATE TRIGGER audit_head_no_truncate BEFORE TRUNCATE ON audit_head
        FOR EACH STATEMENT EXECUTE FUNCTION gateway_audit_append_only();
    """,
    # The way back: answers (their own records, audited in the same chain), the inbound message's
    # reply context, and the readiness probe's health row. Same columns as SQLite's version 3.
    """
    ALTER TABLE messages ADD COLUMN reply text;
    CREATE TABLE answers (
        id text COLLATE "C" PRIMARY KEY,
        message_id text COLLATE "C" NOT NULL REFERENCES messages (id),
        kind text NOT NULL CHECK (kind IN ('status', 'reply')),
        caller text NOT NULL,
        idempotency_key text NOT NULL,
        created_at double precision NOT NULL,
        content text NOT NULL,
        data text,
        attachments text NOT NULL,
        bescheid smallint NOT NULL DEFAULT 0 CHECK (bescheid IN (0, 1)),
        sequence integer NOT NULL CHECK (sequence > 0),
        state text NOT NULL CHECK (state IN
            ('handed_over', 'queued', 'failed', 'sent', 'confirmed', 'refused', 'dead', 'discarded')),
        channel text,
        fallback_reason text,
        attempts integer NOT NULL DEFAULT 0,
        polls integer NOT NULL DEFAULT 0,
        next_attempt_at double precision,
        queued_at double precision,
        sent_at double precision,
        confirmed_at double precision,
        lease_owner text,
        lease_until double precision,
        last_error text,
        problems text NOT NULL DEFAULT '[]',
        reference text,
        updated_at double precision NOT NULL,
        UNIQUE (message_id, caller, idempotency_key),
        UNIQUE (message_id, sequence)
    );
    CREATE INDEX answers_due ON answers (channel, state, next_attempt_at);
    CREATE INDEX answers_state ON answers (state, updated_at);
    CREATE INDEX answers_order ON answers (created_at, id);
    CREATE INDEX answers_lease_owner ON answers (lease_owner) WHERE lease_owner IS NOT NULL;
    CREATE TABLE health (id integer PRIMARY KEY CHECK (id = 1), token text NOT NULL, at double precision NOT NULL);
    """,
)


class MigrationNotPermitted(GatewayError):
    """The database needs migrations this role may not apply (a restricted runtime role)."""

    def __init__(self, version: int, target: int) -> None:
        super().__init__(
            f"the database schema is at version {version}, this gateway needs {target}, and this database role"
            " may not change the schema: run 'gateway db upgrade' with the schema owner's DSN first"
        )
        self.version = version
        self.target = target


async def migrate(conn: AsyncConnection[Any]) -> int:
    """Apply pending migrations in one transaction under the migration lock; returns the schema version."""
    async with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        # Only DDL when something is pending: a runtime role without CREATE rights can then open
        # an up-to-date database (see docs/postgresql.md, "Separate owner and runtime roles").
        await cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
        row = await cur.fetchone()
        exists = bool(row and row[0])
        done: set[int] = set()
        if exists:
            await cur.execute("SELECT version FROM schema_migrations")
            done = {int(r[0]) for r in await cur.fetchall()}
        if done and max(done) > len(MIGRATIONS):
            raise SchemaTooNew(max(done), len(MIGRATIONS))
        pending = [v for v in range(1, len(MIGRATIONS) + 1) if v not in done]
        try:
            if not exists:
                await cur.execute(
                    "CREATE TABLE schema_migrations (version integer PRIMARY KEY, applied_at double precision NOT NULL)"
                )
            for version in pending:
                # No parameters: psycopg sends the script with the simple query protocol, which
                # allows several statements (and $$-quoted function bodies) in one string.
                await cur.execute(MIGRATIONS[version - 1])
                await cur.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (%s, %s)", (version, time.time())
                )
        except errors.InsufficientPrivilege:
            raise MigrationNotPermitted(max(done, default=0), len(MIGRATIONS)) from None
    current = max(done | set(pending), default=0)
    if pending:
        log.info("schema_migrated", backend="postgresql", applied=pending, version=current)
    return current
