"""kill -9 nemesis (Jepsen style) on the FIT-Connect path; the long run: ``python -m tests.reliability.crash --long``.

Properties checked after each run (see ``crash.py`` and ``harness.check_exactly_once``): every
submission accepted upstream exactly once and never rejected, delivered to the back office exactly
once (one directory per submission, by the manifest's source reference), exactly one ACKNOWLEDGED
message per submission in the store, no leftover temporary directories, ``gateway audit verify``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from .crash import CrashRun, run_crash

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("GATEWAY_CRASH_SEED", "1"))
LONG = pytest.mark.skipif(
    os.environ.get("GATEWAY_RELIABILITY_LONG") != "1",
    reason="long nemesis run: GATEWAY_RELIABILITY_LONG=1 (or python -m tests.reliability.crash --long)",
)


async def test_sigkill_single_instance_sqlite(tmp_path: Path, metadata_dir: Path) -> None:
    run = CrashRun(submissions=20, kills=3, seed=SEED, check_the_checker=True)
    report = await run_crash(run, tmp_path, metadata_dir)
    assert report.ok, report.summary()
    assert report.sent == 20
    assert len(report.kills) == 3
    assert report.stats["messages"] == 20
    # The checker is not vacuous: a planted second directory for one submission is reported.
    assert report.checker_catches_duplicate is True


@pytest.mark.postgres
async def test_sigkill_two_instances_postgresql(tmp_path: Path, metadata_dir: Path, pg_cluster_for_crash: Any) -> None:
    dsn = pg_cluster_for_crash.create_database("crash")
    run = CrashRun(submissions=20, kills=4, seed=SEED, instances=2, pg_dsn=dsn)
    report = await run_crash(run, tmp_path, metadata_dir)
    assert report.ok, report.summary()
    assert report.sent == 20
    assert len(report.kills) == 4
    assert {k.instance for k in report.kills} <= {"gw0", "gw1"}


@LONG
async def test_sigkill_long_sqlite(tmp_path: Path, metadata_dir: Path) -> None:
    run = CrashRun(submissions=500, kills=60, seed=SEED, drain_within=300.0)
    report = await run_crash(run, tmp_path, metadata_dir)
    assert report.ok, report.summary()


@LONG
@pytest.mark.postgres
async def test_sigkill_long_two_instances_postgresql(
    tmp_path: Path, metadata_dir: Path, pg_cluster_for_crash: Any
) -> None:
    dsn = pg_cluster_for_crash.create_database("crashlong")
    run = CrashRun(submissions=500, kills=60, seed=SEED, instances=2, pg_dsn=dsn, drain_within=300.0)
    report = await run_crash(run, tmp_path, metadata_dir)
    assert report.ok, report.summary()
