"""Security Event Tokens: the ones the sandbox ZSD issues, and the check of a subscriber's SET posted
to ``POST /v1/cases/{caseId}/events``.

A refused subscriber SET yields HTTP 422 with problem type ``invalid-security-event-token`` and a
machine-readable ``issue`` (the OpenAPI says "Nähere Angaben sind im Feld ``issue`` enthalten"):

==============================  ==================================================================
issue                           reason
==============================  ==================================================================
``malformed``                   not a compact JWS with JSON header and payload
``invalid-typ``                 header ``typ`` is not ``secevent+jwt``
``invalid-alg``                 header ``alg`` is not ``PS512`` (or ``crit`` is used)
``missing-kid``                 header has no ``kid``
``missing-claims``              ``jti``/``iss``/``iat``/``sub``/``txn``/``events`` missing or mistyped
``invalid-schema``              ``$schema`` present but not a set-payload schema URI
``invalid-events``              ``events`` does not hold exactly one event object
``invalid-sub``                 ``sub`` is not ``submission:<uuid>`` (``reply:`` is not supported)
``invalid-txn``                 ``txn`` is not ``case:<uuid>``
``invalid-iat``                 ``iat`` in the future (beyond the allowed skew) or before 2020
``unknown-kid``                 ``kid`` is not a signing key registered at the case's destination
``invalid-signature``           PS512 signature does not verify with that key
``invalid-issuer``              ``iss`` is not the case's destination id
``txn-mismatch``                ``txn`` names another case than the request path
``subject-not-in-case``         ``sub`` names no submission of this case
``event-not-allowed``           the event is not ``accept-submission`` / ``reject-submission``
``invalid-payload``             accept without ``authenticationTags`` object, reject without a
                                non-empty ``problems`` list of objects with string ``type``/``title``
``authentication-tags-mismatch``  accept repeats other ``authenticationTags`` than were recorded
``duplicate-jti``               the ``jti`` was used before
==============================  ==================================================================

Reject problem ``type`` URIs are deliberately not checked against a closed catalogue.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from gateway.fitconnect.jose import b64url_decode, b64url_encode
from gateway.fitconnect.keys import KeyValidationError, load_public_jwk
from gateway.fitconnect.sets import (
    ACCEPT_SUBMISSION,
    REJECT_SUBMISSION,
    ParsedSET,
    SETError,
    build_set,
    parse_set,
    verify_set,
)
from gateway_sandbox.zustelldienst.config import DestinationConfig
from gateway_sandbox.zustelldienst.state import CaseRecord, SubmissionRecord

SUBSCRIBER_EVENTS = (ACCEPT_SUBMISSION, REJECT_SUBMISSION)

_SET_ERROR_ISSUES = {
    "format": "malformed",
    "typ": "invalid-typ",
    "alg": "invalid-alg",
    "kid": "missing-kid",
    "claims": "missing-claims",
    "schema": "invalid-schema",
    "events": "invalid-events",
    "sub": "invalid-sub",
    "txn": "invalid-txn",
    "iat": "invalid-iat",
    "signature": "invalid-signature",
}

# [M] The problem the ZSD puts into its automatic reject-submission after the collection period:
# FITKO documents the rejection, not its problem type. A catalogue type gateways already know.
AUTO_REJECT_PROBLEM = {
    "type": "https://schema.fitko.de/fit-connect/events/problems/technical-error",
    "title": "Technischer Fehler",
    "detail": "Die Einreichung wurde nicht innerhalb der Abholfrist angenommen oder abgelehnt "
    "und vom Zustelldienst automatisch zurückgewiesen.",
}


class SETRejected(Exception):
    def __init__(self, issue: str, detail: str) -> None:
        super().__init__(f"{issue}: {detail}")
        self.issue = issue
        self.detail = detail


def issue_zsd_set(
    *,
    issuer: str,
    submission: SubmissionRecord,
    event: str,
    payload: dict[str, Any],
    key: RSAPrivateKey,
    kid: str,
    iat: int,
    jti: str | None = None,
) -> str:
    return build_set(
        issuer=issuer,
        submission_id=submission.id,
        case_id=submission.case_id,
        event=event,
        payload=payload,
        key=key,
        kid=kid,
        iat=iat,
        jti=jti,
    )


def _signing_key(destination: DestinationConfig, kid: str) -> dict[str, Any] | None:
    for jwk in destination.signing_keys:
        if jwk.get("kid") == kid:
            return jwk
    return None


def _check_payload(event: str, payload: dict[str, Any]) -> None:
    if event == ACCEPT_SUBMISSION:
        tags = payload.get("authenticationTags")
        if not isinstance(tags, dict):
            raise SETRejected("invalid-payload", "accept-submission needs an authenticationTags object")
        if not isinstance(tags.get("metadata"), str):
            raise SETRejected("invalid-payload", "authenticationTags.metadata is missing")
        if "data" in tags and not isinstance(tags["data"], str):
            raise SETRejected("invalid-payload", "authenticationTags.data is not a string")
        attachments = tags.get("attachments", {})
        if not isinstance(attachments, dict) or not all(isinstance(v, str) for v in attachments.values()):
            raise SETRejected("invalid-payload", "authenticationTags.attachments is not an object of strings")
        return
    problems = payload.get("problems")
    if not isinstance(problems, list) or not problems:
        raise SETRejected("invalid-payload", "reject-submission needs a non-empty problems list")
    for i, p in enumerate(problems):
        if not isinstance(p, dict) or not isinstance(p.get("type"), str) or not isinstance(p.get("title"), str):
            raise SETRejected("invalid-payload", f"problems[{i}] needs string type and title")


def _tags_equal(received: dict[str, Any], recorded: dict[str, Any]) -> bool:
    def norm(tags: dict[str, Any]) -> tuple[Any, Any, dict[str, str]]:
        attachments = {str(k).lower(): v for k, v in (tags.get("attachments") or {}).items()}
        return tags.get("metadata"), tags.get("data"), attachments

    return norm(received) == norm(recorded)


def check_subscriber_set(
    token: str,
    *,
    case: CaseRecord,
    destination: DestinationConfig,
    submissions: Iterable[SubmissionRecord],
    now: int,
    max_skew: int,
    verify_accept_tags: bool,
) -> tuple[ParsedSET, SubmissionRecord]:
    """Everything but the state transition (409) and the jti uniqueness, which the caller checks in
    that order: a retried, already recorded SET is answered 409 like any other late accept/reject."""
    try:
        parsed = parse_set(token, now=now, max_skew=max_skew)
    except SETError as exc:
        raise SETRejected(_SET_ERROR_ISSUES.get(exc.code, "malformed"), exc.message) from None
    kid = str(parsed.header["kid"])
    jwk = _signing_key(destination, kid)
    if jwk is None:
        raise SETRejected("unknown-kid", f"kid {kid!r} is not a signing key of destination {destination.id}")
    try:
        verify_set(parsed, load_public_jwk(jwk))
    except (SETError, KeyValidationError) as exc:
        raise SETRejected("invalid-signature", getattr(exc, "message", str(exc))) from None
    if parsed.issuer != destination.id:
        raise SETRejected("invalid-issuer", f"iss must be the destination id {destination.id}")
    if parsed.case_id != case.id:
        raise SETRejected("txn-mismatch", f"txn must be case:{case.id}")
    if parsed.submission_id is None:
        raise SETRejected("invalid-sub", "sub must be submission:<uuid>; replies are not supported")
    submission = next((s for s in submissions if s.id == parsed.submission_id), None)
    if submission is None:
        raise SETRejected("subject-not-in-case", f"submission {parsed.submission_id} is not part of case {case.id}")
    if parsed.event not in SUBSCRIBER_EVENTS:
        raise SETRejected("event-not-allowed", f"event {parsed.event} cannot be sent by a subscriber")
    _check_payload(parsed.event, parsed.event_payload)
    if (
        verify_accept_tags
        and parsed.event == ACCEPT_SUBMISSION
        and submission.tags is not None
        and not _tags_equal(parsed.event_payload["authenticationTags"], submission.tags)
    ):
        raise SETRejected(
            "authentication-tags-mismatch", "authenticationTags differ from those recorded in submit-submission"
        )
    return parsed, submission


def altered_tag(tag: str) -> str:
    """The same length, another valid base64url value (first byte flipped)."""
    raw = bytearray(b64url_decode(tag))
    raw[0] ^= 0x80
    return b64url_encode(bytes(raw))
