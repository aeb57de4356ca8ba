"""The SQLite backend's own promises, beyond the shared contract (tests/store/test_contract.py):
durability settings on a real file, group commit (no write returns before the WAL fsync covering
it), checkpoints off the loop, and what the readiness probe and the schema check catch."""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import gateway.store.sqlite as sqlite_module
from gateway.model import MessageState
from gateway.store.base import SchemaTooNew, StoreUnhealthy
from gateway.store.memory import temporary_store
from gateway.store.sqlite import MIGRATIONS, SQLiteStore
from gateway_sandbox.store_contract import FakeClock, make_envelope

from .support import routed_message

envelope = make_envelope


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(tmp_path: Path, clock: FakeClock) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "data" / "gateway.db", clock=clock)
    await s.open()
    yield s
    await s.close()


async def test_pragmas_on_a_real_file(store: SQLiteStore, tmp_path: Path) -> None:
    assert store.pragma("journal_mode") == "wal"
    # NORMAL: COMMIT does not fsync; the store fsyncs the WAL itself before answering (group commit).
    assert store.pragma("synchronous") == 1
    assert store.pragma("wal_autocheckpoint") == 0  # checkpoints run off the loop
    await store.insert(envelope(), actor="t")
    db = tmp_path / "data" / "gateway.db"
    assert db.is_file()
    assert (tmp_path / "data" / "gateway.db-wal").exists()
    other = sqlite3.connect(db)  # WAL is a property of the file, seen by every connection
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    other.close()


async def test_no_write_returns_before_the_wal_fsync_covering_it(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, release = threading.Event(), threading.Event()
    real = store._sync_wal

    def slow_sync() -> None:
        started.set()
        assert release.wait(10)
        real()

    monkeypatch.setattr(store, "_sync_wal", slow_sync)
    task = asyncio.create_task(store.insert(envelope(), actor="t"))
    assert await asyncio.to_thread(started.wait, 10)
    await asyncio.sleep(0.05)
    assert not task.done()  # committed in SQLite, but not yet on disk: the caller must not know yet
    assert store.commits > store._synced_seq
    release.set()
    _stored, created = await task
    assert created
    assert store._synced_seq == store.commits


async def test_concurrent_writes_share_fsyncs(store: SQLiteStore) -> None:
    commits, syncs = store.commits, store.syncs
    results = await asyncio.gather(*(store.insert(envelope(), actor="t") for _ in range(50)))
    assert all(created for _, created in results)
    assert store.commits - commits == 50
    assert 1 <= store.syncs - syncs < 50  # grouped: each fsync covered every commit before it
    assert store._synced_seq == store.commits


async def test_failed_fsync_fails_the_write_and_the_next_write_syncs_again(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = store._sync_wal

    def broken() -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(store, "_sync_wal", broken)
    with pytest.raises(OSError, match="Input/output error"):
        await store.insert(envelope(), actor="t")  # its caller must not report success
    monkeypatch.setattr(store, "_sync_wal", real)
    await store.insert(envelope(), actor="t")
    assert store._synced_seq == store.commits  # the earlier commit is covered by this fsync too


async def test_checkpoint_runs_off_the_loop_once_the_wal_grows(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sqlite_module, "CHECKPOINT_BYTES", 64 * 1024)
    db = tmp_path / "data" / "gateway.db"
    before = db.stat().st_size
    for _ in range(40):
        await store.insert(envelope(metadata={"pad": "x" * 4000}), actor="t")
    assert store._checkpoint_task is not None
    await store._checkpoint_task
    # Without a checkpoint the rows would only be in the WAL; now they are in the database file.
    assert db.stat().st_size - before > 100_000


async def test_schema_version_and_reopen(tmp_path: Path, clock: FakeClock) -> None:
    s = SQLiteStore(tmp_path / "g.db", clock=clock)
    await s.open()
    stored, _ = await s.insert(envelope(), actor="t")
    assert await s.schema_version() == len(MIGRATIONS)
    await s.close()
    s = SQLiteStore(tmp_path / "g.db", clock=clock)
    await s.open()  # migrations are not applied twice; the data survived
    try:
        assert await s.schema_version() == len(MIGRATIONS)
        again = await s.get(stored.envelope.id)
        assert again is not None
        assert again.envelope == stored.envelope
    finally:
        await s.close()


# readiness probe and schema checks -------------------------------------------------------------


async def test_probe_fails_once_the_database_file_is_deleted(store: SQLiteStore) -> None:
    await store.probe()
    os.unlink(store.path)  # the open connection would go on writing to the unlinked inode
    with pytest.raises(StoreUnhealthy, match="was deleted"):
        await store.probe()


async def test_probe_fails_once_the_database_file_is_overwritten(store: SQLiteStore) -> None:
    await routed_message(store)
    fd = os.open(store.path, os.O_WRONLY)  # in place: same file, garbage content
    try:
        os.write(fd, b"\x13garbage" * 4096)
    finally:
        os.close(fd)
    with pytest.raises(StoreUnhealthy, match="not an SQLite database"):
        await store.probe()


async def test_probe_fails_once_the_database_file_is_replaced(store: SQLiteStore, tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE health (id INTEGER PRIMARY KEY, token TEXT, at REAL)")
    conn.close()
    os.replace(other, store.path)
    with pytest.raises(StoreUnhealthy, match="was replaced"):
        await store.probe()


async def test_probe_fails_when_the_write_cannot_be_made_durable(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "_sync_wal", disk_full)
    with pytest.raises(StoreUnhealthy, match="No space left on device"):
        await store.probe()
    monkeypatch.undo()
    await store.probe()  # space is back: ready again


async def test_a_schema_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    store = SQLiteStore(db)
    await store.open()
    await store.close()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("INSERT INTO schema_migrations VALUES (?, 0)", (len(MIGRATIONS) + 2,))
    conn.close()
    newer = SQLiteStore(db)
    with pytest.raises(
        SchemaTooNew, match=rf"version {len(MIGRATIONS) + 2}, but this gateway only knows .* {len(MIGRATIONS)}"
    ):
        await newer.open()
    await newer.close()


async def test_unfinished_count_reads_only_the_state_index(store: SQLiteStore) -> None:
    await routed_message(store)
    where, params = store.dialect.any_of("state", ["routed", "failed"])
    plan = (
        store._require()
        .execute(
            f"EXPLAIN QUERY PLAN SELECT state, count(*) AS n FROM messages WHERE {where} GROUP BY state",
            params,
        )
        .fetchall()
    )
    assert any("COVERING INDEX messages_state" in row["detail"] for row in plan), [row["detail"] for row in plan]
    assert (await store.count_unfinished())[MessageState.ROUTED.value] == 1


async def test_temporary_store_leaves_nothing_behind(tmp_path: Path) -> None:
    async with temporary_store(directory=tmp_path) as store:
        await routed_message(store)
        assert store.path.is_file()
    assert not any(os.scandir(tmp_path))
