"""The sender's pure part: metadata, encryption, quirks and every sender-side breakage."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from gateway.fitconnect.jose import (
    DecryptionError,
    JWEStreamDecryptor,
    UnsupportedAlgorithm,
    decrypt_jwe,
    parse_jwe,
)
from gateway.fitconnect.metadata import metadata_schema_uri
from gateway_sandbox.online_service.sender import (
    SANDBOX_TAMPER_MODES,
    Breakage,
    OutgoingAttachment,
    PreparedSubmission,
    SenderQuirks,
    prepare_submission,
)

from .conftest import KeySet

SERVICE = "urn:de:fim:leika:leistung:99050012104000"
DATA = json.dumps({"antrag": {"name": "Erika Mustermann"}}).encode()
SCHEMA_URI = "https://schema.fitko.de/fim/s00000096_1.0.schema.json"


def prepare(key_set: KeySet, tmp_path: Path | None = None, **overrides: Any) -> PreparedSubmission:
    attachments = [OutgoingAttachment(mime_type="application/pdf", filename="a.pdf", content=b"%PDF-1.7 a")]
    if tmp_path is not None:
        big = tmp_path / "big.bin"
        big.write_bytes(b"B" * 300_000)
        attachments.append(OutgoingAttachment(mime_type="application/octet-stream", filename="big.bin", path=big))
    args: dict[str, Any] = {
        "recipient": key_set.encryption.key.public_key(),
        "kid": key_set.encryption.kid,
        "service_identifier": SERVICE,
        "service_name": "Gewerbeanmeldung",
        "data": DATA,
        "data_schema_uri": SCHEMA_URI,
        "data_mime_type": "application/json",
        "attachments": attachments,
    }
    args.update(overrides)
    return prepare_submission(**args)


def open_metadata(key_set: KeySet, prepared: PreparedSubmission) -> dict[str, Any]:
    return json.loads(decrypt_jwe(prepared.encrypted_metadata, [key_set.encryption]).plaintext)


def attachment_plaintext(key_set: KeySet, prepared: PreparedSubmission, index: int) -> bytes:
    att = prepared.attachments[index]
    text = att.jwe.encode() if att.jwe is not None else att.jwe_path.read_bytes()  # type: ignore[union-attr]
    sink = io.BytesIO()
    dec = JWEStreamDecryptor([key_set.encryption], sink)
    dec.feed(text)
    assert dec.finish().tag_b64 == att.tag
    return sink.getvalue()


@pytest.mark.shared
def test_correct_submission(key_set: KeySet, tmp_path: Path, fitconnect_shared: Path) -> None:
    prepared = prepare(key_set, tmp_path)
    try:
        metadata = open_metadata(key_set, prepared)
        schema = json.loads((fitconnect_shared / "metadata.schema.v1.0.0.json").read_text())
        Draft202012Validator(schema).validate(metadata)
        assert metadata == prepared.metadata
        assert metadata["$schema"] == metadata_schema_uri("1.0.0")
        assert metadata["publicServiceType"]["identifier"] == SERVICE
        data = decrypt_jwe(prepared.encrypted_data or "", [key_set.encryption])
        assert data.plaintext == DATA
        assert data.header["cty"] == "application/json"
        assert data.header["kid"] == key_set.encryption.kid
        assert "zip" not in data.header
        assert metadata["contentStructure"]["data"]["hash"]["content"] == hashlib.sha512(DATA).hexdigest()
        listed = {a["attachmentId"]: a for a in metadata["contentStructure"]["attachments"]}
        assert list(listed) == prepared.announced_attachments
        for index, att in enumerate(prepared.attachments):
            plaintext = attachment_plaintext(key_set, prepared, index)
            assert listed[att.attachment_id]["hash"]["content"] == hashlib.sha512(plaintext).hexdigest()
        assert prepared.attachments[1].jwe_path is not None  # the path attachment went through a temp file
        assert attachment_plaintext(key_set, prepared, 1) == b"B" * 300_000
        assert prepared.auth_tags == {
            "metadata": prepared.encrypted_metadata.rsplit(".", 1)[1],
            "data": (prepared.encrypted_data or "").rsplit(".", 1)[1],
            "attachments": {a.attachment_id: a.tag for a in prepared.attachments},
        }
    finally:
        tmp = prepared.attachments[1].jwe_path
        prepared.cleanup()
    assert tmp is not None
    assert not tmp.exists()


def test_legacy_quirks(key_set: KeySet) -> None:
    prepared = prepare(
        key_set,
        kid=key_set.encryption.thumbprint,
        quirks=SenderQuirks(zip_def=True, kid_thumbprint=True, omit_metadata_schema=True),
    )
    for compact in (prepared.encrypted_metadata, prepared.encrypted_data or ""):
        header = parse_jwe(compact).header
        assert header["zip"] == "DEF"
        assert header["kid"] == key_set.encryption.thumbprint
    assert "$schema" not in open_metadata(key_set, prepared)
    assert attachment_plaintext(key_set, prepared, 0) == b"%PDF-1.7 a"


def test_metadata_2_x(key_set: KeySet) -> None:
    metadata = open_metadata(key_set, prepare(key_set, metadata_version="2.1.0"))
    assert metadata["$schema"] == metadata_schema_uri("2.1.0")
    assert "publicServiceType" not in metadata


def test_attachments_only_submission(key_set: KeySet) -> None:
    prepared = prepare(key_set, data=None, data_schema_uri=None, data_mime_type=None)
    assert prepared.encrypted_data is None
    assert "data" not in prepared.auth_tags
    assert "data" not in open_metadata(key_set, prepared)["contentStructure"]


# -- breakages ------------------------------------------------------------------------------------


def test_tampered_ciphertext(key_set: KeySet) -> None:
    prepared = prepare(key_set, breakage=Breakage.TAMPERED_CIPHERTEXT)
    parse_jwe(prepared.encrypted_data or "")  # still well-formed ...
    with pytest.raises(DecryptionError) as info:
        decrypt_jwe(prepared.encrypted_data or "", [key_set.encryption])
    assert info.value.code == "tag-mismatch"  # ... but GCM catches it
    assert prepared.auth_tags["data"] == (prepared.encrypted_data or "").rsplit(".", 1)[1]


def test_foreign_key(key_set: KeySet) -> None:
    prepared = prepare(key_set, breakage=Breakage.FOREIGN_KEY)
    assert parse_jwe(prepared.encrypted_data or "").header["kid"] == key_set.encryption.kid
    with pytest.raises(DecryptionError) as info:
        decrypt_jwe(prepared.encrypted_data or "", [key_set.encryption])
    assert info.value.code == "no-matching-key"
    open_metadata(key_set, prepared)  # metadata stays readable


def test_hash_mismatches(key_set: KeySet) -> None:
    data_broken = prepare(key_set, breakage=Breakage.HASH_MISMATCH)
    plaintext = decrypt_jwe(data_broken.encrypted_data or "", [key_set.encryption]).plaintext
    stated = open_metadata(key_set, data_broken)["contentStructure"]["data"]["hash"]["content"]
    assert stated != hashlib.sha512(plaintext).hexdigest()

    att_broken = prepare(key_set, breakage=Breakage.ATTACHMENT_HASH_MISMATCH)
    listed = open_metadata(key_set, att_broken)["contentStructure"]["attachments"][0]
    assert listed["hash"]["content"] != hashlib.sha512(attachment_plaintext(key_set, att_broken, 0)).hexdigest()
    assert open_metadata(key_set, att_broken)["contentStructure"]["data"]["hash"]["content"] == (
        hashlib.sha512(DATA).hexdigest()
    )


def test_attachments_mismatch(key_set: KeySet) -> None:
    prepared = prepare(key_set, breakage=Breakage.ATTACHMENTS_MISMATCH)
    listed = [a["attachmentId"] for a in open_metadata(key_set, prepared)["contentStructure"]["attachments"]]
    assert len(listed) == 2
    assert set(listed) - set(prepared.announced_attachments)
    assert set(prepared.auth_tags["attachments"]) == set(prepared.announced_attachments)


def test_missing_data(key_set: KeySet) -> None:
    prepared = prepare(key_set, breakage=Breakage.MISSING_DATA)
    assert prepared.encrypted_data is None
    assert "data" in open_metadata(key_set, prepared)["contentStructure"]


def test_invalid_metadata_json(key_set: KeySet) -> None:
    prepared = prepare(key_set, breakage=Breakage.INVALID_METADATA_JSON)
    plaintext = decrypt_jwe(prepared.encrypted_metadata, [key_set.encryption]).plaintext
    with pytest.raises(ValueError):
        json.loads(plaintext)


@pytest.mark.shared
def test_schema_violation_and_version(key_set: KeySet, fitconnect_shared: Path) -> None:
    schema = json.loads((fitconnect_shared / "metadata.schema.v1.0.0.json").read_text())
    violating = open_metadata(key_set, prepare(key_set, breakage=Breakage.METADATA_SCHEMA_VIOLATION))
    assert violating["$schema"] == metadata_schema_uri("1.0.0")
    assert not Draft202012Validator(schema).is_valid(violating)
    unsupported = open_metadata(key_set, prepare(key_set, breakage=Breakage.UNSUPPORTED_METADATA_VERSION))
    assert unsupported["$schema"] == metadata_schema_uri("9.0.0")


def test_service_mismatch(key_set: KeySet) -> None:
    metadata = open_metadata(key_set, prepare(key_set, breakage=Breakage.SERVICE_MISMATCH))
    assert metadata["publicServiceType"]["identifier"] != SERVICE
    with pytest.raises(ValueError):
        prepare(key_set, breakage=Breakage.SERVICE_MISMATCH, metadata_version="2.1.0")


def test_wrong_algorithm(key_set: KeySet) -> None:
    prepared = prepare(key_set, breakage=Breakage.WRONG_ALGORITHM)
    compact = prepared.encrypted_data or ""
    assert compact.count(".") == 4
    with pytest.raises(UnsupportedAlgorithm) as info:
        parse_jwe(compact)
    assert info.value.code == "jwe-enc"


@pytest.mark.parametrize(
    "breakage",
    [
        Breakage.TAMPERED_CIPHERTEXT,
        Breakage.FOREIGN_KEY,
        Breakage.HASH_MISMATCH,
        Breakage.MISSING_DATA,
        Breakage.WRONG_ALGORITHM,
    ],
)
def test_data_breakages_need_data(key_set: KeySet, breakage: Breakage) -> None:
    with pytest.raises(ValueError):
        prepare(key_set, breakage=breakage, data=None, data_schema_uri=None, data_mime_type=None)


def test_attachment_breakage_needs_attachment(key_set: KeySet) -> None:
    with pytest.raises(ValueError):
        prepare(key_set, breakage=Breakage.ATTACHMENT_HASH_MISMATCH, attachments=[])


def test_zustelldienst_breakages_map_to_sandbox_modes() -> None:
    assert {b.value: m for b, m in SANDBOX_TAMPER_MODES.items()} == {
        "auth-tag-mismatch": "auth-tag-mismatch",
        "missing-submit-event": "drop-submit-event",
        "duplicate-submit-event": "duplicate-submit-event",
        "missing-authentication-tags": "missing-authentication-tags",
        "set-wrong-key": "wrong-set-key",
    }


def test_outgoing_attachment_needs_one_source(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        OutgoingAttachment(mime_type="a/b")
    with pytest.raises(ValueError):
        OutgoingAttachment(mime_type="a/b", content=b"x", path=tmp_path)
