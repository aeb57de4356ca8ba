"""FIT-Connect subscriber, one large attachment: peak memory and throughput of the receive path.

    python bench/fitconnect_large_attachment.py [--size-mb 500] [--shared ../shared]

The parent process runs a sandbox Zustelldienst and a sender that uploads one submission with an
attachment of ``--size-mb`` MB of random bytes. A child process runs the gateway (runtime only:
subscriber source, SQLite store, blob store, filesystem adapter) until the submission is accepted,
then, in the same process and over the same bytes, the baseline: AES-256-GCM decryption of the
ciphertext plus SHA-512 of the plaintext (what the receive path cannot avoid), streaming in 1 MiB
chunks. Printed: peak RSS growth over the child's baseline, seconds and MB/s of both, throughput as
a percentage of the baseline, the child's CPU time while receiving and the load average (the
receive path is pipelined over the cores: other load on the machine shows in its numbers).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "plugins"))

import psutil  # noqa: E402
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: E402

from gateway.config import load_config  # noqa: E402
from gateway.model import MessageState  # noqa: E402
from gateway.runtime import build_runtime  # noqa: E402
from gateway_sandbox.online_service.sender import OutgoingAttachment, Sender  # noqa: E402
from gateway_sandbox.testing import GEWERBE_SERVICE, generate_sandbox_keys, running_sandbox  # noqa: E402
from gateway_sandbox.zustelldienst.config import Limits  # noqa: E402

MB = 1000 * 1000
CHUNK = 1 << 20


def rss() -> int:
    value: int = psutil.Process().memory_info().rss
    return value


def peak_rss() -> int:
    # VmHWM: the high-water mark of this process's own address space. Not getrusage's ru_maxrss:
    # Linux folds the pre-exec image's high-water mark into it, so a child exec'ed from a large
    # parent (pytest after a thousand tests) would report the parent's size as its own peak.
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status")


def cpu_seconds(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def write_random(path: Path, size: int) -> None:
    with path.open("wb") as fh:
        left = size
        while left:
            block = os.urandom(min(8 << 20, left))
            fh.write(block)
            left -= len(block)


def baseline(plaintext: Path) -> float:
    """AES-256-GCM over the bytes plus SHA-512 of the plaintext, streaming; returns seconds."""
    key, iv = os.urandom(32), os.urandom(12)
    encrypted = plaintext.with_suffix(".gcm")
    enc = Cipher(algorithms.AES(key), modes.GCM(iv)).encryptor()
    with plaintext.open("rb") as src, encrypted.open("wb") as dst:
        while chunk := src.read(CHUNK):
            dst.write(enc.update(chunk))
        dst.write(enc.finalize())
    tag = enc.tag
    started = time.perf_counter()
    dec = Cipher(algorithms.AES(key), modes.GCM(iv, tag)).decryptor()
    digest = hashlib.sha512()
    with encrypted.open("rb") as src:
        while chunk := src.read(CHUNK):
            digest.update(dec.update(chunk))
    dec.finalize()
    seconds = time.perf_counter() - started
    encrypted.unlink()
    return seconds


async def child(config_path: Path, submission_id: str) -> dict[str, Any]:
    runtime = build_runtime(load_config(config_path))
    gc.collect()
    base = rss()
    cpu_before = cpu_stored = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    await runtime.start()
    stored_seconds = None
    try:
        while True:
            stored = await runtime.store.find_by_source("fc", submission_id)
            if stored is not None and stored_seconds is None:
                stored_seconds = time.perf_counter() - started
                cpu_stored = resource.getrusage(resource.RUSAGE_SELF)
            if stored is not None and stored.envelope.state in (MessageState.ACKNOWLEDGED, MessageState.REJECTED):
                break
            await asyncio.sleep(0.01)  # the resolution of both timings
        receive_seconds = time.perf_counter() - started
    finally:
        await runtime.stop()
    receive_peak = peak_rss()
    (blob,) = stored.envelope.attachments
    baseline_seconds = baseline(runtime.blobs.path(blob))
    return {
        "state": stored.envelope.state.value,
        "size": blob.size,
        "baseline_rss": base,
        "peak_rss": receive_peak,
        "receive_seconds": receive_seconds,
        "stored_seconds": stored_seconds,
        "stored_cpu_seconds": cpu_seconds(cpu_stored) - cpu_seconds(cpu_before),
        "baseline_seconds": baseline_seconds,
    }


def gateway_toml(tmp: Path, sandbox: Any, shared: Path, size: int) -> Path:
    keys = sandbox.keys
    (tmp / "client.secret").write_text(sandbox.subscriber.client_secret)
    (tmp / "out").mkdir()
    config = tmp / "gateway.toml"
    config.write_text(
        f"""
