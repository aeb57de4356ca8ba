"""The test sender against the real local sandbox Zustelldienst on loopback, checked as a subscriber would.

Everything on the receiving side here uses only our own protocol modules (jose, sets, keys), so these
tests also exercise the subscriber-side building blocks end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.fitconnect import sets
from gateway.fitconnect.jose import DecryptionError, JWEStreamDecryptor, decrypt_jwe, parse_jwe
from gateway.fitconnect.keys import load_public_jwk
from gateway.fitconnect.sets import SETError, build_set, parse_set, verify_set
from gateway_sandbox.online_service.cli import add_send_parser
from gateway_sandbox.online_service.sender import Breakage, OutgoingAttachment, Sender, SenderError, SenderQuirks
from gateway_sandbox.zustelldienst.app import create_sandbox_app
from gateway_sandbox.zustelldienst.config import (
    ClientConfig,
    DestinationConfig,
    SandboxConfig,
    ServiceConfig,
    SubmissionSchema,
)
from gateway_sandbox.zustelldienst.zsd_key import ZsdSigningKey, load_or_create

from .conftest import TEST_DESTINATION_ID, KeySet

SERVICE = "urn:de:fim:leika:leistung:99050012104000"
SCHEMA_URI = "https://schema.example.org/demo/gewerbeanmeldung/1.0.0/gewerbeanmeldung.schema.json"
DATA = json.dumps({"gewerbe": {"bezeichnung": "Testbetrieb"}}).encode()
SENDER_ID, SENDER_SECRET = "onlinedienst-test", "sender-secret-" + "s" * 32
SUBSCRIBER_ID, SUBSCRIBER_SECRET = "gateway-test", "subscriber-secret-" + "g" * 32

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


@pytest.fixture(scope="module")
def zsd_key() -> ZsdSigningKey:
    return load_or_create(None, None)


@pytest.fixture
async def sandbox_url(aiohttp_server: ServerFactory, key_set: KeySet, zsd_key: ZsdSigningKey) -> str:
    config = SandboxConfig(
        destinations=(
            DestinationConfig(
                id=TEST_DESTINATION_ID,
                services=(
                    ServiceConfig(SERVICE, ("DE09162000",), (SubmissionSchema(SCHEMA_URI, "application/json"),)),
                ),
                encryption_keys=(key_set.encryption_public,),
                signing_keys=(key_set.signing_public,),
                metadata_versions=("1.0.0", "2.1.0"),
                encryption_kid=key_set.encryption.kid,
            ),
        ),
        clients=(
            ClientConfig(SENDER_ID, SENDER_SECRET, ("send:region:DE",)),
            ClientConfig(SUBSCRIBER_ID, SUBSCRIBER_SECRET, (f"subscribe:destination:{TEST_DESTINATION_ID}",)),
        ),
    )
    server = await aiohttp_server(create_sandbox_app(config, zsd_key=zsd_key))
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def sender(sandbox_url: str) -> AsyncIterator[Sender]:
    async with Sender(sandbox_url, f"{sandbox_url}/token", SENDER_ID, SENDER_SECRET) as s:
        yield s


class Subscriber:
    """The receiving side, reduced to what these tests need."""

    def __init__(self, http: aiohttp.ClientSession, base: str, key_set: KeySet) -> None:
        self.http, self.base, self.key_set = http, base, key_set
        self.token = ""

    async def login(self) -> None:
        form = {"grant_type": "client_credentials", "client_id": SUBSCRIBER_ID, "client_secret": SUBSCRIBER_SECRET}
        async with self.http.post(f"{self.base}/token", data=form) as resp:
            assert resp.status == 200
            self.token = (await resp.json())["access_token"]

    async def get(self, path: str) -> aiohttp.ClientResponse:
        resp = await self.http.get(self.base + path, headers={"Authorization": f"Bearer {self.token}"})
        await resp.read()
        return resp

    async def events(self, case_id: str) -> list[sets.ParsedSET]:
        async with self.http.get(f"{self.base}/.well-known/jwks.json") as resp:
            jwks = {k["kid"]: k for k in (await resp.json())["keys"]}
        resp = await self.get(f"/v1/cases/{case_id}/events")
        assert resp.status == 200
        parsed = []
        for token in (await resp.json())["eventLog"]:
            event = parse_set(token)
            assert event.issuer == self.base
            verify_set(event, load_public_jwk(jwks[event.header["kid"]]))
            parsed.append(event)
        return parsed

    def open(self, compact: str) -> bytes:
        return decrypt_jwe(compact, [self.key_set.encryption]).plaintext


@pytest.fixture
async def subscriber(sandbox_url: str, key_set: KeySet) -> AsyncIterator[Subscriber]:
    async with aiohttp.ClientSession() as http:
        sub = Subscriber(http, sandbox_url, key_set)
        await sub.login()
        yield sub


def attachments(tmp_path: Path) -> list[OutgoingAttachment]:
    big = tmp_path / "plan.bin"
    big.write_bytes(bytes(range(256)) * 4096)  # 1 MiB, sent through the streaming path
    return [
        OutgoingAttachment(mime_type="application/pdf", filename="nachweis.pdf", content=b"%PDF-1.7 Nachweis"),
        OutgoingAttachment(mime_type="application/octet-stream", filename="plan.bin", path=big),
    ]


async def test_full_round_trip_and_accept(
    sender: Sender, subscriber: Subscriber, key_set: KeySet, tmp_path: Path
) -> None:
    sent = await sender.send(
        destination_id=TEST_DESTINATION_ID, service_identifier=SERVICE, service_name="Gewerbeanmeldung",
        data=DATA, data_schema_uri=SCHEMA_URI, data_mime_type="application/json", attachments=attachments(tmp_path),
    )  # fmt: skip

    listing = await (await subscriber.get(f"/v1/submissions?destinationId={TEST_DESTINATION_ID}")).json()
    assert {"destinationId": TEST_DESTINATION_ID, "submissionId": sent.submission_id, "caseId": sent.case_id} in (
        listing["submissions"]
    )
    submission = await (await subscriber.get(f"/v1/submissions/{sent.submission_id}")).json()
    assert sorted(submission["attachments"]) == sorted(sent.attachment_ids)
    assert submission["serviceType"]["identifier"] == SERVICE

    metadata = json.loads(subscriber.open(submission["encryptedMetadata"]))
    assert metadata == sent.metadata
    data = subscriber.open(submission["encryptedData"])
    assert data == DATA
    assert metadata["contentStructure"]["data"]["hash"]["content"] == hashlib.sha512(data).hexdigest()
    hashes = {a["attachmentId"]: a["hash"]["content"] for a in metadata["contentStructure"]["attachments"]}
    for attachment_id in sent.attachment_ids:
        resp = await subscriber.get(f"/v1/submissions/{sent.submission_id}/attachments/{attachment_id}")
        assert resp.status == 200
        assert resp.content_type == "application/jose"
        sink = io.BytesIO()
        dec = JWEStreamDecryptor([key_set.encryption], sink)
        async for chunk in _chunks(await resp.read(), 65_537):
            dec.feed(chunk)
        result = dec.finish()
        assert result.sha512_hex == hashes[attachment_id]
        assert result.tag_b64 == sent.auth_tags["attachments"][attachment_id]

    events = await subscriber.events(sent.case_id)
    assert [e.event for e in events] == [sets.CREATE_SUBMISSION, sets.SUBMIT_SUBMISSION]
    assert events[1].event_payload["authenticationTags"] == sent.auth_tags
    assert {e.submission_id for e in events} == {sent.submission_id}

    accept = build_set(
        issuer=TEST_DESTINATION_ID, submission_id=sent.submission_id, case_id=sent.case_id,
        event=sets.ACCEPT_SUBMISSION, payload={"authenticationTags": sent.auth_tags},
        key=key_set.signing.key, kid=key_set.signing.kid,
    )  # fmt: skip
    async with subscriber.http.post(
        f"{subscriber.base}/v1/cases/{sent.case_id}/events",
        data=accept,
        headers={"Authorization": f"Bearer {subscriber.token}", "Content-Type": "application/jose"},
    ) as resp:
        assert resp.status == 204, await resp.text()
    assert (await subscriber.get(f"/v1/submissions/{sent.submission_id}")).status == 404  # content deleted


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]
        await asyncio.sleep(0)


async def test_legacy_quirks_and_metadata_2x(sender: Sender, subscriber: Subscriber, key_set: KeySet) -> None:
    sent = await sender.send(
        destination_id=TEST_DESTINATION_ID, service_identifier=SERVICE, service_name="Gewerbeanmeldung",
        data=DATA, data_schema_uri=SCHEMA_URI, data_mime_type="application/json", metadata_version="2.1.0",
        quirks=SenderQuirks(zip_def=True, kid_thumbprint=True),
    )  # fmt: skip
    submission = await (await subscriber.get(f"/v1/submissions/{sent.submission_id}")).json()
    header = parse_jwe(submission["encryptedData"]).header
    assert (header["zip"], header["kid"]) == ("DEF", key_set.encryption.thumbprint)
    assert subscriber.open(submission["encryptedData"]) == DATA
    assert json.loads(subscriber.open(submission["encryptedMetadata"]))["$schema"].endswith(
        "/2.1.0/metadata.schema.json"
    )


async def test_sender_side_breakage_reaches_the_subscriber(sender: Sender, subscriber: Subscriber) -> None:
    sent = await sender.send(
        destination_id=TEST_DESTINATION_ID, service_identifier=SERVICE, service_name="Gewerbeanmeldung",
        data=DATA, data_schema_uri=SCHEMA_URI, data_mime_type="application/json", breakage=Breakage.FOREIGN_KEY,
    )  # fmt: skip
    submission = await (await subscriber.get(f"/v1/submissions/{sent.submission_id}")).json()
    with pytest.raises(DecryptionError) as info:
        subscriber.open(submission["encryptedData"])
    assert info.value.code == "no-matching-key"


async def _submit_submission_events(subscriber: Subscriber, case_id: str) -> list[sets.ParsedSET]:
    return [e for e in await subscriber.events(case_id) if e.event == sets.SUBMIT_SUBMISSION]


async def _send(sender: Sender, breakage: Breakage) -> Any:
    return await sender.send(
        destination_id=TEST_DESTINATION_ID, service_identifier=SERVICE, service_name="Gewerbeanmeldung",
        data=DATA, data_schema_uri=SCHEMA_URI, data_mime_type="application/json", breakage=breakage,
    )  # fmt: skip


async def test_zustelldienst_side_breakages(sender: Sender, subscriber: Subscriber) -> None:
    sent = await _send(sender, Breakage.MISSING_SUBMIT_EVENT)
    assert await _submit_submission_events(subscriber, sent.case_id) == []

    sent = await _send(sender, Breakage.DUPLICATE_SUBMIT_EVENT)
    assert len(await _submit_submission_events(subscriber, sent.case_id)) == 2

    sent = await _send(sender, Breakage.MISSING_AUTHENTICATION_TAGS)
    (event,) = await _submit_submission_events(subscriber, sent.case_id)
    assert "authenticationTags" not in event.event_payload

    sent = await _send(sender, Breakage.AUTH_TAG_MISMATCH)
    (event,) = await _submit_submission_events(subscriber, sent.case_id)
    recorded = event.event_payload["authenticationTags"]
    assert recorded["metadata"] == sent.auth_tags["metadata"]
    assert recorded["data"] != sent.auth_tags["data"]

    sent = await _send(sender, Breakage.SET_WRONG_KEY)
    with pytest.raises(SETError) as info:
        await subscriber.events(sent.case_id)
    assert info.value.code == "signature"


async def test_sender_errors(sandbox_url: str) -> None:
    async with Sender(sandbox_url, f"{sandbox_url}/token", SENDER_ID, "wrong-secret") as bad:
        with pytest.raises(SenderError) as info:
            await bad.destination_key(TEST_DESTINATION_ID)
    assert (info.value.step, info.value.status) == ("token", 401)
    async with Sender(sandbox_url, f"{sandbox_url}/token", SENDER_ID, SENDER_SECRET) as good:
        with pytest.raises(SenderError) as info:
            await good.destination_key("00000000-0000-4000-8000-000000000000")
        assert (info.value.step, info.value.status) == ("destination", 404)
        with pytest.raises(SenderError) as info:
            await good.send(
                destination_id=TEST_DESTINATION_ID, service_identifier=SERVICE, service_name="x", data=DATA,
                data_schema_uri=SCHEMA_URI, data_mime_type="application/json", metadata_version="1.2.0",
            )  # fmt: skip
        assert info.value.step == "destination"


async def test_cli_send(sandbox_url: str, subscriber: Subscriber, tmp_path: Path, capsys: Any) -> None:
    (tmp_path / "secret.txt").write_text(SENDER_SECRET + "\n")
    (tmp_path / "data.json").write_bytes(DATA)
    (tmp_path / "anlage.pdf").write_bytes(b"%PDF-1.7 CLI")
    parser = argparse.ArgumentParser(prog="gateway")
    add_send_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        ["send", "--url", sandbox_url, "--token-url", f"{sandbox_url}/token", "--client-id", SENDER_ID,
         "--client-secret-file", str(tmp_path / "secret.txt"), "--destination", TEST_DESTINATION_ID,
         "--service", SERVICE, "--data", str(tmp_path / "data.json"), "--data-schema", SCHEMA_URI,
         "--attach", str(tmp_path / "anlage.pdf"), "--break", "hash-mismatch"]
    )  # fmt: skip
    assert await asyncio.to_thread(args.func, args) == 0
    printed = capsys.readouterr().out  # (structlog prints to stdout here; the CLI main routes it to stderr)
    out = json.loads(printed[printed.index('{\n  "submissionId"') :])
    submission = await (await subscriber.get(f"/v1/submissions/{out['submissionId']}")).json()
    assert submission["caseId"] == out["caseId"]
    metadata = json.loads(subscriber.open(submission["encryptedMetadata"]))
    assert metadata["contentStructure"]["attachments"][0]["filename"] == "anlage.pdf"
    assert metadata["contentStructure"]["data"]["hash"]["content"] != hashlib.sha512(DATA).hexdigest()

    bad = parser.parse_args([*args_list(args), "--client-id", "nobody"])
    assert await asyncio.to_thread(bad.func, bad) == 1
    assert "token" in capsys.readouterr().err


def args_list(args: argparse.Namespace) -> list[str]:
    return ["send", "--url", args.url, "--token-url", args.token_url, "--client-secret-file",
            str(args.client_secret_file), "--destination", args.destination, "--service", args.service]  # fmt: skip
