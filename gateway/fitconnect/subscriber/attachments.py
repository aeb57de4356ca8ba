"""Streaming receipt of one attachment: HTTP chunks → JWE stream decryption → blob temp file.

Memory stays bounded by a few MB whatever the attachment's size: the compact JWE is never held
whole, the plaintext goes straight into a :class:`~gateway.store.blobs.BlobWriter`. The GCM tag is
only known (and checked) at the very end; until then the temp file is unauthenticated and is
discarded on any failure. The caller commits the writer only when every check of the submission passed.

Bounds: the encrypted body may be at most ``max_attachment_bytes * 4/3`` (+ header slack); the
plaintext at most ``max_attachment_bytes``, or ``max_inflated_bytes`` for legacy ``zip: DEF`` parts
(the header is peeked first so the right bound applies from the first inflated byte on).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO, cast

from gateway.fitconnect.jose import (
    MAX_HEADER_CHARS,
    JoseError,
    JWEStreamDecryptor,
    PlaintextTooLarge,
    PrivateKeyEntry,
    StreamResult,
    b64url_decode,
)
from gateway.fitconnect.subscriber.checks import CheckFailed, check_hash, fail
from gateway.fitconnect.subscriber.client import SubmissionApi
from gateway.store.blobs import BlobStore, BlobWriter

FEED_BYTES = 1 << 20  # hand the decryptor 1 MiB at a time (one thread hop per MiB)
JWE_OVERHEAD = 64 * 1024  # header, encrypted key, iv, tag and dots around the ciphertext


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
    writer = blobs.writer()
    try:
        decryptor: JWEStreamDecryptor | None = None
        prefix = b""
        buffer = bytearray()
        received = 0
        try:
            async with api.attachment(submission_id, attachment_id) as resp:
                declared = resp.content_length
                if declared is not None and declared > limit:
                    raise _too_large(attachment_id, max_attachment_bytes)
                async for chunk in resp.content.iter_chunked(FEED_BYTES):
                    received += len(chunk)
                    if received > limit:
                        raise _too_large(attachment_id, max_attachment_bytes)
                    if decryptor is None:
                        prefix += chunk
                        zipped = _zip_of_header(prefix[: MAX_HEADER_CHARS + 1])
                        if zipped is None and len(prefix) <= MAX_HEADER_CHARS:
                            continue
                        bound = max_inflated_bytes if zipped else max_attachment_bytes
                        # The blob writer hashes what it stores: the decryptor need not hash it again.
                        decryptor = JWEStreamDecryptor(
                            keys, cast(BinaryIO, writer), max_plaintext=bound, hash_plaintext=False
                        )
                        buffer += prefix
                        prefix = b""
                    else:
                        buffer += chunk
                    if len(buffer) >= FEED_BYTES:
                        await asyncio.to_thread(decryptor.feed, bytes(buffer))
                        buffer.clear()
            if decryptor is None:  # a body shorter than the header bound without a dot
                decryptor = JWEStreamDecryptor(
                    keys, cast(BinaryIO, writer), max_plaintext=max_attachment_bytes, hash_plaintext=False
                )
                buffer += prefix
            if buffer:
                await asyncio.to_thread(decryptor.feed, bytes(buffer))
            result = await asyncio.to_thread(decryptor.finish)
        except PlaintextTooLarge:
            raise _too_large(attachment_id, max_attachment_bytes) from None
        except JoseError as exc:
            raise fail(
                "attachment-encryption-issue",
                f"attachment cannot be decrypted ({exc.code})",
                attachment_id=attachment_id,
            ) from None
        if result.tag_b64 != expected_tag:
            raise fail(
                "attachment-incorrect-authentication-tag",
                "the attachment's authentication tag differs from the event log",
                attachment_id=attachment_id,
            )
        check_hash(writer.sha512_hex(), expected_sha512, "attachment-hash-mismatch", "attachment", attachment_id)
        if "zip" not in result.header and result.size > max_attachment_bytes:
            raise _too_large(attachment_id, max_attachment_bytes)
        return ReceivedAttachment(writer, result)
    except BaseException:
        writer.abort()
        raise


def _too_large(attachment_id: str, bound: int) -> CheckFailed:
    return fail(
        "attachment-too-large",
        f"the attachment exceeds the receiver's size bound of {bound} bytes",
        attachment_id=attachment_id,
    )
