"""Sandbox: sandbox.toml loading, the example configuration, and the ``gateway sandbox`` command."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

from gateway.errors import ConfigErrors
from gateway_sandbox.testing import SandboxKeys, running_sandbox
from gateway_sandbox.zustelldienst.cli import DEFAULT_PORT, is_loopback, register, run_sandbox
from gateway_sandbox.zustelldienst.config import load_config

from .sandbox_helpers import Api

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "certs" / "example" / "sandbox.toml"
EXAMPLE_DEST = "5b0d8a16-2e5f-4d0c-9d6c-9f1b7a3c2e01"


def test_example_config() -> None:
    config = load_config(EXAMPLE)
    config.validate()
    (dest,) = config.destinations
    assert dest.id == EXAMPLE_DEST
    assert dest.metadata_versions == ("1.0.0", "2.1.0")
    assert [s.identifier for s in dest.services] == [
        "urn:de:fim:leika:leistung:99050012104000",
        "urn:de:fim:leika:leistung:99010003001006",
    ]
    assert [(s.submission_schemas[0].schema_uri, s.submission_schemas[0].mime_type) for s in dest.services] == [
        ("https://schema.example.org/demo/gewerbeanmeldung/1.0.0/gewerbeanmeldung.schema.json", "application/json"),
        ("urn:example:demo:bauantrag:1.0", "application/xml"),
    ]
    assert all(s.regions == ("DE09162000",) for s in dest.services)
    enc = json.loads((EXAMPLE.parent / "encryption.public.jwk.json").read_text())
    assert dest.encryption_kid == enc["kid"]
    assert dest.encryption_keys == (enc,)
    assert dest.callback is not None
    assert dest.callback.secret == (EXAMPLE.parent / "destination-callback.secret.txt").read_text().strip()
    assert "secret" not in repr(dest.callback)
    clients = {c.id: c for c in config.clients}
    assert clients["gateway-example"].scopes == (f"subscribe:destination:{EXAMPLE_DEST}",)
    assert clients["onlinedienst-example"].scopes == ("send:region:DE",)
    assert clients["gateway-example"].secret == (EXAMPLE.parent / "gateway-example.secret.txt").read_text().strip()


async def test_example_config_serves(fitconnect_sandbox_keys: SandboxKeys) -> None:
    config = dataclasses.replace(load_config(EXAMPLE), signing_key_file=fitconnect_sandbox_keys.zsd_key_file)
    async with running_sandbox(config) as sb, aiohttp.ClientSession() as http:
        api = Api(sb, http)
        r = await api.call("GET", f"/v1/destinations/{EXAMPLE_DEST}", auth="gateway-example")
        assert r.status == 200
        assert r.json["contactInformation"]["legalName"].startswith("Beispielstadt")
        body = {
            "destinationId": EXAMPLE_DEST,
            "announcedAttachments": [],
            "serviceType": {"name": "Bauantrag", "identifier": "urn:de:fim:leika:leistung:99010003001006"},
        }
        r = await api.call("POST", "/v1/submissions", auth="onlinedienst-example", json_body=body)
        assert r.status == 201


def test_config_errors_are_collected(tmp_path: Path, fitconnect_sandbox_keys: SandboxKeys) -> None:
    keys = fitconnect_sandbox_keys
    (tmp_path / "short.secret.txt").write_text("too-short\n")
    toml = f"""
[sandbox]
token_lifetime = -5
colour = "blue"
api_versions = ["v3"]

[[destinations]]
id = "not-a-uuid"
status = "sleeping"
metadata_versions = ["1.0"]
encryption_keys = ["{keys.encryption_private}"]
signing_keys = ["{keys.encryption_public}"]

[destinations.callback]
url = "http://127.0.0.1:1/cb"
secret = {{ file = "short.secret.txt" }}

[[destinations.services]]
identifier = "leistung"
regions = ["09162000"]
[[destinations.services.submission_schemas]]
schema_uri = "x"
mime_type = "text/plain"

