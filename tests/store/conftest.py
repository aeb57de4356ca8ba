from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SQLiteStore

from .pg import SUPERUSER, PgCluster, find_pg_bin, start_cluster
from .support import AnyStore, Backend, FakeClock, postgres_backend, sqlite_backend

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One throwaway PostgreSQL cluster for the whole session (see tests/store/pg.py)."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in $PG_BIN, PATH or "
            "/usr/lib/postgresql/*/bin; install Debian's 'postgresql' package to run the PostgreSQL tests"
        )
    cluster = start_cluster(bin_dir)
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_dsn(pg_cluster: PgCluster) -> str:
    """A fresh database (owned by the non-superuser 'gateway' role) for one test."""
    return pg_cluster.create_database()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        sqlite_store = SQLiteStore(tmp_path / "gateway.db", clock=clock)
        await sqlite_store.open()
        result = sqlite_backend(sqlite_store)
    else:
        cluster: PgCluster = request.getfixturevalue("pg_cluster")
        dsn: str = request.getfixturevalue("pg_dsn")
        pg_store = PostgresStore(dsn, clock=clock)
        await pg_store.open()
        dbname = dsn.rsplit("dbname=", 1)[1].split()[0]
        result = postgres_backend(pg_store, app_dsn=dsn, admin_dsn=cluster.dsn(dbname, SUPERUSER))
    try:
        yield result
    finally:
        await result.store.close()


@pytest.fixture
def store(backend: Backend) -> AnyStore:
    return backend.store
