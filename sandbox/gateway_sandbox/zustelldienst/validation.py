"""Request parsing and the OpenAPI 1.1.3 field rules, answering 400/413/415 as problem+json."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from gateway_sandbox.zustelldienst.config import (
    DESTINATION_STATUSES,
    MAX_CALLBACK_SECRET,
    MIN_CALLBACK_SECRET,
    REGION_RE,
    SCHEMA_MIME_TYPES,
    SEMVER_RE,
    URN_RE,
    ServiceConfig,
    SubmissionSchema,
    callback_url_problem,
    normalize_uuid,
)
from gateway_sandbox.zustelldienst.problems import ProblemError, bad_request

READ_CHUNK = 64 * 1024
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+$")


def too_large(limit: int) -> ProblemError:
    return ProblemError(413, "payload-too-large", f"request body exceeds {limit} bytes")


async def read_limited(request: web.Request, limit: int) -> bytes:
    """The whole body, refusing more than ``limit`` bytes (413) without reading further."""
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)
    buf = bytearray()
    async for chunk in request.content.iter_chunked(READ_CHUNK):
        buf += chunk
        if len(buf) > limit:
            raise too_large(limit)
    return bytes(buf)


def require_content_type(request: web.Request, expected: str, *, status: int = 415) -> None:
    if request.content_type != expected:
        kind = "unsupported-media-type" if status == 415 else "invalid-request"
        got = request.headers.get("Content-Type", "none")
        raise ProblemError(status, kind, f"Content-Type must be {expected}, got {got}")


async def read_json_object(request: web.Request, limit: int, *, content_type_status: int = 415) -> dict[str, Any]:
    require_content_type(request, "application/json", status=content_type_status)
    raw = await read_limited(request, limit)
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad_request(f"body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise bad_request("body must be a JSON object")
    return value


def path_uuid(request: web.Request, name: str, *, status: int = 400) -> str:
    raw = request.match_info[name]
    try:
        return normalize_uuid(raw)
    except ValueError:
        if status == 404:
            raise ProblemError(404, "not-found", f"{name} {raw!r} is not a UUID") from None
        raise bad_request(f"{name} {raw!r} is not a UUID") from None


def query_int(request: web.Request, name: str, default: int, minimum: int, maximum: int | None = None) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"{name} must be an integer") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"{minimum}–{maximum}" if maximum is not None else f">= {minimum}"
        raise bad_request(f"{name} must be {bound}")
    return value


# --------------------------------------------------------------------------------------------------
# Field rules


def uuid_field(body: Mapping[str, Any], name: str, *, required: bool = True) -> str | None:
    if name not in body:
        if required:
            raise bad_request(f"{name} is required")
        return None
    value = body[name]
    try:
        return normalize_uuid(value)
    except ValueError:
        raise bad_request(f"{name} must be a UUID") from None


def string_field(
    body: Mapping[str, Any], name: str, *, required: bool = True, min_len: int = 0, max_len: int | None = None
) -> str | None:
    if name not in body:
        if required:
            raise bad_request(f"{name} is required")
        return None
    value = body[name]
    if not isinstance(value, str) or len(value) < min_len or (max_len is not None and len(value) > max_len):
        bounds = f" of {min_len}–{max_len} characters" if max_len else ""
        raise bad_request(f"{name} must be a string{bounds}")
    return value


def service_identifier(value: Any, where: str) -> str:
    if not isinstance(value, str) or not 7 <= len(value) <= 255 or not URN_RE.match(value):
        raise bad_request(f"{where} must be a service URN matching the OpenAPI pattern (7–255 characters)")
    return value


def service_type(raw: Any, field: str = "serviceType") -> dict[str, str]:
    """CreateSubmission.serviceType (v2: publicService): name and identifier required, description optional."""
    if not isinstance(raw, dict):
        raise bad_request(f"{field} must be an object with name and identifier")
    if "identifier" not in raw:
        raise bad_request(f"{field}.identifier is required")
    if "name" not in raw:
        raise bad_request(f"{field}.name is required")
    out = {
        "name": string_field(raw, "name") or "",
        "identifier": service_identifier(raw.get("identifier"), f"{field}.identifier"),
    }
    description = string_field(raw, "description", required=False)
    if description is not None:
        out["description"] = description
    return out


def create_callback(raw: Any, *, allow_insecure: bool) -> tuple[str, str]:
    """CreateCallback: url ^https://.+ (http:// only with allow_insecure_callbacks), secret 32–512."""
    if not isinstance(raw, dict):
        raise bad_request("callback must be an object with url and secret")
    url = string_field(raw, "url", min_len=9) or ""
    problem = callback_url_problem(url, allow_insecure)
    if problem:
        raise bad_request(f"callback.url: {problem}")
    secret = string_field(raw, "secret", min_len=MIN_CALLBACK_SECRET, max_len=MAX_CALLBACK_SECRET)
    return url, secret or ""