[[clients]]
id = "c"
secret = "s"
scopes = ["root", "send:region:DE09"]
"""
    path = tmp_path / "sandbox.toml"
    path.write_text(toml)
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    text = str(info.value)
    for expected in (
        "sandbox.token_lifetime: must be > 0",
        "sandbox.colour: unknown key",
        "sandbox.api_versions: must be",
        "destinations[0].id: must be a UUID",
        "destinations[0].status: must be one of",
        "destinations[0].metadata_versions",
        "destinations[0].encryption_keys[0]: key file",  # a private key
        "destinations[0].signing_keys[0]: key file",  # an encryption key as signing key
        "destinations[0].callback.secret: must have 32–512 characters",
        "destinations[0].services[0].identifier",
        "destinations[0].services[0].regions",
        "destinations[0].services[0].submission_schemas[0].schema_uri",
        "destinations[0].services[0].submission_schemas[0].mime_type",
        "destinations[0].contact_information: is required",
        "clients[0].scopes: unknown scope 'root'",
    ):
        assert expected in text, (expected, text)
    assert all(line.startswith(str(path)) for line in text.splitlines())
    assert "too-short" not in text  # never a secret value


def test_http_callback_needs_allow_insecure(tmp_path: Path) -> None:
    config = load_config(EXAMPLE)
    with pytest.raises(ConfigErrors, match="allow_insecure_callbacks"):
        dataclasses.replace(config, allow_insecure_callbacks=False).validate()
    with pytest.raises(ConfigErrors, match="file not found"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("[sandbox\n")
    with pytest.raises(ConfigErrors, match="invalid TOML"):
        load_config(tmp_path / "bad.toml")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway")
    register(parser.add_subparsers(dest="command"))
    return parser


def test_cli_arguments() -> None:
    args = _parser().parse_args(["sandbox"])
    assert (args.host, args.port, args.config) == ("127.0.0.1", DEFAULT_PORT, Path("certs/example/sandbox.toml"))
    assert args.func is run_sandbox
    assert args.sandbox_command is None
    args = _parser().parse_args(["sandbox", "--state-dir", "/tmp/x", "--allow-insecure-callbacks", "--port", "9"])
    assert (args.state_dir, args.allow_insecure_callbacks, args.port) == (Path("/tmp/x"), True, 9)
    send = ["send", "--url", "u", "--token-url", "t", "--client-id", "c", "--client-secret-file", "f"]
    args = _parser().parse_args(["sandbox", *send, "--destination", "d", "--service", "s"])
    assert args.sandbox_command == "send"
    assert args.func is not run_sandbox  # the send sub-command's own handler


def test_cli_refuses_non_loopback(capsys: pytest.CaptureFixture[str]) -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("127.8.9.10")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("192.0.2.1")
    assert not is_loopback("example.org")
    args = _parser().parse_args(["sandbox", "--host", "0.0.0.0"])
    assert args.func(args) == 2
    assert "--i-know-this-is-not-production" in capsys.readouterr().err


async def test_cli_serves_until_sigterm(tmp_path: Path, fitconnect_sandbox_keys: SandboxKeys) -> None:
    config = tmp_path / "sandbox.toml"
    text = EXAMPLE.read_text().replace(
        "[sandbox]\n", f'[sandbox]\nsigning_key_file = "{fitconnect_sandbox_keys.zsd_key_file}"\n', 1
    )
    config.write_text(text)
    for name in ("encryption.public.jwk.json", "signing.public.jwk.json"):
        (tmp_path / name).write_text((EXAMPLE.parent / name).read_text())
    for name in ("gateway-example", "onlinedienst-example", "destination-callback"):
        (tmp_path / f"{name}.secret.txt").write_text((EXAMPLE.parent / f"{name}.secret.txt").read_text())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'plugins'}"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "sandbox",
        "--port",
        str(port),
        "--config",
        str(config),
        "--state-dir",
        str(tmp_path / "state"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert f"listening on http://127.0.0.1:{port}" in line.decode()
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/v1/info") as resp:
            assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(proc.stdout.read(), 60)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
        assert b"sandbox stopped" in rest
        assert (tmp_path / "state" / "state.json").exists()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
