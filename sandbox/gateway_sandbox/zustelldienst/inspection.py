"""The inspection API under ``/_sandbox/``: outside the FIT-Connect specification, sandbox only.

Seed destinations and clients, read event logs in clear text, fast-forward the clock, see callback
deliveries, inject faults. No authentication: the sandbox refuses to listen on anything but loopback
unless told otherwise, and ``inspection_api = false`` switches this whole prefix off.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from gateway.fitconnect.jose import parse_jws
from gateway_sandbox.zustelldienst.appkeys import SANDBOX
from gateway_sandbox.zustelldienst.config import (
    CallbackConfig,
    ClientConfig,
    DestinationConfig,
    normalize_uuid,
)
from gateway_sandbox.zustelldienst.problems import ProblemError, bad_request
from gateway_sandbox.zustelldienst.scopes import scope_problem
from gateway_sandbox.zustelldienst.service import TAMPER_MODES, Sandbox, private_destination
from gateway_sandbox.zustelldienst.state import CallbackFaults, SubmissionRecord
from gateway_sandbox.zustelldienst.validation import (
    contact_information,
    create_callback,
    destination_services,
    destination_status,
    metadata_versions,
    path_uuid,
    read_json_object,
    reply_channels,
    string_field,
)

PREFIX = "/_sandbox"
routes = web.RouteTableDef()


def _sandbox(request: web.Request) -> Sandbox:
    return request.app[SANDBOX]


async def _body(request: web.Request) -> dict[str, Any]:
    return await read_json_object(request, _sandbox(request).config.limits.max_json_bytes, content_type_status=400)


def _destination_view(sandbox: Sandbox, d: DestinationConfig) -> dict[str, Any]:
    out = private_destination(d)
    out["encryptionKeys"] = [k["kid"] for k in d.encryption_keys]
    out["signingKeys"] = [k["kid"] for k in d.signing_keys]
    return out


def _submission_view(sandbox: Sandbox, s: SubmissionRecord) -> dict[str, Any]:
    return {
        "submissionId": s.id,
        "caseId": s.case_id,
        "destinationId": s.destination_id,
        "clientId": s.client_id,
        "status": s.status,
        "serviceType": s.service_type,
        "announcedAttachments": list(s.announced),
        "uploadedAttachments": list(s.uploaded),
        "hasData": s.has_data,
        "callbackUrl": s.callback_url,
        "createdAt": s.created_at,
        "submittedAt": s.submitted_at,
        "closedAt": s.closed_at,
        "authenticationTags": s.tags if s.status != "incomplete" else None,
        "events": [e.event for e in sandbox.state.events_of(s.id)],
    }


def _clock_view(sandbox: Sandbox) -> dict[str, float]:
    return {"now": sandbox.clock.now(), "offset": sandbox.clock.offset, "wall": sandbox.clock.wall()}


@routes.get(PREFIX + "/")
async def index(request: web.Request) -> web.Response:
    sandbox = _sandbox(request)
    return web.json_response(
        {
            "baseUrl": sandbox.base_url,
            "tokenUrl": sandbox.base_url + "/token",
            "jwksUrl": sandbox.base_url + "/.well-known/jwks.json",
            "zsdKid": sandbox.zsd.kid,
            "endpoints": sorted(
                {f"{r.method} {r.resource.canonical}" for r in request.app.router.routes() if r.resource}
            ),
        }
    )


# -- destinations and clients -------------------------------------------------------------------------


@routes.get(PREFIX + "/destinations")
async def list_destinations(request: web.Request) -> web.Response:
    sandbox = _sandbox(request)
    return web.json_response(
        {"destinations": [_destination_view(sandbox, d) for d in sandbox.state.destinations.values()]}
    )


@routes.post(PREFIX + "/destinations")
async def seed_destination(request: web.Request) -> web.Response:
    sandbox = _sandbox(request)
    body = await _body(request)
    try:
        dest_id = normalize_uuid(str(body.get("destinationId")))
    except ValueError:
        raise bad_request("destinationId must be a UUID") from None
    enc = body.get("encryptionKeys")
    sig = body.get("signingKeys")
    if not isinstance(enc, list) or not enc or not isinstance(sig, list) or not sig:
        raise bad_request("encryptionKeys and signingKeys must be non-empty arrays of public JWKs")
    callback = None
    if body.get("callback") is not None:
        url, secret = create_callback(body["callback"], allow_insecure=sandbox.config.allow_insecure_callbacks)
        callback = CallbackConfig(url, secret)
    first_kid = enc[0].get("kid") if isinstance(enc[0], dict) else None
    dest = DestinationConfig(
        id=dest_id,
        status=destination_status(body.get("status", "active"), allow_created=True),
        services=destination_services(body.get("services")),
        metadata_versions=metadata_versions(body.get("metadataVersions", ["1.0.0"])),
        encryption_keys=(),
        signing_keys=(),
        encryption_kid="",
        callback=callback,
        contact_information=contact_information(body.get("contactInformation")),
        reply_channels=reply_channels(body["replyChannels"]) if body.get("replyChannels") else None,
    )
    previous = sandbox.state.destinations.get(dest_id)
    sandbox.state.destinations[dest_id] = dest
    try:
        for purpose, jwks in (("encryption", enc), ("signing", sig)):
            for jwk in jwks:
                if not isinstance(jwk, dict):
                    raise bad_request("keys must be JWK objects")
                sandbox.add_key(dest_id, jwk, purpose=purpose)  # type: ignore[arg-type]
        sandbox.update_destination(dest_id, encryption_kid=body.get("encryptionKid", first_kid))
    except ProblemError:
        if previous is None:
            del sandbox.state.destinations[dest_id]
        else:
            sandbox.state.destinations[dest_id] = previous
        sandbox.save()
        raise
    status = 201 if previous is None else 200
    return web.json_response(_destination_view(sandbox, sandbox.state.destinations[dest_id]), status=status)


@routes.get(PREFIX + "/destinations/{destinationId}")
async def get_destination(request: web.Request) -> web.Response:
    sandbox = _sandbox(request)
    dest = sandbox.destination(path_uuid(request, "destinationId", status=404))
    return web.json_response(_destination_view(sandbox, dest))


@routes.patch(PREFIX + "/destinations/{destinationId}")
async def patch_destination(request: web.Request) -> web.Response:
    """Key rollover and status without a manage-scoped client: ``encryptionKid``, ``status``, ``callback``."""
    sandbox = _sandbox(request)
    dest_id = path_uuid(request, "destinationId", status=404)
    sandbox.destination(dest_id)
    body = await _body(request)
    changes: dict[str, Any] = {}
    if "status" in body:
        changes["status"] = destination_status(body["status"], allow_created=True)
    if "encryptionKid" in body:
        changes["encryption_kid"] = string_field(body, "encryptionKid", min_len=1, max_len=64)
    if "callback" in body:
        if body["callback"] is None:
            changes["callback"] = None
        else:
            url, secret = create_callback(body["callback"], allow_insecure=sandbox.config.allow_insecure_callbacks)
            changes["callback"] = CallbackConfig(url, secret)
    dest = sandbox.update_destination(dest_id, **changes)
    return web.json_response(_destination_view(sandbox, dest))


@routes.post(PREFIX + "/destinations/{destinationId}/keys")
async def add_key(request: web.Request) -> web.Response:
    sandbox = _sandbox(request)
    dest_id = path_uuid(request, "destinationId", status=404)
    jwk = await _body(request)
    created = sandbox.add_key(dest_id, jwk)
    return web.json_response({"kid": jwk["kid"], "created": created}, status=201 if created else 200)


@routes.get(PREFIX + "/clients")
async def list_clients(request: web.Request) -> web.Response:
    sandbox = _sandbox(request)
    return web.json_response(
        {
            "clients": [
                {"id": c.id, "scopes": list(c.scopes), "destinations": list(c.destinations)}
                for c in sandbox.state.clients.values()
            ]
        }
    )


@routes.post(PREFIX + "/clients")
async def seed_client(request: web.Request) -> web.Response:
    sandbox = _sandbox(request)
    body = await _body(request)
    client_id = string_field(body, "id", min_len=1, max_len=200) or ""
    secret = string_field(body, "secret", min_len=1, max_len=512) or ""
    scopes = body.get("scopes")
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise bad_request("scopes must be an array of strings")
    for s in scopes:
        problem = scope_problem(s)
        if problem:
            raise bad_request(problem)
    links = body.get("destinations", [])
    try:
        links = [normalize_uuid(d) for d in links]
    except (ValueError, TypeError):
        raise bad_request("destinations must be an array of UUIDs") from None
    existed = client_id in sandbox.state.clients
    sandbox.state.clients[client_id] = ClientConfig(client_id, secret, tuple(scopes), tuple(links))
    sandbox.save()
    return web.json_response({"id": client_id, "scopes": scopes, "destinations": links}, status=200 if existed else 201)


@routes.post(PREFIX + "/tokens/revoke")
async def revoke_tokens(request: web.Request) -> web.Response:
    """Every access token issued so far becomes invalid (401): tests a client's token refresh."""
    sandbox = _sandbox(request)
    sandbox.state.token_generation += 1
    sandbox.save()
    return web.Response(status=204)


