"""The documented forms of the identifiers that steer a FIT-Connect request, checked before they do.

A value from a message (a SET header, a submission, a listing) goes into a request path only after it
matched one of these forms; :func:`path_segment` is the last check at the URL-building site, so a
crafted value can never add path segments, a query or percent-escapes (docs/hostile-input.md).

* ids (submission, case, destination, attachment, reply, jti): UUIDs (spec 1.1.3: "All IDs are UUIDs");
* key ids: 8-64 characters (JWK schema ``kid``; the path parameter ``keyId`` allows 8-36), restricted
  here to the URL-unreserved characters ``A-Z a-z 0-9 - . _ ~`` (real kids are UUIDs or base64url RFC 7638
  thumbprints). The schema sets no alphabet; this one is the gateway's assumption, listed in
  docs/fitconnect-subscriber.md.
"""

from __future__ import annotations

import re

UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
KID_RE = re.compile(r"[A-Za-z0-9._~-]{8,64}")
KEY_ID_PATH_MAX = 36  # GET /destinations/{destinationId}/keys/{keyId}: keyId maxLength 36
_SEGMENT = re.compile(r"[A-Za-z0-9._~-]{1,64}")


def is_uuid(value: object) -> bool:
    return isinstance(value, str) and UUID_RE.fullmatch(value) is not None


def is_kid(value: object) -> bool:
    return isinstance(value, str) and KID_RE.fullmatch(value) is not None


def path_segment(value: str) -> str:
    """``value`` if it is one safe path segment (unreserved characters, not ``.``/``..``); else ValueError."""
    if _SEGMENT.fullmatch(value) is None or value in (".", ".."):
        raise ValueError("not a single URL-safe path segment")
    return value
