"""Pure receipt checks on decrypted metadata and data (digest §9.9 - §9.21). No I/O, no crypto.

Each function returns the problems it found (catalogue entries of :mod:`gateway.fitconnect.problems`)
with a ``detail`` that names the failed rule, never a value from the payload.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.fitconnect.problems import problem
from gateway.problems import Problem
from gateway.sources.fitconnect.schemas import SchemaIndex, SchemaIssue, metadata_version_of
from gateway.xoev.parsing import ParseLimits, XmlRejected, parse_xml

LEGACY_METADATA_VERSION = "1.0.0"
MIME_JSON = "application/json"
MIME_XML = "application/xml"
_HEX128 = re.compile(r"[0-9a-fA-F]{128}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")  # ids are compared lowercase


class CheckFailed(Exception):
    """A check stage failed; ``problems`` go into the reject-submission SET."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__("; ".join(p.detail for p in problems))
        self.problems = list(problems)


def fail(code: str, detail: str, *, attachment_id: str | None = None) -> CheckFailed:
    return CheckFailed([problem(code, detail, attachment_id=attachment_id)])


def strict_json(raw: bytes) -> Any:
    """UTF-8 JSON without duplicate members, NaN/Infinity or excessive nesting; ValueError says why."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ValueError("duplicate object member")
            out[key] = value
        return out

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not valid UTF-8") from None
    try:
        return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except RecursionError:
        raise ValueError("nesting too deep") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not well-formed JSON (line {exc.lineno}, column {exc.colno})") from None


def _issues_detail(prefix: str, issues: Sequence[SchemaIssue]) -> str:
    shown = "; ".join(i.describe() for i in issues[:3])
    more = f" (+{len(issues) - 3} more)" if len(issues) > 3 else ""
    return f"{prefix}: {shown}{more}"


# -- metadata ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetadataInfo:
    version: str
    schema_id: str
    assumed: bool  # $schema was missing and taken as 1.0.0


def parse_metadata(plaintext: bytes) -> dict[str, Any]:
    try:
        value = strict_json(plaintext)
    except ValueError as exc:
        raise fail("metadata-syntax-violation", f"metadata is {exc}") from None
    if not isinstance(value, dict):
        raise fail("metadata-syntax-violation", "metadata is not a JSON object")
    return value


def metadata_schema(
    metadata: Mapping[str, Any],
    *,
    supported: Mapping[str, str],
    destination_versions: Sequence[str],
    allow_missing: bool,
) -> MetadataInfo:
    """Which metadata schema applies (§9.10); raise CheckFailed if none may be used."""
    raw = metadata.get("$schema")
    assumed = False
    if raw is None:
        if not allow_missing:
            raise fail("missing-schema", "metadata has no $schema")
        version, assumed = LEGACY_METADATA_VERSION, True
    else:
        if not isinstance(raw, str):
            raise fail("metadata-unsupported-schema", "metadata $schema is not a string")
        parsed = metadata_version_of(raw)
        if parsed is None:
            raise fail("metadata-unsupported-schema", "metadata $schema is not a FIT-Connect metadata schema URI")
        version = parsed
    if version not in supported:
        raise fail("metadata-unsupported-schema", f"metadata version {version} is not supported by this gateway")
    if version not in destination_versions:
        raise fail("metadata-unsupported-schema", f"metadata version {version} is not offered by the destination")
    return MetadataInfo(version, supported[version], assumed)


def validate_metadata(metadata: Mapping[str, Any], info: MetadataInfo, schemas: SchemaIndex) -> None:
    entry = schemas.json_schema(info.schema_id)
    if entry is None:  # the options guarantee every supported version has a schema
        raise fail("metadata-unsupported-schema", f"no schema loaded for metadata version {info.version}")
    issues = entry.issues(metadata)
    if issues:
        raise CheckFailed(
            [problem("metadata-schema-violation", _issues_detail(f"metadata violates schema {info.version}", issues))]
        )


@dataclass(frozen=True)
class DeclaredData:
    sha512: str
    schema_uri: str
    mime_type: str


@dataclass(frozen=True)
class DeclaredAttachment:
    attachment_id: str  # lowercase
    sha512: str
    mime_type: str
    filename: str | None
    purpose: str
    raw_id: str  # as the sender wrote it


def declared_data(metadata: Mapping[str, Any]) -> DeclaredData | None:
    """``contentStructure.data`` of schema-valid metadata."""
    data = metadata.get("contentStructure", {}).get("data")
    if not isinstance(data, dict):
        return None
    schema = data.get("submissionSchema", {})
    return DeclaredData(
        sha512=str(data.get("hash", {}).get("content", "")).lower(),
        schema_uri=str(schema.get("schemaUri", "")),
        mime_type=str(schema.get("mimeType", "")),
    )


def declared_attachments(metadata: Mapping[str, Any]) -> list[DeclaredAttachment]:
    out = []
    for item in metadata.get("contentStructure", {}).get("attachments", []):
        if not isinstance(item, dict):
            continue
        filename = item.get("filename")
        raw_id = str(item.get("attachmentId", ""))
        out.append(
            DeclaredAttachment(
                attachment_id=raw_id.lower(),
                sha512=str(item.get("hash", {}).get("content", "")).lower(),
                mime_type=str(item.get("mimeType", "application/octet-stream")),
                filename=filename if isinstance(filename, str) else None,
                purpose=str(item.get("purpose", "attachment")),
                raw_id=raw_id,
            )
        )
    return out


@dataclass(frozen=True)
class ServiceMatch:
    identifier: str
    regions: tuple[str, ...]
    schemas: tuple[tuple[str, str], ...]  # (schemaUri, mimeType)


def match_service(destination_services: Any, identifier: str | None) -> ServiceMatch | None:
    if not isinstance(destination_services, list) or not identifier:
        return None
    for service in destination_services:
        if not isinstance(service, dict) or service.get("identifier") != identifier:
            continue
        regions = tuple(r for r in service.get("regions", []) if isinstance(r, str))
        schemas = tuple(
            (str(s.get("schemaUri")), str(s.get("mimeType")))
            for s in service.get("submissionSchemas", [])
            if isinstance(s, dict)
        )
        return ServiceMatch(identifier, regions, schemas)
    return None


def consistency_problems(
    *,
    metadata: Mapping[str, Any],
    api_service: str | None,
    service: ServiceMatch | None,
    data_present: bool,
    submission_attachments: Sequence[str],
    tag_attachments: Sequence[str],
    destination_reply_channels: Any,
    schemas: SchemaIndex,
    require_data_schemas: bool,
    xoev_namespaces: frozenset[str] = frozenset(),
) -> list[Problem]:
    """§9.12 - §9.16: service, data schema, attachment sets, data presence, reply channel. All reported."""
    problems: list[Problem] = []
    # Service (§9.12). 1.x names it in the metadata too; 2.x only in the API.
    if service is None:
        problems.append(problem("unsupported-service", "the submission's service is not offered by the destination"))
    public_service = metadata.get("publicServiceType")
    if isinstance(public_service, dict) and api_service is not None and public_service.get("identifier") != api_service:
        problems.append(
            problem("service-mismatch", "metadata publicServiceType.identifier differs from the submission's service")
        )

    # Data presence (§9.15) and data schema (§9.13).
    declared = declared_data(metadata)
    attachments = declared_attachments(metadata)
    if declared is not None and not data_present:
        problems.append(problem("missing-data", "metadata declares data but the submission carries none"))
    elif declared is None and data_present:
        problems.append(problem("missing-data", "the submission carries data the metadata does not declare"))
    elif declared is None and not attachments:
        problems.append(problem("missing-data", "the submission has neither data nor attachments"))
    if declared is not None and service is not None:
        if (declared.schema_uri, declared.mime_type) not in service.schemas:
            problems.append(
                problem(
                    "data-unsupported-schema",
                    "the data's submissionSchema (schemaUri and mimeType) is not offered by the destination "
                    "for this service",
                )
            )
        elif require_data_schemas and not has_local_schema(schemas, declared, xoev_namespaces):
            problems.append(
                problem("data-unsupported-schema", "the gateway has no local copy of the data's submission schema")
            )

    # Attachment sets (§9.14): metadata == Submission.attachments == authenticationTags.attachments.
    meta_ids = [a.attachment_id for a in attachments]
    sub_ids = [a.lower() for a in submission_attachments]
    tag_ids = [a.lower() for a in tag_attachments]
    if not all(_UUID.fullmatch(i) for i in (*meta_ids, *sub_ids, *tag_ids)):
        # The ids end up in request paths: anything but a UUID is refused before it gets there.
        problems.append(problem("attachments-mismatch", "an attachment id is not a UUID"))
    elif len(set(meta_ids)) != len(meta_ids):
        problems.append(problem("attachments-mismatch", "the metadata lists an attachment id more than once"))
    elif not set(meta_ids) == set(sub_ids) == set(tag_ids):
        problems.append(
            problem(
                "attachments-mismatch",
                f"attachment ids differ: metadata {len(set(meta_ids))}, submission {len(set(sub_ids))}, "
                f"event log {len(set(tag_ids))} (common: {len(set(meta_ids) & set(sub_ids) & set(tag_ids))})",
            )
        )

    # Reply channel (§9.16): a subset of the destination's replyChannels when it lists any.
    reply = metadata.get("replyChannel")
    if isinstance(reply, dict) and isinstance(destination_reply_channels, dict) and destination_reply_channels:
        for channel in reply:
            if channel not in destination_reply_channels:
                problems.append(
                    problem("unsupported-reply-channel", f"reply channel {_safe_name(channel)} is not offered")
                )
    return problems


def _safe_name(name: str) -> str:
    # Reply channel keys are schema-defined names (eMail, deMail, fink, elster, fitConnect, ...).
    return name if re.fullmatch(r"[A-Za-z]{1,32}", name) else "<unknown>"


def has_local_schema(
    schemas: SchemaIndex, declared: DeclaredData, xoev_namespaces: frozenset[str] = frozenset()
) -> bool:
    """Whether the data's schema is available offline: in ``data_schema_dirs`` or, for XML whose
    schemaUri is an XÖV namespace, in the gateway's XÖV schema registry (``[xoev]``)."""
    if declared.mime_type == MIME_JSON:
        return schemas.json_schema(declared.schema_uri) is not None
    if declared.mime_type == MIME_XML:
        return schemas.xsd(declared.schema_uri) is not None or declared.schema_uri in xoev_namespaces
    return False


