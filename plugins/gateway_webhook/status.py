"""HTTP response → delivery outcome. Reasons carry the status and standard phrase, never the body."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http import HTTPStatus

from gateway.adapters.base import DeliveryResult

MAX_REFERENCE_BODY = 64 * 1024  # a 2xx body larger than this is not searched for an id
_REFERENCE = re.compile(r"[\x21-\x7e]{1,256}")  # printable ASCII, no spaces: an id or a URL


def status_text(status: int) -> str:
    """``HTTP 503 Service Unavailable``: the standard phrase, not the server's (it is free text)."""
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def retry_after_seconds(value: str | None, now: datetime | None = None) -> int | None:
    """Retry-After as seconds from now (delta-seconds or HTTP-date); ``None`` if absent or invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(int(value), 10**9)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0, int((when - (now or datetime.now(UTC))).total_seconds()))


def _clean_reference(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value)
    return text if _REFERENCE.fullmatch(text) else None


def reference_from(body: bytes | None, content_type: str, location: str | None) -> str | None:
    """The receiver's id for the message: JSON body field ``id``, else the ``Location`` header."""
    if body and content_type.split(";", 1)[0].strip().lower().endswith(("/json", "+json")):
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        if isinstance(document, dict):
            found = _clean_reference(document.get("id"))
            if found:
                return found
    return _clean_reference(location) if location else None


def classify(status: int, retry_after: str | None, reference: str | None) -> DeliveryResult:
    text = status_text(status)
    if 200 <= status < 300:
        return DeliveryResult.delivered(reference, reason=text)
    seconds = retry_after_seconds(retry_after)
    hint = f" (Retry-After: {seconds} s)" if seconds is not None else ""
    if status in (HTTPStatus.REQUEST_TIMEOUT, HTTPStatus.TOO_MANY_REQUESTS) or status >= 500:
        return DeliveryResult.transient(text + hint, retry_after=float(seconds) if seconds is not None else None)
    if 300 <= status < 400:
        return DeliveryResult.permanent(f"{text} (redirects are not followed; configure the final url)")
    return DeliveryResult.permanent(text)
