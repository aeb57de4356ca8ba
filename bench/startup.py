"""Start-up cost with many FIT-Connect sources (issue 14, item 5): check-config and run-until-healthy.

    python bench/startup.py [--sources 500] [--rounds 3] [--shared ../shared]

Generates a gateway.toml with N ``fitconnect`` sources (one destination each) that share the example
TEST key files and the FIT-Connect metadata schemas (as a municipality data centre's sources would
share the provider's keys), then measures, in this process and fresh each round:

* ``check-config``: reading and checking the whole file (``gateway.assembly.plan_file``);
* run until healthy: ``build_runtime`` + starting every component + the HTTP listener answering
  ``/healthz`` (the Zustelldienst URL is a closed loopback port: the sources start, their polls fail
  and back off, which costs nothing here).

The same is measured for 1 source in the same run; the script prints both and the ratio, and how many
key files and schema sets were actually loaded (the subsystem's cache misses). Target: 500 sources
start in <= 10 s.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import structlog
from aiohttp import web

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway.assembly import plan_file  # noqa: E402
from gateway.config import load_config  # noqa: E402
from gateway.http.app import create_app  # noqa: E402
from gateway.runtime import build_runtime  # noqa: E402
from gateway.sources.fitconnect.subsystem import FitConnectSubsystem  # noqa: E402

EXAMPLE = REPO / "certs" / "example"


def write_config(directory: Path, sources: int, metadata_dir: Path) -> Path:
    lines = [
        "[gateway]",
        f'data_dir = "{directory / "var"}"',
        "[logging]",
        'level = "warning"',
        "[adapters.fv]",
        'type = "filesystem"',
        f'directory = "{directory / "out"}"',
        "[[routes]]",
        'name = "all"',
        'adapter = "fv"',
    ]
    for i in range(sources):
        lines += [
            f"[sources.fc-{i:04d}]",
            'type = "fitconnect"',
            'submission_api_url = "http://127.0.0.1:9"',
            'token_url = "http://127.0.0.1:9/token"',
            f'client_id = "client-{i}"',
            f'client_secret = {{ file = "{EXAMPLE / "gateway-example.secret.txt"}" }}',
            f'destination_id = "{uuid.UUID(int=i + 1)}"',
            f'decryption_keys = ["{EXAMPLE / "encryption.private.jwk.json"}"]',
            f'signing_key = "{EXAMPLE / "signing.private.jwk.json"}"',
            f'callback_secret = {{ file = "{EXAMPLE / "destination-callback.secret.txt"}" }}',
            "poll_interval = 3600",
            "allow_self_signed = true",
            f'metadata_schema_dirs = ["{metadata_dir}"]',
            f'data_schema_dirs = ["{REPO / "schemas" / "demo"}"]',
        ]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "gateway.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def check_config(path: Path) -> tuple[float, int]:
    began = time.perf_counter()
    plan = plan_file(path)
    seconds = time.perf_counter() - began
    assert not plan.reader.errors, [e.render() for e in plan.reader.errors[:3]]
    cache = plan.subsystems["fitconnect"]
    assert isinstance(cache, FitConnectSubsystem)
    return seconds, cache.loads


async def run_until_healthy(path: Path) -> float:
    began = time.perf_counter()
    runtime = build_runtime(load_config(path))
    runner = web.AppRunner(create_app(runtime), access_log=None)
    await runner.setup()  # starts the runtime's components (cleanup_ctx)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/healthz") as resp:
            assert resp.status == 200
        return time.perf_counter() - began
    finally:
        await runner.cleanup()


def measure(directory: Path, sources: int, metadata_dir: Path, rounds: int) -> tuple[float, float, int]:
    path = write_config(directory, sources, metadata_dir)
    checks, runs, loads = [], [], 0
    for _ in range(rounds):
        seconds, loads = check_config(path)
        checks.append(seconds)
        runs.append(asyncio.run(run_until_healthy(path)))
    return statistics.median(checks), statistics.median(runs), loads


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared", help="the reference data (../shared)")
    args = parser.parse_args()
    metadata_dir = args.shared / "fitconnect"
    if not metadata_dir.is_dir():
        print(f"needs the FIT-Connect metadata schemas: {metadata_dir} is not a directory (--shared)", file=sys.stderr)
        return 2
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only (every poll fails here)
    with tempfile.TemporaryDirectory() as tmp:
        measure(Path(tmp) / "warm-up", 1, metadata_dir, 1)  # imports, first-use caches: not start-up cost
        one = measure(Path(tmp) / "one", 1, metadata_dir, args.rounds)
        many = measure(Path(tmp) / "many", args.sources, metadata_dir, args.rounds)
    print(f"median of {args.rounds} rounds          1 source   {args.sources} sources   ratio")
    print(f"check-config                {one[0]:8.2f} s  {many[0]:8.2f} s   {many[0] / one[0]:6.1f}x")
    print(f"run until healthy           {one[1]:8.2f} s  {many[1]:8.2f} s   {many[1] / one[1]:6.1f}x")
    print(f"key files + schema sets loaded: {one[2]} / {many[2]} (shared by every source: loaded once)")
    target = "met" if many[1] <= 10.0 else "NOT met"
    print(f"target: {args.sources} sources healthy in <= 10 s: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
