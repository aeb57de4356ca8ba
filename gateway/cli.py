"""The ``gateway`` command line.

Core commands live here; subsystems and plugins add theirs through the ``gateway_add_commands``
hook (the built-in channels go through the same hook, registered in the entry-point group ``gateway.builtin``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.config import GatewayConfig, load_config
from gateway.errors import ConfigError, ConfigErrors, GatewayError
from gateway.model import MessageState, RoutingKeys
from gateway.plugins import PluginHost

DEFAULT_CONFIG = os.environ.get("GATEWAY_CONFIG", "gateway.toml")


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=DEFAULT_CONFIG, help="path to gateway.toml (env GATEWAY_CONFIG)")


def _load(path: str) -> GatewayConfig:
    return load_config(Path(path))


def _print_config_errors(exc: ConfigError | ConfigErrors) -> None:
    errors = exc.errors if isinstance(exc, ConfigErrors) else [exc]
    for err in errors:
        print(f"error: {err.render()}", file=sys.stderr)


# run ----------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.http.app import create_app
    from gateway.logs import configure_logging
    from gateway.runtime import build_runtime

    config = _load(args.config)
    configure_logging(format=config.logging.format, level=config.logging.level)
    runtime = build_runtime(config)
    ssl_context = build_ssl_context(config)
    asyncio.run(
        serve(
            create_app(runtime),
            config.http.host,
            args.port or config.http.port,
            config.http.drain_seconds,
            ssl_context=ssl_context,
        )
    )
    return 0


def build_ssl_context(config: GatewayConfig) -> ssl.SSLContext | None:
    """The HTTPS server context from ``[http] tls_cert``/``tls_key`` (None: plain HTTP).

    With ``client_ca``, clients MAY present a certificate issued by one of those CAs (CERT_OPTIONAL:
    bearer-token clients still connect); a presented certificate that does not verify fails the
    handshake. Which certificate may do what is decided per channel (e.g. the xoev-http source pins
    SHA-256 fingerprints). Only ``client_ca`` is trusted for client certificates, never the system CAs.
    """
    http = config.http
    if http.tls_cert is None or http.tls_key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(http.tls_cert, http.tls_key)
    except (OSError, ssl.SSLError) as exc:
        reason = f"cannot load the certificate chain and key: {getattr(exc, 'reason', None) or exc.strerror or exc}"
        raise ConfigError(reason, key="http.tls_cert", file=str(config.file)) from None
    if http.client_ca is not None:
        try:
            context.load_verify_locations(cafile=http.client_ca)
        except (OSError, ssl.SSLError) as exc:
            reason = f"cannot load the client CA certificates: {getattr(exc, 'reason', None) or exc.strerror or exc}"
            raise ConfigError(reason, key="http.client_ca", file=str(config.file)) from None
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


async def serve(
    app: Any,
    host: str,
    port: int,
    drain_seconds: float,
    stop: asyncio.Event | None = None,
    *,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop`` is set), then shut down gracefully (HTTPS with ``ssl_context``)."""
    from aiohttp import web

    runner = web.AppRunner(app, shutdown_timeout=drain_seconds, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


# check-config / plugins / route ----------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    """Every error of the file in one run (core tables, subsystems, every adapter and source), without
    side effects; warnings (e.g. a route shadowed by an earlier catch-all) do not fail the check."""
    from gateway.assembly import plan_file
    from gateway.runtime import check_legacy_instances

    path = args.path or args.config
    plan = plan_file(path)
    reader, config = plan.reader, plan.config
    check_legacy_instances(plan)
    if not reader.failed("http"):
        try:
            build_ssl_context(config)  # the TLS certificate and key load
        except ConfigError as exc:
            reader.errors.append(exc)
    for warning in reader.warnings:
        print(f"warning: {warning.render()}", file=sys.stderr)
    if reader.errors:
        _print_config_errors(ConfigErrors(reader.errors))
        return 2
    print(f"{path}: ok ({len(config.sources)} sources, {len(config.adapters)} adapters, {len(config.routes)} routes)")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    allow: Sequence[str] = ()
    block: Sequence[str] = ()
    if Path(args.config).is_file():
        config = _load(args.config)
        allow, block = config.plugins.allow, config.plugins.block
    host = PluginHost.load(allow=allow, block=block)
    if args.options:
        return _print_options(host, args.options, as_json=args.json)
    rows: list[dict[str, Any]] = [
        {
            "name": i.name,
            "distribution": i.distribution,
            "version": i.version,
            "builtin": i.builtin,
            "adapter_types": list(i.adapter_types),
            "source_types": list(i.source_types),
            "reply_channel_types": list(i.reply_channel_types),
        }
        for i in host.infos
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        provides = (
            [f"adapter:{t}" for t in row["adapter_types"]]
            + [f"source:{t}" for t in row["source_types"]]
            + [f"reply-channel:{t}" for t in row["reply_channel_types"]]
        )
        dist = f"{row['distribution']} {row['version']}" if row["distribution"] else "-"
        print(f"{row['name']:<38} {dist:<24} {', '.join(provides) or '-'}")
    return 0


def _print_options(host: PluginHost, name: str, *, as_json: bool) -> int:
    """The options a type declares: ``adapter:NAME``, ``source:NAME``, ``subsystem:NAME`` or just ``NAME``."""
    from dataclasses import asdict

    from gateway.options.docs import describe, text

    kind, _, type_name = name.rpartition(":")
    found = [
        (k, t)
        for k, types in (
            ("adapter", host.adapter_types),
            ("source", host.source_types),
            ("subsystem", host.subsystem_types),
        )
        if kind in ("", k) and (t := types.get(type_name)) is not None
    ]
    if not found:
        print(
            f"error: no adapter, source or subsystem type {name!r} is installed (see `gateway plugins`)",
            file=sys.stderr,
        )
        return 2
    for k, t in found:
        if as_json:
            print(
                json.dumps(
                    {
                        "kind": k,
                        "type": t.name,
                        "options": [asdict(d) for d in describe(t.options)] if t.options else None,
                    },
                    indent=2,
                )
            )
            continue
        table = {
            "adapter": f'[adapters.NAME] type = "{t.name}"',
            "source": f'[sources.NAME] type = "{t.name}"',
            "subsystem": f"[{t.name}]",
        }[k]
        print(f"{table}: {t.description}")
        print(
            text(t.options) if t.options is not None else "  (options not declared: the type checks its table itself)"
        )
    return 0


def cmd_route(args: argparse.Namespace) -> int:
    from gateway.routing import Router

    config = _load(args.config)
    values: dict[str, Any] = {}
    source = None
    for item in args.keys:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"error: expected key=value, got {item!r}", file=sys.stderr)
            return 2
        if key == "source":
            source = value
        elif key == "test":
            values["test"] = value.lower() in ("1", "true", "yes")
        elif key in ("service", "region", "destination", "message_type", "namespace", "sender"):
            values[key] = value
        else:
            print(f"error: unknown routing key {key!r}", file=sys.stderr)
            return 2
    router = Router.from_config(config)
    keys = RoutingKeys.from_dict(values)
    if args.explain:
        for line in router.explain(keys, source):
            print(line)
    decision = router.decide(keys, source)
    if not args.explain:
        print(decision.route.name if decision.route else f"rejected: {decision.reason}")
    return 0 if decision.route else 1


# store-backed admin commands ------------------------------------------------------------------


async def _with_store(config: GatewayConfig, fn: Any) -> int:
    from gateway.runtime import open_store

    store = open_store(config)
    await store.open()
    try:
        result: int = await fn(store)
        return result
    finally:
        await store.close()


def _summary_line(stored: Any) -> str:
    env = stored.envelope
    return (
        f"{env.id}  {env.state.value:<12} {env.source.channel:<20} route={env.route or '-'} "
        f"attempts={env.attempts} error={stored.last_error or '-'}"
    )


def cmd_dead_letters(args: argparse.Namespace) -> int:
    from gateway.http.app import discard_dead_letter, message_summary

    config = _load(args.config)

    async def work(store: Any) -> int:
        if args.action == "list":
            rows = await store.list_messages(states=[MessageState.DEAD], limit=args.limit)
            for row in rows:
                print(_summary_line(row))
            print(f"{len(rows)} dead letter(s)")
            return 0
        stored = await store.get(args.id)
        if stored is None:
            print(f"error: no message {args.id}", file=sys.stderr)
            return 1
        if args.action == "show":
            trail = await store.audit_trail(args.id)
            print(json.dumps({**message_summary(stored), "audit": [r.as_dict() for r in trail]}, indent=2))
            return 0
        if stored.envelope.state is not MessageState.DEAD:
            print(f"error: message is {stored.envelope.state.value}, not dead", file=sys.stderr)
            return 1
        if args.action == "retry":
            await store.transition(
                args.id,
                MessageState.ROUTED,
                reason="operator retry",
                actor=f"cli:{os.environ.get('USER', 'operator')}",
                reset_attempts=True,
                details={"previous_attempts": stored.envelope.attempts},
            )
            print(f"{args.id}: back on the delivery path (history kept)")
            return 0
        try:
            await discard_dead_letter(
                store, stored, actor=f"cli:{os.environ.get('USER', 'operator')}", force=args.force
            )
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"{args.id}: discarded (rejected upstream where the source needs it)")
        return 0

    return asyncio.run(_with_store(config, work))


def cmd_audit(args: argparse.Namespace) -> int:
    config = _load(args.config)

    async def work(store: Any) -> int:
        if args.action == "show":
            for rec in await store.audit_trail(args.id):
                print(json.dumps(rec.as_dict(), ensure_ascii=False))
            return 0
        result = await store.verify_audit()
        if result.ok:
            print(f"audit chain intact: {result.checked} record(s)")
            return 0
        print(f"audit chain BROKEN at seq {result.broken_seq}: {result.reason}", file=sys.stderr)
        return 1

    return asyncio.run(_with_store(config, work))


def cmd_db(args: argparse.Namespace) -> int:
    config = _load(args.config)

    async def work(store: Any) -> int:
        version = await store.schema_version()
        print(f"database schema at version {version}")
        return 0

    return asyncio.run(_with_store(config, work))  # opening the store applies pending migrations


def build_parser(host: PluginHost | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="OZG integration gateway")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the gateway (HTTP surface, sources, delivery)")
    _config_arg(p)
    p.add_argument("--port", type=int, default=None, help="override [http] port")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="validate a configuration file")
    _config_arg(p)
    p.add_argument("path", nargs="?", help="config file (default: --config)")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("plugins", help="list loaded plugins and the types they provide")
    _config_arg(p)
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--options", metavar="TYPE", help="print the options of a type (adapter:, source:, subsystem: or a name)"
    )
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("route", help="show which route a message with these keys takes")
    _config_arg(p)
    p.add_argument("--explain", action="store_true", help="say why each earlier rule did not match")
    p.add_argument("keys", nargs="*", metavar="key=value", help="service=, region=, destination=, message_type=, ...")
    p.set_defaults(func=cmd_route)

    p = sub.add_parser("dead-letters", help="inspect and replay dead letters")
    _config_arg(p)
    dl = p.add_subparsers(dest="action", required=True)
    q = dl.add_parser("list")
    q.add_argument("--limit", type=int, default=100)
    for action in ("show", "retry", "discard"):
        q = dl.add_parser(action)
        q.add_argument("id")
        if action == "discard":
            q.add_argument("--force", action="store_true", help="discard even if already accepted upstream")
    p.set_defaults(func=cmd_dead_letters)

    p = sub.add_parser("audit", help="audit trail: verify the hash chain, show a message's history")
    _config_arg(p)
    au = p.add_subparsers(dest="action", required=True)
    au.add_parser("verify")
    q = au.add_parser("show")
    q.add_argument("id")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("db", help="database schema")
    _config_arg(p)
    dbs = p.add_subparsers(dest="action", required=True)
    dbs.add_parser("upgrade", help="apply pending migrations")
    p.set_defaults(func=cmd_db)

    (host or PluginHost.load(entry_points_enabled=False)).add_commands(sub)
    for name, what in SANDBOX_COMMANDS.items():
        if name not in sub.choices:  # the sandbox distribution is not installed (e.g. a production image)
            q = sub.add_parser(name, help=f"{what} (needs {SANDBOX_DISTRIBUTION}, not installed)")
            q.set_defaults(func=_sandbox_missing)
    return parser


# Commands of the development companion (sandbox/, distribution ozg-gateway-sandbox). Production
# images do not ship it; the core then offers the names only to say how to get them.
SANDBOX_DISTRIBUTION = "ozg-gateway-sandbox"
SANDBOX_COMMANDS = {
    "sandbox": "run a local FIT-Connect Zustelldienst",
    "demo": "show the gateway's round trip on this machine",
}


def _sandbox_missing(args: argparse.Namespace) -> int:
    print(
        f"error: `gateway {args.command}` comes with {SANDBOX_DISTRIBUTION}, which is not installed here; "
        "from a checkout of the gateway: pip install -e ./sandbox",
        file=sys.stderr,
    )
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    from gateway.logs import configure_logging

    argv = list(sys.argv[1:] if argv is None else argv)
    # Configured once, here: the allow-list and safe tracebacks hold for every command, not only
    # `run` (which switches to the format and level of its config file).
    configure_logging(format="console", level="warning")
    try:
        # Entry points too, so installed vendor plugins can add commands (gateway_add_commands). A
        # broken vendor plugin must not take the CLI down before gateway.toml could block it: then
        # only the built-in commands are offered, and run/check-config report the plugin's error.
        try:
            host = PluginHost.load()
        except ConfigError:
            host = PluginHost.load(entry_points_enabled=False)
        args = build_parser(host).parse_args(argv)
        result: int = args.func(args)
        return result
    except (ConfigError, ConfigErrors) as exc:
        _print_config_errors(exc)
        return 2
    except GatewayError as exc:  # an operator-facing condition (e.g. migrations need the owner role)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