[store]
path = "var/gateway.db"
blob_dir = "var/blobs"
[delivery]
poll_interval = 0.05
[adapters.fs]
type = "filesystem"
directory = "out"
[[routes]]
name = "all"
adapter = "fs"
[sources.fc]
type = "fitconnect"
submission_api_url = "{sandbox.base_url}"
token_url = "{sandbox.token_url}"
client_id = "{sandbox.subscriber.client_id}"
client_secret = {{ file = "client.secret" }}
destination_id = "{sandbox.destination_id}"
decryption_keys = ["{keys.encryption_private}"]
signing_key = "{keys.signing_private}"
allow_self_signed = true
metadata_schema_dirs = ["{shared / "fitconnect"}"]
poll_interval = 0.2
require_data_schemas = false
max_attachment_bytes = {size + MB}
"""
    )
    return config


async def parent(size: int, shared: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fc-bench-") as raw:
        tmp = Path(raw)
        keys = generate_sandbox_keys(tmp / "keys")
        limits = Limits(max_attachment_bytes=size * 2)
        async with running_sandbox(keys=keys, limits=limits) as sandbox:
            config = gateway_toml(tmp, sandbox, shared, size)
            big = tmp / "attachment.bin"
            write_random(big, size)
            creds = sandbox.sender
            sent_at = time.perf_counter()
            async with Sender(sandbox.base_url, sandbox.token_url, creds.client_id, creds.client_secret) as sender:
                sent = await sender.send(
                    destination_id=sandbox.destination_id,
                    service_identifier=GEWERBE_SERVICE,
                    service_name="Bench",
                    data=None,
                    data_schema_uri=None,
                    data_mime_type=None,
                    attachments=[OutgoingAttachment(mime_type="application/octet-stream", path=big)],
                )
            send_seconds = time.perf_counter() - sent_at
            big.unlink()
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--child",
                str(config),
                sent.submission_id,
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await proc.communicate()
            if proc.returncode != 0:
                raise SystemExit(f"child failed with {proc.returncode}")
            result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
            result["send_seconds"] = send_seconds
            return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=500)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "SUBMISSION_ID"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import structlog

        structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
        print(json.dumps(asyncio.run(child(Path(args.child[0]), args.child[1]))), flush=True)
        return 0
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    load_before = os.getloadavg()
    r = asyncio.run(parent(args.size_mb * MB, args.shared))
    load_after = os.getloadavg()
    growth = (r["peak_rss"] - r["baseline_rss"]) / 2**20
    mbs = r["size"] / MB
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"attachment: {mbs:.0f} MB random bytes, state {r['state']}")
    print(f"peak RSS growth of the gateway process: {growth:.1f} MiB (baseline {r['baseline_rss'] / 2**20:.0f} MiB)")
    print(
        f"whole path (poll -> download -> JWE stream decrypt -> SHA-512 -> blob fsync -> intake -> deliver "
        f"(filesystem adapter: copy + SHA-512 check + fsync) -> accept): "
        f"{r['receive_seconds']:.2f} s = {mbs / r['receive_seconds']:.0f} MB/s"
    )
    print(
        f"  of which until durably stored (download, decrypt, hash, blob fsync, intake): {r['stored_seconds']:.2f} s "
        f"= {mbs / r['stored_seconds']:.0f} MB/s (gateway CPU meanwhile: {r['stored_cpu_seconds']:.2f} s)"
    )
    print(
        f"baseline (AES-256-GCM decrypt + SHA-512, same bytes, same process): "
        f"{r['baseline_seconds']:.2f} s = {mbs / r['baseline_seconds']:.0f} MB/s"
    )
    print(
        f"throughput in % of the baseline: durably stored {100 * r['baseline_seconds'] / r['stored_seconds']:.0f} %, "
        f"whole path {100 * r['baseline_seconds'] / r['receive_seconds']:.0f} %"
    )
    print(f"ratio whole path/baseline: {r['receive_seconds'] / r['baseline_seconds']:.1f}x")
    print(
        "load average before/after: "
        + " / ".join(", ".join(f"{x:.2f}" for x in load) for load in (load_before, load_after))
    )
    print(f"(sender: encrypt + upload {r['send_seconds']:.1f} s, not part of the ratio)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
