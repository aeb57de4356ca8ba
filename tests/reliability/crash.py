"""kill -9 nemesis on the FIT-Connect path: submissions flow while gateway processes are SIGKILLed.

    python -m tests.reliability.crash                    # the short run of the test suite
    python -m tests.reliability.crash --long             # 500 submissions, 60 kills
    python -m tests.reliability.crash --postgres --long  # two instances on one PostgreSQL

(from the repository root). A run: the sandbox Zustelldienst (in this process), ``instances`` gateway
subprocesses, and an Onlinedienst sending ``submissions`` applications in ``kills + 1`` bursts. Each
burst meets the instances as a backlog (they are paused with SIGSTOP while it is sent); then a
nemesis SIGKILLs a random instance at a random point while it works through the burst, or (one time
in five) during its start-up, and restarts it. Seeded RNG: a run is repeatable up to scheduling.
Then the gateways drain and stop, and the checker compares what upstream, the back office and the
store saw (see :func:`harness.check_exactly_once`) and runs ``gateway audit verify``. Every wait is
bounded; a run that cannot drain fails, it never hangs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gateway.model import MessageState
from gateway.store.base import Store
from gateway.store.sqlite import SQLiteStore
from gateway_sandbox.online_service.sender import SentSubmission
from gateway_sandbox.testing import RunningSandbox, running_sandbox

from . import harness as h  # pytest: "reliability.crash"; python -m: "tests.reliability.crash"


@dataclass
class CrashRun:
    submissions: int = 20
    kills: int = 3
    seed: int = 1
    instances: int = 1
    pg_dsn: str | None = None  # None: SQLite
    send_interval: float = 0.0  # between the submissions of one burst
    kill_window: float = 0.025  # a busy kill comes within this many seconds per burst submission
    # after the instances resumed (a burst takes ~20 ms per submission)
    startup_kills: float = 0.2  # share of kills aimed at the start-up instead
    drain_within: float = 90.0
    attachments: int | None = None  # per submission; None: 0-2 at random
    check_the_checker: bool = False  # afterwards, plant a duplicate delivery: the checker must see it


@dataclass
class KillRecord:
    at: float  # seconds since the run started
    instance: str
    phase: str  # "busy" (working on a burst) or "start-up"
    burst_done: str  # how much of the burst upstream had seen accepted when the kill came


@dataclass
class CrashReport:
    run: CrashRun
    kills: list[KillRecord] = field(default_factory=list)
    sent: int = 0
    seconds: float = 0.0
    drain_seconds: float = 0.0
    violations: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    audit: str = ""
    checker_catches_duplicate: bool | None = None

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        phases = {p: sum(1 for k in self.kills if k.phase == p) for p in ("start-up", "busy")}
        backend = "postgresql" if self.run.pg_dsn else "sqlite"
        lines = [
            f"crash run: {self.run.instances} instance(s) on {backend}, seed {self.run.seed}",
            f"  {self.sent} submissions sent, {len(self.kills)} SIGKILLs "
            f"({phases['start-up']} during start-up, {phases['busy']} while busy with a burst)",
            f"  run {self.seconds:.1f} s, drain after the last kill {self.drain_seconds:.1f} s",
            f"  store: {json.dumps(self.stats, sort_keys=True)}",
            "  audit: " + " ".join(line for line in self.audit.splitlines() if "audit chain" in line),
            "  result: " + ("OK, every property held" if self.ok else f"{len(self.violations)} VIOLATION(S)"),
        ]
        lines += [f"    - {v}" for v in self.violations[:50]]
        return "\n".join(lines)


@contextlib.asynccontextmanager
async def open_store(run: CrashRun, shared: Path) -> AsyncIterator[Store]:
    store: Store
    if run.pg_dsn:
        from gateway.store.postgres import PostgresStore

        store = PostgresStore(run.pg_dsn)
    else:
        store = SQLiteStore(shared / "gateway.db")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def run_crash(run: CrashRun, workdir: Path, metadata_dir: Path) -> CrashReport:
    rng = random.Random(run.seed)
    report = CrashReport(run=run)
    shared = workdir / "shared"
    dsn_file = workdir / "dsn.txt"
    store_table: dict[str, Any] = {}
    if run.pg_dsn:
        dsn_file.write_text(run.pg_dsn)
        store_table = {"backend": "postgresql", "dsn": {"file": str(dsn_file)}}
    started = time.monotonic()
    async with running_sandbox(h.example_sandbox_config()) as sandbox:
        nodes = [
            h.GatewayProcess(
                h.GatewaySettings(
                    directory=workdir / f"gw{i}",
                    shared=shared,
                    api_url=sandbox.base_url,
                    metadata_dir=metadata_dir,
                    instance_id=f"gw{i}",
                    store=store_table,
                )
            )
            for i in range(run.instances)
        ]
        sandbox.set_destination_callback(
            nodes[0].settings.url + "/fitconnect/callback", h.secret("destination-callback.secret.txt")
        )
        try:
            for node in nodes:
                await node.start()
            for node in nodes:
                await node.wait_healthy()
            apps = h.applications(rng, run.submissions, attachments=run.attachments)
            sent: list[SentSubmission] = []
            await nemesis(run, rng, sandbox, nodes, apps, sent, report, started)
            report.sent = len(sent)
            drain_started = time.monotonic()
            try:
                await drain(run, sandbox, nodes, sent)
            except TimeoutError as exc:
                report.violations.append(f"not drained: {exc}")
            report.drain_seconds = time.monotonic() - drain_started
        finally:
            for node in nodes:
                await node.stop()
        report.seconds = time.monotonic() - started
        async with open_store(run, shared) as store:
            counts, leftovers = h.adapter_deliveries(nodes[0].settings.out_dir)
            verdict = await h.check_exactly_once(
                sandbox=sandbox, sent=sent, store=store, delivered=counts, leftovers=leftovers
            )
            report.violations += verdict.violations
            report.stats = verdict.stats
            if run.check_the_checker and counts:
                report.checker_catches_duplicate = await checker_catches_duplicate(
                    sandbox, sent, store, nodes[0].settings.out_dir
                )
        rc, out = await h.run_cli(nodes[0].settings, "audit", "verify")
        report.audit = out
        if rc != 0 or "intact" not in out:
            report.violations.append(f"gateway audit verify failed ({rc}): {out.strip()}")
        if report.violations:
            for node in nodes:
                report.violations.append(f"{node.settings.instance_id} log tail:\n{node.log_tail(15)}")
    return report


async def nemesis(
    run: CrashRun,
    rng: random.Random,
    sandbox: RunningSandbox,
    nodes: list[h.GatewayProcess],
    apps: list[h.Application],
    sent: list[SentSubmission],
    report: CrashReport,
    t0: float,
) -> None:
    """Send the applications in ``kills + 1`` bursts; after each burst but the last, SIGKILL a random
    instance at a random point of its work on that burst (or of its start-up) and restart it."""
    bursts = [apps[i :: run.kills + 1] for i in range(run.kills + 1)]
    for burst in bursts[:-1]:
        victim = rng.choice(nodes)
        first = len(sent)
        # Pause every instance (SIGSTOP) while the burst is sent, so it meets them as a backlog.
        paused = [n for n in nodes if n.running and n.pause()]
        try:
            await h.send_all(sandbox, burst, interval=run.send_interval, sent=sent)
        finally:
            for node in paused:
                node.resume()
        if rng.random() < run.startup_kills or not victim.running:
            # Kill it before/while it starts: migrations, key loading, the resume pass, first poll.
            phase = "start-up"
            await asyncio.sleep(rng.uniform(0.0, 1.5))
        else:
            # Kill it while it works through the burst: at a random point.
            phase = "busy"
            await asyncio.sleep(rng.uniform(0.0, run.kill_window * len(burst)))
        if phase == "busy" and not await victim.healthy():
            phase = "start-up"  # it was still starting (the burst came during its restart)
        done = sum(1 for s in sent[first:] if h.outcomes(sandbox, s))
        report.kills.append(
            KillRecord(round(time.monotonic() - t0, 3), victim.settings.instance_id, phase, f"{done}/{len(burst)}")
        )
        await victim.kill()
        await asyncio.sleep(rng.uniform(0.0, 0.2))
        await victim.start()
        if phase == "start-up" or rng.random() < 0.5:
            # Half of the time the next burst waits for the restart; else it arrives during start-up.
            await victim.wait_healthy()
    await h.send_all(sandbox, bursts[-1], interval=run.send_interval, sent=sent)
    for node in nodes:
        await node.wait_healthy()


async def drain(
    run: CrashRun, sandbox: RunningSandbox, nodes: list[h.GatewayProcess], sent: list[SentSubmission]
) -> None:
    """Wait until upstream has an outcome for every submission and the store shows them all done."""
    await h.wait_until(
        lambda: all(h.outcomes(sandbox, s) for s in sent), within=run.drain_within, what="an upstream outcome for all"
    )

    async def all_acknowledged() -> bool:
        done = await h.admin_messages(nodes[0].settings, MessageState.ACKNOWLEDGED)
        return len(done) >= len(sent)

    await h.wait_until(all_acknowledged, within=30.0, what="every message ACKNOWLEDGED")


async def checker_catches_duplicate(
    sandbox: RunningSandbox, sent: list[SentSubmission], store: Store, out_dir: Path
) -> bool:
    """Copy one delivered directory under another name (a double delivery): is it reported?"""
    original = next(p for p in sorted(os.scandir(out_dir), key=lambda e: e.name) if not p.name.startswith("."))
    planted = out_dir / "planted-duplicate"
    shutil.copytree(original.path, planted)
    try:
        counts, leftovers = h.adapter_deliveries(out_dir)
        verdict = await h.check_exactly_once(
            sandbox=sandbox, sent=sent, store=store, delivered=counts, leftovers=leftovers
        )
    finally:
        shutil.rmtree(planted)
    return any("delivered 2x" in v for v in verdict.violations)


@contextlib.contextmanager
def pg_database() -> Any:
    """A fresh database on a throwaway cluster (tests/store/pg.py); yields its DSN or None."""
    pg = h.load_pg_helper()
    bin_dir = pg.find_pg_bin()
    if bin_dir is None:
        yield None
        return
    cluster = pg.start_cluster(bin_dir)
    try:
        yield cluster.create_database("crash")
    finally:
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--long", action="store_true", help="500 submissions, 60 kills (one to two minutes)")
    parser.add_argument("--submissions", type=int)
    parser.add_argument("--kills", type=int)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--postgres", action="store_true", help="two instances on a throwaway PostgreSQL cluster")
    parser.add_argument("--workdir", type=Path, help="keep logs and state here (default: a temp dir, removed)")
    args = parser.parse_args(argv)
    from gateway.logs import configure_logging

    configure_logging(format="console", level="warning")
    metadata_dir = h.find_metadata_schemas()
    if metadata_dir is None:
        print("the FIT-Connect metadata schemas (../shared/fitconnect) are missing", file=sys.stderr)
        return 2
    run = CrashRun(seed=args.seed)
    if args.long:
        run.submissions, run.kills, run.drain_within = 500, 60, 300.0
    if args.submissions:
        run.submissions = args.submissions
    if args.kills is not None:
        run.kills = args.kills
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gw-crash-"))
    workdir.mkdir(parents=True, exist_ok=True)
    with pg_database() if args.postgres else contextlib.nullcontext(None) as dsn:
        if args.postgres:
            if dsn is None:
                print("no PostgreSQL server binaries (initdb, pg_ctl) found", file=sys.stderr)
                return 2
            run.pg_dsn, run.instances = dsn, 2
        report = asyncio.run(run_crash(run, workdir, metadata_dir))
    print(report.summary())
    print(json.dumps({"kills": [asdict(k) for k in report.kills]}))
    if not args.workdir and report.ok:
        h.remove_tree(workdir)
    else:
        print(f"state and logs kept in {workdir}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
