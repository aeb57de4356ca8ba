"""Streaming receipt of one attachment: HTTP chunks → JWE stream decryption → blob temp file.

Memory stays bounded by a few MB whatever the attachment's size: the compact JWE is never held
whole, the plaintext goes straight into a :class:`~gateway.store.blobs.BlobWriter`. The GCM tag is
only known (and checked) at the very end; until then the temp file is unauthenticated and is
discarded on any failure. The caller commits the writer only when every check of the submission passed.

The work is pipelined over the cores: the event loop keeps receiving while a decryption thread
works on the previous batches of chunks (base64url, AES-GCM), and the pipelined blob writer hashes
and writes in two more threads. Every thread is stopped before :func:`receive_attachment` returns
or raises, whatever the outcome (an error, a failed check or cancellation).

Bounds: the encrypted body may be at most ``max_attachment_bytes * 4/3`` (+ header slack); the
plaintext at most ``max_attachment_bytes``, or ``max_inflated_bytes`` for legacy ``zip: DEF`` parts
(the header is peeked first so the right bound applies from the first inflated byte on).
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, TypeVar, cast

from gateway.fitconnect.jose import (
    MAX_HEADER_CHARS,
    JoseError,
    JWEStreamDecryptor,
    PlaintextTooLarge,
    PrivateKeyEntry,
    StreamResult,
    b64url_decode,
)
from gateway.sources.fitconnect.checks import CheckFailed, check_hash, fail
from gateway.sources.fitconnect.client import SubmissionApi
from gateway.store.blobs import BlobStore, BlobWriter

FEED_BYTES = 4 << 20  # hand the decryption thread batches of 4 MiB (one thread hop each)
INLINE_BYTES = 256 * 1024  # a smaller attachment is decrypted on the event loop (no thread at all)
BATCHES_IN_FLIGHT = 3  # batches received but not yet decrypted, at most (bounds the memory)
JWE_OVERHEAD = 64 * 1024  # header, encrypted key, iv, tag and dots around the ciphertext

T = TypeVar("T")


@dataclass
class ReceivedAttachment:
    writer: BlobWriter  # uncommitted; commit or abort
    result: StreamResult


def encrypted_bound(plaintext_bound: int) -> int:
    """Largest acceptable compact JWE for a plaintext bound (base64url: 4 chars per 3 bytes)."""
    return plaintext_bound * 4 // 3 + 4 + JWE_OVERHEAD


def _zip_of_header(prefix: bytes) -> bool | None:
    """Whether the JWE header (first segment, complete in ``prefix``) declares zip; None if not yet known."""
    dot = prefix.find(b".")
    if dot < 0:
        return None
    try:
        header = json.loads(b64url_decode(prefix[:dot].decode("ascii"), what="header"))
    except (JoseError, UnicodeDecodeError, ValueError):
        return False  # let the decryptor produce the precise format error
    return isinstance(header, dict) and "zip" in header


class _DecryptStage:
    """A thread that runs the decryptor over the received bytes while the event loop receives more.

    Received chunks are copied into one of a few recycled buffers and dropped at once: chunks kept
    alive until another thread is done with them are freed in bulk, and the allocator then hands
    the memory back to the kernel and faults it in anew for the next chunks (measured: that costs
    more than the copy). A full buffer goes to the thread; the event loop waits only when every
    buffer is in flight (``BATCHES_IN_FLIGHT``). :meth:`close` stops and joins the thread.

    The thread is only started for the first full batch: an attachment of at most ``INLINE_BYTES``
    (the usual scanned form) is decrypted on the event loop, where it costs less than the hop.
    """

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight: deque[tuple[asyncio.Future[None], bytearray]] = deque()
        self._buf = bytearray()  # the first buffer grows with the data: small attachments stay small
        self._fill = 0
        self._stopping = False

    async def write(self, decryptor: JWEStreamDecryptor, chunk: bytes) -> None:
        """Take a received chunk; raises the error of an earlier batch (the decryptor stays failed)."""
        view, off = memoryview(chunk), 0
        while off < len(view):
            take = min(FEED_BYTES - self._fill, len(view) - off)
            self._buf[self._fill : self._fill + take] = view[off : off + take]
            self._fill += take
            off += take
            if self._fill == FEED_BYTES:
                self._submit(decryptor)
                self._buf, self._fill = await self._free_buffer(), 0

    def _submit(self, decryptor: JWEStreamDecryptor) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attachment-decrypt")
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, self._feed, decryptor, self._buf)
        self._in_flight.append((future, self._buf))

    async def _free_buffer(self) -> bytearray:
        if len(self._in_flight) < BATCHES_IN_FLIGHT:
            return bytearray(FEED_BYTES)
        future, buf = self._in_flight.popleft()
        await future
        return buf

    def _feed(self, decryptor: JWEStreamDecryptor, data: bytearray) -> None:
        if not self._stopping:
            decryptor.feed(data)

    async def call(self, decryptor: JWEStreamDecryptor, fn: Callable[[], T]) -> T:
        """Hand over the rest, then run ``fn`` in the thread once every batch is done."""
        if self._pool is None and self._fill <= INLINE_BYTES:
            if self._fill:
                decryptor.feed(self._buf[: self._fill])
                self._fill = 0
            return fn()
        if self._fill:
            del self._buf[self._fill :]  # the last, partial batch (not recycled any more)
            self._submit(decryptor)
            self._fill = 0
        while self._in_flight:
            future, _ = self._in_flight.popleft()
            await future
        assert self._pool is not None
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def close(self) -> None:
        """Skip what is still queued and join the thread (it finishes at most one batch)."""
        self._stopping = True
        for future, _ in self._in_flight:
            future.cancel()  # nobody awaits them any more: no "exception never retrieved"
        self._in_flight.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _finish(decryptor: JWEStreamDecryptor, writer: BlobWriter) -> StreamResult:
    result = decryptor.finish()  # the GCM tag: only now is the temp file's content authentic
    writer.drain()  # everything hashed and on disk; the writer's threads are stopped
    return result


async def receive_attachment(
    api: SubmissionApi,
    blobs: BlobStore,
    keys: Sequence[PrivateKeyEntry],
    *,
    submission_id: str,
    attachment_id: str,
    expected_tag: str,
    expected_sha512: str,
    max_attachment_bytes: int,
    max_inflated_bytes: int,
) -> ReceivedAttachment:
    """Download, decrypt, hash and store (uncommitted) one attachment; raise CheckFailed or ApiError."""
    limit = encrypted_bound(max(max_attachment_bytes, max_inflated_bytes))
    # the plaintext bound in force: max_inflated_bytes once the header says zip (named in the problem)
    bound, bound_kind = max_attachment_bytes, "plaintext"
    writer = blobs.writer(pipelined=True)
    stage = _DecryptStage()
    try:
        try:
            decryptor: JWEStreamDecryptor | None = None
            prefix = b""
            received = 0
            async with api.attachment(submission_id, attachment_id) as resp:
                declared = resp.content_length
                if declared is not None and declared > limit:
                    raise _too_large(attachment_id, limit, "encrypted")
                # iter_chunks: the chunks as received, never joined or sliced.
                async for chunk, _ in resp.content.iter_chunks():
                    received += len(chunk)
                    if received > limit:
                        raise _too_large(attachment_id, limit, "encrypted")
                    if decryptor is None:
                        prefix += chunk
                        zipped = _zip_of_header(prefix[: MAX_HEADER_CHARS + 1])
                        if zipped is None and len(prefix) <= MAX_HEADER_CHARS:
                            continue
                        if zipped:
                            bound, bound_kind = max_inflated_bytes, "inflated"
                        # The blob writer hashes what it stores: the decryptor need not hash it again.
                        decryptor = JWEStreamDecryptor(
                            keys, cast(BinaryIO, writer), max_plaintext=bound, hash_plaintext=False
                        )
                        chunk, prefix = prefix, b""
                    await stage.write(decryptor, chunk)
            if decryptor is None:  # a body shorter than the header bound without a dot
                decryptor = JWEStreamDecryptor(
                    keys, cast(BinaryIO, writer), max_plaintext=max_attachment_bytes, hash_plaintext=False
                )
                await stage.write(decryptor, prefix)
            result = await stage.call(decryptor, lambda: _finish(decryptor, writer))
        except PlaintextTooLarge:
            raise _too_large(attachment_id, bound, bound_kind) from None
        except JoseError as exc:
            raise fail(
                "attachment-encryption-issue",
                f"attachment cannot be decrypted ({exc.code})",
                attachment_id=attachment_id,
            ) from None
        finally:
            stage.close()  # joins the decryption thread, also when cancelled or failed
        if result.tag_b64 != expected_tag:
            raise fail(
                "attachment-incorrect-authentication-tag",
                "the attachment's authentication tag differs from the event log",
                attachment_id=attachment_id,
            )
        check_hash(writer.sha512_hex(), expected_sha512, "attachment-hash-mismatch", "attachment", attachment_id)
        if "zip" not in result.header and result.size > max_attachment_bytes:
            raise _too_large(attachment_id, max_attachment_bytes, "plaintext")
        return ReceivedAttachment(writer, result)
    except BaseException:
        writer.abort()  # stops the writer's threads (if any still run) and removes the temp file
        raise


def _too_large(attachment_id: str, bound: int, what: str) -> CheckFailed:
    """The bound that triggered, named as what it bounds (encrypted body, plaintext, inflated zip DEF)."""
    return fail(
        "attachment-too-large",
        f"the attachment's {what} size exceeds the receiver's bound of {bound} bytes",
        attachment_id=attachment_id,
    )
