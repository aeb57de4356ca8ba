"""``application/problem+json`` answers (RFC 7807) with the Submission API's problem types.

Every type lives under :data:`PROBLEM_BASE`. ``submission-not-found``, ``destination-not-found`` and
``destination-state-invalid`` are the ones FITKO's SDKs are known to map; the others are
sandbox-defined names in the same namespace, documented in ``docs/sandbox.md`` (clients must only
rely on the HTTP status, as the specification lists no closed catalogue).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

PROBLEM_BASE = "https://schema.fitko.de/fit-connect/submission-api/problems/"
PROBLEM_CONTENT_TYPE = "application/problem+json"

# type suffix -> title. Keep in sync with docs/sandbox.md.
TITLES: dict[str, str] = {
    "invalid-request": "Bad Request",
    "unsupported-media-type": "Unsupported Media Type",
    "payload-too-large": "Request Entity Too Large",
    "unauthorized": "Unauthorized",
    "forbidden": "Forbidden",
    "not-found": "Not Found",
    "method-not-allowed": "Method Not Allowed",
    "destination-not-found": "Destination not found",
    "destination-state-invalid": "Destination state invalid",
    "key-not-found": "Key not found",
    "key-invalid": "Key invalid",
    "service-not-offered": "Service type not offered by the destination",
    "case-not-found": "Case not found",
    "case-destination-mismatch": "Case belongs to another destination",
    "submission-not-found": "Submission not found",
    "submission-state-invalid": "Submission state invalid",
    "attachment-not-announced": "Attachment not announced",
    "attachment-not-found": "Attachment not found",
    "missing-attachments": "Announced attachments missing",
    "invalid-jwe": "Invalid JWE",
    "invalid-security-event-token": "Invalid Security Event Token",
    "invalid-state-transition": "Invalid state transition",
    # reply profile (gateway/fitconnect/replies.py)
    "reply-not-found": "Reply not found",
    "reply-already-exists": "Reply exists already",
    "reply-state-invalid": "Reply state invalid",
    "reply-channel-not-offered": "Reply channel not offered by the destination",
    "invalid-decision": "Invalid decision on a reply",
    "internal-error": "Internal Server Error",
}


class ProblemError(Exception):
    """Raised by handlers; the middleware renders it as ``application/problem+json``."""

    def __init__(
        self,
        status: int,
        kind: str,
        detail: str = "",
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        if kind not in TITLES:
            raise ValueError(f"undocumented problem type {kind!r}")
        super().__init__(f"{status} {kind}: {detail}")
        self.status = status
        self.kind = kind
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra

    def body(self, instance: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"type": PROBLEM_BASE + self.kind, "title": TITLES[self.kind], "status": self.status}
        if self.detail:
            out["detail"] = self.detail
        if instance:
            out["instance"] = instance
        out.update(self.extra)
        return out

    def response(self, instance: str | None = None) -> web.Response:
        return web.Response(
            status=self.status,
            text=json.dumps(self.body(instance), ensure_ascii=False),
            content_type=PROBLEM_CONTENT_TYPE,
            headers=self.headers,
        )


def bad_request(detail: str, **extra: Any) -> ProblemError:
    return ProblemError(400, "invalid-request", detail, **extra)
