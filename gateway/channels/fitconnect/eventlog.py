"""A reply's event log (``GET /replies/{replyId}/events``), checked like a case's log for submissions.

Every SET is parsed and verified exactly as the subscriber does it
(:func:`gateway.sources.fitconnect.eventlog.fetch_event_log`: structure, ``txn`` = the case, key of
the issuer, PS512 signature); on top, per the reply profile, every event must be about this reply
(``sub = reply:<id>``) and issued by the Zustelldienst, there must be exactly one ``submit-reply``
with well-formed ``authenticationTags``, at most one decision, and an ``accept-reply`` must repeat
exactly the tags of ``submit-reply``. Used by the reply channel (confirmation) and by the test
online service (receipt). A broken log is a :class:`~gateway.sources.fitconnect.eventlog.LogProblem`
(its problem is what an online service puts into reject-reply); failing to fetch is an ``ApiError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from gateway.fitconnect import replies as rp
from gateway.fitconnect.client import FitConnectClient
from gateway.fitconnect.problems import problem
from gateway.fitconnect.sets import ParsedSET
from gateway.sources.fitconnect.eventlog import KeyResolver, LogProblem, fetch_event_log, is_zsd_issuer

if TYPE_CHECKING:
    from gateway.sources.fitconnect.client import SubmissionApi


class _ReplyLogPages:
    """What :func:`fetch_event_log` pages through (its ``get_events``), served from the reply's own log."""

    def __init__(self, api: FitConnectClient, reply_id: str) -> None:
        self._api = api
        self._path = rp.path(rp.REPLY_EVENTS, replyId=reply_id)

    async def get_events(self, case_id: str, *, limit: int, offset: int) -> tuple[int, bytes]:
        return await self._api.request(
            "GET", self._path, what="get-reply-events", params={"limit": limit, "offset": offset}
        )


def _invalid(detail: str) -> LogProblem:
    return LogProblem(problem("invalid-event-log", detail))


@dataclass(frozen=True)
class ReplyLog:
    reply_id: str
    case_id: str
    events: tuple[ParsedSET, ...]  # verified, oldest first
    submit: ParsedSET
    tags: dict[str, Any]  # authenticationTags of submit-reply
    decision: ParsedSET | None  # accept-reply or reject-reply, if the online service answered yet

    @property
    def accepted(self) -> bool:
        return self.decision is not None and self.decision.event == rp.ACCEPT_REPLY

    def problems(self) -> list[dict[str, Any]]:
        """The problems of a reject-reply (well-formed entries only)."""
        if self.decision is None or self.decision.event != rp.REJECT_REPLY:
            return []
        raw = self.decision.event_payload.get("problems")
        return (
            [p for p in raw if isinstance(p, dict) and isinstance(p.get("type"), str)] if isinstance(raw, list) else []
        )


async def fetch_reply_log(api: FitConnectClient, keys: KeyResolver, *, reply_id: str, case_id: str) -> ReplyLog:
    """The reply's log, every SET verified; raise LogProblem (broken log) or ApiError (try again)."""
    reply_id, case_id = reply_id.lower(), case_id.lower()
    pages = cast("SubmissionApi", _ReplyLogPages(api, reply_id))  # fetch_event_log only calls get_events
    events = tuple((await fetch_event_log(pages, keys, case_id)).events)
    for index, event in enumerate(events):
        if event.reply_id != reply_id:
            raise _invalid(f"event {index + 1} of the reply's log is about another subject")
        if not is_zsd_issuer(event.issuer):
            raise _invalid(f"event {index + 1} of the reply's log is not issued by the Zustelldienst")
    submits = [e for e in events if e.event == rp.SUBMIT_REPLY]
    if len(submits) != 1:
        raise _invalid(f"the reply's log has {len(submits)} submit-reply events, expected exactly one")
    tags = submits[0].event_payload.get("authenticationTags")
    reason = rp.tags_problem(tags)
    if reason is not None:
        raise LogProblem(problem("missing-authentication-tags", f"submit-reply: {reason}"))
    assert isinstance(tags, dict)
    decisions = [e for e in events if e.event in rp.DECISIONS]
    if len(decisions) > 1:
        raise _invalid(f"the reply's log has {len(decisions)} accept-/reject-reply events")
    decision = decisions[0] if decisions else None
    if decision is not None and decision.event == rp.ACCEPT_REPLY:
        accepted = decision.event_payload.get("authenticationTags")
        if not isinstance(accepted, dict) or rp.tags_problem(accepted) is not None or not rp.same_tags(accepted, tags):
            raise _invalid("accept-reply does not repeat the authenticationTags of submit-reply")
    return ReplyLog(reply_id, case_id, events, submits[0], tags, decision)
