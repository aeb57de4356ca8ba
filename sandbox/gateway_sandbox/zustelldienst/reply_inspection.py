"""Inspection API for replies (``/_sandbox/...``, sandbox only): what the destination sent and what the
applicant received.

The Zustelldienst cannot read replies (they are encrypted to the online service's key). The test
online service (:class:`gateway_sandbox.online_service.replies.OnlineService`) reports each reply it
processed, decrypted, with its decision (``PUT /_sandbox/replies/{replyId}/received``); these views
show that report next to the Zustelldienst's own record and event log.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.fitconnect.jose import parse_jws
from gateway_sandbox.zustelldienst.appkeys import SANDBOX
from gateway_sandbox.zustelldienst.inspection import PREFIX
from gateway_sandbox.zustelldienst.problems import bad_request
from gateway_sandbox.zustelldienst.replies import REPLY_TAMPER_MODES
from gateway_sandbox.zustelldienst.service import Sandbox
from gateway_sandbox.zustelldienst.state import ReplyRecord
from gateway_sandbox.zustelldienst.validation import path_uuid, read_json_object

routes = web.RouteTableDef()
MAX_RECEIVED_BYTES = 64 << 20  # the report carries the decrypted contents (base64)


def reply_view(sandbox: Sandbox, reply: ReplyRecord) -> dict[str, Any]:
    events = []
    for e in sandbox.state.reply_events(reply.id):
        claims = parse_jws(e.token).payload
        events.append({"event": e.event, "claims": claims, "recordedAt": e.recorded_at})
    return {
        **reply.reduced(),
        "clientId": reply.client_id,
        "announcedAttachments": list(reply.announced),
        "createdAt": reply.created_at,
        "submittedAt": reply.submitted_at,
        "closedAt": reply.closed_at,
        "authenticationTags": reply.tags if reply.status != "incomplete" else None,
        "events": events,
        "received": sandbox.state.received.get(reply.id),
    }


@routes.get(PREFIX + "/cases/{caseId}/replies")
async def case_replies(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    case = sandbox.case(path_uuid(request, "caseId", status=404))
    replies = sorted((r for r in sandbox.state.replies.values() if r.case_id == case.id), key=lambda r: r.created_at)
    return web.json_response({"caseId": case.id, "replies": [reply_view(sandbox, r) for r in replies]})


@routes.get(PREFIX + "/replies/{replyId}")
async def one_reply(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    reply = sandbox.replies.reply(path_uuid(request, "replyId", status=404))
    return web.json_response(reply_view(sandbox, reply))


@routes.put(PREFIX + "/replies/{replyId}/received")
async def report_received(request: web.Request) -> web.Response:
    """The test online service's report of what the applicant received (idempotent: replaced)."""
    sandbox = request.app[SANDBOX]
    reply = sandbox.replies.reply(path_uuid(request, "replyId", status=404))
    body = await read_json_object(request, MAX_RECEIVED_BYTES, content_type_status=400)
    sandbox.state.received[reply.id] = body
    sandbox.save()
    return web.Response(status=204)


@routes.post(PREFIX + "/replies/{replyId}/tamper")
async def tamper_reply(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    reply_id = path_uuid(request, "replyId", status=404)
    body = await read_json_object(request, sandbox.config.limits.max_json_bytes, content_type_status=400)
    mode = body.get("mode")
    if mode not in REPLY_TAMPER_MODES:
        raise bad_request(f"mode must be one of {', '.join(REPLY_TAMPER_MODES)}")
    part = body.get("part")
    if part is not None and not isinstance(part, str):
        raise bad_request("part must be a string")
    sandbox.replies.tamper(reply_id, mode, part)
    return web.Response(status=204)
