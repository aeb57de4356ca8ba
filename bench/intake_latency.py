"""HTTP intake latency (p50/p99) at a fixed offered load: the XÖV HTTP intake vs a bare aiohttp server.

    python bench/intake_latency.py [--rate 100] [--seconds 10]

Measured endpoint: ``POST /xoev/messages`` of an ``xoev-http`` source (bearer token, ~1 KB XÖV
message of a small test standard, hardened parse + XSD validation in the validator's worker process,
durable SQLite commit (WAL, synchronous=FULL) before the ``202``). The gateway is a ``gateway run``
subprocess; delivery (filesystem adapter) runs in it at the same time, as in production.

Open loop: request ``i`` is sent at ``t0 + i/rate`` whether or not earlier ones were answered, and
its latency counts from that scheduled instant (no coordinated omission: a stall shows up in the
tail). Loopback only; the load generator runs on core 1, the server under test on core 0 (taskset).
Every answer is checked (202 and a message id), and afterwards the store must hold one message per
202. Baselines in the same run, same generator, same rate: ``GET /healthz`` of the same gateway
(framework + middleware floor) and a bare aiohttp server answering the same POST with 202 after
reading the body (the HTTP floor on this machine).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "plugins"))

import aiohttp  # noqa: E402

from tests.reliability import harness as h  # noqa: E402
from tests.reliability.harness import free_port, gateway_env, toml_table  # noqa: E402

TOKEN = h.XOEV_TOKEN


def message() -> bytes:
    return h.xoev_message(str(uuid.uuid4()))


BASELINE_SERVER = """
import sys
from aiohttp import web
async def accept(request):
    await request.read()
    return web.json_response({"id": "x"}, status=202)
async def health(request):
    return web.json_response({"status": "ok"})
app = web.Application(client_max_size=4_000_000)
app.router.add_post("/xoev/messages", accept)
app.router.add_get("/healthz", health)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def pinning(core: int) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", str(core)]
    return []


def write_config(work: Path, port: int) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    parts = [
        toml_table("gateway", {"mode": "test", "data_dir": str(work / "var")}),
        toml_table("store", {"path": str(work / "var" / "gateway.db"), "blob_dir": str(work / "var" / "blobs")}),
        toml_table("http", {"host": "127.0.0.1", "port": port}),
        toml_table("logging", {"format": "json", "level": "warning"}),
        toml_table("delivery", {"poll_interval": 0.1}),
        h.xoev_intake_toml(work),
        toml_table("adapters.fv", {"type": "filesystem", "directory": str(work / "out")}),
        '[[routes]]\nname = "all"\nadapter = "fv"\n',
    ]
    path = work / "gateway.toml"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


@dataclass
class Result:
    name: str
    latencies: list[float]  # seconds, of answered requests
    errors: int
    sent: int
    seconds: float

    def q(self, p: float) -> float:
        values = sorted(self.latencies)
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(p * len(values)))]

    def line(self) -> str:
        ms = [1000 * self.q(p) for p in (0.5, 0.9, 0.99)]
        return (
            f"{self.name:<42} p50 {ms[0]:7.2f} ms  p90 {ms[1]:7.2f} ms  p99 {ms[2]:7.2f} ms"
            f"  max {1000 * max(self.latencies, default=float('nan')):7.1f} ms"
            f"  ({self.sent} sent, {self.errors} errors, {self.sent / self.seconds:.0f} req/s offered)"
        )


async def open_loop(name: str, url: str, *, rate: float, seconds: float, post: bool, warmup: float = 1.0) -> Result:
    """Offer ``rate`` requests/s for ``seconds`` (after a discarded warm-up); check every answer."""
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/xml"}
    latencies: list[float] = []
    errors = 0
    ids: list[str] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as http:

        async def one(scheduled: float, record: bool) -> None:
            nonlocal errors
            try:
                if post:
                    async with http.post(url, data=message(), headers=headers) as resp:
                        body = await resp.json(content_type=None)
                        ok = resp.status == 202 and isinstance(body, dict) and bool(body.get("id"))
                        if ok and record:
                            ids.append(str(body["id"]))
                else:
                    async with http.get(url) as resp:
                        await resp.read()
                        ok = resp.status == 200
            except (aiohttp.ClientError, TimeoutError, ValueError):
                ok = False
            if record:
                if ok:
                    latencies.append(time.perf_counter() - scheduled)
                else:
                    errors += 1

        loop_tasks: list[asyncio.Task[None]] = []
        for phase_seconds, record in ((warmup, False), (seconds, True)):
            count = int(rate * phase_seconds)
            t0 = time.perf_counter() + 0.05
            for i in range(count):
                scheduled = t0 + i / rate
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                loop_tasks.append(asyncio.create_task(one(scheduled, record)))
            await asyncio.gather(*loop_tasks)
            loop_tasks.clear()
    result = Result(name, latencies, errors, int(rate * seconds), seconds)
    result.ids = ids  # type: ignore[attr-defined]
    return result


