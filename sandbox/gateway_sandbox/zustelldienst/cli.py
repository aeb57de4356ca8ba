"""``gateway sandbox``: run the local Zustelldienst; ``gateway sandbox send``: the test sender."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import ipaddress
import signal
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway_sandbox.zustelldienst.app import create_sandbox_app
from gateway_sandbox.zustelldienst.appkeys import SANDBOX
from gateway_sandbox.zustelldienst.config import SandboxConfig, load_config

DEFAULT_CONFIG = Path("certs/example/sandbox.toml")
DEFAULT_STATE_DIR = Path("var/sandbox")
DEFAULT_PORT = 8470


def register(subparsers: Any) -> None:
    """Add ``sandbox`` (serve) with the optional sub-command ``send`` to the gateway CLI."""
    p = subparsers.add_parser(
        "sandbox",
        help="run a local FIT-Connect Zustelldienst (Submission API v1) for development and tests",
        description="Serves the sandbox until SIGINT/SIGTERM. TEST ONLY: never expose it as a real service.",
    )
    p.add_argument("--host", default="127.0.0.1", help="listen address (loopback only, see below)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help=f"sandbox TOML (default {DEFAULT_CONFIG})")
    p.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help=f"where state, contents and the sandbox key live (default: config, else {DEFAULT_STATE_DIR})",
    )
    p.add_argument("--in-memory", action="store_true", help="keep no state on disk (a fresh sandbox every start)")
    p.add_argument(
        "--allow-insecure-callbacks", action="store_true", help="allow http:// callback URLs (loopback receivers)"
    )
    p.add_argument(
        "--i-know-this-is-not-production",
        dest="not_production",
        action="store_true",
        help="allow a non-loopback --host (the sandbox has no real security)",
    )
    p.set_defaults(func=run_sandbox)
    sandbox_sub = p.add_subparsers(dest="sandbox_command", required=False, metavar="SUBCOMMAND")
    try:
        from gateway_sandbox.online_service.cli import add_send_parser
    except ModuleNotFoundError as exc:  # the test sender is optional in a trimmed build
        if exc.name and "gateway_sandbox.online_service.cli".startswith(exc.name):
            return
        raise
    add_send_parser(sandbox_sub)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def effective_config(args: argparse.Namespace) -> SandboxConfig:
    config = load_config(args.config)
    changes: dict[str, Any] = {}
    if args.in_memory:
        changes["state_dir"] = None
    elif args.state_dir is not None:
        changes["state_dir"] = args.state_dir
    elif config.state_dir is None:
        changes["state_dir"] = DEFAULT_STATE_DIR
    if args.allow_insecure_callbacks:
        changes["allow_insecure_callbacks"] = True
    if config.base_url is None:
        host = f"[{args.host}]" if ":" in args.host else args.host
        changes["base_url"] = f"http://{host}:{args.port}"
    return dataclasses.replace(config, **changes)


async def serve(config: SandboxConfig, host: str, port: int) -> None:
    app = create_sandbox_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    sandbox = app[SANDBOX]
    print(f"FIT-Connect sandbox (TEST ONLY) listening on {sandbox.base_url}", flush=True)
    print(f"  token URL    {sandbox.base_url}/token", flush=True)
    print(f"  JWKS         {sandbox.base_url}/.well-known/jwks.json", flush=True)
    if sandbox.config.inspection_api:
        print(f"  inspection   {sandbox.base_url}/_sandbox/", flush=True)
    for dest in sandbox.state.destinations.values():
        print(f"  destination  {dest.id} ({dest.status})", flush=True)
    for client in sandbox.state.clients.values():
        print(f"  client       {client.id}: {' '.join(client.scopes)}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        await runner.cleanup()
    print("sandbox stopped", flush=True)


def run_sandbox(args: argparse.Namespace) -> int:
    if not is_loopback(args.host) and not args.not_production:
        print(
            f"refusing to listen on {args.host}: the sandbox is TEST ONLY and has no real security; "
            "use a loopback address or pass --i-know-this-is-not-production",
            file=sys.stderr,
        )
        return 2
    config = effective_config(args)
    from gateway.logs import configure_logging

    configure_logging(format="console", level="info", stream=sys.stderr)
    asyncio.run(serve(config, args.host, args.port))
    return 0
