"""FIT-Connect callbacks (webhooks): HMAC-SHA512 signing and verification.

``callback-authentication = hex(HMAC_SHA512(key=utf8(secret), msg=timestamp + "." + raw_body))``,
``callback-timestamp = unix seconds``. Verification works on the raw body bytes (never re-serialised
JSON), compares in constant time and refuses timestamps outside ``max_age`` in either direction.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

CALLBACK_PREFIX = "https://schema.fitko.de/fit-connect/submission-api/callbacks/"
CALLBACK_NEW_SUBMISSIONS = CALLBACK_PREFIX + "new-submissions"
CALLBACK_NEW_EVENTS = CALLBACK_PREFIX + "new-events"
CALLBACK_TYPES = frozenset({CALLBACK_NEW_SUBMISSIONS, CALLBACK_NEW_EVENTS})

HEADER_AUTHENTICATION = "callback-authentication"
HEADER_TIMESTAMP = "callback-timestamp"
DEFAULT_MAX_AGE = 300

_TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")
_HMAC_RE = re.compile(r"[0-9a-f]{128}")


def sign_callback(secret: str, body: bytes, timestamp: int) -> str:
    """The ``callback-authentication`` value (128 lowercase hex characters)."""
    message = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha512).hexdigest()


@dataclass(frozen=True)
class CallbackVerdict:
    ok: bool
    reason: str  # "ok", "missing-headers", "bad-timestamp", "stale", "future", "bad-hmac"


def verify_callback(
    secret: str,
    timestamp_header: str | None,
    auth_header: str | None,
    raw_body: bytes,
    *,
    now: float,
    max_age: int = DEFAULT_MAX_AGE,
) -> CallbackVerdict:
    """Check a received callback. Invalid callbacks must be ignored (not acted upon)."""
    if not timestamp_header or not auth_header:
        return CallbackVerdict(False, "missing-headers")
    ts_text = timestamp_header.strip()
    if _TIMESTAMP_RE.fullmatch(ts_text) is None:
        return CallbackVerdict(False, "bad-timestamp")
    age = now - int(ts_text)
    if age > max_age:
        return CallbackVerdict(False, "stale")
    if age < -max_age:
        return CallbackVerdict(False, "future")
    # The sender signed the timestamp text exactly as it sent it in the header.
    expected = hmac.new(secret.encode("utf-8"), ts_text.encode("ascii") + b"." + raw_body, hashlib.sha512).hexdigest()
    received = auth_header.strip().lower()
    if _HMAC_RE.fullmatch(received) is None:
        return CallbackVerdict(False, "bad-hmac")
    if not hmac.compare_digest(expected.encode("ascii"), received.encode("ascii")):
        return CallbackVerdict(False, "bad-hmac")
    return CallbackVerdict(True, "ok")
