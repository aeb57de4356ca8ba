"""Submission API v1 (OpenAPI 1.1.3), the optional v2 profile and the OAuth token endpoint.

Versioned handlers are registered once per enabled profile (``/v1/...``, ``/v2/...``) and ask
:func:`_profile` which generation a request uses; see :mod:`.profiles` for what differs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web

from gateway_sandbox.zustelldienst.appkeys import SANDBOX
from gateway_sandbox.zustelldienst.blobs import JWEScanner, JWEShapeError, PayloadTooLarge, check_compact_jwe
from gateway_sandbox.zustelldienst.config import REGION_RE
from gateway_sandbox.zustelldienst.problems import ProblemError, bad_request
from gateway_sandbox.zustelldienst.profiles import PROFILES, V1, Profile
from gateway_sandbox.zustelldienst.scopes import Grant
from gateway_sandbox.zustelldienst.service import Sandbox, private_destination, public_destination
from gateway_sandbox.zustelldienst.tokens import InvalidToken, OAuthError
from gateway_sandbox.zustelldienst.validation import (
    READ_CHUNK,
    announced_attachments,
    contact_information,
    create_callback,
    destination_services,
    destination_status,
    metadata_versions,
    path_uuid,
    query_int,
    read_json_object,
    read_limited,
    reply_channels,
    require_content_type,
    service_type,
    string_field,
    too_large,
    uuid_field,
)

API_VERSION = {"major": 1, "minor": 1, "patch": 3}
NO_CACHE = {"Cache-Control": "no-cache"}
JOSE = "application/jose"
DEFAULT_LIMIT = 100
MAX_LIMIT = 500
TOKEN_BODY_LIMIT = 16 * 1024

routes = web.RouteTableDef()  # unversioned: token endpoint, JWKS
versioned = web.RouteTableDef()  # paths without the /v1 or /v2 prefix
V2_ONLY = {"/submissions/{submissionId}/events"}


def add_api_routes(app: web.Application, versions: tuple[str, ...], extra: Sequence[web.RouteTableDef] = ()) -> None:
    """The token endpoint, the JWKS and, once per enabled API generation, the versioned routes of this
    module and of ``extra`` tables (the reply endpoints)."""
    app.add_routes(routes)
    for name in versions:
        profile = PROFILES[name]
        for route in [r for table in (versioned, *extra) for r in table]:
            assert isinstance(route, web.RouteDef)
            if route.path in V2_ONLY and profile is V1:
                continue
            app.router.add_route(route.method, profile.prefix + route.path, route.handler, **route.kwargs)


def request_profile(request: web.Request) -> Profile:
    """The request's API generation; v2 refuses requests without User-Agent like the real bot filter."""
    path = request.match_info.route.resource.canonical if request.match_info.route.resource else request.path
    profile = PROFILES["v2"] if path.startswith("/v2/") else V1
    if profile.require_user_agent and not request.headers.get("User-Agent", "").strip():
        raise ProblemError(403, "forbidden", "a User-Agent header is required")
    return profile


def sandbox_of(request: web.Request) -> Sandbox:
    return request.app[SANDBOX]


def request_grant(request: web.Request) -> Grant:
    try:
        return sandbox_of(request).tokens.grant(request.headers.get("Authorization"))
    except InvalidToken as exc:
        raise ProblemError(
            401,
            "unauthorized",
            str(exc),
            headers={"WWW-Authenticate": 'Bearer realm="fit-connect-sandbox", error="invalid_token"'},
        ) from None


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers, dumps=lambda v: json.dumps(v, ensure_ascii=False))


def page_params(request: web.Request) -> tuple[int, int]:
    return query_int(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT), query_int(request, "offset", 0, 0)


# --------------------------------------------------------------------------------------------------
# OAuth token endpoint (RFC 6749 §4.4), form body or HTTP Basic


def _oauth_error(exc: OAuthError) -> web.Response:
    headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="fit-connect-sandbox"'
    return web.json_response(
        {"error": exc.code, "error_description": exc.description}, status=exc.status, headers=headers
    )


