"""The pipelined attachment receipt (download -> decryption thread -> hashing and writing threads).

Multi-MB attachments so that every stage really runs in its thread; after receive_attachment returns
or raises, whatever the reason (bad tag, hash mismatch, too large, connection lost, disk full,
cancellation), no pipeline thread runs any more and no temp file is left.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.sources.fitconnect import attachments as attachments_module
from gateway.sources.fitconnect.attachments import ReceivedAttachment, receive_attachment
from gateway.sources.fitconnect.checks import CheckFailed
from gateway.sources.fitconnect.client import ApiError, SubmissionApi, TokenProvider
from gateway.sources.fitconnect.profile import PROFILES
from gateway.store import blobs as blobs_module
from gateway.store.blobs import BlobStore

from .test_subscriber_units import AID, SID, encrypted, encryption_key, failure

MiB = 1 << 20
CONTENT = b"".join(hashlib.sha512(i.to_bytes(4, "big")).digest() for i in range(6 * MiB // 64)) + b"tail"
SHA = hashlib.sha512(CONTENT).hexdigest()


@pytest.fixture(autouse=True)
def small_units(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """256 KiB batches and writer buffers (production: a few MiB), so that 6 MiB run through many
    of them and the event loop and the decryption thread really wait for free buffers."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is None or callspec.params.get("units") != "production":
        monkeypatch.setattr(attachments_module, "FEED_BYTES", 256 * 1024)
        monkeypatch.setattr(blobs_module, "BUFFER_BYTES", 256 * 1024)


@pytest.fixture(scope="module")
def jwe() -> bytes:
    return encrypted(CONTENT).encode()


def tag_of(compact: bytes) -> str:
    return compact.rsplit(b".", 1)[1].decode()


def pipeline_threads() -> list[str]:
    prefixes = ("attachment-decrypt", "blob-")
    return [t.name for t in threading.enumerate() if t.name.startswith(prefixes)]


class Server:
    """Serves one attachment body: whole, chunked, cut off mid-way or stalling mid-way."""

    def __init__(self, body: bytes, *, mode: str = "whole") -> None:
        self.body = body
        self.mode = mode
        self.stalled = asyncio.Event()

    def app(self) -> web.Application:
        async def token(request: web.Request) -> web.Response:
            return web.json_response({"access_token": "t", "expires_in": 600, "token_type": "Bearer"})

        async def attachment(request: web.Request) -> web.StreamResponse:
            if self.mode == "whole":
                return web.Response(body=self.body, content_type="application/jose")
            resp = web.StreamResponse(headers={"Content-Type": "application/jose"})
            if self.mode == "cut":
                resp.content_length = len(self.body)  # promised, never delivered
            else:
                resp.enable_chunked_encoding()
            await resp.prepare(request)
            end = len(self.body) if self.mode == "chunked" else len(self.body) // 2
            for i in range(0, end, 100_003):
                await resp.write(self.body[i : min(i + 100_003, end)])
            if self.mode == "cut":
                assert request.transport is not None
                request.transport.close()
                return resp
            if self.mode == "stall":
                self.stalled.set()
                await asyncio.Event().wait()  # until the server is closed
            await resp.write_eof()
            return resp

        app = web.Application()
        app.router.add_post("/token", token)
        app.router.add_get("/v1/submissions/{sid}/attachments/{aid}", attachment)
        return app


@asynccontextmanager
async def serving(server: Server) -> AsyncIterator[SubmissionApi]:
    srv = TestServer(server.app())
    await srv.start_server()
    base = str(srv.make_url("")).rstrip("/")
    api = SubmissionApi(
        base_url=base, profile=PROFILES["v1"], tokens_for=lambda s: TokenProvider(s, base + "/token", "c", "s")
    )
    try:
        yield api
    finally:
        await api.close()
        await srv.close()


def store(tmp_path: Path) -> BlobStore:
    blobs = BlobStore(tmp_path / "blobs")
    blobs.open()
    return blobs


async def receive(
    api: SubmissionApi, blobs: BlobStore, *, tag: str, sha: str = SHA, **bounds: int
) -> ReceivedAttachment:
    return await receive_attachment(
        api,
        blobs,
        [encryption_key()],
        submission_id=SID,
        attachment_id=AID,
        expected_tag=tag,
        expected_sha512=sha,
        max_attachment_bytes=bounds.get("max_bytes", 8 * MiB),
        max_inflated_bytes=bounds.get("inflated", 8 * MiB),
    )


