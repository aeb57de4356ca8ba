"""The core knows no channel: no core module imports or names a channel package.

Channels (FIT-Connect, XÖV) come in through the plugin hooks and the packaging metadata
(entry-point group ``gateway.builtin``); what they share lives in their subsystems.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"
CHANNEL_NAMES = ("fitconnect", "xoev", "xoev_http")
CHANNEL_PACKAGE = re.compile(r"\bgateway\.(?:sources\.)?(?:fitconnect|xoev|xoev_http)\b")


def core_modules() -> list[Path]:
    """Every module of gateway/ that is not part of a channel (by its package or file name)."""
    return [
        path
        for path in sorted(GATEWAY.rglob("*.py"))
        if not any(part.removesuffix(".py") in CHANNEL_NAMES for part in path.relative_to(GATEWAY).parts)
    ]


def test_the_scan_sees_the_core_and_skips_the_channels() -> None:
    names = {p.relative_to(GATEWAY).as_posix() for p in core_modules()}
    assert {"runtime.py", "config.py", "routing.py", "metrics.py", "sources/base.py", "plugins.py"} <= names
    assert not any(n.startswith(("xoev/", "fitconnect/", "sources/fitconnect/", "sources/xoev_http/")) for n in names)


def test_no_core_module_imports_a_channel() -> None:
    offenders = []
    for path in core_modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            offenders += [f"{path.relative_to(GATEWAY)}: imports {n}" for n in names if CHANNEL_PACKAGE.search(n)]
    assert offenders == []


def test_no_core_module_names_a_channel_package() -> None:
    """Not in code, strings or comments either (a module name in a string is an import in disguise)."""
    offenders = [
        f"{path.relative_to(GATEWAY)}:{number}: {line.strip()}"
        for path in core_modules()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if CHANNEL_PACKAGE.search(line)
    ]
    assert offenders == []