def announced_attachments(raw: Any, maximum: int) -> list[str]:
    if not isinstance(raw, list):
        raise bad_request("announcedAttachments must be an array of UUIDs")
    out = []
    for i, item in enumerate(raw):
        try:
            out.append(normalize_uuid(item))
        except ValueError:
            raise bad_request(f"announcedAttachments[{i}] is not a UUID") from None
    if len(set(out)) != len(out):
        raise bad_request("announcedAttachments contains the same id twice")
    if len(out) > maximum:
        raise ProblemError(413, "payload-too-large", f"at most {maximum} attachments per submission")
    return out


def destination_services(raw: Any) -> tuple[ServiceConfig, ...]:
    if not isinstance(raw, list) or not raw:
        raise bad_request("services must be a non-empty array")
    out = []
    for i, s in enumerate(raw):
        where = f"services[{i}]"
        if not isinstance(s, dict):
            raise bad_request(f"{where} must be an object")
        identifier = service_identifier(s.get("identifier"), f"{where}.identifier")
        regions = s.get("regions")
        if (
            not isinstance(regions, list)
            or not regions
            or not all(isinstance(r, str) and REGION_RE.match(r) for r in regions)
        ):
            raise bad_request(f"{where}.regions must be a non-empty array of DE + up to 12 digits")
        schemas = s.get("submissionSchemas")
        if not isinstance(schemas, list) or not schemas:
            raise bad_request(f"{where}.submissionSchemas must be a non-empty array")
        parsed = []
        for j, x in enumerate(schemas):
            if (
                not isinstance(x, dict)
                or not isinstance(x.get("schemaUri"), str)
                or ":" not in x["schemaUri"]
                or x.get("mimeType") not in SCHEMA_MIME_TYPES
            ):
                raise bad_request(f"{where}.submissionSchemas[{j}] needs a schemaUri and mimeType json/xml")
            parsed.append(SubmissionSchema(x["schemaUri"], x["mimeType"]))
        out.append(ServiceConfig(identifier, tuple(regions), tuple(parsed)))
    if len({s.identifier for s in out}) != len(out):
        raise bad_request("services must be unique")
    return tuple(out)


def contact_information(raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise bad_request("contactInformation must be an object")
    out = {}
    for name in ("legalName", "address", "phone", "email"):
        out[name] = string_field(raw, f"{name}", min_len=1) or ""
    if not _EMAIL_RE.match(out["email"]):
        raise bad_request("contactInformation.email is not an e-mail address")
    unit = string_field(raw, "unit", required=False)
    if unit is not None:
        out["unit"] = unit
    return out


def metadata_versions(raw: Any) -> tuple[str, ...]:
    if (
        not isinstance(raw, list)
        or not raw
        or not all(isinstance(v, str) and SEMVER_RE.match(v) for v in raw)
        or len(set(raw)) != len(raw)
    ):
        raise bad_request("metadataVersions must be a non-empty array of unique MAJOR.MINOR.PATCH versions")
    return tuple(raw)


def reply_channels(raw: Any) -> dict[str, Any]:
    """Destination replyChannels: the OpenAPI 1.1.3 ones plus the metadata 2.x channels fitConnect
    ({processStandards: [...]}, reply profile) and idBundDeMailbox."""
    allowed = {"deMail", "elster", "eMail", "fink", "fitConnect", "idBundDeMailbox"}
    if not isinstance(raw, dict) or not raw or not set(raw) <= allowed:
        raise bad_request(f"replyChannels must be an object with some of {', '.join(sorted(allowed))}")
    offer = raw.get("fitConnect")
    if offer is not None:
        standards = offer.get("processStandards", []) if isinstance(offer, dict) else None
        if not isinstance(standards, list) or not all(isinstance(s, str) and s for s in standards):
            raise bad_request("replyChannels.fitConnect must be an object with a processStandards list of URIs")
    return raw


def destination_status(raw: Any, *, allow_created: bool) -> str:
    allowed = DESTINATION_STATUSES if allow_created else DESTINATION_STATUSES[1:]
    if raw not in allowed:
        raise bad_request(f"status must be one of {', '.join(allowed)}")
    return str(raw)
