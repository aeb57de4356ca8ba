"""Delivery throughput on one PostgreSQL database: one gateway instance vs two.

    python bench/pg_scaleout.py [--messages 2000] [--no-fsync]

A throwaway PostgreSQL cluster (``tests/store/pg.py``: initdb into a temp dir, unix socket only) is
restarted with ``fsync=on``, ``synchronous_commit=on``, ``full_page_writes=on`` (crash-safe commits;
``--no-fsync`` keeps the test cluster's ``off``). ``--messages`` routed messages (one 2 KB data
part each, in the shared blob store) are seeded while the gateway instances are paused (SIGSTOP);
then they resume and deliver through a fast adapter (``filesystem`` with ``fsync = false``, so the
adapter is not the bottleneck; the store's commits are). Measured: wall time from the resume until
every message is ACKNOWLEDGED, and each instance's CPU. Baseline in the same run: one instance.
Printed: messages/s for one and two instances and their ratio; every message is checked to be
delivered exactly once (one directory per message id, none missing). Baselines for the database:
commits/s of tiny transactions from 8 connections that all update one shared row (every audited
gateway transaction appends to the global audit hash chain under the ``audit_head`` row lock, held
until COMMIT) and that update a row each (no shared lock).

Instances run as ``gateway run`` subprocesses (``[gateway] instance_id`` distinct, one DSN, one
blob directory); with ``taskset`` the first instance is pinned to core 0, the second to core 1.

``--backoffice-latency MS`` measures the case scale-out is for: a back office (Fachverfahren) that
takes MS milliseconds per delivery. The instances then deliver through the ``webhook`` adapter to a
loopback back office in this process that answers after MS ms (``concurrency = 4`` per instance);
it counts requests per ``Idempotency-Key`` (every message exactly once is checked). There the
gateway's CPU and the store are not the limit, so the ratio shows whether a second instance adds
delivery capacity on one database without double deliveries (ideal: 2.0×).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "plugins"))

from gateway.model import Envelope, MessageState, RoutingKeys, SourceRef, new_message_id  # noqa: E402
from gateway.store.blobs import BlobStore  # noqa: E402
from gateway.store.postgres import PostgresStore  # noqa: E402
from tests.reliability import harness as h  # noqa: E402


def pinning(core: int) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", str(core % (os.cpu_count() or 1))]
    return []


def restart_with_fsync(cluster: Any) -> None:
    """The test cluster runs with fsync off; a benchmark of commits must not."""
    options = " ".join(
        [
            "-c listen_addresses=''",
            f"-c unix_socket_directories={cluster.socket_dir}",
            f"-p {h.load_pg_helper().PORT}",
            "-c fsync=on",
            "-c full_page_writes=on",
            "-c synchronous_commit=on",
            "-c max_connections=60",
            "-c shared_buffers=64MB",
        ]
    )
    pg_ctl = str(cluster.bin_dir / "pg_ctl")
    cluster._run(pg_ctl, "-D", str(cluster.data_dir), "-m", "fast", "-w", "stop")
    cluster._run(
        pg_ctl, "-D", str(cluster.data_dir), "-l", str(cluster.root / "server.log"), "-o", options, "-w", "start"
    )


async def seed(dsn: str, blobs: BlobStore, n: int) -> None:
    data = await blobs.write_bytes(
        b'{"antrag": "Gewerbeanmeldung"}' + b" " * 2000, name="data", media_type="application/json"
    )
    store = PostgresStore(dsn, pool_size=8)
    await store.open()
    try:

        async def one() -> None:
            key = new_message_id()
            env = Envelope(
                id=new_message_id(),
                source=SourceRef(channel="bench", type="bench", reference=key, idempotency_key=key),
                received_at=datetime.now(UTC),
                routing=RoutingKeys(service=h.GEWERBE_SERVICE),
                metadata={"bench": True},
                data=data,
            )
            await store.insert(env, actor="bench")
            await store.transition(env.id, MessageState.VALIDATED, reason="seeded", actor="bench")
            await store.transition(
                env.id, MessageState.ROUTED, reason="seeded", actor="bench", route="all", adapter="fv"
            )

        for start in range(0, n, 50):
            await asyncio.gather(*(one() for _ in range(min(50, n - start))))
    finally:
        await store.close()


async def commit_ceiling(dsn: str, *, serialised: bool, clients: int = 8, seconds: float = 2.0) -> float:
    """Commits/s of tiny transactions from ``clients`` connections: each updates one shared row (like
    every audited transaction takes the ``audit_head`` row lock until COMMIT) or a row of its own."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as setup:
        await setup.execute("CREATE TABLE IF NOT EXISTS ceiling (id int PRIMARY KEY, n bigint NOT NULL)")
        await setup.execute("TRUNCATE ceiling")
        await setup.execute("INSERT INTO ceiling SELECT g, 0 FROM generate_series(0, %s) g", (clients,))
    done = 0
    deadline = time.monotonic() + seconds

    async def client(index: int) -> None:
        nonlocal done
        row = 0 if serialised else index + 1
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            await conn.execute("SET synchronous_commit = on")
            await conn.commit()
            while time.monotonic() < deadline:
                await conn.execute("UPDATE ceiling SET n = n + 1 WHERE id = %s", (row,))
                await conn.commit()
                done += 1

    await asyncio.gather(*(client(i) for i in range(clients)))
    return done / seconds


