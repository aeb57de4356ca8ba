"""Builder for FIT-Connect submission metadata (schema 1.x and 2.x).

1.x carries the service as ``publicServiceType``; 2.x drops it (the service travels in the API as
``serviceType``/``publicService``), requires ``$schema`` and requires ``contentStructure.data``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

METADATA_SCHEMA_URI_TEMPLATE = "https://schema.fitko.de/fit-connect/metadata/{version}/metadata.schema.json"
SUPPORTED_MAJOR_VERSIONS = frozenset({1, 2})
ATTACHMENT_PURPOSES = frozenset({"form", "attachment", "report", "data"})

_SEMVER_RE = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)")
_SHA512_RE = re.compile(r"[0-9a-fA-F]{128}")


def metadata_schema_uri(version: str) -> str:
    return METADATA_SCHEMA_URI_TEMPLATE.format(version=version)


@dataclass(frozen=True)
class AttachmentSpec:
    attachment_id: str
    sha512_hex: str
    mime_type: str
    filename: str | None = None
    purpose: str = "attachment"
    description: str | None = None


def _hash(hex_digest: str, what: str) -> dict[str, str]:
    if _SHA512_RE.fullmatch(hex_digest) is None:
        raise ValueError(f"{what}: not a SHA-512 hex digest")
    return {"type": "sha512", "content": hex_digest.lower()}


def build_metadata(
    *,
    version: str,
    service_identifier: str,
    service_name: str,
    data_sha512: str | None,
    data_schema_uri: str | None,
    data_mime_type: str | None,
    attachments: Sequence[AttachmentSpec],
    reply_channel: dict[str, Any] | None = None,
    omit_schema: bool = False,
) -> dict[str, Any]:
    """The metadata document for ``version``; raise ValueError for inputs the schema cannot express.

    ``omit_schema`` leaves out ``$schema`` (legacy 1.0.0 senders did; for 2.x it makes the document
    schema-invalid and exists only for negative tests).
    """
    match = _SEMVER_RE.fullmatch(version)
    if match is None:
        raise ValueError(f"metadata version {version!r} is not MAJOR.MINOR.PATCH")
    major = int(match.group(1))
    if major not in SUPPORTED_MAJOR_VERSIONS:
        raise ValueError(f"metadata major version {major} is not supported")

    content: dict[str, Any] = {}
    if data_sha512 is not None:
        if not data_schema_uri or data_mime_type not in ("application/json", "application/xml"):
            raise ValueError("data needs a schema URI and a mime type application/json or application/xml")
        content["data"] = {
            "hash": _hash(data_sha512, "data hash"),
            "submissionSchema": {"schemaUri": data_schema_uri, "mimeType": data_mime_type},
        }
    elif major >= 2:
        raise ValueError("metadata 2.x requires contentStructure.data")

    items = []
    for spec in attachments:
        if spec.purpose not in ATTACHMENT_PURPOSES or (spec.purpose == "data" and major < 2):
            raise ValueError(f"attachment purpose {spec.purpose!r} is not allowed in metadata {version}")
        item: dict[str, Any] = {
            "attachmentId": spec.attachment_id,
            "purpose": spec.purpose,
            "mimeType": spec.mime_type,
            "hash": _hash(spec.sha512_hex, f"attachment {spec.attachment_id} hash"),
        }
        if spec.filename is not None:
            item["filename"] = spec.filename
        if spec.description is not None:
            item["description"] = spec.description
        items.append(item)
    content["attachments"] = items

    metadata: dict[str, Any] = {}
    if not omit_schema:
        metadata["$schema"] = metadata_schema_uri(version)
    if major == 1:
        metadata["publicServiceType"] = {"name": service_name, "identifier": service_identifier}
    metadata["contentStructure"] = content
    if reply_channel is not None:
        metadata["replyChannel"] = reply_channel
    return metadata