async def wait_up(url: str, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise SystemExit(f"{url} did not come up within {within:.0f} s")


async def ready(url: str, within: float = 120.0) -> None:
    """/readyz 200: the validator's worker process is up (it compiles the schemas first)."""
    await wait_up(url.replace("/healthz", "/readyz"), within)


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def count_messages(config: Path) -> int:
    from gateway.config import load_config
    from gateway.runtime import open_store

    store = open_store(load_config(config))
    await store.open()
    try:
        return sum((await store.count_by_state()).values())
    finally:
        await store.close()


async def run(rate: float, seconds: float, work: Path) -> list[Result]:
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {1})
    results = []
    port = free_port()
    base = await asyncio.create_subprocess_exec(
        *pinning(0), sys.executable, "-c", BASELINE_SERVER, str(port), env=gateway_env()
    )
    try:
        await wait_up(f"http://127.0.0.1:{port}/healthz")
        url = f"http://127.0.0.1:{port}{h.XOEV_PATH}"
        results.append(
            await open_loop("baseline: bare aiohttp POST -> 202", url, rate=rate, seconds=seconds, post=True)
        )
    finally:
        await stop(base)

    port = free_port()
    config = write_config(work, port)
    log = (work / "gateway.log").open("wb")
    gateway = await asyncio.create_subprocess_exec(
        *pinning(0),
        sys.executable,
        "-m",
        "gateway",
        "run",
        "-c",
        str(config),
        env=gateway_env(),
        cwd=str(work),
        stdout=log,
        stderr=log,
    )
    try:
        await wait_up(f"http://127.0.0.1:{port}/healthz")
        await ready(f"http://127.0.0.1:{port}/healthz")
        results.append(
            await open_loop(
                "gateway: GET /healthz", f"http://127.0.0.1:{port}/healthz", rate=rate, seconds=seconds, post=False
            )
        )
        xoev = await open_loop(
            "gateway: POST xoev-http -> 202 (durable)",
            f"http://127.0.0.1:{port}{h.XOEV_PATH}",
            rate=rate,
            seconds=seconds,
            post=True,
        )
        results.append(xoev)
    finally:
        await stop(gateway)
        log.close()
    stored = await count_messages(config)
    accepted = len(xoev.ids)  # type: ignore[attr-defined]
    warmup = int(rate * 1.0)
    if stored < accepted:
        raise SystemExit(f"only {stored} messages stored for {accepted} answers 202: an accepted message was lost")
    print(f"check: {accepted} answers 202 in the measured phase (+{warmup} warm-up), {stored} messages in the store")
    return results


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
    parser.add_argument("--rate", type=float, default=100.0, help="offered requests per second (default 100)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per endpoint (default 10)")
    args = parser.parse_args()
    import importlib.util

    if importlib.util.find_spec("gateway.sources.xoev_http.source") is None:
        print("gateway.sources.xoev_http.source (the xoev-http source) is not installed", file=sys.stderr)
        return 2
    print(f"machine: {machine()}; offered load {args.rate:.0f} req/s open loop, {args.seconds:.0f} s each")
    with tempfile.TemporaryDirectory(prefix="gw-bench-latency-") as tmp:
        results = asyncio.run(run(args.rate, args.seconds, Path(tmp)))
    for result in results:
        print(result.line())
    base, xoev = results[0], results[-1]
    print(
        f"ratio gateway/baseline: p50 {xoev.q(0.5) / base.q(0.5):.1f}x, p99 {xoev.q(0.99) / base.q(0.99):.1f}x;"
        f" mean {1000 * statistics.fmean(xoev.latencies):.2f} ms"
    )
    return 0 if all(r.errors == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
