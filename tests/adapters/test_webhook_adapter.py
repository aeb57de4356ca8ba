from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters.blobdir import BlobDir, FailingBlobDir, corrupt, make_context, make_envelope
from adapters.pki import make_pki
from adapters.webhook_receiver import Receiver
from gateway.adapters.base import Adapter, Delivery, DeliveryOutcome, DeliveryResult
from gateway.model import Envelope
from gateway_webhook import WebhookAdapter, create

ServerFactory = Callable[..., Awaitable[TestServer]]
TOKEN = "s3cr3t-T0ken.with_chars~+/="
PDF = b"%PDF-1.7\n" + bytes(range(256)) * 64


@pytest.fixture
def receiver() -> Receiver:
    return Receiver()


@pytest.fixture
async def server(aiohttp_server: ServerFactory, receiver: Receiver) -> Any:
    srv = await aiohttp_server(receiver.app())
    yield srv
    receiver.release.set()  # let hanging handlers finish so the server shuts down at once


@pytest.fixture
async def adapters() -> Any:
    made: list[Adapter] = []
    yield made
    for adapter in made:
        await adapter.close()


@pytest.fixture
def make_adapter(tmp_path: Path, server: TestServer, adapters: list[Adapter]) -> Callable[..., Adapter]:
    def make(**options: Any) -> Adapter:
        options.setdefault("url", str(server.make_url("/inbox")))
        adapter = create(make_context(tmp_path), options)
        adapters.append(adapter)
        return adapter

    return make


async def deliver(adapter: Adapter, envelope: Envelope, blobs: BlobDir, attempt: int = 1) -> DeliveryResult:
    return await adapter.deliver(Delivery(envelope, blobs, attempt, envelope.id))


def sha512(data: bytes) -> str:
    return hashlib.sha512(data).hexdigest()


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_json_body_arrives_intact_with_headers_and_token(
    tmp_path: Path, blobs: BlobDir, receiver: Receiver, make_adapter: Callable[..., Adapter]
) -> None:
    (tmp_path / "token.txt").write_text(TOKEN + "\n")
    adapter = make_adapter(auth_token={"file": "token.txt"}, headers={"X-Behoerde": "Bauamt Musterstadt"})
    envelope = make_envelope(blobs, attachments=[(PDF, "../Lageplan.pdf"), (b"", None)], metadata={"k": "ü"})

    result = await deliver(adapter, envelope, blobs)
    assert result == DeliveryResult.delivered("FV-2026-000123", reason="HTTP 201 Created")

    [request] = receiver.received
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Idempotency-Key"] == envelope.id
    assert request.headers["X-Gateway-Message-Id"] == envelope.id
    assert request.headers["X-Gateway-Attempt"] == "1"
    assert request.headers["X-Behoerde"] == "Bauamt Musterstadt"
    assert request.headers["Content-Type"] == "application/json"
    document = json.loads(request.body)
    assert document["format_version"] == 1
    assert document["gateway_id"] == envelope.id
    assert document["source"]["reference"] == envelope.source.reference
    assert document["received_at"] == "2026-11-24T21:30:05+00:00"
    assert document["routing"] == envelope.routing.as_dict()
    assert document["metadata"] == {"k": "ü"}
    parts = [document["data"], *document["attachments"]]
    assert [p["part"] for p in parts] == [b.name for b in envelope.blobs]
    assert [p["filename"] for p in parts] == [None, "../Lageplan.pdf", None]  # as sent; receiver sanitises
    for part, blob in zip(parts, envelope.blobs, strict=True):
        content = base64.b64decode(part["content_base64"], validate=True)
        assert len(content) == part["size"] == blob.size
        assert sha512(content) == part["sha512"] == blob.sha512
        assert part["media_type"] == blob.media_type
        assert part["attachment_id"] == blob.attachment_id