# -- clock and timers ------------------------------------------------------------------------------


@routes.get(PREFIX + "/clock")
async def get_clock(request: web.Request) -> web.Response:
    return web.json_response(_clock_view(_sandbox(request)))


@routes.post(PREFIX + "/clock/advance")
async def advance_clock(request: web.Request) -> web.Response:
    sandbox = _sandbox(request)
    body = await _body(request)
    seconds = body.get("seconds")
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
        raise bad_request("seconds must be a non-negative number")
    sandbox.advance(float(seconds))  # runs the timers before answering: effects are visible at once
    return web.json_response(_clock_view(sandbox))


# -- submissions, events, callbacks ----------------------------------------------------------------


@routes.get(PREFIX + "/submissions")
async def list_submissions(request: web.Request) -> web.Response:
    sandbox = _sandbox(request)
    status = request.query.get("status")
    dest = request.query.get("destinationId")
    subs = [
        _submission_view(sandbox, s)
        for s in sandbox.state.submissions.values()
        if (status is None or s.status == status) and (dest is None or s.destination_id == dest.lower())
    ]
    return web.json_response({"submissions": subs})


@routes.get(PREFIX + "/submissions/{submissionId}")
async def get_submission(request: web.Request) -> web.Response:
    sandbox = _sandbox(request)
    sub = sandbox.submission(path_uuid(request, "submissionId", status=404))
    return web.json_response(_submission_view(sandbox, sub))


