"""THE profile of the FIT-Connect reply API (Rückkanal, "BiDiKo"): every wire shape in one place.

No specification we have defines the reply endpoints, their bodies and status codes, or the payloads
of the reply events (digest §2.8, §10; research note ``replies-bundid.md`` §1.2, §7). What *is*
confirmed is small: the applicant's key and process standards in the submission metadata
(``replyChannel.fitConnect``, schema 2.1.0), the reply event log endpoint, the event names and the
subject format. Everything else mirrors the submission flow, which is specified (OpenAPI 1.1.3):

    create reply (announced attachments)  -> upload attachments (JWE) -> submit (encrypted data +
    metadata) -> the Zustelldienst logs submit-reply with the authentication tags and calls the
    online service back -> the online service answers accept-reply / reject-reply (with problems)

This module is the only place these shapes exist. The reply channel (:mod:`gateway.channels.fitconnect`),
the sandbox Zustelldienst and the test online service (``gateway_sandbox``) all import it, so the
sandbox enforces exactly what the channel assumes, and correcting a shape against the official spec
is a change here (plus the behaviour that depends on it). Each assumption is listed in
:data:`ASSUMPTIONS` with its source; ``docs/fitconnect-replies.md`` lists them too (a test keeps the
two in step).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from gateway.fitconnect.callbacks import CALLBACK_NEW_EVENTS, CALLBACK_PREFIX
from gateway.fitconnect.jose import sign_jws
from gateway.fitconnect.metadata import AttachmentSpec, build_metadata
from gateway.fitconnect.sets import EVENT_PREFIX, SET_SCHEMA_URI, SET_TYP


@dataclass(frozen=True, slots=True)
class Assumption:
    key: str  # stable name; docs/fitconnect-replies.md has a row for each
    statement: str
    source: str  # where it comes from: a spec, a research note section, or "mirrors <submission shape>"
    confirmed: bool = False  # True only when a primary source (spec, official schema) says so


# fmt: off
ASSUMPTIONS: tuple[Assumption, ...] = (
    # -- confirmed ---------------------------------------------------------------------------------
    Assumption("reply-key-in-metadata",
               "The applicant's reply key is replyChannel.fitConnect.encryptionPublicKey of the submission "
               "metadata: a JWK with kty RSA, alg RSA-OAEP-256, key_ops items wrapKey, kid of 8-64 characters, "
               "n of at least 683 characters (4096 bit), e AQAB; no x5c (no certificate chain).",
               "metadata schema 2.1.0 (../shared/fitconnect/metadata-2.1.0.schema.json); research note §1.2 [V], "
               "[3P] for the missing x5c", confirmed=True),
    Assumption("process-standards-in-metadata",
               "replyChannel.fitConnect.processStandards is a non-empty list of URIs naming the data exchange "
               "standards (with version) the online service can receive, e.g. urn:xoev-de:bmk:standard:xbau_2.4.",
               "metadata schema 2.1.0; research note §1.2 [V]", confirmed=True),
    Assumption("reply-event-log",
               "GET {prefix}/replies/{replyId}/events returns the events of that reply only; the online service "
               "of the case and the destination may read it.",
               "research note §1.2 (FITKO planning #2089) [V]; body shape mirrors EventLog of OpenAPI 1.1.3",
               confirmed=True),
    Assumption("reply-event-names",
               "The reply events are submit-reply, accept-reply and reject-reply under "
               "https://schema.fitko.de/fit-connect/events/.",
               "digest §2.5 event table [V names]", confirmed=True),
    Assumption("reply-subject",
               "SETs about a reply have sub = reply:<replyId> and txn = case:<caseId>.",
               "digest §2.5, §3.3 [V pattern]", confirmed=True),
    # -- endpoints, bodies, status codes (mirroring the submission endpoints) -----------------------
    Assumption("create-endpoint",
               "POST {prefix}/replies with {caseId, announcedAttachments, replyId} creates a reply in the case "
               "-> 201 {replyId, caseId, destinationId}; 404 for an unknown case; 422 when the case's "
               "destination does not offer the fitConnect reply channel.",
               "research note §1.2 (likely shape); mirrors POST /submissions -> 201 SubmissionCreated"),
    Assumption("client-chosen-reply-id",
               "The creator may choose the replyId (a UUID). Creating a reply whose id exists answers 409 with "
               "problem type reply-already-exists; a reply deleted while incomplete is forgotten (its id is "
               "free again). The gateway relies on this for idempotent sending.",
               "none: chosen for idempotency (announcedAttachments ids are client-chosen in CreateSubmission)"),
    Assumption("upload-endpoint",
               "PUT {prefix}/replies/{replyId}/attachments/{attachmentId} with a compact JWE (application/jose) "
               "-> 204; overwriting is allowed; 422 for an attachment that was not announced or a reply that is "
               "no longer incomplete; 415 for another content type.",
               "mirrors PUT /submissions/{id}/attachments/{id} (OpenAPI 1.1.3)"),
    Assumption("submit-endpoint",
               "PUT {prefix}/replies/{replyId} with {encryptedMetadata, encryptedData?} -> 200 ReplyReduced "
               "{replyId, caseId, destinationId, attachments}; 422 when announced attachments are missing or "
               "the reply is no longer incomplete (problem reply-state-invalid). A client also accepts 202.",
               "research note §1.2 (200); mirrors PUT /submissions/{id} (202 in v1, 200 in v2)"),
    Assumption("reply-view",
               "GET {prefix}/replies/{replyId} returns the reply with its status (incomplete, submitted, "
               "accepted, rejected) to its creator and, once submitted, to the online service; while it is "
               "submitted it includes encryptedMetadata/encryptedData, after accept/reject the content is gone.",
               "research note §1.2 (GET /v2/replies/{id}); mirrors GET /submissions/{id}; the status field is an "
               "addition for idempotent resumption"),
    Assumption("reply-listing",
               "GET {prefix}/replies?limit&offset lists the submitted replies for the cases the calling online "
               "service opened: {count, offset, totalCount, replies: [{replyId, caseId, destinationId}]}.",
               "research note §1.2 (GET /v2/replies?...); mirrors SubmissionsForPickup"),
    Assumption("reply-attachment-download",
               "GET {prefix}/replies/{replyId}/attachments/{attachmentId} returns the attachment JWE "
               "(application/jose) to the online service while the reply is submitted.",
               "mirrors GET /submissions/{id}/attachments/{id}"),
    Assumption("decision-endpoint",
               "The online service answers with POST {prefix}/replies/{replyId}/events, JSON "
               "{event: <accept-reply URI>, authenticationTags} or {event: <reject-reply URI>, problems} -> 204; "
               "409 invalid-state-transition when the reply is not submitted; 422 when accept repeats other "
               "authenticationTags than submit-reply recorded. The Zustelldienst records the decision as its "
               "own SET (iss = the Zustelldienst), signed with the key of its JWKS.",
               "research note §1.2 guesses POST /cases/{caseId}/events with a SET; an online service holds no "
               "key the Zustelldienst knows (the metadata carries only the encryption key, OAuth uses client "
               "secrets), so a SET it signed could not be verified by anyone. Chosen so that the destination "
               "verifies accept-reply like submit-submission (ZSD JWKS)"),
    # -- events and their payloads -----------------------------------------------------------------
    Assumption("submit-reply-payload",
               "On submit the Zustelldienst logs submit-reply with {authenticationTags: {metadata, data?, "
               "attachments: {id: tag}}} (the 5th segments of the JWEs), issued by the Zustelldienst.",
               "research note §1.2; mirrors submit-submission (digest §2.5)"),
    Assumption("accept-reply-payload",
               "accept-reply carries {authenticationTags} exactly as submit-reply recorded them.",
               "mirrors accept-submission (digest §3.3)"),
    Assumption("reject-reply-payload",
               "reject-reply carries {problems: [{type, title, detail?, instance?}, ...]} (non-empty) with "
               "types from the reject-submission catalogue (encryption-issue, incorrect-authentication-tag, "
               "hash-mismatch, ...).",
               "mirrors reject-submission (digest §3.3); catalogue gateway/fitconnect/problems.py [M]"),
    Assumption("reply-events-in-case-log",
               "Reply events also appear in the case's log (GET /cases/{caseId}/events), among the submission "
               "events.",
               "none: a case log holds the events of the case (digest §2.5); harmless for subscribers, which "
               "filter by sub"),
    Assumption("reply-auto-reject",
               "An incomplete reply is deleted after the period for incomplete submissions; a submitted reply "
               "the online service does not answer is rejected by the Zustelldienst (reject-reply, iss = ZSD, "
               "problem technical-error) after the collection period of submissions.",
               "mirrors the submission periods (digest §2.4)"),
    # -- callbacks ---------------------------------------------------------------------------------
    Assumption("new-replies-callback",
               "After submit-reply the Zustelldienst POSTs a callback of type "
               "https://schema.fitko.de/fit-connect/submission-api/callbacks/new-replies with {type, replies: "
               "[{replyId, caseId, destinationId}]} to the callback the online service gave when it created "
               "the case's submission (HMAC as for every callback).",
               "digest §2.6 callback table [V that NEW_REPLIES exists, M URI]; body mirrors new-submissions"),
    Assumption("reply-events-callback",
               "After accept-reply/reject-reply the destination's callback receives type new-events with "
               "{type, replies: [{replyId, caseId, destinationId}]}.",
               "mirrors new-events to the sender after accept-/reject-submission (digest §2.6)"),
    # -- destination, scopes, crypto ---------------------------------------------------------------
    Assumption("destination-offer",
               "A destination offers the reply channel with replyChannels.fitConnect = {processStandards: [...]} "
               "in its destination document.",
               "research note §1.2 (the SSP lists the fitConnect channel with its process standards) [V that it "
               "is listed, M shape]"),
    Assumption("scopes",
               "Creating, uploading, submitting a reply and reading its log need the destination's subscribe "
               "scope (subscribe:destination:<id> or the URI scope subscribe-destinations linked to it), like "
               "accept-/reject-submission; only the client that created a reply may upload and submit it. The "
               "online service needs a send scope and must have created a submission in the case.",
               "mirrors OpenAPI 1.1.3 scopes (digest §2.1) and the event log access rule of planning #2089"),
    Assumption("reply-jwe",
               "Metadata, data and each attachment of a reply are separate compact JWEs RSA-OAEP-256/A256GCM to "
               "the applicant's key, with kid (the key's kid) and cty, without zip.",
               "research note §1.2 (cty and kid, no zip); digest §3.1, §2.10"),
    Assumption("reply-metadata",
               "The reply's metadata is a metadata 2.1.0 document: contentStructure.data {hash, submissionSchema "
               "{schemaUri = the chosen process standard, mimeType}} and contentStructure.attachments, "
               "additionalReferenceInfo.senderReference = the gateway's answer id.",
               "none: mirrors the submission metadata; the process standard is what both sides agreed to speak"),
    Assumption("answer-document",
               "An answer without a data document of its own (a status note, a text) travels as the data part "
               "application/json {kind, bescheid, content} (the Fachverfahren's content object unchanged); an "
               "answer with data (e.g. an XBau message) sends that document as the data part.",
               "none: the gateway's own rendering; there is no reply data schema to follow"),
)
# fmt: on

ASSUMPTION_KEYS = frozenset(a.key for a in ASSUMPTIONS)

# -- endpoints (paths below the API generation's prefix, e.g. /v1 or /v2) ---------------------------

REPLIES = "/replies"  # POST create (destination) / GET listing (online service)
REPLY = "/replies/{replyId}"  # PUT submit (destination) / GET (both)
REPLY_ATTACHMENT = "/replies/{replyId}/attachments/{attachmentId}"  # PUT upload / GET download
REPLY_EVENTS = "/replies/{replyId}/events"  # GET log (both) / POST decision (online service)

CREATE_STATUS = 201
UPLOAD_STATUS = 204
SUBMIT_STATUSES = (200, 202)  # the sandbox answers 200
SUBMIT_STATUS = 200
DECISION_STATUS = 204

# Problem types (last path segment under the Submission API's problem prefix) a client acts on.
PROBLEM_REPLY_EXISTS = "reply-already-exists"  # 409 on create: resume the existing reply
PROBLEM_REPLY_STATE = "reply-state-invalid"  # 422 on upload/submit: the reply is no longer incomplete
PROBLEM_NOT_OFFERED = "reply-channel-not-offered"  # 422 on create

REPLY_STATUSES = ("incomplete", "submitted", "accepted", "rejected")

# -- events ----------------------------------------------------------------------------------------

SUBMIT_REPLY = EVENT_PREFIX + "submit-reply"
ACCEPT_REPLY = EVENT_PREFIX + "accept-reply"
REJECT_REPLY = EVENT_PREFIX + "reject-reply"
DECISIONS = (ACCEPT_REPLY, REJECT_REPLY)

# -- callbacks -------------------------------------------------------------------------------------

CALLBACK_NEW_REPLIES = CALLBACK_PREFIX + "new-replies"  # to the online service, after submit-reply
CALLBACK_REPLY_EVENTS = CALLBACK_NEW_EVENTS  # to the destination, after accept-/reject-reply

# -- metadata of a reply ---------------------------------------------------------------------------

REPLY_METADATA_VERSION = "2.1.0"
REPLY_CHANNEL = "fitConnect"  # the key in the submission metadata's replyChannel

# Scopes, as the sandbox enforces them (see ASSUMPTIONS["scopes"]).
SUBSCRIBE_SCOPE = "subscribe:destination:{destinationId}"


def path(template: str, **ids: str) -> str:
    """A path from one of the templates above, e.g. ``path(REPLY, replyId=...)``."""
    return template.format(**ids)


def create_body(*, case_id: str, reply_id: str, announced_attachments: Sequence[str]) -> dict[str, Any]:
    return {"caseId": case_id, "replyId": reply_id, "announcedAttachments": list(announced_attachments)}


def created_body(*, reply_id: str, case_id: str, destination_id: str) -> dict[str, str]:
    return {"replyId": reply_id, "caseId": case_id, "destinationId": destination_id}


def submit_body(*, encrypted_metadata: str, encrypted_data: str | None) -> dict[str, str]:
    body = {"encryptedMetadata": encrypted_metadata}
    if encrypted_data is not None:
        body["encryptedData"] = encrypted_data
    return body


def reply_item(*, reply_id: str, case_id: str, destination_id: str) -> dict[str, str]:
    """One entry of the listing and of callback bodies."""
    return created_body(reply_id=reply_id, case_id=case_id, destination_id=destination_id)


def decision_body(event: str, *, authentication_tags: Mapping[str, Any] | None = None,
                  problems: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:  # fmt: skip
    """The online service's answer (see ASSUMPTIONS["decision-endpoint"])."""
    if event == ACCEPT_REPLY:
        if authentication_tags is None:
            raise ValueError("accept-reply needs the authenticationTags of submit-reply")
        return {"event": event, "authenticationTags": dict(authentication_tags)}
    if event == REJECT_REPLY:
        if not problems:
            raise ValueError("reject-reply needs at least one problem")
        return {"event": event, "problems": [dict(p) for p in problems]}
    raise ValueError(f"{event} is not a decision on a reply")


