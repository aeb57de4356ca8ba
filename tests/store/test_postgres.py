"""What only the PostgreSQL backend has: several instances on one database, server settings, config."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.model import MessageState
from gateway.runtime import open_store
from gateway.store.base import SchemaTooNew, StoreUnhealthy
from gateway.store.migrations.postgresql import MIGRATIONS, MigrationNotPermitted
from gateway.store.postgres import DatabaseNotUTF8, PostgresStore, StoreNotOpen, UnstorableText

from .pg import SUPERUSER, PgCluster
from .support import FakeClock, make_envelope, routed_message

pytestmark = pytest.mark.postgres

REPO_ROOT = Path(__file__).resolve().parents[2]


def admin_dsn(cluster: PgCluster, dsn: str) -> str:
    return cluster.dsn(dsn.rsplit("dbname=", 1)[1].split()[0], SUPERUSER)


async def test_sessions_commit_durably_even_if_the_server_default_is_off(pg_cluster: PgCluster, pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:  # the test cluster runs with synchronous_commit = off
        assert conn.execute("SHOW synchronous_commit").fetchone() == ("off",)
    store = PostgresStore(pg_dsn)
    await store.open()
    try:
        row = await store._read(lambda tx: tx.one("SHOW synchronous_commit"))
        assert row == {"synchronous_commit": "on"}
    finally:
        await store.close()


async def test_concurrent_open_applies_each_migration_once(pg_cluster: PgCluster, pg_dsn: str) -> None:
    stores = [PostgresStore(pg_dsn) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        assert [await s.schema_version() for s in stores] == [len(MIGRATIONS)] * 4
        with psycopg.connect(pg_dsn) as conn:
            counts = conn.execute("SELECT version, count(*) FROM schema_migrations GROUP BY version ORDER BY version")
            assert counts.fetchall() == [(v, 1) for v in range(1, len(MIGRATIONS) + 1)]
        assert await stores[0].upgrade() == len(MIGRATIONS)  # nothing pending: a no-op
    finally:
        for s in stores:
            await s.close()


async def test_instances_share_one_unforked_audit_chain(pg_cluster: PgCluster, pg_dsn: str) -> None:
    """Three instances appending concurrently: seq is contiguous, every prev_hash links, head matches."""
    clock = FakeClock()
    stores = [PostgresStore(pg_dsn, clock=clock, pool_size=3) for _ in range(3)]
    for s in stores:
        await s.open()
    try:

        async def work(store: PostgresStore, n: int) -> None:
            for _ in range(n):
                stored, _ = await store.insert(make_envelope(), actor="t")
                await store.transition(stored.envelope.id, MessageState.VALIDATED, reason="ok", actor="t")
                await store.note(stored.envelope.id, event="operator", reason="n", actor="t")

        await asyncio.gather(*(work(s, 10) for s in stores for _ in range(3)))
        result = await stores[1].verify_audit()
        assert result.ok, result
        assert result.checked == 3 * 3 * 10 * 3
        with psycopg.connect(pg_dsn) as conn:
            seqs = [r[0] for r in conn.execute("SELECT seq FROM audit ORDER BY seq")]
            assert seqs == list(range(1, result.checked + 1))
            assert conn.execute("SELECT seq FROM audit_head").fetchone() == (result.checked,)
    finally:
        for s in stores:
            await s.close()


@pytest.mark.parametrize(
    "statement",
    [
        "TRUNCATE audit",
        "UPDATE audit_head SET seq = 0, hash = repeat('0', 64)",
        "DELETE FROM audit_head",
        "TRUNCATE audit_head",
    ],
)
async def test_database_refuses_rewriting_history(pg_cluster: PgCluster, pg_dsn: str, statement: str) -> None:
    store = PostgresStore(pg_dsn)
    await store.open()
    try:
        await routed_message(store)
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
            with pytest.raises(psycopg.errors.RestrictViolation):
                await conn.execute(statement.encode())
        assert (await store.verify_audit()).ok
    finally:
        await store.close()


async def test_recovers_from_dropped_connections(pg_cluster: PgCluster, pg_dsn: str) -> None:
    """Pooled connections killed by the server (restart, idle timeout) are replaced transparently
    for reads and for writes that had not begun."""
    store = PostgresStore(pg_dsn, pool_size=3)
    await store.open()
    try:
        ids = await asyncio.gather(*(routed_message(store) for _ in range(3)))  # fills the pool
        with psycopg.connect(admin_dsn(pg_cluster, pg_dsn), autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE usename = 'gateway' AND datname = current_database()) t"
            ).fetchone()
        assert killed is not None
        assert killed[0] >= 1
        # The write meets the dead connections first (they fail on BEGIN, so retrying is safe) ...
        await store.transition(ids[0], MessageState.DELIVERED, reason="ok", actor="t")
        await store.ping()
        with psycopg.connect(admin_dsn(pg_cluster, pg_dsn), autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE usename = 'gateway' AND datname = current_database()"
            )
        # ... and so do reads.
        assert len(await store.list_messages()) == 3
        assert (await store.verify_audit()).ok
    finally:
        await store.close()


async def test_closed_store_refuses_work(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn)
    with pytest.raises(StoreNotOpen):
        await store.ping()
    await store.open()
    await store.close()
    with pytest.raises(StoreNotOpen):
        await store.get("x")


def test_bad_dsn_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValueError, match="not a valid libpq connection string") as info:
        PostgresStore("host=/tmp password=hunter2 this-is-not-a-pair")
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in repr(PostgresStore("host=/tmp password=hunter2"))


def write_config(tmp_path: Path, dsn: str) -> Path:
    (tmp_path / "dsn.secret").write_text(dsn + "\n")
    config = tmp_path / "gateway.toml"
    config.write_text('[store]\nbackend = "postgresql"\ndsn = { file = "dsn.secret" }\n')
    return config


async def test_open_store_builds_the_postgres_backend(pg_dsn: str, tmp_path: Path) -> None:
    store = open_store(load_config(write_config(tmp_path, pg_dsn)))
    assert isinstance(store, PostgresStore)
    await store.open()
    try:
        _stored, created = await store.insert(make_envelope(), actor="t")
        assert created
        assert await store.schema_version() == len(MIGRATIONS)
    finally:
        await store.close()


def test_open_store_reports_bad_dsn_at_its_key(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, "user=gw password=s3cret garbage"))
    with pytest.raises(ConfigError) as info:
        open_store(config)
    assert info.value.key == "store.dsn"
    assert "s3cret" not in str(info.value)
    assert "dsn.secret" in str(info.value)  # says where the secret comes from, not what it is


def test_cli_db_upgrade_against_postgres(pg_dsn: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, pg_dsn)
    for _ in range(2):  # the second run finds nothing to do
        proc = subprocess.run(
            [sys.executable, "-m", "gateway", "db", "--config", str(config), "upgrade"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO_ROOT,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert f"database schema at version {len(MIGRATIONS)}" in proc.stdout
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == (len(MIGRATIONS),)


async def test_nul_in_a_message_key_is_refused_precisely(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn)
    await store.open()
    try:
        with pytest.raises(UnstorableText, match="field 'reference' contains a NUL character"):
            await store.insert(make_envelope(key="sub\x00mission"), actor="t")
        assert await store.count_by_state() == {s.value: 0 for s in MessageState}
        assert (await store.verify_audit()).checked == 0
    finally:
        await store.close()


async def test_restricted_runtime_role(pg_cluster: PgCluster) -> None:
    """Schema owner migrates; the runtime role may read/insert/update messages and append audit
    records, but can neither change nor disable the audit's protection, nor migrate."""
    owner, app = "gw_owner", "gw_app"
    with pg_cluster.superuser_connect() as conn:
        conn.execute(f"CREATE ROLE {owner} LOGIN")
        conn.execute(f"CREATE ROLE {app} LOGIN")
        conn.execute(f"CREATE DATABASE gw_roles OWNER {owner}")
    with pg_cluster.superuser_connect("gw_roles") as conn:
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        conn.execute(f"ALTER SCHEMA public OWNER TO {owner}")
        conn.execute(f"GRANT USAGE ON SCHEMA public TO {app}")
    app_store = PostgresStore(pg_cluster.dsn("gw_roles", app))
    with pytest.raises(MigrationNotPermitted, match="schema is at version 0, this gateway needs"):
        await app_store.open()
    owner_store = PostgresStore(pg_cluster.dsn("gw_roles", owner))
    await owner_store.open()
    await owner_store.close()
    with psycopg.connect(pg_cluster.dsn("gw_roles", owner), autocommit=True) as conn:
        conn.execute(f"GRANT SELECT, INSERT, UPDATE ON messages TO {app}")
        conn.execute(f"GRANT SELECT, INSERT ON audit TO {app}")
        conn.execute(f"GRANT SELECT, UPDATE ON audit_head TO {app}")
        conn.execute(f"GRANT SELECT ON schema_migrations TO {app}")
        conn.execute(f"GRANT SELECT, INSERT, UPDATE ON answers, health TO {app}")
    await app_store.open()
    try:
        mid = await routed_message(app_store)
        await app_store.claim_deliveries(owner="w", adapter="fv", limit=1, now=time.time() + 1, lease_seconds=30)
        await app_store.transition(mid, MessageState.DEAD, reason="x", actor="t")
        assert (await app_store.verify_audit()).ok
        with psycopg.connect(pg_cluster.dsn("gw_roles", app), autocommit=True) as conn:
            for statement in (
                "ALTER TABLE audit DISABLE TRIGGER USER",
                "UPDATE audit SET reason = 'x'",
                "DELETE FROM audit",
                "TRUNCATE audit",
                "DELETE FROM messages",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement.encode())
    finally:
        await app_store.close()


