"""The Zustelldienst's domain logic, shared by the Submission API, the inspection API and the timers.

HTTP parsing lives in :mod:`.api` / :mod:`.inspection`; everything here works on validated
values and raises :class:`~.problems.ProblemError` for answers the specification defines.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any, Literal

import structlog
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from gateway.fitconnect.callbacks import CALLBACK_NEW_EVENTS, CALLBACK_NEW_SUBMISSIONS
from gateway.fitconnect.jose import parse_jws, sign_jws
from gateway.fitconnect.keys import KeyValidationError, validate_public_jwk
from gateway.fitconnect.sets import (
    ACCEPT_SUBMISSION,
    CREATE_SUBMISSION,
    DELETE_SUBMISSION,
    REJECT_SUBMISSION,
    SUBMIT_SUBMISSION,
)
from gateway_sandbox.zustelldienst.blobs import BlobStore
from gateway_sandbox.zustelldienst.clock import SandboxClock
from gateway_sandbox.zustelldienst.config import DestinationConfig, SandboxConfig
from gateway_sandbox.zustelldienst.dispatcher import CallbackDispatcher
from gateway_sandbox.zustelldienst.events import (
    AUTO_REJECT_PROBLEM,
    SETRejected,
    altered_tag,
    check_subscriber_set,
    issue_zsd_set,
)
from gateway_sandbox.zustelldienst.problems import ProblemError
from gateway_sandbox.zustelldienst.replies import ReplyDesk
from gateway_sandbox.zustelldienst.scopes import Grant
from gateway_sandbox.zustelldienst.state import (
    READABLE_STATUSES,
    CaseRecord,
    EventRecord,
    SandboxState,
    SubmissionRecord,
)
from gateway_sandbox.zustelldienst.tokens import TokenService
from gateway_sandbox.zustelldienst.uploads import check_upload, record_upload, store_submit
from gateway_sandbox.zustelldienst.zsd_key import ZsdSigningKey, generate_private_key, load_or_create

log = structlog.get_logger(__name__)

DEFAULT_BASE_URL = "http://127.0.0.1:8470"
TAMPER_MODES = (
    "auth-tag-mismatch",
    "drop-submit-event",
    "duplicate-submit-event",
    "missing-authentication-tags",
    "wrong-set-key",
    "corrupt-ciphertext",
)
ROGUE_KEY_BITS = 2048  # any key other than the published one makes the signature fail


def public_destination(d: DestinationConfig, services_field: str = "services") -> dict[str, Any]:
    out: dict[str, Any] = {
        "destinationId": d.id,
        "status": d.status,
        services_field: [s.as_api() for s in d.services],
        "encryptionKid": d.encryption_kid,
        "metadataVersions": list(d.metadata_versions),
    }
    if d.reply_channels:
        out["replyChannels"] = d.reply_channels
    return out


def private_destination(d: DestinationConfig, services_field: str = "services") -> dict[str, Any]:
    out = public_destination(d, services_field)
    out["contactInformation"] = dict(d.contact_information)
    if d.callback is not None:
        out["callback"] = {"url": d.callback.url}
    return out


class Sandbox:
    def __init__(self, config: SandboxConfig, *, zsd_key: ZsdSigningKey | None = None) -> None:
        config.validate()
        self.config = config
        self._base_url = config.base_url
        if config.state_dir is not None:
            config.state_dir.mkdir(parents=True, exist_ok=True)
        self.state = SandboxState.open(config.state_dir)
        self.state.apply_config(config.destinations, config.clients)
        self.clock = SandboxClock(self.state.clock_offset)
        self.blobs = BlobStore(config.state_dir / "blobs" if config.state_dir else None)
        self.zsd = zsd_key or load_or_create(config.state_dir, config.signing_key_file)
        self.tokens = TokenService(self.state, self.clock, self.zsd, config.token_lifetime)
        self.dispatcher = CallbackDispatcher(self.state, self.clock, config.callbacks, self.save)
        self._rogue_key: RSAPrivateKey | None = None
        self.replies = ReplyDesk(self)
        self.save()

    # -- plumbing ------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``iss`` of ZSD-issued SETs and tokens: configured, else learned from the first request."""
        return self._base_url or DEFAULT_BASE_URL

    def learn_base_url(self, origin: str) -> None:
        if self._base_url is None:
            self._base_url = origin.rstrip("/")

    def save(self) -> None:
        self.state.clock_offset = self.clock.offset
        self.state.save()

    def close(self) -> None:
        self.save()
        self.blobs.close()

    # -- lookups with the specification's answers ------------------------------------------------------

    def destination(self, destination_id: str) -> DestinationConfig:
        d = self.state.destinations.get(destination_id)
        if d is None:
            raise ProblemError(404, "destination-not-found", f"destination {destination_id} does not exist")
        return d

    def submission(self, submission_id: str) -> SubmissionRecord:
        s = self.state.submissions.get(submission_id)
        if s is None:
            raise ProblemError(404, "submission-not-found", f"submission {submission_id} does not exist")
        return s

    def case(self, case_id: str) -> CaseRecord:
        c = self.state.cases.get(case_id)
        if c is None:
            raise ProblemError(404, "case-not-found", f"case {case_id} does not exist")
        return c

    def own_submission(self, grant: Grant, submission_id: str) -> SubmissionRecord:
        """A submission the calling sender created (attachments, submit)."""
        sub = self.submission(submission_id)
        if sub.client_id != grant.client_id or not grant.can_send_to(self.destination(sub.destination_id)):
            raise ProblemError(403, "forbidden", "the submission was created by another client")
        return sub

    def readable_submission(self, grant: Grant, submission_id: str) -> SubmissionRecord:
        sub = self.submission(submission_id)
        if not grant.can_subscribe(sub.destination_id):
            raise ProblemError(403, "forbidden", "token may not subscribe to the submission's destination")
        if sub.status not in READABLE_STATUSES:
            raise ProblemError(404, "submission-not-found", f"submission is {sub.status}, not submitted or forwarded")
        return sub

    # -- events ----------------------------------------------------------------------------------------

    def _append_event(self, sub: SubmissionRecord, token: str, event: str, jti: str, issuer: str) -> EventRecord:
        record = EventRecord(
            token=token, submission_id=sub.id, event=event, jti=jti, issuer=issuer, recorded_at=self.clock.now()
        )
        self.state.cases[sub.case_id].events.append(record)
        self.state.jtis.add(jti)
        return record

    def issue_event(
        self, sub: SubmissionRecord, event: str, payload: dict[str, Any], *, key: RSAPrivateKey | None = None
    ) -> EventRecord:
        jti = str(uuid.uuid4())
        token = issue_zsd_set(
            issuer=self.base_url,
            submission=sub,
            event=event,
            payload=payload,
            key=key or self.zsd.key,
            kid=self.zsd.kid,
            iat=int(self.clock.wall()),  # a peer checks iat against its own clock
            jti=jti,
        )
        return self._append_event(sub, token, event, jti, self.base_url)

    # -- callbacks -------------------------------------------------------------------------------------

    def _notify_destination(self, sub: SubmissionRecord, callback_type: str) -> None:
        dest = self.state.destinations.get(sub.destination_id)
        if dest is not None and dest.callback is not None:
            self.dispatcher.enqueue(
                target="destination",
                url=dest.callback.url,
                secret=dest.callback.secret,
                callback_type=callback_type,
                submissions=[sub],
            )

    def _notify_sender(self, sub: SubmissionRecord) -> None:
        if sub.callback_url and sub.callback_secret:
            self.dispatcher.enqueue(
                target="sender",
                url=sub.callback_url,
                secret=sub.callback_secret,
                callback_type=CALLBACK_NEW_EVENTS,
                submissions=[sub],
            )

    # -- submission lifecycle ----------------------------------------------------------------------------

    def create_submission(
        self,
        grant: Grant,
        *,
        destination_id: str,
        announced: list[str],
        service_type: dict[str, str],
        case_id: str | None,
        callback: tuple[str, str] | None,
    ) -> SubmissionRecord:
        dest = self.destination(destination_id)
        if not grant.can_send_to(dest):
            raise ProblemError(403, "forbidden", "no send scope of the token covers this destination's regions")
        if dest.status != "active":
            raise ProblemError(
                422, "destination-state-invalid", f"destination is {dest.status}; submissions need status active"
            )
        identifier = service_type["identifier"]
        if not any(s.identifier == identifier for s in dest.services):
            raise ProblemError(422, "service-not-offered", f"destination does not offer {identifier}")
        if not grant.can_send_to(dest, identifier):
            raise ProblemError(403, "forbidden", f"no send scope of the token covers {identifier} here")
        if case_id is not None:
            case = self.state.cases.get(case_id)
            if case is None:
                raise ProblemError(422, "case-not-found", f"case {case_id} does not exist")
            if case.destination_id != dest.id:
                raise ProblemError(422, "case-destination-mismatch", "the case belongs to another destination")
        else:
            case_id = str(uuid.uuid4())
            self.state.cases[case_id] = CaseRecord(id=case_id, destination_id=dest.id)
        sub = SubmissionRecord(
            id=str(uuid.uuid4()),
            case_id=case_id,
            destination_id=dest.id,
            client_id=grant.client_id,
            service_type=service_type,
            announced=announced,
            created_at=self.clock.now(),
            callback_url=callback[0] if callback else None,
            callback_secret=callback[1] if callback else None,
        )
        self.state.submissions[sub.id] = sub
        self.issue_event(sub, CREATE_SUBMISSION, {})
        self.save()
        log.info("submission_created", submission_id=sub.id, destination=dest.id)
        return sub

    def check_attachment_upload(self, grant: Grant, submission_id: str, attachment_id: str) -> SubmissionRecord:
        sub = self.own_submission(grant, submission_id)
        check_upload(sub, attachment_id, state_problem="submission-state-invalid", what="submission")
        return sub

    def record_attachment(self, sub: SubmissionRecord, attachment_id: str, tag: str) -> None:
        record_upload(sub, attachment_id, tag)
        self.save()

    def submit(
        self, grant: Grant, submission_id: str, *, metadata: str, data: str | None, tags: tuple[str, str | None]
    ) -> SubmissionRecord:
        sub = self.own_submission(grant, submission_id)
        recorded = store_submit(
            sub, self.blobs, metadata=metadata, data=data, tags=tags, state_problem="submission-state-invalid",
            what="submission",
        )  # fmt: skip
        sub.submitted_at = self.clock.now()
        self.issue_event(sub, SUBMIT_SUBMISSION, {"authenticationTags": recorded})
        self._notify_destination(sub, CALLBACK_NEW_SUBMISSIONS)
        self.save()
        log.info("submission_submitted", submission_id=sub.id, destination=sub.destination_id)
        return sub

    def pickup(self, grant: Grant, destination_id: str | None, limit: int, offset: int) -> dict[str, Any]:
        allowed = grant.subscribed
        if not allowed:
            raise ProblemError(403, "forbidden", "token has no subscribe scope")
        if destination_id is not None and destination_id not in allowed:
            raise ProblemError(403, "forbidden", "token may not subscribe to this destination")
        wanted = {destination_id} if destination_id else allowed
        ready = sorted(
            (s for s in self.state.submissions.values() if s.status == "submitted" and s.destination_id in wanted),
            key=lambda s: (s.submitted_at or 0.0, s.id),
        )
        page = ready[offset : offset + limit]
        return {
            "count": len(page),
            "offset": offset,
            "totalCount": len(ready),
            "submissions": [s.for_pickup() for s in page],
        }

    def submission_view(self, sub: SubmissionRecord, service_field: str = "serviceType") -> dict[str, Any]:
        out = sub.reduced(service_field)
        out["encryptedMetadata"] = self.blobs.read_text(sub.id, "metadata")
        if sub.has_data:
            out["encryptedData"] = self.blobs.read_text(sub.id, "data")
        return out

    def event_log(
        self, grant: Grant, case_id: str, limit: int, offset: int, *, submission_id: str | None = None
    ) -> dict[str, Any]:
        """The case's log, or (v2 ``/submissions/{id}/events``) only the events about one submission."""
        case = self.case(case_id)
        creators = {s.client_id for s in self.state.case_submissions(case_id)}
        if not (
            grant.can_subscribe(case.destination_id)
            or grant.can_manage(case.destination_id)
            or grant.client_id in creators
        ):
            raise ProblemError(403, "forbidden", "token may not read this case's event log")
        events = [e for e in case.events if submission_id is None or e.submission_id == submission_id]
        page = events[offset : offset + limit]
        return {
            "count": len(page),
            "offset": offset,
            "totalCount": len(events),
            "eventLog": [e.token for e in page],
        }

    def post_event(self, grant: Grant, case_id: str, token: str) -> EventRecord:
        case = self.case(case_id)
        if not grant.can_subscribe(case.destination_id):
            raise ProblemError(403, "forbidden", "token may not subscribe to this case's destination")
        dest = self.destination(case.destination_id)
        try:
            parsed, sub = check_subscriber_set(
                token,
                case=case,
                destination=dest,
                submissions=self.state.case_submissions(case_id),
                now=int(self.clock.wall()),
                max_skew=self.config.limits.max_set_skew,
                verify_accept_tags=self.config.verify_accept_tags,
            )
        except SETRejected as exc:
            raise ProblemError(422, "invalid-security-event-token", exc.detail, issue=exc.issue) from None
        if sub.status not in READABLE_STATUSES:
            raise ProblemError(
                409,
                "invalid-state-transition",
                f"submission is {sub.status}; only submitted or forwarded submissions can be accepted or rejected",
            )
        if parsed.jti in self.state.jtis:
            raise ProblemError(422, "invalid-security-event-token", "jti was used before", issue="duplicate-jti")
        record = self._append_event(sub, token, parsed.event, parsed.jti, parsed.issuer)
        self._close(sub, "accepted" if parsed.event == ACCEPT_SUBMISSION else "rejected")
        self._notify_sender(sub)
        self.save()
        log.info("submission_closed_by_subscriber", submission_id=sub.id, status=sub.status)
        return record

    def _close(self, sub: SubmissionRecord, status: str) -> None:
        sub.status = status  # type: ignore[assignment]
        sub.closed_at = self.clock.now()
        self.blobs.delete_submission(sub.id)

    # -- timers ----------------------------------------------------------------------------------------

    def sweep(self) -> int:
        """Run the periods that have elapsed on the sandbox clock; returns how many submissions changed."""
        now = self.clock.now()
        periods = self.config.periods
        changed = 0
        for sub in list(self.state.submissions.values()):
            if sub.status == "incomplete" and now >= sub.created_at + periods.incomplete_deletion:
                self.issue_event(sub, DELETE_SUBMISSION, {})
                self._close(sub, "deleted")
                self._notify_sender(sub)
                changed += 1
                log.info("incomplete_submission_deleted", submission_id=sub.id)
            elif (
                sub.status in READABLE_STATUSES
                and sub.submitted_at is not None
                and now >= sub.submitted_at + periods.auto_reject
            ):
                self.issue_event(sub, REJECT_SUBMISSION, {"problems": [dict(AUTO_REJECT_PROBLEM)]})
                self._close(sub, "rejected")
                self._notify_sender(sub)
                self._notify_destination(sub, CALLBACK_NEW_EVENTS)
                changed += 1
                log.info("submission_rejected_automatically", submission_id=sub.id)
        changed += self.replies.sweep()
        if changed:
            self.save()
        return changed

    def advance(self, seconds: float) -> float:
        now = self.clock.advance(seconds)
        self.sweep()
        self.save()
        return now

    # -- destinations (spec's internal endpoints and inspection API) ------------------------------------

    def add_key(
        self, destination_id: str, jwk: dict[str, Any], *, purpose: Literal["encryption", "signing"] | None = None
    ) -> bool:
        """Register a public JWK (encryption or signing, by its alg unless ``purpose`` says which it
        must be); False when exactly this key already existed."""
        dest = self.destination(destination_id)
        alg = jwk.get("alg")
        by_alg: Literal["encryption", "signing"]
        if alg == "RSA-OAEP-256":
            by_alg = "encryption"
        elif alg == "PS512":
            by_alg = "signing"
        else:
            raise ProblemError(400, "key-invalid", f"alg {alg!r} is neither RSA-OAEP-256 nor PS512", issue="alg")
        if purpose is not None and by_alg != purpose:
            raise ProblemError(400, "key-invalid", f"a {purpose} key needs another alg than {alg}", issue="alg")
        purpose = by_alg
        try:
            validate_public_jwk(jwk, purpose=purpose, allow_self_signed=True)
        except KeyValidationError as exc:
            raise ProblemError(400, "key-invalid", exc.message, issue=exc.code) from None
        kid = jwk["kid"]
        existing = {k["kid"]: k for k in (*dest.encryption_keys, *dest.signing_keys)}
        if kid in existing:
            if existing[kid] == jwk:
                return False
            raise ProblemError(400, "key-invalid", f"kid {kid} is already used by another key", issue="kid-conflict")
        if purpose == "encryption":
            dest = dataclasses.replace(dest, encryption_keys=(*dest.encryption_keys, dict(jwk)))
        else:
            dest = dataclasses.replace(dest, signing_keys=(*dest.signing_keys, dict(jwk)))
        self.state.destinations[dest.id] = dest
        self.save()
        log.info("destination_key_added", destination=dest.id, kid=kid, mode=purpose)
        return True

    def find_key(self, destination_id: str, kid: str) -> dict[str, Any]:
        dest = self.destination(destination_id)
        for jwk in (*dest.encryption_keys, *dest.signing_keys):
            if jwk.get("kid") == kid:
                return jwk
        raise ProblemError(404, "key-not-found", f"destination has no key {kid}")

    def update_destination(self, destination_id: str, **changes: Any) -> DestinationConfig:
        dest = self.destination(destination_id)
        kid = changes.get("encryption_kid")
        if kid is not None and kid not in {k["kid"] for k in dest.encryption_keys}:
            raise ProblemError(400, "key-not-found", f"{kid} is not a registered encryption key; add it first")
        dest = dataclasses.replace(dest, **changes)
        self.state.destinations[dest.id] = dest
        self.save()
        return dest

    # -- fault injection -------------------------------------------------------------------------------

    def _rogue(self) -> RSAPrivateKey:
        if self._rogue_key is None:
            self._rogue_key = generate_private_key(ROGUE_KEY_BITS)
        return self._rogue_key

    def tamper(self, case_id: str, submission_id: str, mode: str, part: str | None) -> None:
        case = self.case(case_id)
        sub = self.state.submissions.get(submission_id)
        if sub is None or sub.case_id != case.id:
            raise ProblemError(404, "submission-not-found", f"submission {submission_id} is not part of case {case_id}")
        if mode not in TAMPER_MODES:
            raise ProblemError(400, "invalid-request", f"mode must be one of {', '.join(TAMPER_MODES)}")
        submit_events = [e for e in case.events if e.submission_id == sub.id and e.event == SUBMIT_SUBMISSION]
        if not submit_events:
            raise ProblemError(
                422, "submission-state-invalid", f"submission is {sub.status}; it has no submit-submission event"
            )
        original = submit_events[0]
        claims = parse_jws(original.token).payload
        payload = claims["events"][SUBMIT_SUBMISSION]
        if mode == "drop-submit-event":
            case.events.remove(original)
        elif mode == "duplicate-submit-event":
            self.issue_event(sub, SUBMIT_SUBMISSION, payload)
        elif mode == "missing-authentication-tags":
            claims["events"][SUBMIT_SUBMISSION] = {k: v for k, v in payload.items() if k != "authenticationTags"}
            original.token = sign_jws(claims, self.zsd.key, kid=self.zsd.kid)
        elif mode == "wrong-set-key":
            original.token = sign_jws(claims, self._rogue(), kid=self.zsd.kid)
        elif mode == "auth-tag-mismatch":
            tags = payload.get("authenticationTags") or {}
            path = self.tag_path(tags, part)
            container, name = path
            container[name] = altered_tag(container[name])
            original.token = sign_jws(claims, self.zsd.key, kid=self.zsd.kid)
        else:  # corrupt-ciphertext: the stored JWE no longer decrypts (GCM tag check fails)
            if sub.status not in READABLE_STATUSES:
                raise ProblemError(422, "submission-state-invalid", f"submission is {sub.status}; content is gone")
            blob_part = part or "metadata"
            self.tag_path(payload.get("authenticationTags") or {}, blob_part)
            if blob_part == "data" and not sub.has_data:
                raise ProblemError(422, "invalid-request", "submission has no data")
            self.corrupt_blob(sub.id, blob_part)
        self.save()
        log.info("event_log_tampered", case_id=case.id, submission_id=sub.id, mode=mode)

    @staticmethod
    def tag_path(tags: dict[str, Any], part: str | None) -> tuple[dict[str, Any], str]:
        if part in ("metadata", "data"):
            if part not in tags:
                raise ProblemError(422, "invalid-request", f"the submission has no {part} tag")
            return tags, part
        if part and part.startswith("attachment:"):
            attachment_id = part.split(":", 1)[1].lower()
            attachments = tags.get("attachments") or {}
            if attachment_id not in attachments:
                raise ProblemError(422, "invalid-request", f"the submission has no attachment {attachment_id}")
            return attachments, attachment_id
        raise ProblemError(400, "invalid-request", 'part must be "metadata", "data" or "attachment:<id>"')

    def corrupt_blob(self, store_id: str, part: str) -> None:
        """Change the first ciphertext character of a stored JWE (of a submission or reply) in place
        (no full read: attachments may be huge)."""
        path = self.blobs.part_path(store_id, part)
        with path.open("r+b") as fh:
            head = fh.read(128 * 1024)  # the three small segments before the ciphertext fit in here
            offset = -1
            for _ in range(3):
                offset = head.find(b".", offset + 1)
            if offset < 0 or offset + 1 >= len(head) or head[offset + 1 : offset + 2] == b".":
                raise ProblemError(422, "invalid-request", f"the stored {part} has no ciphertext to corrupt")
            old = head[offset + 1 : offset + 2]
            fh.seek(offset + 1)
            fh.write(b"B" if old == b"A" else b"A")