def assert_clean(blobs: BlobStore) -> None:
    assert pipeline_threads() == []
    assert list(blobs.tmp_dir.iterdir()) == []


@pytest.mark.parametrize("units", ["small", "production"])
@pytest.mark.parametrize("mode", ["whole", "chunked"])
async def test_large_attachment_through_the_pipeline(tmp_path: Path, jwe: bytes, mode: str, units: str) -> None:
    blobs = store(tmp_path)
    async with serving(Server(jwe, mode=mode)) as api:
        got = await receive(api, blobs, tag=tag_of(jwe))
    assert pipeline_threads() == []  # the writer is drained: nothing runs while it waits uncommitted
    assert got.result.size == len(CONTENT)
    ref = got.writer.commit(name=f"attachment:{AID}", attachment_id=AID)
    assert ref.sha512 == SHA
    assert blobs.path(ref).read_bytes() == CONTENT
    assert_clean(blobs)


def broken_tag(compact: bytes) -> bytes:
    return compact[:-3] + (b"AAA" if not compact.endswith(b"AAA") else b"BBB")


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("bad-gcm-tag", "encryption-issue"),
        ("tag-differs-from-log", "incorrect-authentication-tag"),
        ("hash-mismatch", "hash-mismatch"),
        ("too-large", "technical-error"),
    ],
)
async def test_failed_checks_leave_nothing_running(tmp_path: Path, jwe: bytes, case: str, expected: str) -> None:
    blobs = store(tmp_path)
    body = broken_tag(jwe) if case == "bad-gcm-tag" else jwe
    kwargs: dict[str, Any] = {"tag": tag_of(jwe)}
    if case == "tag-differs-from-log":
        kwargs["tag"] = tag_of(broken_tag(jwe))
    if case == "hash-mismatch":
        kwargs["sha"] = hashlib.sha512(b"something else").hexdigest()
    if case == "too-large":
        kwargs.update(max_bytes=3 * MiB, inflated=3 * MiB)  # noticed mid-stream (chunked: no length)
    async with serving(Server(body, mode="chunked")) as api:
        with pytest.raises(CheckFailed) as info:
            await receive(api, blobs, **kwargs)
    assert failure(info.value) == (expected, f"attachment:{AID}")
    assert_clean(blobs)


async def test_connection_lost_mid_stream(tmp_path: Path, jwe: bytes) -> None:
    blobs = store(tmp_path)
    async with serving(Server(jwe, mode="cut")) as api:
        with pytest.raises(ApiError):
            await receive(api, blobs, tag=tag_of(jwe))
    assert_clean(blobs)


async def test_disk_full_mid_stream(tmp_path: Path, jwe: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    real = blobs_module.write_all

    def write_all(fh: Any, data: memoryview) -> None:
        nonlocal calls
        calls += 1
        if calls > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fh, data)

    monkeypatch.setattr(blobs_module, "write_all", write_all)
    blobs = store(tmp_path)
    async with serving(Server(jwe)) as api:
        with pytest.raises(OSError) as info:
            await receive(api, blobs, tag=tag_of(jwe))
    assert info.value.errno == errno.ENOSPC
    assert_clean(blobs)


async def test_cancellation_mid_stream(tmp_path: Path, jwe: bytes) -> None:
    blobs = store(tmp_path)
    server = Server(jwe, mode="stall")
    async with serving(server) as api:
        task = asyncio.create_task(receive(api, blobs, tag=tag_of(jwe)))
        await server.stalled.wait()
        # Wait (no fixed delay) until the writer has put plaintext on disk: every stage has run.
        while not any(p.stat().st_size for p in blobs.tmp_dir.iterdir()):  # noqa: ASYNC110 - a file, not an event
            await asyncio.sleep(0.01)
        assert pipeline_threads() != []
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert_clean(blobs)


async def test_small_attachment_is_decrypted_on_the_loop_without_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = CONTENT[:100_000]
    compact = encrypted(small).encode()
    started: list[str] = []
    real_start = threading.Thread.start

    def recording_start(self: threading.Thread) -> None:
        started.append(self.name)
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", recording_start)
    blobs = store(tmp_path)
    async with serving(Server(compact)) as api:
        got = await receive(api, blobs, tag=tag_of(compact), sha=hashlib.sha512(small).hexdigest())
    assert [n for n in started if n.startswith(("attachment-decrypt", "blob-"))] == []
    ref = got.writer.commit(name=f"attachment:{AID}", attachment_id=AID)
    assert blobs.path(ref).read_bytes() == small
    assert_clean(blobs)
