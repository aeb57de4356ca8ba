"""Who may send: bearer tokens, pinned client certificates (mTLS), per-sender author allow-lists;
status endpoint isolation; idempotency on the message UUID; draining and a dead validator worker."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import ssl
import uuid

import aiohttp
import pytest

from gateway.components import Drain
from gateway.model import MessageState

from .conftest import Gateway, antrag

pytestmark = pytest.mark.asyncio(loop_scope="session")

PORTAL = "/xoev/portal/messages"
BEHOERDEN = "/xoev/behoerden"


async def test_no_credentials(gateway: Gateway) -> None:
    status, body, headers = await gateway.post(PORTAL, antrag())
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Bearer realm="portal"'
    assert body["type"].endswith("/unauthorized")
    assert body["reason"] == "missing-credentials"


async def test_wrong_token(gateway: Gateway) -> None:
    status, body, headers = await gateway.post(
        PORTAL, antrag(), headers={"Authorization": "Bearer " + gateway.tokens["portal-a"] + "x"}
    )
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Bearer realm="portal", error="invalid_token"'
    assert body["reason"] == "invalid-token"
    assert gateway.tokens["portal-a"] not in str(body)


async def test_other_authorization_scheme(gateway: Gateway) -> None:
    status, body, _ = await gateway.post(PORTAL, antrag(), headers={"Authorization": "Basic cG9ydGFsOnNlY3JldA=="})
    assert status == 401
    assert body["reason"] == "invalid-token"


async def test_sender_of_another_endpoint_is_forbidden(gateway: Gateway) -> None:
    status, body, _ = await gateway.post(PORTAL, antrag(), sender="amt-x")
    assert status == 403
    assert body["type"].endswith("/sender-not-allowed")
    status, body, _ = await gateway.post(BEHOERDEN, antrag(), sender="portal-a")
    assert status == 403
    # and the endpoint's own sender is fine
    status, body, _ = await gateway.post(BEHOERDEN, antrag(), sender="amt-x")
    assert status == 202, body


async def test_author_allow_list(gateway: Gateway) -> None:
    status, body, _ = await gateway.post(PORTAL, antrag(author="amt:0001"), sender="strict")
    assert status == 202, body
    status, body, _ = await gateway.post(PORTAL, antrag(author="amt:9999"), sender="strict")
    assert status == 403
    assert body["type"].endswith("/author-not-allowed")
    assert "amt:9999" not in str(body)


async def test_refused_before_the_body_is_sent(gateway: Gateway) -> None:
    """``Expect: 100-continue``: credentials and the declared length are checked before the client
    sends a byte of the body (a raw TLS connection that never sends it gets its answer)."""
    host, port = gateway.base_url.removeprefix("https://").split(":")
    context = gateway.pki.client_context()
    for auth, length, expected in (
        ("Bearer wrong-token-value-123456", 100, b"HTTP/1.1 401"),
        (f"Bearer {gateway.tokens['portal-a']}", 10**9, b"HTTP/1.1 413"),
    ):
        reader, writer = await asyncio.open_connection(host, int(port), ssl=context)
        request = (
            f"POST {PORTAL} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\n"
            f"Content-Type: application/xml\r\nContent-Length: {length}\r\nExpect: 100-continue\r\n\r\n"
        )
        writer.write(request.encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 30)
        assert status_line.startswith(expected), status_line
        writer.close()
        await writer.wait_closed()


# -- client certificates ------------------------------------------------------------------------------


async def test_pinned_client_certificate(gateway: Gateway) -> None:
    status, body, _ = await gateway.post(PORTAL, antrag(), client="portal-mtls")
    assert status == 202, body
    stored = await gateway.runtime.store.get(body["id"])
    assert stored is not None
    assert stored.envelope.metadata["sender"] == "portal-mtls"
    assert stored.envelope.routing.sender == "portal-mtls"


async def test_ca_issued_but_not_pinned_certificate(gateway: Gateway) -> None:
    status, body, _ = await gateway.post(PORTAL, antrag(), client="intruder")
    assert status == 401
    assert body["reason"] == "certificate-not-allowed"


async def test_certificate_not_from_the_client_ca_fails_the_handshake(gateway: Gateway) -> None:
    # same subject as the pinned one, but self-signed: the TLS layer refuses it before HTTP
    with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
        async with gateway.session(rogue=True).post(
            gateway.base_url + PORTAL, data=antrag(), headers={"Content-Type": "application/xml"}
        ) as resp:
            await resp.read()


async def test_sender_with_token_and_certificate_needs_both(gateway: Gateway) -> None:
    status, body, _ = await gateway.post(PORTAL, antrag(), sender="portal-both")
    assert (status, body["reason"]) == (401, "certificate-required")
    status, body, _ = await gateway.post(PORTAL, antrag(), client="portal-both")
    assert (status, body["reason"]) == (401, "token-required")
    status, body, _ = await gateway.post(PORTAL, antrag(), sender="portal-a", client="portal-both")
    assert status == 202  # a token-only sender over an mTLS connection is still that sender
    status, body, _ = await gateway.post(PORTAL, antrag(), sender="portal-both", client="portal-both")
    assert status == 202, body
    stored = await gateway.runtime.store.get(body["id"])
    assert stored is not None
    assert stored.envelope.metadata["sender"] == "portal-both"


# -- status endpoint ------------------------------------------------------------------------------------


async def test_status_only_for_the_sender(gateway: Gateway) -> None:
    status, body, _ = await gateway.post(PORTAL, antrag(), sender="portal-a")
    assert status == 202
    message_id = body["id"]
    await gateway.settled(message_id)
    status, shown, _ = await gateway.get(f"{PORTAL}/{message_id}", sender="portal-a")
    assert status == 200
    assert shown["id"] == message_id
    assert shown["state"] == MessageState.ACKNOWLEDGED.value
    assert shown["problems"] == []
    for other in ("portal-b", "strict"):
        status, shown, _ = await gateway.get(f"{PORTAL}/{message_id}", sender=other)
        assert status == 404
        assert shown["type"].endswith("/message-not-found")
    status, _, _ = await gateway.get(f"{PORTAL}/{message_id}", client="portal-mtls")
    assert status == 404
    status, _, headers = await gateway.get(f"{PORTAL}/{message_id}")
    assert status == 401
    assert "WWW-Authenticate" in headers
    status, _, _ = await gateway.get(f"{PORTAL}/{message_id}", sender="amt-x")
    assert status == 403
    for unknown in (str(uuid.uuid4()), "not-a-uuid", message_id.upper()):
        status, _, _ = await gateway.get(f"{PORTAL}/{unknown}", sender="portal-a")
        assert status == 404


async def test_status_of_another_endpoints_message(gateway: Gateway) -> None:
    status, body, _ = await gateway.post(BEHOERDEN, antrag(), sender="amt-x")
    assert status == 202
    assert (await gateway.get(f"{BEHOERDEN}/{body['id']}", sender="amt-x"))[0] == 200
    assert (await gateway.get(f"{PORTAL}/{body['id']}", sender="portal-a"))[0] == 404


# -- idempotency -----------------------------------------------------------------------------------------


async def test_same_message_uuid_same_id(gateway: Gateway) -> None:
    message_uuid = str(uuid.uuid4())
    first = await gateway.post(PORTAL, antrag(message_uuid=message_uuid), sender="portal-a")
    second = await gateway.post(PORTAL, antrag(message_uuid=message_uuid), sender="portal-a")
    assert first[0] == second[0] == 202
    assert first[1]["id"] == second[1]["id"]
    assert (first[1]["duplicate"], second[1]["duplicate"]) == (False, True)
    stored = await gateway.runtime.store.get(first[1]["id"])
    assert stored is not None
    assert stored.envelope.source.reference == message_uuid
    assert stored.envelope.source.idempotency_key == f"portal-a:antrag.Einreichen.0100:{message_uuid}"

    # another sender using the same UUID is another message
    other = await gateway.post(PORTAL, antrag(message_uuid=message_uuid), sender="portal-b")
    assert other[0] == 202
    assert other[1]["id"] != first[1]["id"]

    # the same sender, the same UUID, other content: a conflict, never silently the old message
    status, body, _ = await gateway.post(PORTAL, antrag(message_uuid=message_uuid, betrag="99.00"), sender="portal-a")
    assert status == 409
    assert body["type"].endswith("/message-uuid-conflict")
    assert body["id"] == first[1]["id"]


# -- availability ----------------------------------------------------------------------------------------


async def test_draining_intake_answers_503(gateway: Gateway) -> None:
    gateway.runtime.intake.drain = Drain()  # the intake's own: the HTTP surface stays open
    gateway.runtime.intake.drain.begin()
    try:
        status, body, headers = await gateway.post(PORTAL, antrag(), sender="portal-a")
    finally:
        gateway.runtime.intake.drain = gateway.runtime.drain
    assert status == 503
    assert body["type"].endswith("/draining")
    assert headers["Retry-After"] == "30"


async def test_dead_validator_worker_answers_503_then_recovers(gateway: Gateway) -> None:
    validator = gateway.runtime.subsystems["xoev"].validator  # type: ignore[attr-defined]
    assert validator is not None
    (pid,) = validator.worker_pids
    os.kill(pid, signal.SIGKILL)
    status, body, headers = await gateway.post(PORTAL, antrag(), sender="portal-a")
    assert status == 503
    assert body["type"].endswith("/validation-unavailable")
    assert headers["Retry-After"] == "30"
    # a replacement worker is started; the next message waits for it and is accepted
    status, body, _ = await gateway.post(PORTAL, antrag(), sender="portal-a")
    assert status == 202, body
    assert validator.worker_pids != [pid]


async def test_message_without_a_usable_id_is_keyed_by_its_hash(gateway: Gateway) -> None:
    document = antrag(message_uuid="kein gültiger Schlüssel")  # spaces, umlaut: not used as a key
    status, body, _ = await gateway.post(PORTAL, document, sender="portal-a")
    assert status == 202
    stored = await gateway.runtime.store.get(body["id"])
    assert stored is not None
    assert stored.envelope.source.reference == "sha256:" + hashlib.sha256(document).hexdigest()
    assert stored.envelope.metadata["xoev"]["message_id"] is None
    again = await gateway.post(PORTAL, document, sender="portal-a")
    assert again[1]["id"] == body["id"]