async def test_multipart_body_is_streamed_and_arrives_intact(
    tmp_path: Path, receiver: Receiver, make_adapter: Callable[..., Adapter]
) -> None:
    blobs = BlobDir(tmp_path / "blobs", chunk_size=64 * 1024)
    big = os.urandom(3 * 1024 * 1024 + 17)
    adapter = make_adapter(format="multipart", max_inline_bytes=1024)  # the inline limit is for json only
    envelope = make_envelope(
        blobs,
        data=b"<antrag/>",
        data_media_type="application/xml",
        attachments=[
            (big, "Bauzeichnung Ost.pdf"),
            (PDF, 'C:\\tmp\\"quoted"\r\nname.pdf'),
            (b"x", "Größe.txt"),
            (b"y", None),
        ],
    )
    result = await deliver(adapter, envelope, blobs)
    assert result.outcome is DeliveryOutcome.DELIVERED

    [request] = receiver.received
    assert request.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert int(request.headers["Content-Length"]) > len(big)  # sizes known up front: not chunked
    assert "Transfer-Encoding" not in request.headers
    assert request.headers["Idempotency-Key"] == envelope.id
    manifest_part, *file_parts = request.parts
    assert manifest_part.name == "manifest"
    assert manifest_part.content_type == "application/json"
    manifest = json.loads(manifest_part.content)
    described = [manifest["data"], *manifest["attachments"]]
    assert [d["field"] for d in described] == ["data", "attachment-1", "attachment-2", "attachment-3", "attachment-4"]
    assert [p.name for p in file_parts] == [d["field"] for d in described]
    assert [p.filename for p in file_parts] == [
        "data.xml",
        "Bauzeichnung Ost.pdf",
        "_quoted_name.pdf",
        "Größe.txt",
        "attachment-4.pdf",
    ]
    assert described[2]["filename"] == 'C:\\tmp\\"quoted"\r\nname.pdf'  # exact original in the manifest
    for part, entry, blob in zip(file_parts, described, envelope.blobs, strict=True):
        assert part.sha512 == entry["sha512"] == blob.sha512
        assert len(part.content) == entry["size"]
        assert part.content_type == blob.media_type
        assert "content_base64" not in entry


async def test_idempotency_key_is_stable_across_attempts(
    blobs: BlobDir, receiver: Receiver, make_adapter: Callable[..., Adapter]
) -> None:
    adapter = make_adapter()
    envelope = make_envelope(blobs)
    for attempt in (1, 2, 3):
        assert (await deliver(adapter, envelope, blobs, attempt)).outcome is DeliveryOutcome.DELIVERED
    assert [r.headers["Idempotency-Key"] for r in receiver.received] == [envelope.id] * 3
    assert [r.headers["X-Gateway-Attempt"] for r in receiver.received] == ["1", "2", "3"]
    assert "Authorization" not in receiver.received[0].headers
    assert isinstance(adapter, WebhookAdapter)
    session = adapter._session
    assert session is not None
    assert not session.closed
    await adapter.close()
    assert session.closed


def respond(status: int, *, body: bytes = b"", headers: dict[str, str] | None = None, reason: str | None = None) -> Any:
    async def responder(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=body, headers=headers, reason=reason)

    return responder


REDIRECT = "HTTP 301 Moved Permanently (redirects are not followed; configure the final url)"
PAST = "Wed, 21 Oct 2015 07:28:00 GMT"
PERSONAL = b'{"error": "Antragstellerin Erika Mustermann, geb. 01.02.1980, unbekannt"}'


