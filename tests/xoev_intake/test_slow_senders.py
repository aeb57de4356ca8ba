"""Slow senders (slowloris): bounded header time, bounded body time, bounded uploads per sender.

A gateway of its own with short bounds (header_timeout 1 s, body_timeout 2 s, 4 uploads per sender).
The assertions are about outcomes, never about how fast they came: each wait has a generous patience.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from .conftest import Gateway, Pki, antrag, start_gateway

pytestmark = pytest.mark.asyncio(loop_scope="module")

PORTAL = "/xoev/portal/messages"
PATIENCE = 60.0
STALLED = 50


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def slow_gateway(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, antrag_bundle: Path, xoev_cache: Path
) -> AsyncIterator[Gateway]:
    bundles = [{"name": "antrag", "dir": str(antrag_bundle), "entries": ["antrag.xsd"]}]
    async with start_gateway(
        tmp_path_factory.mktemp("slow"),
        pki,
        bundles,
        xoev_cache,
        http_extra=("header_timeout = 1", "body_timeout = 2"),
        portal_extra=("max_concurrent_uploads = 4",),
    ) as gw:
        yield gw


async def _connect(gateway: Gateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    context: ssl.SSLContext = gateway.pki.client_context()
    port = int(gateway.base_url.rsplit(":", 1)[1])
    return await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost")


def _head(gateway: Gateway, length: int) -> bytes:
    return (
        f"POST {PORTAL} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/xml\r\n"
        f"Authorization: Bearer {gateway.tokens['portal-a']}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, object], bytes]:
    """(status, problem body, raw head) of the one answer on the connection; status 0: closed unanswered."""
    raw = await asyncio.wait_for(reader.read(), PATIENCE)  # the gateway closes after answering
    if not raw:
        return 0, {}, b""
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body) if body else {}, head


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        await writer.wait_closed()


async def test_stalled_bodies_get_408_or_429_and_free_their_slots(slow_gateway: Gateway) -> None:
    doc = antrag()
    before = len(await slow_gateway.runtime.store.list_messages(limit=1000))
    connections = []
    for _ in range(STALLED):  # each sends its headers and half the body, then stops
        reader, writer = await _connect(slow_gateway)
        writer.write(_head(slow_gateway, len(doc)) + doc[: len(doc) // 2])
        await writer.drain()
        connections.append((reader, writer))
    answers = await asyncio.gather(*(_answer(reader) for reader, _ in connections))
    for _, writer in connections:
        await _close(writer)
    statuses = sorted(status for status, _, _ in answers)
    # four uploads of the sender were read until the body timeout; every other one was refused at once
    assert statuses == [408] * 4 + [429] * (STALLED - 4), statuses
    for status, body, head in answers:
        assert b"application/problem+json" in head
        assert (
            body["type"]
            == f"https://ozg-gateway.example/problems/{'request-timeout' if status == 408 else 'too-many-uploads'}"
        )
        if status == 429:
            assert b"Retry-After: 10" in head
    # the slots are free again: the sender's next message is accepted, nothing half-received was stored
    status, body, _ = await slow_gateway.post(PORTAL, doc, sender="portal-a")
    assert status == 202, body
    assert len(await slow_gateway.runtime.store.list_messages(limit=1000)) == before + 1


async def test_other_senders_are_not_blocked_by_a_slow_one(slow_gateway: Gateway) -> None:
    doc = antrag()
    stalled = []
    for _ in range(4):
        reader, writer = await _connect(slow_gateway)
        writer.write(_head(slow_gateway, len(doc)) + doc[:10])
        await writer.drain()
        stalled.append((reader, writer))
    status, body, _ = await slow_gateway.post(PORTAL, antrag(), sender="portal-b")
    assert status == 202, body
    for reader, writer in stalled:
        assert (await _answer(reader))[0] == 408
        await _close(writer)


@pytest.mark.parametrize(
    "prefix",
    [b"", b"POST /xoev/portal/messages HTTP/1.1\r\nHost: localhost\r\nContent-Ty"],
    ids=["idle", "trickled-headers"],
)
async def test_incomplete_headers_are_closed_unanswered(slow_gateway: Gateway, prefix: bytes) -> None:
    reader, writer = await _connect(slow_gateway)
    writer.write(prefix)
    await writer.drain()
    status, _, _ = await _answer(reader)  # returns when the gateway closes the connection
    assert status == 0
    await _close(writer)
