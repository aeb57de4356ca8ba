"""``application/problem+json`` responses (RFC 9457)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from gateway.problems import Problem

PROBLEM_BASE = "https://ozg-gateway.example/problems/"


def problem_response(
    status: int,
    type_: str,
    title: str,
    detail: str = "",
    *,
    errors: Sequence[Problem] = (),
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    body: dict[str, Any] = {"type": type_ if "://" in type_ else PROBLEM_BASE + type_, "title": title, "status": status}
    if detail:
        body["detail"] = detail
    if errors:
        body["errors"] = [p.as_dict() for p in errors]
    body.update(extra)
    return web.Response(
        status=status,
        text=json.dumps(body, ensure_ascii=False),
        content_type="application/problem+json",
        headers=headers,
    )