@routes.post("/token")
async def token(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    try:
        if request.content_type != "application/x-www-form-urlencoded":
            raise OAuthError(400, "invalid_request", "Content-Type must be application/x-www-form-urlencoded")
        try:
            raw = await read_limited(request, TOKEN_BODY_LIMIT)
        except ProblemError:
            raise OAuthError(400, "invalid_request", "request body too large") from None
        try:
            params = parse_qs(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(raw))
        except (UnicodeDecodeError, ValueError):
            raise OAuthError(400, "invalid_request", "body is not application/x-www-form-urlencoded") from None
        repeated = [k for k, v in params.items() if len(v) > 1]
        if repeated:
            raise OAuthError(400, "invalid_request", f"parameter repeated: {', '.join(repeated)}")
        form = {k: v[0] for k, v in params.items()}
        issued = sandbox.tokens.issue(
            form=form, authorization=request.headers.get("Authorization"), issuer=sandbox.base_url
        )
    except OAuthError as exc:
        return _oauth_error(exc)
    return web.json_response(
        {
            "access_token": issued.access_token,
            "token_type": "Bearer",
            "expires_in": issued.expires_in,
            "scope": issued.scope,
        },
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


# --------------------------------------------------------------------------------------------------
# Technical


@versioned.get("/info")
async def info(request: web.Request) -> web.Response:
    request_profile(request)
    return json_response({"version": API_VERSION})


@routes.get("/.well-known/jwks.json")
async def jwks(request: web.Request) -> web.Response:
    return json_response(sandbox_of(request).zsd.jwks())


# --------------------------------------------------------------------------------------------------
# Destinations


@versioned.get("/destinations")
async def list_destinations(request: web.Request) -> web.Response:
    profile = request_profile(request)
    grant = request_grant(request)
    sandbox = sandbox_of(request)
    mine = sorted(grant.subscribed | grant.managed)
    if not mine:
        raise ProblemError(403, "forbidden", "token has no subscribe or manage scope")
    limit, offset = page_params(request)
    known = [sandbox.state.destinations[d] for d in mine if d in sandbox.state.destinations]
    page = known[offset : offset + limit]
    return json_response(
        {
            "count": len(page),
            "offset": offset,
            "totalCount": len(known),
            "destinations": [private_destination(d, profile.services_field) for d in page],
        },
        headers=NO_CACHE,
    )


@versioned.get("/destinations/{destinationId}")
async def get_destination(request: web.Request) -> web.Response:
    profile = request_profile(request)
    grant = request_grant(request)
    destination_id = path_uuid(request, "destinationId", status=404)
    dest = sandbox_of(request).destination(destination_id)
    if grant.can_subscribe(dest.id) or grant.can_manage(dest.id):
        return json_response(private_destination(dest, profile.services_field), headers=NO_CACHE)
    if grant.can_send_to(dest):
        return json_response(public_destination(dest, profile.services_field), headers=NO_CACHE)
    raise ProblemError(403, "forbidden", "no scope of the token covers this destination")


@versioned.patch("/destinations/{destinationId}")
async def patch_destination(request: web.Request) -> web.Response:
    profile = request_profile(request)
    grant = request_grant(request)
    sandbox = sandbox_of(request)
    destination_id = path_uuid(request, "destinationId")
    sandbox.destination(destination_id)
    if not grant.can_manage(destination_id):
        raise ProblemError(403, "forbidden", "token has no manage scope for this destination")
    body = await read_json_object(request, sandbox.config.limits.max_json_bytes, content_type_status=400)
    changes: dict[str, Any] = {}
    if "status" in body:
        changes["status"] = destination_status(body["status"], allow_created=False)
    if "contactInformation" in body:
        changes["contact_information"] = contact_information(body["contactInformation"])
    if profile.services_field in body:
        changes["services"] = destination_services(body[profile.services_field])
    if "callback" in body:
        from gateway_sandbox.zustelldienst.config import CallbackConfig

        url, secret = create_callback(body["callback"], allow_insecure=sandbox.config.allow_insecure_callbacks)
        changes["callback"] = CallbackConfig(url, secret)
    if "encryptionKid" in body:
        changes["encryption_kid"] = string_field(body, "encryptionKid", min_len=1, max_len=64)
    if "replyChannels" in body:
        changes["reply_channels"] = reply_channels(body["replyChannels"])
    if "metadataVersions" in body:
        changes["metadata_versions"] = metadata_versions(body["metadataVersions"])
    dest = sandbox.update_destination(destination_id, **changes)
    return json_response(private_destination(dest, profile.services_field), headers=NO_CACHE)


@versioned.post("/destinations/{destinationId}/keys")
async def add_destination_key(request: web.Request) -> web.Response:
    profile = request_profile(request)
    grant = request_grant(request)
    sandbox = sandbox_of(request)
    destination_id = path_uuid(request, "destinationId")
    sandbox.destination(destination_id)
    if not grant.can_manage(destination_id):
        raise ProblemError(403, "forbidden", "token has no manage scope for this destination")
    jwk = await read_json_object(request, sandbox.config.limits.max_json_bytes, content_type_status=400)
    sandbox.add_key(destination_id, jwk)
    location = f"{profile.prefix}/destinations/{destination_id}/keys/{jwk['kid']}"
    return web.Response(status=201, headers={"Location": location, **NO_CACHE})


@versioned.get("/destinations/{destinationId}/keys/{keyId}")
async def get_destination_key(request: web.Request) -> web.Response:
    # Public: the OpenAPI lists no security for this endpoint.
    request_profile(request)
    destination_id = path_uuid(request, "destinationId", status=404)
    jwk = sandbox_of(request).find_key(destination_id, request.match_info["keyId"])
    return json_response(jwk, headers=NO_CACHE)


# --------------------------------------------------------------------------------------------------
# Submissions (sender)


@versioned.post("/submissions")
async def create_submission(request: web.Request) -> web.Response:
    profile = request_profile(request)
    grant = request_grant(request)
    sandbox = sandbox_of(request)
    # The OpenAPI lists no 415 here: a wrong Content-Type is a Bad Request.
    body = await read_json_object(request, sandbox.config.limits.max_json_bytes, content_type_status=400)
    destination_id = uuid_field(body, "destinationId")
    if "announcedAttachments" not in body:
        raise bad_request("announcedAttachments is required (may be empty)")
    announced = announced_attachments(body["announcedAttachments"], sandbox.config.limits.max_attachments)
    field = profile.service_field
    if field not in body:
        raise bad_request(f"{field} is required")
    stype = service_type(body[field], field)
    if profile is not V1 and "region" in body:
        region = body["region"]
        if not isinstance(region, str) or not REGION_RE.match(region):
            raise bad_request("region must be DE followed by up to 12 digits")
    case_id = uuid_field(body, "caseId", required=False)
    callback = (
        create_callback(body["callback"], allow_insecure=sandbox.config.allow_insecure_callbacks)
        if "callback" in body
        else None
    )
    assert destination_id is not None
    sub = sandbox.create_submission(
        grant,
        destination_id=destination_id,
        announced=announced,
        service_type=stype,
        case_id=case_id,
        callback=callback,
    )
    if profile is V1:
        return json_response(
            {"destinationId": sub.destination_id, "submissionId": sub.id, "caseId": sub.case_id}, status=201
        )
    return json_response({"submissionId": sub.id, "caseId": sub.case_id}, status=201)


@versioned.put("/submissions/{submissionId}/attachments/{attachmentId}")
async def put_attachment(request: web.Request) -> web.Response:
    profile = request_profile(request)
    grant = request_grant(request)
    sandbox = sandbox_of(request)
    submission_id = path_uuid(request, "submissionId")
    attachment_id = path_uuid(request, "attachmentId")
    sub = sandbox.own_submission(grant, submission_id)
    require_content_type(request, JOSE)
    sandbox.check_attachment_upload(grant, submission_id, attachment_id)
    tag = await upload_jwe(
        request,
        profile,
        sub.id,
        attachment_id,
        lambda: sandbox.check_attachment_upload(grant, submission_id, attachment_id),
    )
    sandbox.record_attachment(sub, attachment_id, tag)
    return web.Response(status=204)


async def upload_jwe(
    request: web.Request, profile: Profile, store_id: str, attachment_id: str, recheck: Callable[[], object]
) -> str:
    """Stream an uploaded attachment JWE (of a submission or reply) to the blob store; returns its tag.

    ``recheck`` repeats the upload's preconditions after streaming: the submission or reply may have
    been submitted or deleted while the body came in.
    """
    sandbox = sandbox_of(request)
    limit = sandbox.config.limits.max_attachment_bytes
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)
    scanner = JWEScanner(
        check_profile=sandbox.config.check_jwe_profile, header_rules=_header_rules(profile, needs_cty=False)
    )
    try:
        _, tag = await sandbox.blobs.write_stream(
            store_id, f"attachment:{attachment_id}", request.content.iter_chunked(READ_CHUNK), scanner, limit
        )
    except PayloadTooLarge:
        raise too_large(limit) from None
    except JWEShapeError as exc:
        raise _jwe_problem(exc, "attachment") from None
    except FileNotFoundError:
        # The directory vanished mid-upload (deleted by a timer): answer for the new state.
        recheck()
        raise
    recheck()
    return tag


def _header_rules(profile: Profile, *, needs_cty: bool) -> tuple[str, ...]:
    if not profile.strict_jwe_headers:
        return ()
    return ("no-zip", "cty") if needs_cty else ("no-zip",)


def _jwe_problem(exc: JWEShapeError, what: str) -> ProblemError:
    if exc.code == "pattern":
        return bad_request(f"{what}: {exc.message}")
    return ProblemError(422, "invalid-jwe", f"{what}: {exc.message}")


@versioned.put("/submissions/{submissionId}")
async def submit_submission(request: web.Request) -> web.Response:
    profile = request_profile(request)
    grant = request_grant(request)
    sandbox = sandbox_of(request)
    submission_id = path_uuid(request, "submissionId")
    sandbox.own_submission(grant, submission_id)
    metadata, data, tags = await read_encrypted_parts(request, profile)
    sub = sandbox.submit(grant, submission_id, metadata=metadata, data=data, tags=tags)
    return json_response(sub.reduced(profile.service_field), status=profile.submit_status)


async def read_encrypted_parts(
    request: web.Request, profile: Profile
) -> tuple[str, str | None, tuple[str, str | None]]:
    """``{encryptedMetadata, encryptedData?}`` of a submit (submission or reply), each JWE shape-checked;
    returns both and their authentication tags."""
    sandbox = sandbox_of(request)
    body = await read_json_object(request, sandbox.config.limits.max_submit_bytes)
    metadata = string_field(body, "encryptedMetadata", min_len=1)
    data = string_field(body, "encryptedData", required=False, min_len=1)
    assert metadata is not None
    check_profile = sandbox.config.check_jwe_profile
    rules = _header_rules(profile, needs_cty=True)
    try:
        metadata_tag = check_compact_jwe(metadata, check_profile=check_profile, header_rules=rules)
    except JWEShapeError as exc:
        raise _jwe_problem(exc, "encryptedMetadata") from None
    data_tag = None
    if data is not None:
        try:
            data_tag = check_compact_jwe(data, check_profile=check_profile, header_rules=rules)
        except JWEShapeError as exc:
            raise _jwe_problem(exc, "encryptedData") from None
    return metadata, data, (metadata_tag, data_tag)


# --------------------------------------------------------------------------------------------------
# Submissions (subscriber)


@versioned.get("/submissions")
async def list_submissions(request: web.Request) -> web.Response:
    request_profile(request)
    grant = request_grant(request)
    destination_id = None
    if "destinationId" in request.query:
        destination_id = uuid_field(request.query, "destinationId")
    limit, offset = page_params(request)
    return json_response(sandbox_of(request).pickup(grant, destination_id, limit, offset))


@versioned.get("/submissions/{submissionId}")
async def get_submission(request: web.Request) -> web.Response:
    profile = request_profile(request)
    grant = request_grant(request)
    sandbox = sandbox_of(request)
    sub = sandbox.readable_submission(grant, path_uuid(request, "submissionId"))
    return json_response(sandbox.submission_view(sub, profile.service_field))


@versioned.get("/submissions/{submissionId}/attachments/{attachmentId}")
async def get_attachment(request: web.Request) -> web.StreamResponse:
    request_profile(request)
    grant = request_grant(request)
    sandbox = sandbox_of(request)
    sub = sandbox.readable_submission(grant, path_uuid(request, "submissionId"))
    attachment_id = path_uuid(request, "attachmentId")
    part = f"attachment:{attachment_id}"
    if attachment_id not in sub.uploaded or not sandbox.blobs.exists(sub.id, part):
        raise ProblemError(404, "attachment-not-found", f"submission has no attachment {attachment_id}")
    # Streamed from disk (sendfile where possible), never loaded whole.
    return web.FileResponse(sandbox.blobs.part_path(sub.id, part), headers={"Content-Type": JOSE})


# --------------------------------------------------------------------------------------------------
# Event log


@versioned.get("/cases/{caseId}/events")
async def get_events(request: web.Request) -> web.Response:
    request_profile(request)
    grant = request_grant(request)
    case_id = path_uuid(request, "caseId", status=404)
    limit, offset = page_params(request)
    return json_response(sandbox_of(request).event_log(grant, case_id, limit, offset))


@versioned.get("/submissions/{submissionId}/events")
async def get_submission_events(request: web.Request) -> web.Response:
    """v2: the events about one submission (same access rules as the case's log)."""
    request_profile(request)
    grant = request_grant(request)
    sandbox = sandbox_of(request)
    sub = sandbox.submission(path_uuid(request, "submissionId"))
    limit, offset = page_params(request)
    return json_response(sandbox.event_log(grant, sub.case_id, limit, offset, submission_id=sub.id))


@versioned.post("/cases/{caseId}/events")
async def post_event(request: web.Request) -> web.Response:
    request_profile(request)
    grant = request_grant(request)
    sandbox = sandbox_of(request)
    case_id = path_uuid(request, "caseId")
    # The OpenAPI lists no 415 here: a wrong Content-Type is a Bad Request.
    require_content_type(request, JOSE, status=400)
    raw = await read_limited(request, sandbox.config.limits.max_event_bytes)
    try:
        token_text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise bad_request("body is not an ASCII compact JWS") from None
    if not token_text:
        raise bad_request("body is empty")
    sandbox.post_event(grant, case_id, token_text)
    return web.Response(status=204)
