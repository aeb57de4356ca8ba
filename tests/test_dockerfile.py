"""The Docker image cannot be built here (no engine), so its entrypoint is tested as a process:
the ENTRYPOINT and HEALTHCHECK commands from the Dockerfile run against a real config."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")


def _instruction(name: str) -> str:
    lines = DOCKERFILE.replace("\\\n", " ").splitlines()
    found = [line.split(None, 1)[1] for line in lines if line.startswith(name + " ")]
    assert found, f"Dockerfile has no {name}"
    return found[-1]


def _exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list), "exec form expected"
    assert all(isinstance(p, str) for p in parsed), "exec form expected"
    return parsed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_image_runs_as_non_root_with_volumes() -> None:
    user = _instruction("USER")
    assert user not in ("root", "0")
    assert "/var/lib/gateway" in _instruction("VOLUME")
    assert _instruction("FROM").startswith("python:3.11-slim")
    assert "GATEWAY_CONFIG=/etc/gateway/gateway.toml" in DOCKERFILE


def test_entrypoint_serves_health_and_stops_gracefully(tmp_path: Path) -> None:
    entrypoint = _exec_form(_instruction("ENTRYPOINT"))
    assert entrypoint == ["gateway", "run"]
    healthcheck = _instruction("HEALTHCHECK")
    health_cmd = _exec_form(healthcheck.split("CMD", 1)[1].strip())

    port = _free_port()
    (tmp_path / "gateway.toml").write_text(
        f"""
[gateway]
mode = "test"
data_dir = "data"
[http]
port = {port}
drain_seconds = 5
[logging]
format = "json"
[adapters.out]
type = "filesystem"
directory = "out"
[[routes]]
name = "all"
adapter = "out"
""",
        encoding="utf-8",
    )
    bindir = Path(sys.executable).parent
    env = {**os.environ, "GATEWAY_CONFIG": str(tmp_path / "gateway.toml"), "GATEWAY_PORT": str(port)}
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.Popen(  # the image's entrypoint, verbatim
        entrypoint, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                    assert resp.status == 200
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    _out, err = proc.communicate(timeout=5)
                    pytest.fail(f"gateway did not come up: {err.decode()[-2000:]}")
                time.sleep(0.2)
        health = subprocess.run(
            [str(bindir / "python") if c == "python" else c for c in health_cmd], env=env, timeout=30, check=False
        )
        assert health.returncode == 0, f"HEALTHCHECK failed: {shlex.join(health_cmd)}"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        _out, err = proc.communicate(timeout=5)
        lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
        events = [line["event"] for line in lines]
        assert "gateway_started" in events
        assert "gateway_stopped" in events
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
