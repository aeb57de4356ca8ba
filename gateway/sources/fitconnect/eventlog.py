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

import datetime as dt
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
from gateway.trust.crl import CrlDirectory
from gateway.trust.ocsp import OcspChecker
from gateway.trust.path import TrustError

log = structlog.get_logger(__name__)

PAGE = 100
MAX_EVENTS = 5000  # a case with more events than this is not something a subscriber can check
JWKS_REFRESH_MIN_INTERVAL = 30.0
DESTINATION_KEY_TTL = 3600.0
REVALIDATE_INTERVAL = 300.0  # a cached key verdict is at most this old (OCSP answers, clock-based expiry)
_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class LogProblem(Exception):
    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.detail)
        self.problem = problem


def _invalid(detail: str) -> LogProblem:
    return LogProblem(problem("invalid-event-log", detail))


@dataclass
class _Checked:
    """A key and the verdict of its last validation (re-checked when it may have changed)."""

    jwk: Any
    result: RSAPublicKey | KeyValidationError
    checked_at: float
    crl_generation: int
    valid_until: dt.datetime | None  # the soonest not-after of its path


@dataclass
class KeyResolver:
    """Verification keys of SET issuers, validated (path, CRL, OCSP) and cached.

    A cached verdict is re-checked when the CRL directory changed, when a certificate of its path
    expired, and at least every ``REVALIDATE_INTERVAL`` (OCSP answers age): a key revoked after it was
    first seen stops verifying without a restart.
    """

    api: SubmissionApi
    trust_anchors: tuple[x509.Certificate, ...]
    allow_self_signed: bool
    zsd_issuer: str  # the exact iss of the Zustelldienst's SETs
    crls: CrlDirectory | None = None
    ocsp: OcspChecker | None = None
    on_validated: Callable[[tuple[x509.Certificate, ...]], None] | None = None  # e.g. the expiry metric
    clock: Callable[[], float] = time.monotonic
    _zsd: dict[str, _Checked] = field(default_factory=dict)
    _zsd_fetched_at: float | None = None
    _destination: dict[tuple[str, str], _Checked] = field(default_factory=dict)

    def _generation(self) -> int:
        if self.crls is None:
            return 0
        self.crls.refresh()
        return self.crls.generation

    async def _validate(self, jwk: Any) -> _Checked:
        generation = self._generation()
        valid_until = None
        try:
            if not isinstance(jwk, dict):
                raise KeyValidationError("jwk-format", "JWK is not an object")
            path = validate_public_jwk(
                jwk,
                purpose="signing",
                trust_anchors=self.trust_anchors,
                allow_self_signed=self.allow_self_signed,
                crls=self.crls,
            )
            if self.ocsp is not None:
                try:
                    await self.ocsp.check(path.chain)
                except TrustError as exc:
                    if exc.code == "revocation-unknown":  # fail-closed and no answer: later, not a reject
                        raise ApiError("ocsp", exc.message) from None
                    raise KeyValidationError(exc.code, exc.message) from None
            valid_until = min(c.not_valid_after_utc for c in path.chain)
            if self.on_validated is not None:
                self.on_validated(path.chain)
            result: RSAPublicKey | KeyValidationError = load_public_jwk(jwk)
        except KeyValidationError as exc:
            result = exc
        return _Checked(jwk, result, self.clock(), generation, valid_until)

    def _fresh(self, checked: _Checked) -> bool:
        return (
            checked.crl_generation == self._generation()
            and self.clock() - checked.checked_at < REVALIDATE_INTERVAL
            and (checked.valid_until is None or dt.datetime.now(dt.UTC) < checked.valid_until)
        )

    async def _refresh_zsd(self) -> None:
        jwks = await self.api.get_jwks()
        keys = jwks.get("keys")
        if not isinstance(keys, list):
            raise ApiError("get-zsd-jwks", "JWKS has no keys array")
        fresh: dict[str, _Checked] = {}
        for jwk in keys:
            if isinstance(jwk, dict) and isinstance(jwk.get("kid"), str):
                fresh[jwk["kid"]] = await self._validate(jwk)
        self._zsd = fresh
        self._zsd_fetched_at = self.clock()

    async def zsd_key(self, kid: str) -> RSAPublicKey:
        if kid not in self._zsd and (
            self._zsd_fetched_at is None or self.clock() - self._zsd_fetched_at >= JWKS_REFRESH_MIN_INTERVAL
        ):
            await self._refresh_zsd()  # first use, or the Zustelldienst rolled its key
        checked = self._zsd.get(kid)
        if checked is None:
            raise _invalid("a Zustelldienst SET names a kid that is not in the Zustelldienst's JWKS")
        if not self._fresh(checked):
            checked = self._zsd[kid] = await self._validate(checked.jwk)
        if isinstance(checked.result, KeyValidationError):
            raise _invalid(f"the Zustelldienst signing key fails validation ({checked.result.code})")
        return checked.result

    async def destination_key(self, destination_id: str, kid: str) -> RSAPublicKey:
        checked = self._destination.get((destination_id, kid))
        if checked is None or self.clock() - checked.checked_at >= DESTINATION_KEY_TTL:
            status, body = await self.api.get_destination_key(destination_id, kid)
            if status == 404:
                raise _invalid("a destination-issued SET names a signing key the destination does not have")
            if status != 200:
                raise ApiError("get-destination-key", "unexpected status", status=status)
            try:
                jwk = json.loads(body)
            except ValueError:
                raise ApiError("get-destination-key", "response is not JSON") from None
            checked = await self._validate(jwk)
        elif not self._fresh(checked):
            checked = await self._validate(checked.jwk)
        self._destination[(destination_id, kid)] = checked
        if isinstance(checked.result, KeyValidationError):
            raise _invalid(f"a destination signing key fails validation ({checked.result.code})")
        return checked.result


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
