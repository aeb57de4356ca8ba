"""``gateway demo``: the whole FIT-Connect path on one machine, with the example configuration.

Starts the local FIT-Connect sandbox (``certs/example/sandbox.toml``) and the gateway
(``gateway.toml``: SQLite, example TEST keys, filesystem adapters), both on free loopback ports with
all state under a demo folder, sends realistic applications as an online service would, waits until
each one is in its Fachverfahren folder and acknowledged upstream, prints what happened and stops.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import shutil
import socket
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config import parse_config
from gateway.errors import ConfigError

MARKER = ".gateway-demo"


@dataclass(frozen=True, slots=True)
class DemoApplication:
    title: str
    service_identifier: str
    service_name: str
    data_file: str
    data_schema_uri: str
    data_mime_type: str
    attachments: tuple[tuple[str, str, bytes], ...]  # (filename, mime type, content)
    metadata_version: str
    breakage: str | None = None  # a deliberately broken submission, to show a rejection
    expect: str = "accept-submission"


def _pdf(text: str) -> bytes:
    """A small, valid one-page PDF (so the Fachverfahren folder holds something real to open)."""
    stream = f"BT /F1 18 Tf 72 720 Td ({text}) Tj ET".encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def applications() -> list[DemoApplication]:
    gewerbe = (
        "urn:de:fim:leika:leistung:99050012104000",
        "Gewerbeanmeldung",
        "gewerbeanmeldung.json",
        "https://schema.example.org/demo/gewerbeanmeldung/1.0.0/gewerbeanmeldung.schema.json",
        "application/json",
    )
    bau = (
        "urn:de:fim:leika:leistung:99010003001006",
        "Bauantrag",
        "bauantrag.xml",
        "urn:example:demo:bauantrag:1.0",
        "application/xml",
    )
    return [
        DemoApplication(
            "Gewerbeanmeldung (JSON data, PDF attachment, metadata 1.0.0)",
            *gewerbe,
            attachments=(("Handelsregisterauszug.pdf", "application/pdf", _pdf("Handelsregisterauszug (DEMO)")),),
            metadata_version="1.0.0",
        ),
        DemoApplication(
            "Bauantrag (XML data, two attachments, metadata 2.1.0)",
            *bau,
            attachments=(
                ("Lageplan.pdf", "application/pdf", _pdf("Lageplan 1:500 (DEMO)")),
                ("Bauzeichnung Ansicht Nord.pdf", "application/pdf", _pdf("Ansicht Nord (DEMO)")),
            ),
            metadata_version="2.1.0",
        ),
        DemoApplication(
            "Gewerbeanmeldung with a wrong data hash (must be rejected)",
            *gewerbe,
            attachments=(),
            metadata_version="1.0.0",
            breakage="hash-mismatch",
            expect="reject-submission",
        ),
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prepare_workdir(workdir: Path) -> None:
    if workdir.exists():
        if not (workdir / MARKER).exists() and any(workdir.iterdir()):
            raise ConfigError(f"{workdir} exists and was not created by `gateway demo`; choose another --workdir")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / MARKER).write_text("created by `gateway demo`; deleted and re-created on the next run\n")


def _gateway_raw_config(config_path: Path, workdir: Path, port: int, sandbox_url: str) -> dict[str, Any]:
    """The example gateway.toml, with every piece of state moved into the demo folder."""
    with config_path.open("rb") as fh:
        raw: dict[str, Any] = tomllib.load(fh)
    raw.setdefault("gateway", {})["data_dir"] = str(workdir / "data")
    raw.setdefault("store", {}).update(
        path=str(workdir / "data" / "gateway.db"), blob_dir=str(workdir / "data" / "blobs")
    )
    raw.setdefault("http", {}).update(host="127.0.0.1", port=port)
    raw.setdefault("delivery", {})["poll_interval"] = 0.2
    for name, adapter in raw.get("adapters", {}).items():
        if adapter.get("type") == "filesystem":
            adapter["directory"] = str(workdir / "fachverfahren" / name)
    for source in raw.get("sources", {}).values():
        if source.get("type") == "fitconnect":
            source["submission_api_url"] = sandbox_url
            source["token_url"] = sandbox_url + "/token"
            source["poll_interval"] = 5
    return raw


async def run_demo(args: argparse.Namespace) -> int:
    from aiohttp import web

    from gateway.http.app import create_app
    from gateway.runtime import build_runtime
    from gateway_sandbox.online_service.sender import Breakage, OutgoingAttachment, Sender
    from gateway_sandbox.testing import running_sandbox
    from gateway_sandbox.zustelldienst.config import load_config as load_sandbox_config

    config_path: Path = args.config
    base = config_path.parent
    workdir: Path = args.workdir
    out = sys.stdout

    gw_port = args.port or _free_port()
    sandbox_cfg = load_sandbox_config(args.sandbox_config)
    sandbox_cfg = dataclasses.replace(sandbox_cfg, state_dir=workdir / "sandbox", allow_insecure_callbacks=True)
    async with running_sandbox(sandbox_cfg) as sandbox:
        raw = _gateway_raw_config(config_path, workdir, gw_port, sandbox.base_url)
        config = parse_config(raw, file=config_path)
        source_cfg = next(v for v in raw["sources"].values() if v.get("type") == "fitconnect")
        callback_url = f"http://127.0.0.1:{gw_port}{source_cfg.get('callback_path', '/fitconnect/callback')}"
        secret_file = base / source_cfg["callback_secret"]["file"]
        sandbox.set_destination_callback(callback_url, secret_file.read_text(encoding="utf-8").strip())

        runtime = build_runtime(config)
        runner = web.AppRunner(create_app(runtime), access_log=None, shutdown_timeout=5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", gw_port).start()
        print(f"FIT-Connect sandbox (Zustelldienst):  {sandbox.base_url}", file=out)
        print(f"Gateway:                              http://127.0.0.1:{gw_port}  (metrics: /metrics)", file=out)
        print(f"Demo folder:                          {workdir}\n", file=out)
        ok = True
        try:
            sender_creds = sandbox.client("onlinedienst-example")
            sent: list[tuple[DemoApplication, Any]] = []
            async with Sender(
                sandbox.base_url, sandbox.base_url + "/token", sender_creds.client_id, sender_creds.client_secret
            ) as sender:
                for app in applications():
                    data = (base / "schemas" / "demo" / "examples" / app.data_file).read_bytes()
                    submission = await sender.send(
                        destination_id=sandbox.destination_id,
                        service_identifier=app.service_identifier,
                        service_name=app.service_name,
                        data=data,
                        data_schema_uri=app.data_schema_uri,
                        data_mime_type=app.data_mime_type,
                        attachments=[
                            OutgoingAttachment(mime_type=mime, filename=name, content=content)
                            for name, mime, content in app.attachments
                        ],
                        metadata_version=app.metadata_version,
                        breakage=Breakage(app.breakage) if app.breakage else None,
                    )
                    sent.append((app, submission))
                    print(f"sent    {app.title}\n        submission {submission.submission_id}", file=out)
            print("\nwaiting for the gateway (callback → pickup → checks → delivery → accept/reject) ...\n", file=out)
            deadline = time.monotonic() + args.timeout
            pending = {s.submission_id for _a, s in sent}
            while pending and time.monotonic() < deadline:
                for _app, sub in sent:
                    names = {e.event_name for e in sandbox.events(sub.case_id)}
                    if names & {"accept-submission", "reject-submission"}:
                        pending.discard(sub.submission_id)
                await asyncio.sleep(0.2)
            for app, sub in sent:
                ok &= await _report(out, runtime, sandbox, app, sub, workdir)
            if pending:
                ok = False
                print(f"TIMEOUT: {len(pending)} submission(s) not acknowledged within {args.timeout:.0f}s", file=out)
            if args.keep_running:
                print("\n--keep-running: gateway and sandbox stay up; Ctrl-C to stop.", file=out)
                await asyncio.Event().wait()
        finally:
            await runner.cleanup()
    print("\ndemo " + ("finished: every application arrived and was acknowledged" if ok else "FAILED"), file=out)
    return 0 if ok else 1


async def _report(out: Any, runtime: Any, sandbox: Any, app: DemoApplication, sub: Any, workdir: Path) -> bool:
    stored = await runtime.store.find_by_source("fitconnect-example", sub.submission_id)
    events = [e.event_name for e in sandbox.events(sub.case_id)]
    print(f"== {app.title}", file=out)
    print(f"   sandbox event log:  {' → '.join(events)}", file=out)
    if stored is None:
        print("   gateway:            not received", file=out)
        return False
    env = stored.envelope
    print(f"   gateway:            message {env.id}  state={env.state.value}  route={env.route or '-'}", file=out)
    if stored.problems:
        for problem in stored.problems:
            print(f"   problem:            {problem.type}  instance={problem.instance}", file=out)
    folder = workdir / "fachverfahren" / (env.adapter or "-") / env.id
    if folder.is_dir():
        print(f"   Fachverfahren:      {folder.relative_to(workdir)}/", file=out)
        for path in sorted(folder.iterdir()):
            print(f"                         {path.name}  ({path.stat().st_size} bytes)", file=out)
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        assert manifest.get("gateway_id") == env.id
    expected_state = "acknowledged" if app.expect == "accept-submission" else "rejected"
    good = events[-1:] == [app.expect] and env.state.value == expected_state
    print(f"   expected:           {app.expect} → {'OK' if good else 'NOT MET'}\n", file=out)
    return good


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.logs import configure_logging

    configure_logging(format="console", level="info" if args.verbose else "warning")
    args.config = Path(args.config).resolve()
    args.sandbox_config = Path(args.sandbox_config).resolve()
    args.workdir = Path(args.workdir).resolve() if args.workdir else args.config.parent / "var" / "demo"
    _prepare_workdir(args.workdir)
    return asyncio.run(run_demo(args))


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("demo", help="run sandbox + gateway on the example config and send sample applications")
    p.add_argument("--config", "-c", default="gateway.toml", help="example gateway config (default: gateway.toml)")
    p.add_argument("--sandbox-config", default="certs/example/sandbox.toml")
    p.add_argument("--workdir", help="demo folder (default: var/demo beside the config); re-created on each run")
    p.add_argument("--port", type=int, default=0, help="gateway port (default: a free one)")
    p.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for all acknowledgements")
    p.add_argument("--keep-running", action="store_true", help="keep gateway and sandbox running afterwards")
    p.add_argument("--verbose", "-v", action="store_true", help="show the gateway's log lines")
    p.set_defaults(func=cmd_demo)
