"""Metadata builder, validated against the official metadata JSON schemas (1.0.0 and 2.1.0)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from gateway.fitconnect.metadata import METADATA_SCHEMA_URI_TEMPLATE, AttachmentSpec, build_metadata

pytestmark = pytest.mark.shared

SCHEMA_FILES = {"1.0.0": "metadata.schema.v1.0.0.json", "2.1.0": "metadata-2.1.0.schema.json"}
SERVICE = "urn:de:fim:leika:leistung:99050012104000"
DATA_HASH = hashlib.sha512(b'{"antrag": 1}').hexdigest()
ATTACHMENTS = [
    AttachmentSpec(
        "2046f9f1-dc89-4440-9c24-c76a8f40d668",
        hashlib.sha512(b"pdf").hexdigest(),
        "application/pdf",
        filename="nachweis.pdf",
        description="Nachweis",
    ),
    AttachmentSpec(
        "879ee109-a690-4db8-ab32-424284184d7d",
        hashlib.sha512(b"xml").hexdigest().upper(),
        "application/xml",
        purpose="form",
    ),
]


def validator(fitconnect_shared: Path, version: str) -> Draft202012Validator:
    schema = json.loads((fitconnect_shared / SCHEMA_FILES[version]).read_text(encoding="utf-8"))
    assert schema["$id"] == METADATA_SCHEMA_URI_TEMPLATE.format(version=version)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def build(version: str, **overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "version": version,
        "service_identifier": SERVICE,
        "service_name": "Gewerbeanmeldung",
        "data_sha512": DATA_HASH,
        "data_schema_uri": "https://schema.fitko.de/fim/s00000096_1.0.schema.json",
        "data_mime_type": "application/json",
        "attachments": ATTACHMENTS,
    }
    args.update(overrides)
    return build_metadata(**args)


@pytest.mark.parametrize("version", ["1.0.0", "2.1.0"])
def test_full_document_is_schema_valid(fitconnect_shared: Path, version: str) -> None:
    metadata = build(version, reply_channel={"eMail": {"address": "buerger@example.org"}})
    validator(fitconnect_shared, version).validate(metadata)
    assert metadata["$schema"] == METADATA_SCHEMA_URI_TEMPLATE.format(version=version)
    content = metadata["contentStructure"]
    assert content["data"]["hash"] == {"type": "sha512", "content": DATA_HASH}
    assert [a["attachmentId"] for a in content["attachments"]] == [a.attachment_id for a in ATTACHMENTS]
    assert content["attachments"][1]["hash"]["content"] == hashlib.sha512(b"xml").hexdigest()  # lowercased
    assert content["attachments"][0]["filename"] == "nachweis.pdf"
    assert "filename" not in content["attachments"][1]
    if version == "1.0.0":
        assert metadata["publicServiceType"] == {"name": "Gewerbeanmeldung", "identifier": SERVICE}
    else:
        assert "publicServiceType" not in metadata


def test_minimal_1_0_0_variants_are_valid(fitconnect_shared: Path) -> None:
    v = validator(fitconnect_shared, "1.0.0")
    v.validate(build("1.0.0", data_sha512=None, data_schema_uri=None, data_mime_type=None, attachments=[]))
    legacy = build("1.0.0", omit_schema=True)
    assert "$schema" not in legacy
    v.validate(legacy)


def test_2_x_purpose_data_and_schema_requirements(fitconnect_shared: Path) -> None:
    v = validator(fitconnect_shared, "2.1.0")
    spec = AttachmentSpec(
        "a7a9d2a4-6a73-4c5e-9e43-7ac2d2e1b0c1", hashlib.sha512(b"big").hexdigest(), "application/json", purpose="data"
    )
    v.validate(build("2.1.0", attachments=[spec]))
    # The builder can omit $schema for negative tests; the schema then refuses the document.
    assert not v.is_valid(build("2.1.0", omit_schema=True))


@pytest.mark.parametrize(
    "overrides",
    [
        {"version": "1.0"},
        {"version": "3.0.0"},
        {"version": "01.0.0"},
        {"data_sha512": "abc"},
        {"data_schema_uri": None},
        {"data_mime_type": "text/plain"},
        {"version": "2.1.0", "data_sha512": None},
        {"attachments": [AttachmentSpec("x", DATA_HASH, "application/pdf", purpose="data")]},
        {"attachments": [AttachmentSpec("x", DATA_HASH, "application/pdf", purpose="selfie")]},
        {"attachments": [AttachmentSpec("x", "0" * 127, "application/pdf")]},
    ],
)
def test_inexpressible_inputs_raise(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        build(overrides.pop("version", "1.0.0"), **overrides)


def test_schema_catches_bad_reply_channel(fitconnect_shared: Path) -> None:
    bad = build("1.0.0", reply_channel={"eMail": {"address": "a@b.de"}, "deMail": {"address": "a@b.de"}})
    assert not validator(fitconnect_shared, "1.0.0").is_valid(bad)