def xoev_issue_problems(declared: DeclaredData, namespace: str, issues: Sequence[Any]) -> list[Problem]:
    """Problems for XML data the XÖV registry validated (§9.21), described by path and rule only."""
    if namespace != declared.schema_uri:
        return [problem("data-schema-violation", "the data's root element is not in the declared schema's namespace")]
    if not issues:
        return []
    described = [
        SchemaIssue(str(i.rule or "xsd"), f"{i.path} (line {i.line})" if i.line else str(i.path)) for i in issues
    ]
    return [problem("data-schema-violation", _issues_detail("data violates its XÖV schema", described))]


# -- data ----------------------------------------------------------------------------------------------


def check_hash(plaintext_sha512: str, declared: str, code: str, what: str, attachment_id: str | None = None) -> None:
    if _HEX128.fullmatch(declared) is None or plaintext_sha512.lower() != declared.lower():
        raise fail(code, f"SHA-512 of the decrypted {what} differs from the metadata hash", attachment_id=attachment_id)


def data_hash_ok(plaintext: bytes, declared: DeclaredData) -> None:
    check_hash(hashlib.sha512(plaintext).hexdigest(), declared.sha512, "data-hash-mismatch", "data")


def check_data(plaintext: bytes, declared: DeclaredData, schemas: SchemaIndex, *, max_bytes: int) -> None:
    """Syntax (§9.20) and schema (§9.21) of the data in its declared mime type."""
    if declared.mime_type == MIME_JSON:
        try:
            value = strict_json(plaintext)
        except ValueError as exc:
            raise fail("data-syntax-violation", f"JSON data is {exc}") from None
        entry = schemas.json_schema(declared.schema_uri)
        if entry is not None:
            issues = entry.issues(value)
            if issues:
                raise CheckFailed(
                    [problem("data-schema-violation", _issues_detail("data violates its JSON schema", issues))]
                )
    elif declared.mime_type == MIME_XML:
        try:
            tree = parse_xml(plaintext, ParseLimits(max_bytes=max_bytes))
        except XmlRejected as exc:
            where = f" (line {exc.line})" if exc.line is not None else ""
            raise fail("data-syntax-violation", f"XML data refused by the hardened parser: {exc.code}{where}") from None
        xsd = schemas.xsd(declared.schema_uri)
        if xsd is not None:
            issues = xsd.issues(tree)
            if issues:
                raise CheckFailed([problem("data-schema-violation", _issues_detail("data violates its XSD", issues))])
    else:  # pragma: no cover - the metadata schemas allow only JSON and XML
        raise fail("data-unsupported-schema", "data mime type is neither application/json nor application/xml")
