"""Fixtures of the reliability suite (crash, faults, fuzz). Longer runs: see docs/reliability.md."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import load_pg_helper


@pytest.fixture(scope="session")
def metadata_dir(fitconnect_shared: Path) -> Path:
    """The official FIT-Connect metadata schemas (../shared/fitconnect; the test skips without them)."""
    return fitconnect_shared


@pytest.fixture(scope="session")
def pg_cluster_for_crash() -> Iterator[object]:
    """A throwaway PostgreSQL cluster (tests/store/pg.py) for the session; skips without the binaries."""
    pg = load_pg_helper()
    bin_dir = pg.find_pg_bin()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found (PG_BIN, PATH, /usr/lib/postgresql)"
        )
    cluster = pg.start_cluster(bin_dir)
    try:
        yield cluster
    finally:
        cluster.stop()
