"""One end-to-end test per entry of the problem catalogue (gateway/fitconnect/problems.py).

Each test makes the sandbox receive a broken submission (sender Breakage, sandbox tamper mode, or a
hand-made variant), then starts the gateway and asserts the exact problem type and instance in the
reject-submission SET the sandbox recorded, and that the gateway stored the submission as REJECTED.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from gateway.fitconnect.problems import CATALOGUE
from gateway.model import AckState, MessageState
from gateway.sources.fitconnect.attachments import encrypted_bound

from .subscriber_helpers import (
    BAU_SERVICE,
    GEWERBE_SERVICE,
    PDF,
    Breakage,
    Gateway,
    OutgoingAttachment,
    SenderQuirks,
    e2e,
)

COVERED: dict[str, list[str]] = {}  # catalogue code -> tests (checked by test_every_catalogue_entry_is_tested)


def covers(*codes: str) -> Any:
    def mark(fn: Any) -> Any:
        for code in codes:
            COVERED.setdefault(code, []).append(fn.__name__)
        return fn

    return mark


async def assert_rejected(
    gw: Gateway, sent: Any, expected: list[tuple[str, str | None]], *, stored_payload: bool = False
) -> list[dict[str, Any]]:
    got = await gw.rejected_with(sent)
    assert got == expected
    stored = await gw.wait_stored(sent.submission_id)
    assert stored.envelope.state is MessageState.REJECTED
    if not stored_payload:  # a submission failing a receipt check releases none of its payload
        assert stored.envelope.data is None
        assert stored.envelope.attachments == ()
    outcome = await gw.outcome(sent)
    problems: list[dict[str, Any]] = outcome.payload["problems"]
    for problem in problems:
        assert problem["title"]
        assert problem["detail"]
    stored = await gw.wait_stored(sent.submission_id)
    assert stored.envelope.ack in (AckState.PENDING, AckState.DONE)
    return problems


def one_pdf(**kwargs: Any) -> list[OutgoingAttachment]:
    return [OutgoingAttachment(mime_type="application/pdf", filename="nachweis.pdf", content=PDF, **kwargs)]


# -- sender-side breakages ----------------------------------------------------------------------------

SENDER_CASES = [
    (Breakage.TAMPERED_CIPHERTEXT, "encryption-issue", "data"),
    (Breakage.FOREIGN_KEY, "encryption-issue", "data"),
    (Breakage.WRONG_ALGORITHM, "encryption-issue", "data"),
    (Breakage.HASH_MISMATCH, "hash-mismatch", "data"),
    (Breakage.MISSING_DATA, "missing-data", "data"),
    (Breakage.INVALID_METADATA_JSON, "syntax-violation", "metadata"),
    (Breakage.METADATA_SCHEMA_VIOLATION, "schema-violation", "metadata"),
    (Breakage.UNSUPPORTED_METADATA_VERSION, "unsupported-schema", "metadata"),
    (Breakage.SERVICE_MISMATCH, "service-mismatch", None),
    (Breakage.ATTACHMENTS_MISMATCH, "attachments-mismatch", None),
]


@covers(
    "data-encryption-issue",
    "data-hash-mismatch",
    "missing-data",
    "metadata-syntax-violation",
    "metadata-schema-violation",
    "metadata-unsupported-schema",
    "service-mismatch",
    "attachments-mismatch",
)
@pytest.mark.parametrize(("breakage", "type_", "instance"), SENDER_CASES, ids=[c[0].value for c in SENDER_CASES])
async def test_sender_breakage(
    tmp_path: Path, fitconnect_shared: Path, breakage: Breakage, type_: str, instance: str | None
) -> None:
    async with e2e(tmp_path, fitconnect_shared, start=False) as gw:
        sent = await gw.send(breakage=breakage)
        await gw.start()
        await assert_rejected(gw, sent, [(type_, instance)])


@covers("attachment-hash-mismatch")
async def test_attachment_hash_mismatch(tmp_path: Path, fitconnect_shared: Path) -> None:
    async with e2e(tmp_path, fitconnect_shared, start=False) as gw:
        sent = await gw.send(attachments=one_pdf(), breakage=Breakage.ATTACHMENT_HASH_MISMATCH)
        await gw.start()
        await assert_rejected(gw, sent, [("hash-mismatch", f"attachment:{sent.attachment_ids[0]}")])


# -- Zustelldienst-side faults (sandbox tamper modes) -----------------------------------------------

TAMPER_CASES = [
    (Breakage.MISSING_SUBMIT_EVENT, "invalid-event-log"),
    (Breakage.DUPLICATE_SUBMIT_EVENT, "invalid-event-log"),
    (Breakage.SET_WRONG_KEY, "invalid-event-log"),
    (Breakage.MISSING_AUTHENTICATION_TAGS, "missing-authentication-tags"),
]


@covers("invalid-event-log", "missing-authentication-tags")
@pytest.mark.parametrize(("breakage", "type_"), TAMPER_CASES, ids=[c[0].value for c in TAMPER_CASES])
async def test_event_log_fault(tmp_path: Path, fitconnect_shared: Path, breakage: Breakage, type_: str) -> None:
    async with e2e(tmp_path, fitconnect_shared, start=False) as gw:
        sent = await gw.send(breakage=breakage)
        await gw.start()
        await assert_rejected(gw, sent, [(type_, None)])
        stored = await gw.wait_stored(sent.submission_id)
        # What could still be known is kept for the audit: the metadata decrypts fine.
        assert stored.envelope.metadata["metadata"]["contentStructure"]["data"]["submissionSchema"]


@covers(
    "metadata-incorrect-authentication-tag",
    "data-incorrect-authentication-tag",
    "attachment-incorrect-authentication-tag",
)
@pytest.mark.parametrize("part", ["metadata", "data", "attachment"])
async def test_authentication_tag_mismatch(tmp_path: Path, fitconnect_shared: Path, part: str) -> None:
    async with e2e(tmp_path, fitconnect_shared, start=False) as gw:
        sent = await gw.send(attachments=one_pdf())
        target = f"attachment:{sent.attachment_ids[0]}" if part == "attachment" else part
        gw.sandbox.tamper(sent.case_id, sent.submission_id, "auth-tag-mismatch", target)
        await gw.start()
        await assert_rejected(gw, sent, [("incorrect-authentication-tag", target)])


@covers("metadata-encryption-issue", "attachment-encryption-issue")
@pytest.mark.parametrize("part", ["metadata", "attachment"])
async def test_corrupted_ciphertext(tmp_path: Path, fitconnect_shared: Path, part: str) -> None:
    async with e2e(tmp_path, fitconnect_shared, start=False) as gw:
        sent = await gw.send(attachments=one_pdf())
        target = f"attachment:{sent.attachment_ids[0]}" if part == "attachment" else part
        gw.sandbox.tamper(sent.case_id, sent.submission_id, "corrupt-ciphertext", target)
        await gw.start()
        await assert_rejected(gw, sent, [("encryption-issue", target)])


# -- metadata ---------------------------------------------------------------------------------------


@covers("missing-schema")
async def test_missing_schema_when_not_allowed(tmp_path: Path, fitconnect_shared: Path) -> None:
    async with e2e(tmp_path, fitconnect_shared, start=False, allow_missing_metadata_schema=False) as gw:
        sent = await gw.send(quirks=SenderQuirks(omit_metadata_schema=True))
        await gw.start()
        await assert_rejected(gw, sent, [("missing-schema", "metadata")])


async def test_metadata_version_the_gateway_does_not_support(tmp_path: Path, fitconnect_shared: Path) -> None:
    # The destination offers 2.1.0 but this gateway is configured for 1.0.0 only.
    async with e2e(tmp_path, fitconnect_shared, start=False, metadata_versions=["1.0.0"]) as gw:
        sent = await gw.send(version="2.1.0")
        await gw.start()
        problems = await assert_rejected(gw, sent, [("unsupported-schema", "metadata")])
        assert "not supported by this gateway" in problems[0]["detail"]


async def test_metadata_version_the_destination_does_not_offer(tmp_path: Path, fitconnect_shared: Path) -> None:
    async with e2e(tmp_path, fitconnect_shared, start=False) as gw:
        sent = await gw.send(version="2.1.0")
        gw.sandbox.sandbox.update_destination(gw.sandbox.destination_id, metadata_versions=("1.0.0",))
        await gw.start()
        problems = await assert_rejected(gw, sent, [("unsupported-schema", "metadata")])
        assert "not offered by the destination" in problems[0]["detail"]


@covers("metadata-too-large")
async def test_metadata_zip_bomb_is_bounded(tmp_path: Path, fitconnect_shared: Path) -> None:
    # 9 MiB of description deflates to a few KB: the inflation bound (8 MiB) stops it.
    attachments = one_pdf(description="a" * (9 << 20))
    async with e2e(tmp_path, fitconnect_shared, start=False) as gw:
        sent = await gw.send(attachments=attachments, quirks=SenderQuirks(zip_def=True))
        await gw.start()
        await assert_rejected(gw, sent, [("technical-error", "metadata")])


@covers("unsupported-service")
async def test_service_no_longer_offered(tmp_path: Path, fitconnect_shared: Path) -> None:
    async with e2e(tmp_path, fitconnect_shared, start=False) as gw:
        sent = await gw.send()
        dest = gw.sandbox.sandbox.destination(gw.sandbox.destination_id)
        remaining = tuple(s for s in dest.services if s.identifier != GEWERBE_SERVICE)
        gw.sandbox.sandbox.update_destination(gw.sandbox.destination_id, services=remaining)
        await gw.start()
        await assert_rejected(gw, sent, [("unsupported-service", None)])


@covers("unsupported-reply-channel")
async def test_reply_channel_not_offered(tmp_path: Path, fitconnect_shared: Path) -> None:
    async with e2e(tmp_path, fitconnect_shared, start=False) as gw:
        gw.sandbox.sandbox.update_destination(gw.sandbox.destination_id, reply_channels={"eMail": {"usePgp": False}})

        def elster(metadata: dict[str, Any]) -> None:
            metadata["replyChannel"] = {"elster": {"accountId": "1234567890"}}

        sent = await gw.send_custom(elster)
        await gw.start()
        problems = await assert_rejected(gw, sent, [("unsupported-reply-channel", "metadata")])
        assert "elster" in problems[0]["detail"]
        assert "1234567890" not in problems[0]["detail"]


async def test_offered_reply_channel_is_accepted(tmp_path: Path, fitconnect_shared: Path) -> None:
    async with e2e(tmp_path, fitconnect_shared, start=False) as gw:
        gw.sandbox.sandbox.update_destination(gw.sandbox.destination_id, reply_channels={"eMail": {"usePgp": False}})

        def email(metadata: dict[str, Any]) -> None:
            metadata["replyChannel"] = {"eMail": {"address": "antrag@example.org"}}

        sent = await gw.send_custom(email)
        await gw.start()
        assert (await gw.outcome(sent)).event_name == "accept-submission"


# -- data -------------------------------------------------------------------------------------------


@covers("data-unsupported-schema")
async def test_data_schema_not_offered_for_the_service(tmp_path: Path, fitconnect_shared: Path) -> None:
    async with e2e(tmp_path, fitconnect_shared, start=False) as gw:
        sent = await gw.send(schema="https://schema.example.org/demo/other/1.0.0/other.schema.json")
        await gw.start()
        await assert_rejected(gw, sent, [("unsupported-schema", "data")])


async def test_data_schema_without_local_copy(tmp_path: Path, fitconnect_shared: Path) -> None:
    async with e2e(tmp_path, fitconnect_shared, start=False, data_schema_dirs=None) as gw:
        sent = await gw.send()
        await gw.start()
        problems = await assert_rejected(gw, sent, [("unsupported-schema", "data")])
        assert "no local copy" in problems[0]["detail"]


DATA_CASES = [
    ("json-syntax", GEWERBE_SERVICE, b'{"antragsart": "Neuerrichtung", ', "syntax-violation"),
    ("json-duplicate-member", GEWERBE_SERVICE, b'{"antragsart": "Zuzug", "antragsart": "Zuzug"}', "syntax-violation"),
    ("json-schema", GEWERBE_SERVICE, b'{"antragsart": "Neuerrichtung", "betrieb": {}}', "schema-violation"),
    ("xml-syntax", BAU_SERVICE, b'<Bauantrag xmlns="urn:example:demo:bauantrag:1.0">', "syntax-violation"),
    (
        "xml-entity",
        BAU_SERVICE,
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        b'<Bauantrag xmlns="urn:example:demo:bauantrag:1.0">&e;</Bauantrag>',
        "syntax-violation",
    ),
    (
        "xml-schema",
        BAU_SERVICE,
        b'<Bauantrag xmlns="urn:example:demo:bauantrag:1.0" version="1.0"/>',
        "schema-violation",
    ),
]


@covers("data-syntax-violation", "data-schema-violation")
@pytest.mark.parametrize(("service", "data", "type_"), [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
async def test_data_content(tmp_path: Path, fitconnect_shared: Path, service: str, data: bytes, type_: str) -> None:
    async with e2e(tmp_path, fitconnect_shared, start=False) as gw:
        sent = await gw.send(service=service, data=data)
        await gw.start()
        problems = await assert_rejected(gw, sent, [(type_, "data")])
        for value in (b"Neuerrichtung", b"Zuzug", b"passwd"):
            assert value.decode() not in problems[0]["detail"]  # rules, not values


@covers("data-too-large")
async def test_data_over_the_bound(tmp_path: Path, fitconnect_shared: Path) -> None:
    async with e2e(tmp_path, fitconnect_shared, start=False, max_data_bytes=64) as gw:
        sent = await gw.send()
        await gw.start()
        await assert_rejected(gw, sent, [("technical-error", "data")])


@covers("attachment-too-large")
@pytest.mark.parametrize("zipped", [False, True], ids=["plain", "zip-bomb"])
async def test_attachment_over_the_bound(tmp_path: Path, fitconnect_shared: Path, zipped: bool) -> None:
    big = tmp_path / "zeros.bin"
    big.write_bytes(bytes(4 << 20))  # 4 MiB of zeros: deflates to a few KB
    # A path, not bytes: the sender streams it (aiohttp warns about large in-memory bodies).
    attachments = [OutgoingAttachment(mime_type="application/octet-stream", path=big)]
    options = {"max_inflated_bytes": 1 << 20} if zipped else {"max_attachment_bytes": 1 << 20}
    async with e2e(tmp_path, fitconnect_shared, start=False, **options) as gw:
        sent = await gw.send(attachments=attachments, quirks=SenderQuirks(zip_def=zipped))
        await gw.start()
        problems = await assert_rejected(gw, sent, [("technical-error", f"attachment:{sent.attachment_ids[0]}")])
        # the detail names the bound that triggered, not another one (the 500 MiB default)
        detail = problems[0]["detail"]
        # plain: 4 MiB of ciphertext is refused by the encrypted bound for 1 MiB; zip: by the inflation bound
        bound = ("inflated", 1 << 20) if zipped else ("encrypted", encrypted_bound(1 << 20))
        assert f"attachment's {bound[0]} size exceeds the receiver's bound of {bound[1]} bytes" in detail
        assert "524288000" not in detail


# -- refused by the gateway itself ----------------------------------------------------------------------


@covers("technical-error")
async def test_no_route_becomes_technical_error(tmp_path: Path, fitconnect_shared: Path) -> None:
    async with e2e(tmp_path, fitconnect_shared, start=False) as gw:
        gw.routes = f'[[routes]]\nname = "bau"\nadapter = "fs"\n[routes.match]\nservice = "{BAU_SERVICE}"\n'
        sent = await gw.send()
        await gw.start()
        # It passed every FIT-Connect check (so its payload is stored) but no route takes it.
        problems = await assert_rejected(gw, sent, [("technical-error", None)], stored_payload=True)
        assert problems[0]["detail"].startswith("gateway problem ")


def test_every_catalogue_entry_is_tested() -> None:
    assert sorted(COVERED) == sorted(CATALOGUE), set(CATALOGUE) ^ set(COVERED)


def test_catalogue_entries_are_unique_by_type_and_instance() -> None:
    pairs = [(k.type, k.instance) for k in CATALOGUE.values()]
    assert len(pairs) == len(set(pairs))
    assert all(dataclasses.is_dataclass(k) for k in CATALOGUE.values())