async def wait_for_lock_waiter(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as admin:
        for _ in range(6000):  # a generous bound: the store's query normally waits within milliseconds
            query = "SELECT 1 FROM pg_stat_activity WHERE usename = 'gateway' AND wait_event_type = 'Lock'"
            if admin.execute(query).fetchone():
                return
            await asyncio.sleep(0.01)
    pytest.fail("the store's transaction never waited for the row lock")


async def test_cancelled_call_rolls_back_and_frees_its_connection(pg_cluster: PgCluster, pg_dsn: str) -> None:
    """A task cancelled while its transaction waits for a lock (e.g. a delivery cancelled at
    shutdown) leaves nothing behind: no half-written change, no session idle in transaction."""
    store = PostgresStore(pg_dsn, pool_size=1)
    await store.open()
    try:
        mid = await routed_message(store)
        async with await psycopg.AsyncConnection.connect(pg_dsn) as blocker:
            await blocker.execute("SELECT 1 FROM messages WHERE id = %s FOR UPDATE", (mid,))
            task = asyncio.create_task(store.transition(mid, MessageState.DELIVERED, reason="x", actor="t"))
            await wait_for_lock_waiter(admin_dsn(pg_cluster, pg_dsn))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await blocker.rollback()
        stored = await store.get(mid)  # the only pooled slot is usable again
        assert stored is not None
        assert stored.envelope.state is MessageState.ROUTED
        assert len(await store.audit_trail(mid)) == 3
        with psycopg.connect(admin_dsn(pg_cluster, pg_dsn), autocommit=True) as admin:
            assert not admin.execute(
                "SELECT 1 FROM pg_stat_activity WHERE usename = 'gateway' AND state LIKE 'idle in transaction%'"
            ).fetchone()
        await store.transition(mid, MessageState.DELIVERED, reason="ok", actor="t")
        assert (await store.verify_audit()).ok
    finally:
        await store.close()


async def test_a_database_that_is_not_utf8_is_refused_with_the_fix(pg_cluster: PgCluster) -> None:
    with pg_cluster.superuser_connect() as conn:
        conn.execute(
            "CREATE DATABASE gw_ascii OWNER gateway ENCODING 'SQL_ASCII' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'"
        )
    store = PostgresStore(pg_cluster.dsn("gw_ascii"))
    with pytest.raises(
        DatabaseNotUTF8, match=r"encoding SQL_ASCII, the gateway needs UTF8: create it with 'createdb -E UTF8"
    ):
        await store.open()
    with psycopg.connect(pg_cluster.dsn("gw_ascii")) as conn:  # refused before any migration ran
        assert conn.execute("SELECT to_regclass('messages')").fetchone() == (None,)


async def test_a_schema_newer_than_the_code_is_refused(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn)
    await store.open()
    await store.close()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (%s, 0)", (len(MIGRATIONS) + 1,))
    with pytest.raises(SchemaTooNew, match=rf"version {len(MIGRATIONS) + 1}, but this gateway only knows"):
        await PostgresStore(pg_dsn).open()


async def test_probe_writes_through_to_the_server(pg_cluster: PgCluster, pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn)
    await store.open()
    try:
        await store.probe()
        with psycopg.connect(admin_dsn(pg_cluster, pg_dsn), autocommit=True) as conn:
            conn.execute("REVOKE UPDATE ON health FROM gateway")  # e.g. a read-only or full database
            conn.execute("ALTER TABLE health OWNER TO pgadmin")
        with pytest.raises(StoreUnhealthy, match="health write/read failed"):
            await store.probe()
    finally:
        await store.close()


async def test_unfinished_count_can_use_the_state_index(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn)
    await store.open()
    try:
        await routed_message(store)
        assert (await store.count_unfinished())[MessageState.ROUTED.value] == 1
    finally:
        await store.close()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("SET enable_seqscan = off")  # a tiny table: make the planner show the index it can use
        plan = conn.execute(
            "EXPLAIN SELECT state, count(*) FROM messages WHERE state = ANY(%s) GROUP BY state",
            (["routed", "failed"],),
        ).fetchall()
    assert any("messages_state" in line for (line,) in plan), plan