@pytest.mark.parametrize(
    ("status", "headers", "body", "outcome", "reason", "reference"),
    [
        (200, {}, b"", DeliveryOutcome.DELIVERED, "HTTP 200 OK", None),
        (200, {"Content-Type": "application/json"}, b'{"id": 4711}', DeliveryOutcome.DELIVERED, "HTTP 200 OK", "4711"),
        (201, {"Location": "/vorgaenge/V-9"}, b"", DeliveryOutcome.DELIVERED, "HTTP 201 Created", "/vorgaenge/V-9"),
        (
            202,
            {"Content-Type": "application/problem+json", "Location": "/q/1"},
            b'{"id": "has space"}',
            DeliveryOutcome.DELIVERED,
            "HTTP 202 Accepted",
            "/q/1",
        ),
        (204, {}, b"", DeliveryOutcome.DELIVERED, "HTTP 204 No Content", None),
        (
            301,
            {"Location": "https://elsewhere/"},
            b"",
            DeliveryOutcome.PERMANENT,
            REDIRECT,
            None,
        ),
        (400, {}, PERSONAL, DeliveryOutcome.PERMANENT, "HTTP 400 Bad Request", None),
        (401, {}, b"", DeliveryOutcome.PERMANENT, "HTTP 401 Unauthorized", None),
        (404, {}, b"", DeliveryOutcome.PERMANENT, "HTTP 404 Not Found", None),
        (409, {}, PERSONAL, DeliveryOutcome.PERMANENT, "HTTP 409 Conflict", None),
        (413, {}, b"", DeliveryOutcome.PERMANENT, "HTTP 413 Request Entity Too Large", None),
        (422, {}, PERSONAL, DeliveryOutcome.PERMANENT, "HTTP 422 Unprocessable Entity", None),
        (408, {}, b"", DeliveryOutcome.TRANSIENT, "HTTP 408 Request Timeout", None),
        (
            429,
            {"Retry-After": "120"},
            PERSONAL,
            DeliveryOutcome.TRANSIENT,
            "HTTP 429 Too Many Requests (Retry-After: 120 s)",
            None,
        ),
        (429, {"Retry-After": "soon"}, b"", DeliveryOutcome.TRANSIENT, "HTTP 429 Too Many Requests", None),
        (500, {}, PERSONAL, DeliveryOutcome.TRANSIENT, "HTTP 500 Internal Server Error", None),
        (502, {}, b"", DeliveryOutcome.TRANSIENT, "HTTP 502 Bad Gateway", None),
        (
            503,
            {"Retry-After": PAST},
            b"",
            DeliveryOutcome.TRANSIENT,
            "HTTP 503 Service Unavailable (Retry-After: 0 s)",
            None,
        ),
        (504, {}, b"", DeliveryOutcome.TRANSIENT, "HTTP 504 Gateway Timeout", None),
        (599, {}, b"", DeliveryOutcome.TRANSIENT, "HTTP 599", None),
    ],
)
async def test_status_mapping(
    blobs: BlobDir,
    receiver: Receiver,
    make_adapter: Callable[..., Adapter],
    status: int,
    headers: dict[str, str],
    body: bytes,
    outcome: DeliveryOutcome,
    reason: str,
    reference: str | None,
) -> None:
    # The server's own reason phrase is free text too: it must not reach the reason either.
    receiver.respond = respond(status, body=body, headers=headers, reason="Erika Mustermann abgelehnt")
    result = await deliver(make_adapter(), make_envelope(blobs), blobs)
    assert (result.outcome, result.reason, result.reference) == (outcome, reason, reference)
    # Retry-After reaches the worker as a number, so the retry waits at least that long.
    assert (result.retry_after is not None) == ("(Retry-After:" in reason)
    assert "Mustermann" not in result.reason
    assert len(receiver.received) == 1


async def test_timeout_is_transient(blobs: BlobDir, receiver: Receiver, make_adapter: Callable[..., Adapter]) -> None:
    async def hang(request: web.Request) -> web.StreamResponse:
        await receiver.release.wait()
        return web.Response(status=200)

    receiver.respond = hang
    adapter = make_adapter(timeout=0.3, connect_timeout=0.3)
    result = await deliver(adapter, make_envelope(blobs), blobs)
    assert result == DeliveryResult.transient("no complete response within 0.3 s")


async def test_connection_refused_is_transient(tmp_path: Path, blobs: BlobDir, adapters: list[Adapter]) -> None:
    port = unused_port()
    adapter = create(make_context(tmp_path), {"url": f"http://127.0.0.1:{port}/inbox", "timeout": 5})
    adapters.append(adapter)
    result = await deliver(adapter, make_envelope(blobs), blobs)
    assert result == DeliveryResult.transient(f"cannot connect to 127.0.0.1:{port}: ECONNREFUSED")


async def test_json_over_max_inline_bytes_fails_permanently_without_sending(
    blobs: BlobDir, receiver: Receiver, make_adapter: Callable[..., Adapter]
) -> None:
    adapter = make_adapter(max_inline_bytes=2048)
    envelope = make_envelope(blobs, data=b"{}", attachments=[(b"a" * 2046, "a.txt")])  # 2048: fits
    assert (await deliver(adapter, envelope, blobs)).outcome is DeliveryOutcome.DELIVERED
    envelope = make_envelope(blobs, data=b"{}", attachments=[(b"a" * 2047, "a.txt")])  # 2049: too big
    result = await deliver(adapter, envelope, blobs)
    assert result == DeliveryResult.permanent(
        "message has 2049 bytes of parts, more than max_inline_bytes=2048 allowed for format=json"
    )
    assert receiver.started == 1


