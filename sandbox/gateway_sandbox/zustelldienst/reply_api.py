"""The reply endpoints (``/v1/replies…``, ``/v2/replies…``), exactly as the gateway's reply profile
(:mod:`gateway.fitconnect.replies`) assumes them. Domain logic: :mod:`.replies`."""

from __future__ import annotations

from aiohttp import web

from gateway.fitconnect import replies as rp
from gateway_sandbox.zustelldienst.api import (
    JOSE,
    json_response,
    page_params,
    read_encrypted_parts,
    request_grant,
    request_profile,
    sandbox_of,
    upload_jwe,
)
from gateway_sandbox.zustelldienst.problems import bad_request
from gateway_sandbox.zustelldienst.validation import (
    announced_attachments,
    path_uuid,
    read_json_object,
    require_content_type,
    uuid_field,
)

versioned = web.RouteTableDef()  # paths without the /v1 or /v2 prefix


@versioned.post(rp.REPLIES)
async def create_reply(request: web.Request) -> web.Response:
    request_profile(request)
    grant = request_grant(request)
    sandbox = sandbox_of(request)
    body = await read_json_object(request, sandbox.config.limits.max_json_bytes, content_type_status=400)
    case_id = uuid_field(body, "caseId")
    if "announcedAttachments" not in body:
        raise bad_request("announcedAttachments is required (may be empty)")
    announced = announced_attachments(body["announcedAttachments"], sandbox.config.limits.max_attachments)
    reply_id = uuid_field(body, "replyId", required=False)
    assert case_id is not None
    reply = sandbox.replies.create(grant, case_id=case_id, reply_id=reply_id, announced=announced)
    return json_response(
        rp.created_body(reply_id=reply.id, case_id=reply.case_id, destination_id=reply.destination_id),
        status=rp.CREATE_STATUS,
    )


@versioned.get(rp.REPLIES)
async def list_replies(request: web.Request) -> web.Response:
    request_profile(request)
    grant = request_grant(request)
    limit, offset = page_params(request)
    return json_response(sandbox_of(request).replies.listing(grant, limit, offset))


@versioned.get(rp.REPLY)
async def get_reply(request: web.Request) -> web.Response:
    request_profile(request)
    grant = request_grant(request)
    reply_id = path_uuid(request, "replyId", status=404)
    return json_response(sandbox_of(request).replies.view(grant, reply_id))


@versioned.put(rp.REPLY_ATTACHMENT)
async def put_reply_attachment(request: web.Request) -> web.Response:
    profile = request_profile(request)
    grant = request_grant(request)
    desk = sandbox_of(request).replies
    reply_id = path_uuid(request, "replyId")
    attachment_id = path_uuid(request, "attachmentId")
    reply = desk.own_reply(grant, reply_id)
    require_content_type(request, JOSE)
    desk.check_upload(grant, reply_id, attachment_id)
    tag = await upload_jwe(
        request, profile, reply.id, attachment_id, lambda: desk.check_upload(grant, reply_id, attachment_id)
    )
    desk.record_upload(reply, attachment_id, tag)
    return web.Response(status=rp.UPLOAD_STATUS)


@versioned.put(rp.REPLY)
async def submit_reply(request: web.Request) -> web.Response:
    profile = request_profile(request)
    grant = request_grant(request)
    desk = sandbox_of(request).replies
    reply_id = path_uuid(request, "replyId")
    desk.own_reply(grant, reply_id)
    metadata, data, tags = await read_encrypted_parts(request, profile)
    reply = desk.submit(grant, reply_id, metadata=metadata, data=data, tags=tags)
    out = reply.reduced()
    del out["status"]
    return json_response(out, status=rp.SUBMIT_STATUS)


@versioned.get(rp.REPLY_ATTACHMENT)
async def get_reply_attachment(request: web.Request) -> web.StreamResponse:
    request_profile(request)
    grant = request_grant(request)
    reply_id = path_uuid(request, "replyId", status=404)
    attachment_id = path_uuid(request, "attachmentId", status=404)
    file = sandbox_of(request).replies.attachment_path(grant, reply_id, attachment_id)
    return web.FileResponse(file, headers={"Content-Type": JOSE})


@versioned.get(rp.REPLY_EVENTS)
async def get_reply_events(request: web.Request) -> web.Response:
    request_profile(request)
    grant = request_grant(request)
    reply_id = path_uuid(request, "replyId", status=404)
    limit, offset = page_params(request)
    return json_response(sandbox_of(request).replies.event_log(grant, reply_id, limit, offset))


@versioned.post(rp.REPLY_EVENTS)
async def post_reply_decision(request: web.Request) -> web.Response:
    request_profile(request)
    grant = request_grant(request)
    sandbox = sandbox_of(request)
    reply_id = path_uuid(request, "replyId", status=404)
    body = await read_json_object(request, sandbox.config.limits.max_event_bytes, content_type_status=400)
    sandbox.replies.decide(grant, reply_id, body)
    return web.Response(status=rp.DECISION_STATUS)
