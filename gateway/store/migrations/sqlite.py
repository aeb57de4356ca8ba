"""SQLite schema migrations: versioned, append-only list, applied on open (one transaction).

The PostgreSQL schema (:mod:`gateway.store.migrations.postgresql`) has the same tables and columns.
Never edit a released migration: append a new one.
"""

from __future__ import annotations

import sqlite3
import time

from gateway.store.records import SchemaTooNew

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
    # The way back: answers (their own records, audited in the same chain), the inbound message's
    # reply context, and the readiness probe's health row.
    """
    ALTER TABLE messages ADD COLUMN reply TEXT;
    CREATE TABLE answers (
        id TEXT PRIMARY KEY,
        message_id TEXT NOT NULL REFERENCES messages (id),
        kind TEXT NOT NULL,
        caller TEXT NOT NULL,
        idempotency_key TEXT NOT NULL,
        created_at REAL NOT NULL,
        content TEXT NOT NULL,
        data TEXT,
        attachments TEXT NOT NULL,
        bescheid INTEGER NOT NULL DEFAULT 0,
        sequence INTEGER NOT NULL,
        state TEXT NOT NULL,
        channel TEXT,
        fallback_reason TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        polls INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL,
        queued_at REAL,
        sent_at REAL,
        confirmed_at REAL,
        lease_owner TEXT,
        lease_until REAL,
        last_error TEXT,
        problems TEXT NOT NULL DEFAULT '[]',
        reference TEXT,
        updated_at REAL NOT NULL,
        UNIQUE (message_id, caller, idempotency_key),
        UNIQUE (message_id, sequence)
    );
    CREATE INDEX answers_due ON answers (channel, state, next_attempt_at);
    CREATE INDEX answers_state ON answers (state, updated_at);
    CREATE INDEX answers_order ON answers (created_at, id);
    CREATE TABLE health (id INTEGER PRIMARY KEY CHECK (id = 1), token TEXT NOT NULL, at REAL NOT NULL);
    """,
)


def migrate(conn: sqlite3.Connection) -> int:
    """Apply pending migrations inside the caller's transaction; returns the schema version.
    Refuses (:class:`SchemaTooNew`) a database a newer gateway migrated."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL)")
    done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
    if done and max(done) > len(MIGRATIONS):
        raise SchemaTooNew(max(done), len(MIGRATIONS))
    for version, script in enumerate(MIGRATIONS, start=1):
        if version in done:
            continue
        for statement in _split_sql(script):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, time.time()))
    return len(MIGRATIONS)


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