@pytest.mark.parametrize("body_format", ["json", "multipart"])
async def test_hash_mismatch_is_permanent_and_never_completes_a_request(
    tmp_path: Path, receiver: Receiver, make_adapter: Callable[..., Adapter], body_format: str
) -> None:
    blobs = BlobDir(tmp_path / "blobs", chunk_size=1024)
    envelope = make_envelope(blobs, attachments=[(PDF, "plan.pdf")])
    corrupt(blobs, envelope.attachments[0], PDF[:-1] + b"!")
    result = await deliver(make_adapter(format=body_format), envelope, blobs)
    assert result == DeliveryResult.permanent(
        f"part {envelope.attachments[0].name}: stored blob does not match its recorded sha512"
    )
    assert receiver.received == []  # json: nothing sent; multipart: the body was cut short


@pytest.mark.parametrize("body_format", ["json", "multipart"])
async def test_blob_read_error_is_transient(
    tmp_path: Path, receiver: Receiver, make_adapter: Callable[..., Adapter], body_format: str
) -> None:
    blobs = FailingBlobDir(tmp_path / "blobs", fail_after=3, error=OSError(5, "Input/output error"))
    envelope = make_envelope(blobs, attachments=[(PDF, "plan.pdf")])
    result = await deliver(make_adapter(format=body_format), envelope, blobs)
    assert result == DeliveryResult.transient("reading the stored blob failed: EIO")
    assert receiver.received == []


async def test_non_json_metadata_is_permanent(
    blobs: BlobDir, receiver: Receiver, make_adapter: Callable[..., Adapter]
) -> None:
    for body_format in ("json", "multipart"):
        adapter = make_adapter(format=body_format)
        result = await deliver(adapter, make_envelope(blobs, metadata={"x": {1, 2}}), blobs)
        assert result == DeliveryResult.permanent("envelope metadata is not JSON-serialisable")
    assert receiver.started == 0


async def test_check_and_close(make_adapter: Callable[..., Adapter], blobs: BlobDir) -> None:
    adapter = make_adapter()
    assert await adapter.check() is None
    assert (await deliver(adapter, make_envelope(blobs), blobs)).outcome is DeliveryOutcome.DELIVERED
    await adapter.close()
    assert await adapter.check() is None
    # A closed adapter can still deliver: it opens a fresh session inside the running loop.
    assert (await deliver(adapter, make_envelope(blobs), blobs)).outcome is DeliveryOutcome.DELIVERED


# --- TLS against a real HTTPS loopback server ---


@pytest.fixture
def pki(tmp_path: Path) -> Any:
    return make_pki(tmp_path / "pki")


async def tls_server(
    aiohttp_server: ServerFactory, receiver: Receiver, pki: Any, require_client_cert: bool
) -> TestServer:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    if require_client_cert:
        context.load_verify_locations(pki.ca_cert)
        context.verify_mode = ssl.CERT_REQUIRED
    return await aiohttp_server(receiver.app(), ssl=context)


async def test_tls_with_private_ca_and_client_certificate(
    tmp_path: Path, blobs: BlobDir, receiver: Receiver, aiohttp_server: ServerFactory, pki: Any, adapters: list[Adapter]
) -> None:
    srv = await tls_server(aiohttp_server, receiver, pki, require_client_cert=True)
    url = str(srv.make_url("/inbox"))
    assert url.startswith("https://127.0.0.1:")
    options = {"url": url, "ca_file": "pki/ca.pem", "client_cert": "pki/client.pem", "client_key": "pki/client.key"}
    adapter = create(make_context(tmp_path), options)
    adapters.append(adapter)
    assert (await deliver(adapter, make_envelope(blobs), blobs)).outcome is DeliveryOutcome.DELIVERED

    without_client_cert = create(make_context(tmp_path), {"url": url, "ca_file": "pki/ca.pem"})
    adapters.append(without_client_cert)
    result = await deliver(without_client_cert, make_envelope(blobs), blobs)
    assert result.outcome is DeliveryOutcome.TRANSIENT
    assert len(receiver.received) == 1


async def test_tls_server_not_trusted(
    tmp_path: Path, blobs: BlobDir, receiver: Receiver, aiohttp_server: ServerFactory, pki: Any, adapters: list[Adapter]
) -> None:
    srv = await tls_server(aiohttp_server, receiver, pki, require_client_cert=False)
    url = str(srv.make_url("/inbox"))
    for options in ({"url": url}, {"url": url, "ca_file": "pki/other-ca.pem"}):
        adapter = create(make_context(tmp_path), options)
        adapters.append(adapter)
        result = await deliver(adapter, make_envelope(blobs), blobs)
        assert result == DeliveryResult.transient("TLS certificate of 127.0.0.1 not accepted")
    assert receiver.started == 0
