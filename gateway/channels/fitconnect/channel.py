"""The ``fitconnect`` reply channel: the answer goes back in the application's case, over the reply API.

* :meth:`suitable` decides from what the inbound message kept (its ReplyContext): the application came
  by this channel's source, the applicant chose ``fitConnect``, the key is usable, the process
  standards intersect, the destination offers the channel. Each refusal has a precise reason.
* :meth:`send` (idempotent on the answer id): the reply id and the attachment ids are derived from the
  answer's idempotency key, so a retry names the same reply. Create → (409 ``reply-already-exists``:
  read it; submitted already → done; still incomplete → continue) → upload every attachment (PUT
  overwrites) → submit → read the reply's log and check that submit-reply recorded exactly the tags
  sent. A crash at any point therefore ends in one reply on the Zustelldienst, submitted once.
* :meth:`confirm` reads the reply's event log, verifies every SET as the subscriber does for
  submissions (:mod:`.eventlog`) and maps accept-reply → CONFIRMED, reject-reply → REFUSED with its
  problems, nothing yet → PENDING, a broken log or an unknown reply → INVALID.
* Callbacks: the source's callback endpoint announces reply events (``new-events`` naming replies);
  the channel passes them to whoever subscribed with :meth:`subscribe_confirmations` (the answer
  worker), which then calls :meth:`confirm` for those answers at once.

Wire shapes: :mod:`gateway.fitconnect.replies` only. Logs carry ids and reasons, never content or keys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from gateway.channels.base import (
    ChannelContext,
    ConfirmationListener,
    ConfirmOutcome,
    ConfirmResult,
    Outgoing,
    SendOutcome,
    SendResult,
)
from gateway.channels.fitconnect.eventlog import ReplyLog, fetch_reply_log
from gateway.channels.fitconnect.options import ChannelOptions, parse_options
from gateway.channels.fitconnect.payload import (
    ReplyPayload,
    attachment_ids_for,
    build_payload,
    data_refusal,
    reply_id_for,
)
from gateway.errors import ConfigError
from gateway.fitconnect import replies as rp
from gateway.fitconnect.client import ApiError, HttpResult, error_summary, json_object, problem_type
from gateway.fitconnect.reply_key import ReplyKey, ReplyKeyError, validate_process_standards, validate_reply_key
from gateway.model import Answer, Envelope
from gateway.problems import Problem
from gateway.sources.fitconnect.eventlog import LogProblem
from gateway.sources.fitconnect.reply_context import SOURCE_TYPE, THUMBPRINT_DETAIL
from gateway.sources.fitconnect.source import FitConnectSource

log = structlog.get_logger(__name__)

TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
RETRY_SOON = 30.0  # seconds until the next confirmation poll after an upstream error


@dataclass(frozen=True)
class Plan:
    """Everything :meth:`FitConnectReplyChannel.send` needs, decided once from the message and answer."""

    key: ReplyKey
    process_standard: str  # the first of ours the applicant also speaks
    case_id: str


class _Stop(Exception):
    """Ends a send attempt with ``result`` (an answer of the Zustelldienst that decides it)."""

    def __init__(self, result: SendResult) -> None:
        super().__init__(result.reason)
        self.result = result


def _failure(what: str, status: int | None, detail: str, retry_after: float | None = None) -> SendResult:
    """A Zustelldienst answer (or its absence) as a send outcome."""
    if status is None or status in TRANSIENT_STATUSES or status >= 500:
        return SendResult(SendOutcome.TRANSIENT, f"{what}: {detail}", retry_after=retry_after)
    if status == 401:
        return SendResult(SendOutcome.TRANSIENT, f"{what}: not authorised (HTTP 401, token refused twice)")
    if status == 403:
        return SendResult(
            SendOutcome.PERMANENT, f"{what}: the source's client may not send replies here (HTTP 403: {detail})"
        )
    return SendResult(SendOutcome.PERMANENT, f"{what}: the Zustelldienst refused it (HTTP {status}: {detail})")


class FitConnectReplyChannel:
    electronic = True

    def __init__(self, name: str, options: ChannelOptions, source: FitConnectSource) -> None:
        self.name = name
        self.options = options
        self.source = source
        self.api = source.api  # the source's client: same credentials, same token cache
        self._listeners: list[ConfirmationListener] = []
        self._unsubscribe = source.subscribe_reply_events(self._on_reply_events)

    # -- confirmation hints (ConfirmationHints) ---------------------------------------------------------

    def subscribe_confirmations(self, listener: ConfirmationListener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _on_reply_events(self, reply_ids: Sequence[str]) -> None:
        for listener in list(self._listeners):
            try:
                listener(list(reply_ids))
            except Exception:  # a listener's bug must not break the callback endpoint
                log.exception("fitconnect_reply_listener_failed", channel=self.name)

    # -- suitable ------------------------------------------------------------------------------------

    async def suitable(self, message: Envelope, answer: Answer) -> str | None:
        plan = await self._plan(message, answer)
        return plan if isinstance(plan, str) else None

    async def _plan(self, message: Envelope, answer: Answer) -> Plan | str:
        """The plan, or why this channel cannot carry the answer (short, no personal data)."""
        reply = message.reply
        if reply is None or reply.source_type != SOURCE_TYPE or message.source.channel != self.source.name:
            return f"the application did not come in by the FIT-Connect source {self.source.name}"
        if reply.choice is None:
            return "the applicant chose no reply channel"
        if reply.choice != rp.REPLY_CHANNEL:
            return f"the applicant chose the reply channel {reply.choice}, not {rp.REPLY_CHANNEL}"
        if not reply.case:
            return "the message has no FIT-Connect case id"
        try:
            key = validate_reply_key(reply.details.get("encryptionPublicKey"))
        except ReplyKeyError as exc:
            return f"the applicant's reply key is not usable ({exc.code}: {exc.message})"
        pinned = reply.details.get(THUMBPRINT_DETAIL)
        if pinned is not None and pinned != key.thumbprint:
            return "the applicant's reply key differs from the one recorded at intake"
        try:
            theirs = validate_process_standards(reply.details.get("processStandards"))
        except ReplyKeyError as exc:
            return f"the applicant's process standards are not usable ({exc.message})"
        common = [s for s in self.options.process_standards if s in theirs]
        if not common:
            return (
                f"the applicant's process standards ({', '.join(theirs)}) do not intersect the offered ones "
                f"({', '.join(self.options.process_standards)})"
            )
        offered = await self._destination_offer()
        if offered is None:
            return f"the destination {self.source.options.destination_id} does not offer the fitConnect reply channel"
        refusal = data_refusal(answer)
        if refusal is not None:
            return refusal
        return Plan(key=key, process_standard=common[0], case_id=reply.case.lower())

    async def _destination_offer(self) -> tuple[str, ...] | None:
        """What the destination document says; when it cannot be read now, the channel's own
        configuration stands (the Zustelldienst refuses a reply to a destination that does not offer
        the channel, 422, so nothing wrong is sent)."""
        try:
            destination = await self.source.destination.get()
        except ApiError as exc:
            log.warning("fitconnect_destination_unavailable", channel=self.name, reason=str(exc))
            return self.options.process_standards
        return rp.destination_offer(destination)

    # -- send ----------------------------------------------------------------------------------------

    async def send(self, outgoing: Outgoing) -> SendResult:
        plan = await self._plan(outgoing.message, outgoing.answer)
        if isinstance(plan, str):
            return SendResult(SendOutcome.PERMANENT, f"not sendable over fitconnect: {plan}")
        try:
            payload = await build_payload(outgoing, plan.key, plan.process_standard)
        except OSError as exc:
            return SendResult(SendOutcome.PERMANENT, f"the answer's payload cannot be read ({type(exc).__name__})")
        except ValueError as exc:  # e.g. a blob whose recorded hash is not a SHA-512 digest
            return SendResult(SendOutcome.PERMANENT, f"the answer cannot be expressed as reply metadata: {exc}")
        try:
            result = await self._send(plan, payload)
        except _Stop as stop:
            result = stop.result
        except ApiError as exc:
            result = _failure(exc.what, exc.status, exc.detail)
        finally:
            payload.cleanup()
        log.info(
            "fitconnect_reply_send",
            channel=self.name,
            answer_id=outgoing.answer.id,
            reply_id=payload.reply_id,
            outcome=result.outcome.value,
            reason=result.reason,
        )
        return result

    async def _call(self, what: str, method: str, path: str, statuses: tuple[int, ...], **kwargs: Any) -> HttpResult:
        result = await self.api.call(method, path, what=what, **kwargs)
        if result.status not in statuses:
            raise _Stop(_failure(what, result.status, error_summary(result.body), result.retry_after))
        return result

    async def _send(self, plan: Plan, payload: ReplyPayload) -> SendResult:
        reply_id = payload.reply_id
        sent = SendResult(SendOutcome.SENT, "reply submitted", reference=reply_id)
        create = rp.create_body(case_id=plan.case_id, reply_id=reply_id, announced_attachments=payload.announced)
        created = await self._call("create-reply", "POST", rp.REPLIES, (rp.CREATE_STATUS, 409), json_body=create)
        if created.status == 409:
            if problem_type(created.body) != rp.PROBLEM_REPLY_EXISTS:
                raise _Stop(_failure("create-reply", 409, error_summary(created.body)))
            existing = await self._existing(reply_id, plan)
            if existing != "incomplete":
                return SendResult(SendOutcome.SENT, f"reply was {existing} already (resumed)", reference=reply_id)
        for attachment in payload.attachments:
            await self._call(
                "upload-reply-attachment",
                "PUT",
                rp.path(rp.REPLY_ATTACHMENT, replyId=reply_id, attachmentId=attachment.attachment_id),
                (rp.UPLOAD_STATUS,),
                body=attachment.jwe_path,
                content_type="application/jose",
                bounded=False,
            )
        body = rp.submit_body(encrypted_metadata=payload.encrypted_metadata, encrypted_data=payload.encrypted_data)
        submitted = await self._call(
            "submit-reply", "PUT", rp.path(rp.REPLY, replyId=reply_id), (*rp.SUBMIT_STATUSES, 422),
            json_body=body, bounded=False,
        )  # fmt: skip
        if submitted.status == 422:
            if problem_type(submitted.body) != rp.PROBLEM_REPLY_STATE:
                raise _Stop(_failure("submit-reply", 422, error_summary(submitted.body)))
            existing = await self._existing(reply_id, plan)  # submitted meanwhile (a concurrent try)
            if existing == "incomplete":
                raise _Stop(_failure("submit-reply", 422, error_summary(submitted.body)))
            return SendResult(SendOutcome.SENT, f"reply was {existing} already (resumed)", reference=reply_id)
        return await self._verify_recorded(plan, payload) or sent

    async def _existing(self, reply_id: str, plan: Plan) -> str:
        """The status of a reply created by an earlier attempt, checked to be that attempt's."""
        found = await self._call("get-reply", "GET", rp.path(rp.REPLY, replyId=reply_id), (200,))
        view = json_object(found.body, "get-reply")
        if str(view.get("caseId", "")).lower() != plan.case_id:
            raise _Stop(SendResult(SendOutcome.PERMANENT, f"reply {reply_id} exists in another case"))
        status = str(view.get("status", ""))
        if status not in rp.REPLY_STATUSES:
            raise _Stop(SendResult(SendOutcome.TRANSIENT, f"reply {reply_id} has no known status"))
        return status

    async def _verify_recorded(self, plan: Plan, payload: ReplyPayload) -> SendResult | None:
        """submit-reply must record exactly the tags sent; None when it does (or cannot be read now:
        :meth:`confirm` checks the log again)."""
        try:
            reply_log = await fetch_reply_log(self.api, self.source.keys, reply_id=payload.reply_id,
                                              case_id=plan.case_id)  # fmt: skip
        except ApiError as exc:
            log.warning("fitconnect_reply_log_unavailable", channel=self.name, reason=str(exc))
            return None
        except LogProblem as exc:
            return SendResult(SendOutcome.PERMANENT, f"submitted, but the reply's log is invalid: {exc.problem.detail}",
                              reference=payload.reply_id)  # fmt: skip
        if not rp.same_tags(reply_log.tags, payload.tags):
            return SendResult(
                SendOutcome.PERMANENT,
                "submitted, but the Zustelldienst recorded other authentication tags than were sent",
                reference=payload.reply_id,
            )
        return None

    # -- confirm -------------------------------------------------------------------------------------

    async def confirm(self, outgoing: Outgoing) -> ConfirmResult:
        reply_id = outgoing.answer.reference or reply_id_for(outgoing.idempotency_key)
        case_id = (outgoing.message.reply.case if outgoing.message.reply else None) or outgoing.message.source.case
        if not case_id:
            return ConfirmResult(ConfirmOutcome.INVALID, "the message has no FIT-Connect case id")
        try:
            reply_log = await fetch_reply_log(self.api, self.source.keys, reply_id=reply_id, case_id=case_id)
        except ApiError as exc:
            if exc.status == 404:
                return ConfirmResult(ConfirmOutcome.INVALID, f"the Zustelldienst does not know reply {reply_id}")
            return ConfirmResult(ConfirmOutcome.PENDING, f"event log unavailable: {exc}", check_again_after=RETRY_SOON)
        except LogProblem as exc:
            return ConfirmResult(ConfirmOutcome.INVALID, f"the reply's event log is invalid: {exc.problem.detail}")
        result = self._outcome(reply_log, outgoing)
        log.info("fitconnect_reply_confirm", channel=self.name, answer_id=outgoing.answer.id, reply_id=reply_id,
                 outcome=result.outcome.value)  # fmt: skip
        return result

    def _outcome(self, reply_log: ReplyLog, outgoing: Outgoing) -> ConfirmResult:
        expected = set(attachment_ids_for(outgoing.idempotency_key, outgoing.answer))
        recorded = {str(k).lower() for k in reply_log.tags.get("attachments", {})}
        if recorded != expected or "data" not in reply_log.tags:
            return ConfirmResult(ConfirmOutcome.INVALID, "submit-reply records other parts than the answer has")
        if reply_log.decision is None:
            return ConfirmResult(ConfirmOutcome.PENDING, "no accept-reply or reject-reply yet",
                                 check_again_after=self.options.confirm_interval)  # fmt: skip
        if reply_log.accepted:
            return ConfirmResult(ConfirmOutcome.CONFIRMED, "accept-reply recorded by the Zustelldienst")
        problems = [Problem.from_dict(p) for p in reply_log.problems()]
        if not problems:
            problems = [Problem(type=rp.REJECT_REPLY, title="reject-reply without problems")]
        return ConfirmResult(ConfirmOutcome.REFUSED, "reject-reply recorded by the Zustelldienst", problems=problems)

    # -- lifecycle -----------------------------------------------------------------------------------

    async def check(self) -> str | None:
        return await self.source.check()  # the source's client is ours: its readiness is ours

    async def close(self) -> None:
        self._unsubscribe()  # the client belongs to the source, which closes it


def create(ctx: ChannelContext, raw: Mapping[str, Any]) -> FitConnectReplyChannel:
    options = parse_options(raw)
    source = ctx.sources.get(options.source)
    if source is None:
        known = ", ".join(sorted(n for n, s in ctx.sources.items() if isinstance(s, FitConnectSource))) or "none"
        raise ConfigError(f"no source {options.source!r} (fitconnect sources: {known})", key="source")
    if not isinstance(source, FitConnectSource):
        raise ConfigError(f"source {options.source!r} is not of type fitconnect", key="source")
    return FitConnectReplyChannel(ctx.name, options, source)