@routes.get(PREFIX + "/cases/{caseId}/events")
async def decoded_events(request: web.Request) -> web.Response:
    sandbox = _sandbox(request)
    case = sandbox.case(path_uuid(request, "caseId", status=404))
    events = []
    for e in case.events:
        jws = parse_jws(e.token)
        events.append(
            {
                "header": jws.header,
                "claims": jws.payload,
                "event": e.event,
                "submissionId": e.submission_id,
                "replyId": e.reply_id,
                "issuer": e.issuer,
                "recordedAt": e.recorded_at,
                "token": e.token,
            }
        )
    return web.json_response({"caseId": case.id, "destinationId": case.destination_id, "events": events})


@routes.post(PREFIX + "/cases/{caseId}/tamper")
async def tamper(request: web.Request) -> web.Response:
    sandbox = _sandbox(request)
    case_id = path_uuid(request, "caseId", status=404)
    body = await _body(request)
    try:
        submission_id = normalize_uuid(str(body.get("submissionId")))
    except ValueError:
        raise bad_request("submissionId must be a UUID") from None
    mode = body.get("mode")
    if mode not in TAMPER_MODES:
        raise bad_request(f"mode must be one of {', '.join(TAMPER_MODES)}")
    part = body.get("part")
    if part is not None and not isinstance(part, str):
        raise bad_request("part must be a string")
    if mode == "auth-tag-mismatch" and part is None:
        raise bad_request('auth-tag-mismatch needs part "metadata", "data" or "attachment:<id>"')
    sandbox.tamper(case_id, submission_id, mode, part)
    return web.Response(status=204)


@routes.get(PREFIX + "/callbacks")
async def callbacks(request: web.Request) -> web.Response:
    sandbox = _sandbox(request)
    return web.json_response({"deliveries": sandbox.dispatcher.public_log()}, dumps=lambda v: json.dumps(v))


@routes.get(PREFIX + "/callbacks/faults")
async def get_faults(request: web.Request) -> web.Response:
    return web.json_response(_faults_view(_sandbox(request).state.faults))


@routes.put(PREFIX + "/callbacks/faults")
async def put_faults(request: web.Request) -> web.Response:
    sandbox = _sandbox(request)
    body = await _body(request)
    names = {"wrongHmac": "wrong_hmac", "staleTimestamp": "stale_timestamp", "duplicate": "duplicate"}
    unknown = set(body) - set(names)
    if unknown:
        raise bad_request(f"unknown fault switches: {', '.join(sorted(unknown))}")
    values = {}
    for api_name, attr in names.items():
        value = body.get(api_name, False)
        if not isinstance(value, bool):
            raise bad_request(f"{api_name} must be true or false")
        values[attr] = value
    sandbox.state.faults = CallbackFaults(**values)
    sandbox.save()
    return web.json_response(_faults_view(sandbox.state.faults))


def _faults_view(f: CallbackFaults) -> dict[str, bool]:
    return {"wrongHmac": f.wrong_hmac, "staleTimestamp": f.stale_timestamp, "duplicate": f.duplicate}
