"""The case's event log: fetch every page, check every SET, find the one submit-submission event.

Rules (digest §3.3, §9.5, §9.6; the Java SDK's EventLogVerificationService):

* every SET parses (:func:`gateway.fitconnect.sets.parse_set`: 3 parts, ``typ``, ``alg PS512``, ``kid``,
  claims, exactly one event, ``sub``/``txn`` formats, plausible ``iat``) and belongs to this case;
* its key is looked up by issuer: the issuer that is exactly the configured ``zustelldienst_issuer`` is
  the Zustelldienst (``/.well-known/jwks.json`` by ``kid``), a UUID issuer is a destination
  (``GET /destinations/{iss}/keys/{kid}``, ``kid`` at most 36 characters there); any other issuer
  (another https URL signed with the real Zustelldienst key included) is refused; the key passes
  :func:`gateway.fitconnect.keys.validate_public_jwk` (signing purpose, x5c chain to the trust anchors)
  and the PS512 signature verifies;
* ``submit-submission`` is issued by the Zustelldienst, and there is exactly one for the submission;
* it carries ``authenticationTags`` ``{metadata, data?, attachments?}`` of strings.

A failure of the log itself is a :class:`~gateway.problems.Problem` (the submission is
rejected); failing to *fetch* something is an :class:`~.client.ApiError` (try again later).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from gateway.fitconnect.ids import KEY_ID_PATH_MAX
from gateway.fitconnect.keys import KeyValidationError, load_public_jwk, validate_public_jwk
from gateway.fitconnect.problems import problem
from gateway.fitconnect.sets import (
    ACCEPT_SUBMISSION,
    REJECT_SUBMISSION,
    SUBMIT_SUBMISSION,
    ParsedSET,
    SETError,
    parse_set,
    verify_set,
)
from gateway.problems import Problem
from gateway.sources.fitconnect.client import ApiError, SubmissionApi

log = structlog.get_logger(__name__)

PAGE = 100
MAX_EVENTS = 5000  # a case with more events than this is not something a subscriber can check
JWKS_REFRESH_MIN_INTERVAL = 30.0
DESTINATION_KEY_TTL = 3600.0
_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class LogProblem(Exception):
    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.detail)
        self.problem = problem


def _invalid(detail: str) -> LogProblem:
    return LogProblem(problem("invalid-event-log", detail))


@dataclass
class KeyResolver:
    """Verification keys of SET issuers, validated once and cached."""

    api: SubmissionApi
    trust_anchors: tuple[x509.Certificate, ...]
    allow_self_signed: bool
    zsd_issuer: str  # the exact iss of the Zustelldienst's SETs
    clock: Callable[[], float] = time.monotonic
    _zsd: dict[str, RSAPublicKey | KeyValidationError] = field(default_factory=dict)
    _zsd_fetched_at: float | None = None
    _destination: dict[tuple[str, str], tuple[float, RSAPublicKey | KeyValidationError]] = field(default_factory=dict)

    def _validate(self, jwk: Any) -> RSAPublicKey | KeyValidationError:
        try:
            if not isinstance(jwk, dict):
                raise KeyValidationError("jwk-format", "JWK is not an object")
            validate_public_jwk(
                jwk, purpose="signing", trust_anchors=self.trust_anchors, allow_self_signed=self.allow_self_signed
            )
            return load_public_jwk(jwk)
        except KeyValidationError as exc:
            return exc

    async def _refresh_zsd(self) -> None:
        jwks = await self.api.get_jwks()
        keys = jwks.get("keys")
        if not isinstance(keys, list):
            raise ApiError("get-zsd-jwks", "JWKS has no keys array")
        fresh: dict[str, RSAPublicKey | KeyValidationError] = {}
        for jwk in keys:
            if isinstance(jwk, dict) and isinstance(jwk.get("kid"), str):
                fresh[jwk["kid"]] = self._validate(jwk)
        self._zsd = fresh
        self._zsd_fetched_at = self.clock()

    async def zsd_key(self, kid: str) -> RSAPublicKey:
        if kid not in self._zsd and (
            self._zsd_fetched_at is None or self.clock() - self._zsd_fetched_at >= JWKS_REFRESH_MIN_INTERVAL
        ):
            await self._refresh_zsd()  # first use, or the Zustelldienst rolled its key
        found = self._zsd.get(kid)
        if found is None:
            raise _invalid("a Zustelldienst SET names a kid that is not in the Zustelldienst's JWKS")
        if isinstance(found, KeyValidationError):
            raise _invalid(f"the Zustelldienst signing key fails validation ({found.code})")
        return found

    async def destination_key(self, destination_id: str, kid: str) -> RSAPublicKey:
        cached = self._destination.get((destination_id, kid))
        if cached is not None and self.clock() - cached[0] < DESTINATION_KEY_TTL:
            found = cached[1]
        else:
            status, body = await self.api.get_destination_key(destination_id, kid)
            if status == 404:
                raise _invalid("a destination-issued SET names a signing key the destination does not have")
            if status != 200:
                raise ApiError("get-destination-key", "unexpected status", status=status)
            try:
                jwk = json.loads(body)
            except ValueError:
                raise ApiError("get-destination-key", "response is not JSON") from None
            found = self._validate(jwk)
            self._destination[(destination_id, kid)] = (self.clock(), found)
        if isinstance(found, KeyValidationError):
            raise _invalid(f"a destination signing key fails validation ({found.code})")
        return found


@dataclass
class EventLog:
    events: list[ParsedSET]  # every SET of the case, checked and verified, oldest first

    def for_submission(self, submission_id: str, event: str | None = None) -> list[ParsedSET]:
        sid = submission_id.lower()
        return [e for e in self.events if e.submission_id == sid and (event is None or e.event == event)]

    def outcome(self, submission_id: str) -> ParsedSET | None:
        """The accept-/reject-submission SET for the submission, if the log has one."""
        for event in self.for_submission(submission_id):
            if event.event in (ACCEPT_SUBMISSION, REJECT_SUBMISSION):
                return event
        return None


def is_zsd_issuer(issuer: str) -> bool:
    return issuer.startswith(("https://", "http://"))


async def fetch_event_log(api: SubmissionApi, keys: KeyResolver, case_id: str, *, now: float | None = None) -> EventLog:
    """Every SET of the case, each parsed and signature-verified; raise LogProblem or ApiError."""
    tokens: list[Any] = []
    offset = 0
    while True:
        status, body = await api.get_events(case_id, limit=PAGE, offset=offset)
        if status != 200:
            raise ApiError("get-events", "unexpected status", status=status)
        try:
            page = json.loads(body)
        except ValueError:
            raise ApiError("get-events", "event log response is not JSON") from None
        if not isinstance(page, dict) or not isinstance(page.get("eventLog"), list):
            raise _invalid("the event log response has no eventLog array")
        items = page["eventLog"]
        tokens.extend(items)
        total = page.get("totalCount")
        offset += len(items)
        if len(tokens) > MAX_EVENTS:
            raise _invalid(f"the case has more than {MAX_EVENTS} events")
        if not items or not isinstance(total, int) or isinstance(total, bool) or offset >= total:
            break
    now_s = int(time.time() if now is None else now)
    events: list[ParsedSET] = []
    for index, token in enumerate(tokens):
        if not isinstance(token, str):
            raise _invalid(f"event {index + 1} is not a string")
        try:
            parsed = parse_set(token, now=now_s)
        except SETError as exc:
            raise _invalid(f"event {index + 1} is not a valid SET ({exc.code})") from None
        if parsed.case_id != case_id.lower():
            raise _invalid(f"event {index + 1} belongs to another case (txn)")
        kid = parsed.header["kid"]  # parse_set checked its form
        if parsed.issuer == keys.zsd_issuer:
            key = await keys.zsd_key(kid)
        elif _UUID_RE.fullmatch(parsed.issuer):
            if len(kid) > KEY_ID_PATH_MAX:
                raise _invalid(f"event {index + 1} names a destination key id longer than {KEY_ID_PATH_MAX}")
            key = await keys.destination_key(parsed.issuer, kid)
        else:
            raise _invalid(f"event {index + 1} has an issuer that is neither the Zustelldienst nor a destination")
        try:
            verify_set(parsed, key)
        except SETError as exc:
            raise _invalid(f"event {index + 1}: signature does not verify ({exc.code})") from None
        events.append(parsed)
    return EventLog(events)


def submit_tags(log_: EventLog, submission_id: str) -> dict[str, Any]:
    """The ``authenticationTags`` of the one submit-submission event; raise LogProblem otherwise."""
    submits = log_.for_submission(submission_id, SUBMIT_SUBMISSION)
    if not submits:
        raise _invalid("the event log has no submit-submission event for the submission")
    if len(submits) > 1:
        raise _invalid(f"the event log has {len(submits)} submit-submission events for the submission")
    event = submits[0]
    if not is_zsd_issuer(event.issuer):
        raise _invalid("the submit-submission event is not issued by the Zustelldienst")
    tags = event.event_payload.get("authenticationTags")
    if not isinstance(tags, dict):
        raise LogProblem(problem("missing-authentication-tags", "submit-submission has no authenticationTags object"))
    if not isinstance(tags.get("metadata"), str) or not tags["metadata"]:
        raise LogProblem(problem("missing-authentication-tags", "authenticationTags has no metadata tag"))
    if "data" in tags and not isinstance(tags["data"], str):
        raise LogProblem(problem("missing-authentication-tags", "authenticationTags.data is not a string"))
    attachments = tags.get("attachments", {})
    if not isinstance(attachments, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in attachments.items()
    ):
        raise LogProblem(problem("missing-authentication-tags", "authenticationTags.attachments is not an id->tag map"))
    return tags
