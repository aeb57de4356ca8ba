"""``gateway schemas list`` and ``gateway schemas check``.

``check`` loads every configured bundle (compiling and caching as needed), validates the configured
sample files (``samples`` must be valid, ``invalid_samples`` must not be), cross-checks that the
libxml2 fast path and xmlschema agree on each of them, and exits non-zero on any problem.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TextIO

from gateway.config import load_config
from gateway.errors import ConfigError, ConfigErrors
from gateway.xoev.config import BundleConfig, XoevConfig, parse_xoev_config
from gateway.xoev.decode import validate_xml
from gateway.xoev.parsing import XmlRejected, parse_xml
from gateway.xoev.registry import SchemaRegistry
from gateway.xoev.validation import root_name, xmlschema_issues

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("schemas", help="XÖV schema registry: list bundles, check samples")
    commands = parser.add_subparsers(dest="schemas_command", required=True)
    listing = commands.add_parser("list", help="list bundles, entry schemas and message root elements")
    listing.add_argument("--roots", action="store_true", help="also list every message root element")
    listing.set_defaults(func=cmd_list)
    check = commands.add_parser("check", help="load every bundle and validate the configured samples")
    check.set_defaults(func=cmd_check)
    for sub in (listing, check):
        sub.add_argument(
            "--config",
            "-c",
            default=os.environ.get("GATEWAY_CONFIG", "gateway.toml"),
            help="path to gateway.toml (env GATEWAY_CONFIG)",
        )


def load_xoev_config(path: Path) -> XoevConfig | None:
    """The ``[xoev]`` table of a gateway.toml, read through the gateway's config loader."""
    config = load_config(path)
    table = config.tables.get("xoev")
    if table is None:
        return None
    return parse_xoev_config(table, base_dir=config.base_dir, file=str(config.file))


def _config(args: argparse.Namespace, out: TextIO) -> XoevConfig | None:
    path = args.config
    try:
        config = load_xoev_config(Path(path))
    except (ConfigError, ConfigErrors) as exc:
        print(f"configuration error: {exc}", file=out)
        return None
    if config is None or not config.bundles:
        print(f"{path}: no [[xoev.bundles]] configured", file=out)
        return None
    return config


def cmd_list(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    config = _config(args, out)
    if config is None:
        return EXIT_CONFIG
    started = time.perf_counter()
    registry = SchemaRegistry.open(config, strict=False)
    print(f"{len(registry.bundles)} bundle(s) loaded in {time.perf_counter() - started:.3f} s", file=out)
    for name, bundle in registry.bundles.items():
        print(f"{name}  ({bundle.source})  {bundle.config.dir}", file=out)
        for entry in bundle.entries:
            fast = "lxml" if registry.lxml_schema(name, entry.namespace) is not None else "xmlschema only"
            print(f"  {entry.entry}  {{{entry.namespace}}}  {len(entry.roots)} root(s), {fast}", file=out)
            if args.roots:
                for root in entry.roots:
                    print(f"    {root}", file=out)
    for problem in registry.errors:
        print(f"ERROR {problem}", file=out)
    return EXIT_FAILED if registry.errors else EXIT_OK


def cmd_check(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    config = _config(args, out)
    if config is None:
        return EXIT_CONFIG
    registry = SchemaRegistry.open(config, strict=False)
    failures = [f"bundle problem: {p}" for p in registry.errors]
    checked = 0
    for bundle in config.bundles:
        if bundle.name not in registry.bundles:
            continue
        for expect_valid, patterns in ((True, bundle.samples), (False, bundle.invalid_samples)):
            for pattern in patterns:
                files = _glob(bundle, pattern)
                if not files:
                    failures.append(f"{bundle.name}: sample pattern {pattern!r} matches no file")
                for path in files:
                    checked += 1
                    problem = _check_sample(registry, config, bundle, path, expect_valid)
                    rel = path.relative_to(bundle.dir)
                    print(f"{'ok  ' if problem is None else 'FAIL'} {bundle.name}/{rel}", file=out)
                    if problem is not None:
                        failures.append(f"{bundle.name}/{rel}: {problem}")
    for failure in failures:
        print(f"ERROR {failure}", file=out)
    print(f"{checked} sample(s) checked, {len(failures)} problem(s)", file=out)
    return EXIT_FAILED if failures else EXIT_OK


def _glob(bundle: BundleConfig, pattern: str) -> list[Path]:
    return sorted(p for p in bundle.dir.glob(pattern) if p.is_file() and p.resolve().is_relative_to(bundle.dir))


def _check_sample(
    registry: SchemaRegistry, config: XoevConfig, bundle: BundleConfig, path: Path, expect_valid: bool
) -> str | None:
    data = path.read_bytes()
    try:
        outcome = validate_xml(data, registry=registry, limits=config.limits, max_issues=config.max_issues)
    except XmlRejected as exc:
        return f"rejected: {exc}"
    if outcome.bundle is None:
        return f"no schema registered for {{{outcome.namespace}}}{outcome.root}"
    if outcome.bundle != bundle.name:
        return f"validated by bundle {outcome.bundle}, not {bundle.name}"
    if outcome.valid != expect_valid:
        if expect_valid:
            first = outcome.issues[0]
            return f"invalid: {first.reason} at {first.path} (line {first.line})"
        return "expected to be invalid, but it validates"
    # The fast path is only trusted where both engines agree; say so when they do not.
    tree = parse_xml(data, config.limits)
    namespace, _ = root_name(tree)
    fast = registry.lxml_schema(bundle.name, namespace)
    if fast is not None:
        lxml_valid = bool(fast.validate(tree))
        xmlschema_valid = next(xmlschema_issues(registry.xmlschema(bundle.name), tree), None) is None
        if lxml_valid != xmlschema_valid:
            return f"engines disagree: libxml2 valid={lxml_valid}, xmlschema valid={xmlschema_valid}"
    return None