def callback_body(callback_type: str, replies: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    return {"type": callback_type, "replies": [dict(r) for r in replies]}


def callback_reply_ids(body: Any) -> list[str]:
    """The reply ids a callback body names (lowercase UUIDs; anything else is ignored): a hint whom to
    poll first, never trusted beyond that."""
    items = body.get("replies") if isinstance(body, dict) else None
    out: list[str] = []
    for item in items if isinstance(items, list) else []:
        raw = item.get("replyId") if isinstance(item, dict) else None
        try:
            out.append(str(uuid.UUID(raw)))
        except (TypeError, ValueError, AttributeError):
            continue
    return out


def authentication_tags(*, metadata: str, data: str | None, attachments: Mapping[str, str]) -> dict[str, Any]:
    """The ``authenticationTags`` object of submit-reply/accept-reply (tags = 5th JWE segments)."""
    tags: dict[str, Any] = {"metadata": metadata}
    if data is not None:
        tags["data"] = data
    tags["attachments"] = {k.lower(): v for k, v in attachments.items()}
    return tags


def tags_problem(tags: Any) -> str | None:
    """Why ``tags`` is not a well-formed ``authenticationTags`` object (None when it is)."""
    if not isinstance(tags, dict):
        return "authenticationTags is missing or not an object"
    if not isinstance(tags.get("metadata"), str) or not tags["metadata"]:
        return "authenticationTags has no metadata tag"
    if "data" in tags and not isinstance(tags["data"], str):
        return "authenticationTags.data is not a string"
    attachments = tags.get("attachments", {})
    if not isinstance(attachments, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in attachments.items()
    ):
        return "authenticationTags.attachments is not an id -> tag object"
    return None


def same_tags(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Equal ``authenticationTags`` (attachment ids compared case-insensitively)."""

    def norm(tags: Mapping[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
        attachments = {str(k).lower(): v for k, v in (tags.get("attachments") or {}).items()}
        return tags.get("metadata"), tags.get("data"), attachments

    return norm(a) == norm(b)


def reply_set(
    *,
    issuer: str,
    reply_id: str,
    case_id: str,
    event: str,
    payload: Mapping[str, Any],
    key: RSAPrivateKey,
    kid: str,
    iat: int | None = None,
    jti: str | None = None,
) -> str:
    """A compact PS512 SET about a reply (``sub = reply:<id>``); the Zustelldienst issues these."""
    claims = {
        "$schema": SET_SCHEMA_URI,
        "jti": jti or str(uuid.uuid4()),
        "iss": issuer,
        "iat": int(time.time()) if iat is None else iat,
        "sub": f"reply:{reply_id.lower()}",
        "txn": f"case:{case_id.lower()}",
        "events": {event: dict(payload)},
    }
    return sign_jws(claims, key, kid=kid, typ=SET_TYP)


def reply_metadata(
    *,
    data_sha512: str,
    process_standard: str,
    data_mime_type: str,
    attachments: Sequence[AttachmentSpec],
    sender_reference: str,
) -> dict[str, Any]:
    """The reply's metadata document (see ASSUMPTIONS["reply-metadata"])."""
    metadata = build_metadata(
        version=REPLY_METADATA_VERSION,
        service_identifier="",  # 2.x carries no service in the metadata
        service_name="",
        data_sha512=data_sha512,
        data_schema_uri=process_standard,
        data_mime_type=data_mime_type,
        attachments=attachments,
    )
    metadata["additionalReferenceInfo"] = {"senderReference": sender_reference}
    return metadata


def answer_document(*, kind: str, bescheid: bool, content: Mapping[str, Any]) -> bytes:
    """The data part of an answer without a document of its own (see ASSUMPTIONS["answer-document"])."""
    body = {"kind": kind, "bescheid": bescheid, "content": dict(content)}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")


def destination_offer(destination: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The process standards a destination document offers for fitConnect replies: ``None`` when it
    does not offer the channel, ``()`` when it offers it without naming standards."""
    channels = destination.get("replyChannels")
    offer = channels.get(REPLY_CHANNEL) if isinstance(channels, dict) else None
    if not isinstance(offer, dict):
        return None
    standards = offer.get("processStandards")
    if isinstance(standards, list):
        return tuple(s for s in standards if isinstance(s, str))
    return ()
