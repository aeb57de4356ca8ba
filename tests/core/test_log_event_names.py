"""Log event names follow one convention: snake_case (``message_received``, ``xoev_worker_died``).

An AST scan of every ``log.<level>("event", ...)`` call in gateway/, plugins/ and sandbox/ (any
receiver whose name contains "log": ``log``, ``logger``, ``self.log``); docs/DEVELOPMENT.md says why.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOTS = ("gateway", "plugins", "sandbox")
LEVELS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "msg"}
EVENT = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")


def log_calls() -> list[tuple[str, str]]:
    found = []
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                    continue
                receiver = node.func.value
                name = receiver.id if isinstance(receiver, ast.Name) else getattr(receiver, "attr", "")
                first = node.args[0] if node.args else None
                if (
                    node.func.attr in LEVELS
                    and "log" in name.lower()
                    and isinstance(first, ast.Constant)
                    and isinstance(first.value, str)
                ):
                    found.append((f"{path.relative_to(REPO)}:{node.lineno}", first.value))
    return found


def test_the_scan_finds_the_log_calls() -> None:
    events = {event for _where, event in log_calls()}
    assert {"message_received", "gateway_started", "xoev_intake_refused", "webhook_delivery"} <= events


def test_every_log_event_name_is_snake_case() -> None:
    assert [f"{where}: {event!r}" for where, event in log_calls() if not EVENT.fullmatch(event)] == []