async def audit_records(dsn: str) -> int:
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT count(*) FROM audit")
        row = await cur.fetchone()
        return int(row[0]) if row else 0


def machine_busy() -> tuple[float, float]:
    """(busy, total) clock ticks of the whole machine so far, all cores (the ``cpu`` line of /proc/stat)."""
    try:
        values = [float(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return float("nan"), 1.0
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


async def acknowledged(dsn: str) -> int:
    store = PostgresStore(dsn, pool_size=1)
    await store.open()
    try:
        return (await store.count_by_state()).get(MessageState.ACKNOWLEDGED.value, 0)
    finally:
        await store.close()


@dataclass
class Round:
    instances: int
    messages: int
    wall: float
    cpu: list[float]
    audit_records: int
    busy: float  # share of all cores' time the machine was busy during the drain (everyone's work)

    @property
    def rate(self) -> float:
        return self.messages / self.wall


class BackOffice:
    """A slow Fachverfahren on loopback: answers 201 after ``latency`` s, counts each Idempotency-Key."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.seen: dict[str, int] = {}
        self.runner: Any = None
        self.url = ""

    async def start(self) -> None:
        from aiohttp import web

        async def deliver(request: web.Request) -> web.Response:
            await request.read()
            await asyncio.sleep(self.latency)
            key = request.headers.get("Idempotency-Key", "")
            self.seen[key] = self.seen.get(key, 0) + 1
            return web.json_response({"reference": key}, status=201)

        app = web.Application(client_max_size=1 << 20)
        app.router.add_post("/antraege", deliver)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/antraege"

    async def stop(self) -> None:
        await self.runner.cleanup()


async def one_round(cluster: Any, work: Path, instances: int, n: int, backoffice: BackOffice | None = None) -> Round:
    os.makedirs(work, exist_ok=True)
    dsn = cluster.create_database(f"scale{instances}")
    shared = work / f"shared{instances}"
    shared.mkdir(parents=True)
    dsn_file = work / f"dsn{instances}.txt"
    dsn_file.write_text(dsn)
    blobs = BlobStore(shared / "blobs")
    blobs.open()
    nodes = []
    for i in range(instances):
        settings = h.GatewaySettings(
            directory=work / f"r{instances}-gw{i}",
            shared=shared,
            api_url="",
            metadata_dir=work,
            instance_id=f"gw{i}",
            store={"backend": "postgresql", "dsn": {"file": str(dsn_file)}},
            adapter=(
                {"type": "filesystem", "directory": str(shared / "out"), "fsync": False, "concurrency": 8}
                if backoffice is None
                else {"type": "webhook", "url": backoffice.url, "concurrency": 4, "max_connections": 4}
            ),
            delivery={"lease_seconds": 60.0, "poll_interval": 0.05},
            log_level="warning",
            source=None,  # only the delivery path runs
        )
        nodes.append(h.GatewayProcess(settings, argv_prefix=pinning(i)))
    try:
        for node in nodes:
            await node.start()
        for node in nodes:
            await node.wait_healthy()
        for node in nodes:
            node.pause()
        try:
            await seed(dsn, blobs, n)
        finally:
            cpu0 = [node.cpu_seconds() for node in nodes]
            busy0, total0 = machine_busy()
            t0 = time.monotonic()
            for node in nodes:
                node.resume()
        while await acknowledged(dsn) < n:
            if time.monotonic() - t0 > 600:
                raise SystemExit("not drained within 600 s")
            await asyncio.sleep(0.02)
        wall = time.monotonic() - t0
        cpu = [node.cpu_seconds() - c for node, c in zip(nodes, cpu0, strict=True)]
        busy1, total1 = machine_busy()
        busy = (busy1 - busy0) / max(total1 - total0, 1e-9)
    finally:
        for node in nodes:
            await node.stop()
    audited = await audit_records(dsn) - 3 * n  # minus the seeding (received, validated, routed)
    if backoffice is None:
        delivered = [p for p in (shared / "out").iterdir() if not p.name.startswith(".")]
        if len(delivered) != n:
            raise SystemExit(f"{len(delivered)} directories for {n} messages: lost or duplicated deliveries")
    else:
        twice = [k for k, count in backoffice.seen.items() if count != 1]
        if len(backoffice.seen) != n or twice:
            raise SystemExit(f"{len(backoffice.seen)} keys for {n} messages, {len(twice)} delivered more than once")
        backoffice.seen.clear()
    return Round(instances, n, wall, cpu, audited, busy)


async def run(args: argparse.Namespace) -> list[Round]:
    pg = h.load_pg_helper()
    bin_dir = pg.find_pg_bin()
    if bin_dir is None:
        raise SystemExit("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found")
    cluster = pg.start_cluster(bin_dir)
    try:
        if not args.no_fsync:
            restart_with_fsync(cluster)
        dsn = cluster.create_database("ceiling")
        for serialised in (True, False):
            rate = await commit_ceiling(dsn, serialised=serialised)
            what = "one shared row (the audit_head pattern)" if serialised else "a row per connection"
            print(f"baseline: {rate:.0f} commits/s from 8 connections, each updating {what}")
        rounds = []
        backoffice = None
        if args.backoffice_latency is not None:
            backoffice = BackOffice(args.backoffice_latency / 1000)
            await backoffice.start()
        try:
            with tempfile.TemporaryDirectory(prefix="gw-bench-pg-") as tmp:
                for i in range(args.rounds):
                    for k in (1, 2):  # alternating, so drifting background load hits both alike
                        rounds.append(await one_round(cluster, Path(tmp) / f"round{i}", k, args.messages, backoffice))
        finally:
            if backoffice is not None:
                await backoffice.stop()
        return rounds
    finally:
        cluster.stop()


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--no-fsync", action="store_true", help="keep the test cluster's fsync=off")
    parser.add_argument("--rounds", type=int, default=3, help="one+two instance pairs; medians reported")
    parser.add_argument(
        "--backoffice-latency",
        type=float,
        metavar="MS",
        help="deliver via webhook to a loopback back office answering after MS ms (4 concurrent per instance)",
    )
    args = parser.parse_args()
    from gateway.logs import configure_logging

    configure_logging(format="console", level="error")
    print(f"machine: {machine()}; PostgreSQL fsync {'off' if args.no_fsync else 'on'}")
    if args.backoffice_latency is not None:
        bound = 4 / (args.backoffice_latency / 1000)
        print(
            f"back office: {args.backoffice_latency:g} ms per delivery, 4 concurrent per instance"
            f" -> at most {bound:.0f} messages/s per instance"
        )
    rounds = asyncio.run(run(args))
    for r in rounds:
        cpu = ", ".join(f"{c:.1f}" for c in r.cpu)
        print(
            f"{r.instances} instance(s): {r.messages} messages delivered+acknowledged in {r.wall:.2f} s"
            f" = {r.rate:.0f} messages/s, {r.audit_records / r.wall:.0f} audited commits/s"
            f" (gateway CPU s: {cpu}; machine busy {100 * r.busy:.0f} % of all cores)"
        )
    one = statistics.median(r.rate for r in rounds if r.instances == 1)
    two = statistics.median(r.rate for r in rounds if r.instances == 2)
    print(f"median: one instance {one:.0f} messages/s, two {two:.0f} messages/s; ratio two/one {two / one:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
