"""FIT-Connect Security Event Tokens (RFC 8417 SETs, signed PS512): building, parsing, verifying.

``parse_set`` performs every structural check (header, claims, exactly one event, subject and
transaction formats, iat plausibility) and normalises the UUIDs to lowercase, because the official
examples use uppercase UUIDs while real tokens use lowercase. The signature is checked separately by
``verify_set`` once the caller has looked up the key by ``iss``/``kid``.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from gateway.fitconnect.ids import is_kid
from gateway.fitconnect.jose import JWS_ALG, JoseError, SignatureError, parse_jws, sign_jws, verify_jws

EVENT_PREFIX = "https://schema.fitko.de/fit-connect/events/"
CREATE_SUBMISSION = EVENT_PREFIX + "create-submission"
SUBMIT_SUBMISSION = EVENT_PREFIX + "submit-submission"
NOTIFY_SUBMISSION = EVENT_PREFIX + "notify-submission"
FORWARD_SUBMISSION = EVENT_PREFIX + "forward-submission"
ACCEPT_SUBMISSION = EVENT_PREFIX + "accept-submission"
REJECT_SUBMISSION = EVENT_PREFIX + "reject-submission"
DELETE_SUBMISSION = EVENT_PREFIX + "delete-submission"

SET_SCHEMA_URI = "https://schema.fitko.de/fit-connect/set-payload/1.0.0/set-payload.schema.json"
SET_TYP = "secevent+jwt"
MIN_IAT = 1577833200  # set-payload schema minimum (2020-01-01)

_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_UUID_RE = re.compile(_UUID)
_SUB_RE = re.compile(rf"(submission|reply):({_UUID})")
_TXN_RE = re.compile(rf"case:({_UUID})")
_SCHEMA_RE = re.compile(r"https://schema\.fitko\.de/fit-connect/set-payload/\d+\.\d+\.\d+/set-payload\.schema\.json")


class SETError(Exception):
    """A SET was refused. ``code``: format, typ, alg, kid, claims, schema, events, sub, txn, iat, signature."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class ParsedSET:
    header: dict[str, Any]
    claims: dict[str, Any]
    event: str
    event_payload: dict[str, Any]
    submission_id: str | None
    reply_id: str | None
    case_id: str
    issuer: str
    jti: str
    iat: int
    token: str


def build_set(
    *,
    issuer: str,
    submission_id: str,
    case_id: str,
    event: str,
    payload: dict[str, Any],
    key: RSAPrivateKey,
    kid: str,
    iat: int | None = None,
    jti: str | None = None,
    include_schema: bool = True,
) -> str:
    """A compact PS512 SET about one submission (``sub=submission:<id>``, ``txn=case:<id>``)."""
    claims: dict[str, Any] = {}
    if include_schema:
        claims["$schema"] = SET_SCHEMA_URI
    claims.update(
        jti=jti or str(uuid.uuid4()),
        iss=issuer,
        iat=int(time.time()) if iat is None else iat,
        sub=f"submission:{submission_id.lower()}",
        txn=f"case:{case_id.lower()}",
        events={event: payload},
    )
    return sign_jws(claims, key, kid=kid, typ=SET_TYP)


def _normalise_issuer(issuer: str) -> str:
    # A subscriber's iss is its destination UUID: compare those case-insensitively like every other ID.
    return issuer.lower() if _UUID_RE.fullmatch(issuer) else issuer


def parse_set(token: str, *, now: int | None = None, max_skew: int = 300) -> ParsedSET:
    """Parse and structurally check a SET (digest §3.3 / §9.5); raise SETError with a precise code."""
    try:
        jws = parse_jws(token)
    except JoseError as exc:
        raise SETError("format", exc.message) from None
    header, claims = jws.header, jws.payload

    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower() not in (SET_TYP, "application/" + SET_TYP):
        raise SETError("typ", f"typ {typ!r} is not {SET_TYP}")
    if header.get("alg") != JWS_ALG:
        raise SETError("alg", f"alg {header.get('alg')!r} is not {JWS_ALG}")
    if "crit" in header:
        raise SETError("alg", "critical header extensions are not supported")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise SETError("kid", "header has no kid")
    if not is_kid(kid):  # it selects the key and may go into a request path: only its documented form
        raise SETError("kid", "header kid is not 8-64 characters of A-Z a-z 0-9 - . _ ~")
    for name in ("jku", "x5u", "jwk", "x5c"):  # never fetch or trust a key the token brings itself
        if name in header:
            raise SETError("alg", f"header member {name} is not accepted (keys come from the Zustelldienst)")

    for name in ("jti", "iss", "sub", "txn"):
        value = claims.get(name)
        if not isinstance(value, str) or not value:
            raise SETError("claims", f"claim {name} is missing or not a non-empty string")
    iat = claims.get("iat")
    if not isinstance(iat, int) or isinstance(iat, bool):
        raise SETError("claims", "claim iat is missing or not an integer")
    if "events" not in claims:
        raise SETError("claims", "claim events is missing")
    schema = claims.get("$schema")
    if schema is not None and (not isinstance(schema, str) or _SCHEMA_RE.fullmatch(schema) is None):
        raise SETError("schema", f"$schema {schema!r} is not a set-payload schema URI")

    events = claims["events"]
    if not isinstance(events, dict) or len(events) != 1:
        raise SETError("events", "events must be an object with exactly one event")
    ((event, event_payload),) = events.items()
    if not event:
        raise SETError("events", "event URI is empty")
    if not isinstance(event_payload, dict):
        raise SETError("events", "event payload is not an object")

    sub_match = _SUB_RE.fullmatch(claims["sub"])
    if sub_match is None:
        raise SETError("sub", "sub is not submission:<uuid> or reply:<uuid>")
    txn_match = _TXN_RE.fullmatch(claims["txn"])
    if txn_match is None:
        raise SETError("txn", "txn is not case:<uuid>")

    now = int(time.time()) if now is None else now
    if iat > now + max_skew:
        raise SETError("iat", f"iat lies {iat - now} s in the future")
    if iat < MIN_IAT:
        raise SETError("iat", "iat lies before 2020-01-01")

    kind, subject_id = sub_match.group(1), sub_match.group(2).lower()
    return ParsedSET(
        header=header,
        claims=claims,
        event=event,
        event_payload=event_payload,
        submission_id=subject_id if kind == "submission" else None,
        reply_id=subject_id if kind == "reply" else None,
        case_id=txn_match.group(1).lower(),
        issuer=_normalise_issuer(claims["iss"]),
        jti=claims["jti"],
        iat=iat,
        token=token,
    )


def verify_set(parsed: ParsedSET, key: RSAPublicKey) -> None:
    """Verify the PS512 signature over the token's own bytes; raise SETError("signature")."""
    try:
        verify_jws(parse_jws(parsed.token), key)
    except SignatureError as exc:
        raise SETError("signature", exc.message) from None
    except JoseError as exc:
        raise SETError("format", exc.message) from None
