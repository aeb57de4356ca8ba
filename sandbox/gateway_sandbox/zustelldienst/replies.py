"""The reply side of the Zustelldienst: replies of a destination to the online service of a case.

No specification defines these endpoints; the sandbox implements exactly the shapes of the gateway's
reply profile (:mod:`gateway.fitconnect.replies`, listed in ``docs/fitconnect-replies.md``) so that
the gateway's reply channel and the test online service are tested against the same assumptions.
Lifecycle: ``incomplete`` (created, attachments being uploaded) → ``submitted`` (submit-reply SET,
new-replies callback to the online service) → ``accepted`` | ``rejected`` (the online service's
decision, recorded as a Zustelldienst SET; new-events callback to the destination; content deleted).
An incomplete reply is forgotten after the deletion period; a submitted one is rejected by the
Zustelldienst after the collection period.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import structlog
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from gateway.fitconnect import replies as rp
from gateway.fitconnect.jose import parse_jws, sign_jws
from gateway_sandbox.zustelldienst.events import AUTO_REJECT_PROBLEM, altered_tag
from gateway_sandbox.zustelldienst.problems import ProblemError, bad_request
from gateway_sandbox.zustelldienst.scopes import Grant
from gateway_sandbox.zustelldienst.state import EventRecord, ReplyRecord
from gateway_sandbox.zustelldienst.uploads import check_upload, record_upload, store_submit

if TYPE_CHECKING:
    from gateway_sandbox.zustelldienst.service import Sandbox

log = structlog.get_logger(__name__)

REPLY_TAMPER_MODES = ("auth-tag-mismatch", "corrupt-ciphertext")


class ReplyDesk:
    """Reply lifecycle on top of the sandbox's state, blob store, signing key, clock and callbacks."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.state = sandbox.state

    # -- lookups and access rules (profile assumption "scopes") -------------------------------------

    def reply(self, reply_id: str) -> ReplyRecord:
        found = self.state.replies.get(reply_id)
        if found is None:
            raise ProblemError(404, "reply-not-found", f"reply {reply_id} does not exist")
        return found

    def _is_online_service(self, grant: Grant, case_id: str) -> bool:
        return bool(grant.send_scopes) and grant.client_id in self.state.case_clients(case_id)

    def _is_destination(self, grant: Grant, reply: ReplyRecord) -> bool:
        return grant.can_subscribe(reply.destination_id)

    def own_reply(self, grant: Grant, reply_id: str) -> ReplyRecord:
        """A reply the calling destination client created (upload, submit)."""
        reply = self.reply(reply_id)
        if reply.client_id != grant.client_id or not self._is_destination(grant, reply):
            raise ProblemError(403, "forbidden", "the reply was created by another client")
        return reply

    def _online_reply(self, grant: Grant, reply_id: str) -> ReplyRecord:
        """A reply the calling online service may read: it opened the case, and the reply is submitted."""
        reply = self.reply(reply_id)
        if not self._is_online_service(grant, reply.case_id):
            raise ProblemError(403, "forbidden", "token may not read replies of this case")
        if reply.status != "submitted":
            raise ProblemError(404, "reply-not-found", f"reply is {reply.status}, not submitted")
        return reply

    # -- the destination's side ------------------------------------------------------------------------

    def create(self, grant: Grant, *, case_id: str, reply_id: str | None, announced: list[str]) -> ReplyRecord:
        case = self.sandbox.case(case_id)
        if not grant.can_subscribe(case.destination_id):
            raise ProblemError(403, "forbidden", "token may not subscribe to the case's destination")
        dest = self.sandbox.destination(case.destination_id)
        if rp.destination_offer({"replyChannels": dest.reply_channels or {}}) is None:
            raise ProblemError(422, rp.PROBLEM_NOT_OFFERED, "the case's destination does not offer fitConnect replies")
        if reply_id is not None and (reply_id in self.state.replies or reply_id in self.state.submissions):
            raise ProblemError(409, rp.PROBLEM_REPLY_EXISTS, f"reply {reply_id} exists already")
        reply = ReplyRecord(
            id=reply_id or str(uuid.uuid4()),
            case_id=case.id,
            destination_id=case.destination_id,
            client_id=grant.client_id,
            announced=announced,
            created_at=self.sandbox.clock.now(),
        )
        self.state.replies[reply.id] = reply
        self.sandbox.save()
        log.info("sandbox_reply_created", reply_id=reply.id, case_id=case.id)
        return reply

    def check_upload(self, grant: Grant, reply_id: str, attachment_id: str) -> ReplyRecord:
        reply = self.own_reply(grant, reply_id)
        check_upload(reply, attachment_id, state_problem=rp.PROBLEM_REPLY_STATE, what="reply")
        return reply

    def record_upload(self, reply: ReplyRecord, attachment_id: str, tag: str) -> None:
        record_upload(reply, attachment_id, tag)
        self.sandbox.save()

    def submit(
        self, grant: Grant, reply_id: str, *, metadata: str, data: str | None, tags: tuple[str, str | None]
    ) -> ReplyRecord:
        reply = self.own_reply(grant, reply_id)
        store_submit(reply, self.sandbox.blobs, metadata=metadata, data=data, tags=tags,
                     state_problem=rp.PROBLEM_REPLY_STATE, what="reply")  # fmt: skip
        reply.submitted_at = self.sandbox.clock.now()
        self.issue(reply, rp.SUBMIT_REPLY, {"authenticationTags": reply.tags})
        self._notify_online_service(reply)
        self.sandbox.save()
        log.info("sandbox_reply_submitted", reply_id=reply.id, case_id=reply.case_id)
        return reply

    # -- both sides ------------------------------------------------------------------------------------

    def view(self, grant: Grant, reply_id: str) -> dict[str, Any]:
        reply = self.reply(reply_id)
        if not (reply.client_id == grant.client_id and self._is_destination(grant, reply)):
            reply = self._online_reply(grant, reply_id)
        out = reply.reduced()
        if reply.status == "submitted":
            out["encryptedMetadata"] = self.sandbox.blobs.read_text(reply.id, "metadata")
            if reply.has_data:
                out["encryptedData"] = self.sandbox.blobs.read_text(reply.id, "data")
        return out

    def event_log(self, grant: Grant, reply_id: str, limit: int, offset: int) -> dict[str, Any]:
        reply = self.reply(reply_id)
        if not (self._is_destination(grant, reply) or self._is_online_service(grant, reply.case_id)):
            raise ProblemError(403, "forbidden", "token may not read this reply's event log")
        events = self.state.reply_events(reply.id)
        page = events[offset : offset + limit]
        return {"count": len(page), "offset": offset, "totalCount": len(events), "eventLog": [e.token for e in page]}

    # -- the online service's side --------------------------------------------------------------------

    def listing(self, grant: Grant, limit: int, offset: int) -> dict[str, Any]:
        if not grant.send_scopes:
            raise ProblemError(403, "forbidden", "token has no send scope")
        ready = sorted(
            (
                r
                for r in self.state.replies.values()
                if r.status == "submitted" and grant.client_id in self.state.case_clients(r.case_id)
            ),
            key=lambda r: (r.submitted_at or 0.0, r.id),
        )
        page = ready[offset : offset + limit]
        return {"count": len(page), "offset": offset, "totalCount": len(ready), "replies": [r.item() for r in page]}

    def attachment_path(self, grant: Grant, reply_id: str, attachment_id: str) -> Any:
        reply = self._online_reply(grant, reply_id)
        part = f"attachment:{attachment_id}"
        if attachment_id not in reply.uploaded or not self.sandbox.blobs.exists(reply.id, part):
            raise ProblemError(404, "attachment-not-found", f"reply has no attachment {attachment_id}")
        return self.sandbox.blobs.part_path(reply.id, part)

    def decide(self, grant: Grant, reply_id: str, body: dict[str, Any]) -> EventRecord:
        """The online service's accept-reply / reject-reply (profile assumption ``decision-endpoint``)."""
        reply = self.reply(reply_id)
        if not self._is_online_service(grant, reply.case_id):
            raise ProblemError(403, "forbidden", "token may not answer replies of this case")
        event = body.get("event")
        if event not in rp.DECISIONS:
            raise bad_request(f"event must be {rp.ACCEPT_REPLY} or {rp.REJECT_REPLY}")
        if event == rp.ACCEPT_REPLY:
            problem = rp.tags_problem(body.get("authenticationTags"))
            if problem:
                raise ProblemError(422, "invalid-decision", problem, issue="invalid-payload")
            payload: dict[str, Any] = {"authenticationTags": body["authenticationTags"]}
        else:
            problems = body.get("problems")
            if not isinstance(problems, list) or not problems:
                raise ProblemError(422, "invalid-decision", "reject-reply needs a non-empty problems list",
                                   issue="invalid-payload")  # fmt: skip
            for i, p in enumerate(problems):
                if not isinstance(p, dict) or not isinstance(p.get("type"), str) or not isinstance(p.get("title"), str):
                    raise ProblemError(422, "invalid-decision", f"problems[{i}] needs string type and title",
                                       issue="invalid-payload")  # fmt: skip
            payload = {"problems": problems}
        if reply.status != "submitted":
            raise ProblemError(409, "invalid-state-transition", f"reply is {reply.status}; only submitted replies")
        if event == rp.ACCEPT_REPLY and not rp.same_tags(payload["authenticationTags"], reply.tags or {}):
            raise ProblemError(
                422,
                "invalid-decision",
                "authenticationTags differ from those recorded in submit-reply",
                issue="authentication-tags-mismatch",
            )
        record = self.issue(reply, event, payload)
        self._close(reply, "accepted" if event == rp.ACCEPT_REPLY else "rejected")
        self._notify_destination(reply)
        self.sandbox.save()
        log.info("sandbox_reply_closed", reply_id=reply.id, status=reply.status)
        return record

    # -- events, callbacks, timers ---------------------------------------------------------------------

    def issue(
        self, reply: ReplyRecord, event: str, payload: dict[str, Any], *, key: RSAPrivateKey | None = None
    ) -> EventRecord:
        sandbox = self.sandbox
        jti = str(uuid.uuid4())
        token = rp.reply_set(
            issuer=sandbox.base_url,
            reply_id=reply.id,
            case_id=reply.case_id,
            event=event,
            payload=payload,
            key=key or sandbox.zsd.key,
            kid=sandbox.zsd.kid,
            iat=int(sandbox.clock.wall()),  # a peer checks iat against its own clock
            jti=jti,
        )
        record = EventRecord(
            token=token,
            submission_id=None,
            reply_id=reply.id,
            event=event,
            jti=jti,
            issuer=sandbox.base_url,
            recorded_at=sandbox.clock.now(),
        )
        self.state.cases[reply.case_id].events.append(record)
        self.state.jtis.add(jti)
        return record

    def _notify_online_service(self, reply: ReplyRecord) -> None:
        """new-replies to every callback the case's submissions were created with (once per URL)."""
        seen: set[str] = set()
        for sub in self.state.case_submissions(reply.case_id):
            if sub.callback_url and sub.callback_secret and sub.callback_url not in seen:
                seen.add(sub.callback_url)
                self.sandbox.dispatcher.enqueue(
                    target="sender",
                    url=sub.callback_url,
                    secret=sub.callback_secret,
                    callback_type=rp.CALLBACK_NEW_REPLIES,
                    replies=[reply],
                )

    def _notify_destination(self, reply: ReplyRecord) -> None:
        dest = self.state.destinations.get(reply.destination_id)
        if dest is not None and dest.callback is not None:
            self.sandbox.dispatcher.enqueue(
                target="destination",
                url=dest.callback.url,
                secret=dest.callback.secret,
                callback_type=rp.CALLBACK_REPLY_EVENTS,
                replies=[reply],
            )

    def _close(self, reply: ReplyRecord, status: str) -> None:
        reply.status = status  # type: ignore[assignment]
        reply.closed_at = self.sandbox.clock.now()
        self.sandbox.blobs.delete_submission(reply.id)

    def sweep(self) -> int:
        """Forget incomplete replies after the deletion period; reject unanswered ones after the
        collection period (profile assumption ``reply-auto-reject``)."""
        now = self.sandbox.clock.now()
        periods = self.sandbox.config.periods
        changed = 0
        for reply in list(self.state.replies.values()):
            if reply.status == "incomplete" and now >= reply.created_at + periods.incomplete_deletion:
                del self.state.replies[reply.id]
                self.sandbox.blobs.delete_submission(reply.id)
                changed += 1
                log.info("sandbox_reply_deleted", reply_id=reply.id)
            elif (
                reply.status == "submitted"
                and reply.submitted_at is not None
                and now >= reply.submitted_at + periods.auto_reject
            ):
                self.issue(reply, rp.REJECT_REPLY, {"problems": [dict(AUTO_REJECT_PROBLEM)]})
                self._close(reply, "rejected")
                self._notify_destination(reply)
                changed += 1
                log.info("sandbox_reply_rejected_automatically", reply_id=reply.id)
        return changed

    # -- fault injection -------------------------------------------------------------------------------

    def tamper(self, reply_id: str, mode: str, part: str | None) -> None:
        """``auth-tag-mismatch``: submit-reply records another tag for ``part`` (re-signed by the
        Zustelldienst); ``corrupt-ciphertext``: the stored JWE of ``part`` no longer decrypts."""
        reply = self.reply(reply_id)
        if mode not in REPLY_TAMPER_MODES:
            raise bad_request(f"mode must be one of {', '.join(REPLY_TAMPER_MODES)}")
        if reply.status != "submitted":
            raise ProblemError(422, rp.PROBLEM_REPLY_STATE, f"reply is {reply.status}; only submitted replies")
        part = part or "data"
        tags = reply.tags or {}
        container, name = self.sandbox.tag_path(tags, part)
        if mode == "corrupt-ciphertext":
            self.sandbox.corrupt_blob(reply.id, part)
        else:
            container[name] = altered_tag(container[name])
            for record in self.state.reply_events(reply.id):
                if record.event == rp.SUBMIT_REPLY:
                    claims = parse_jws(record.token).payload
                    claims["events"][rp.SUBMIT_REPLY]["authenticationTags"] = tags
                    record.token = sign_jws(claims, self.sandbox.zsd.key, kid=self.sandbox.zsd.kid)
        self.sandbox.save()
        log.info("sandbox_reply_tampered", reply_id=reply.id, mode=mode)
