"""accept-submission / reject-submission: build the SET, post it, reconcile a 409 from the event log.

* accept repeats the ``authenticationTags`` exactly as the submit-submission event recorded them;
* reject carries every problem; problems that are not from the FIT-Connect catalogue (a routing
  refusal, a validation plugin) become ``technical-error`` whose detail names the gateway's type;
* 204 → done; 409 (invalid transition) → read the event log: an outcome we already posted, or the
  Zustelldienst's automatic rejection after the collection period, is final → done, with a reason
  the audit trail shows. Nothing is ever accepted twice: a repeated accept is answered 409 upstream
  and reconciled here.
* network errors, 5xx, 401 → not done (the ack worker retries with backoff); 422 (our SET refused)
  and 404 → not done, marked permanent (an operator has to look).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog

from gateway.fitconnect.problems import PROBLEM_PREFIX, problem
from gateway.fitconnect.sets import ACCEPT_SUBMISSION, REJECT_SUBMISSION, build_set
from gateway.model import Envelope
from gateway.problems import Problem
from gateway.sources.base import AckOutcome, AckResult
from gateway.sources.fitconnect.client import ApiError, SubmissionApi, error_summary
from gateway.sources.fitconnect.eventlog import KeyResolver, LogProblem, fetch_event_log, is_zsd_issuer
from gateway.sources.fitconnect.options import SubscriberOptions

log = structlog.get_logger(__name__)


def upstream_problems(problems: Sequence[Problem]) -> list[dict[str, Any]]:
    """The ``problems`` of a reject-submission SET (catalogue types only; never empty)."""
    out: list[dict[str, Any]] = []
    for p in problems:
        if p.type.startswith(PROBLEM_PREFIX):
            out.append(p.as_dict())
        else:
            detail = f"gateway problem {p.type}: {p.title}" + (f" ({p.detail})" if p.detail else "")
            out.append(problem("technical-error", detail[:1000]).as_dict())
    if not out:
        out.append(problem("technical-error", "the gateway refused the submission").as_dict())
    return out


class Acknowledger:
    def __init__(self, options: SubscriberOptions, api: SubmissionApi, keys: KeyResolver) -> None:
        self.options = options
        self.api = api
        self.keys = keys

    async def acknowledge(self, envelope: Envelope, outcome: AckOutcome, problems: Sequence[Problem]) -> AckResult:
        submission_id = envelope.source.reference.lower()
        case_id = (envelope.source.case or "").lower()
        if not case_id:
            return AckResult(False, "the stored message has no FIT-Connect case id", permanent=True)
        fitconnect = envelope.metadata.get("fitconnect", {})
        payload: dict[str, Any]
        if outcome is AckOutcome.ACCEPT:
            tags = fitconnect.get("authenticationTags") if isinstance(fitconnect, dict) else None
            if not isinstance(tags, dict):
                return AckResult(False, "no authenticationTags stored: cannot accept", permanent=True)
            event, payload = ACCEPT_SUBMISSION, {"authenticationTags": tags}
        else:
            event, payload = REJECT_SUBMISSION, {"problems": upstream_problems(problems)}
        signing = self.options.signing_key
        token = build_set(
            issuer=self.options.destination_id,
            submission_id=submission_id,
            case_id=case_id,
            event=event,
            payload=payload,
            key=signing.key,
            kid=signing.kid,
        )
        try:
            status, body = await self.api.post_event(case_id, token)
        except ApiError as exc:
            return AckResult(False, f"posting the SET failed: {exc.detail}")
        if 200 <= status < 300:
            log.info(
                "fitconnect_ack_posted", source=self.options.name, submission_id=submission_id, outcome=outcome.value
            )
            return AckResult(True, f"{event.rsplit('/', 1)[-1]} recorded by the Zustelldienst")
        if status == 409:
            return await self.reconcile(submission_id, case_id, outcome)
        summary = error_summary(body)
        if status in (404, 422):
            log.error(
                "fitconnect_ack_refused",
                source=self.options.name,
                submission_id=submission_id,
                status=status,
                reason=summary,
            )
            return AckResult(False, f"Zustelldienst refused the SET (HTTP {status}: {summary})", permanent=True)
        return AckResult(False, f"Zustelldienst answered HTTP {status} ({summary})")

    async def reconcile(self, submission_id: str, case_id: str, outcome: AckOutcome) -> AckResult:
        """After 409: what does the event log say happened to the submission?"""
        try:
            event_log = await fetch_event_log(self.api, self.keys, case_id)
        except ApiError as exc:
            return AckResult(False, f"409, and the event log cannot be read: {exc.detail}")
        except LogProblem as exc:
            return AckResult(False, f"409, and the event log is invalid: {exc.problem.detail}", permanent=True)
        final = event_log.outcome(submission_id)
        if final is None:
            return AckResult(False, "409, but the event log shows no accept/reject yet")
        ours = final.issuer == self.options.destination_id
        accepted = final.event == ACCEPT_SUBMISSION
        if ours and accepted == (outcome is AckOutcome.ACCEPT):
            return AckResult(
                True, f"already {'accepted' if accepted else 'rejected'} upstream (reconciled from the event log)"
            )
        if not accepted and is_zsd_issuer(final.issuer):
            if outcome is AckOutcome.ACCEPT:
                log.warning(
                    "fitconnect_auto_rejected_after_delivery",
                    source=self.options.name,
                    submission_id=submission_id,
                    reason="delivered, but the Zustelldienst rejected it (collection period expired)",
                )
            return AckResult(
                True,
                "rejected by the Zustelldienst itself (automatic rejection after the collection period)",
                permanent=True,
            )
        who = "this destination" if ours else ("the Zustelldienst" if is_zsd_issuer(final.issuer) else "another issuer")
        what = "accepted" if accepted else "rejected"
        log.warning(
            "fitconnect_outcome_conflict",
            source=self.options.name,
            submission_id=submission_id,
            outcome=outcome.value,
            state=what,
        )
        return AckResult(True, f"upstream already {what} by {who}; {outcome.value} not possible", permanent=True)
