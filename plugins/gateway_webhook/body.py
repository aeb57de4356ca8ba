"""Request bodies: one JSON document (parts inline, base64) or multipart/form-data streamed from disk.

Both carry the same description of the message; in JSON every part has ``content_base64``, in
multipart it has ``field`` (the form field holding its bytes). Stored blobs are checked against
their recorded size and SHA-512 on the way out; a mismatch never completes a request body.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import unicodedata
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import MultipartWriter
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import BytesPayload, Payload

from gateway.adapters.base import BlobReader
from gateway.model import BlobRef, Envelope

FORMAT_VERSION = 1


class BlobMismatch(Exception):
    """A stored blob differs from its recorded size/SHA-512 (retrying cannot help)."""


class BlobReadError(Exception):
    """Reading the gateway's own blob failed."""

    def __init__(self, cause: OSError) -> None:
        super().__init__(cause)
        self.cause = cause


class _Verifier:
    def __init__(self, blob: BlobRef) -> None:
        self.blob = blob
        self.hasher = hashlib.sha512()
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.blob.size:
            raise BlobMismatch(f"part {self.blob.name}: stored blob is larger than its recorded size")
        self.hasher.update(chunk)

    def finish(self) -> None:
        if self.size != self.blob.size or self.hasher.hexdigest() != self.blob.sha512.lower():
            raise BlobMismatch(f"part {self.blob.name}: stored blob does not match its recorded sha512")


async def _chunks(blobs: BlobReader, blob: BlobRef) -> AsyncIterator[bytes]:
    """The blob's chunks; the last one is held back until the whole blob has been verified."""
    verifier = _Verifier(blob)
    iterator = blobs.iter_chunks(blob)
    pending: bytes | None = None
    try:
        while True:
            try:
                chunk = await anext(iterator)
            except StopAsyncIteration:
                break
            except OSError as exc:
                raise BlobReadError(exc) from exc
            verifier.update(chunk)
            if pending is not None:
                yield pending
            pending = chunk
        verifier.finish()
        if pending is not None:
            yield pending
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


def _describe_part(blob: BlobRef) -> dict[str, Any]:
    return {
        "part": blob.name,
        "attachment_id": blob.attachment_id,
        "filename": blob.filename,  # the sender's name, untrusted: sanitise before using it as a path
        "media_type": blob.media_type,
        "size": blob.size,
        "sha512": blob.sha512.lower(),
    }


def describe(envelope: Envelope) -> dict[str, Any]:
    """The message without its bytes: ids, origin, routing keys, metadata, and one entry per part."""
    source = envelope.source
    return {
        "format_version": FORMAT_VERSION,
        "gateway_id": envelope.id,
        "source": {
            "channel": source.channel,
            "type": source.type,
            "reference": source.reference,
            "case": source.case,
        },
        "received_at": envelope.received_at.isoformat(),
        "routing": envelope.routing.as_dict(),
        "metadata": dict(envelope.metadata),
        "data": _describe_part(envelope.data) if envelope.data else None,
        "attachments": [_describe_part(blob) for blob in envelope.attachments],
    }


def _dumps(document: dict[str, Any]) -> bytes:
    """Strict JSON; ``TypeError``/``ValueError`` if the metadata is not plain JSON."""
    return json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


async def _read_verified(blobs: BlobReader, blob: BlobRef) -> bytes:
    return b"".join([chunk async for chunk in _chunks(blobs, blob)])


async def json_body(envelope: Envelope, blobs: BlobReader) -> bytes:
    """The whole message as one JSON document (callers enforce ``max_inline_bytes`` first)."""
    document = describe(envelope)
    _dumps(document)  # fail on bad metadata before reading any blob
    contents = [await _read_verified(blobs, blob) for blob in envelope.blobs]

    def encode() -> bytes:
        parts = ([document["data"]] if envelope.data else []) + document["attachments"]
        for part, content in zip(parts, contents, strict=True):
            part["content_base64"] = base64.b64encode(content).decode("ascii")
        return _dumps(document)

    return await asyncio.to_thread(encode)  # base64 + serialising ~10 MB is worth a thread


class VerifiedBlobPayload(Payload):
    """A blob streamed into the request with a known length, verified while it is sent.

    On a mismatch or read error the exception stops the upload before the body is complete (the
    receiver sees a truncated request, never a wrong one); it is also kept in :attr:`failure`
    because aiohttp wraps errors raised while writing the body.
    """

    def __init__(self, blobs: BlobReader, blob: BlobRef) -> None:
        super().__init__(None, content_type=blob.media_type)
        self._blobs = blobs
        self._blob = blob
        self._size = blob.size
        self.failure: BlobMismatch | BlobReadError | None = None

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a streamed blob cannot be decoded to text")

    async def write(self, writer: AbstractStreamWriter) -> None:
        try:
            async for chunk in _chunks(self._blobs, self._blob):
                await writer.write(chunk)
        except (BlobMismatch, BlobReadError) as exc:
            self.failure = exc
            raise

    async def write_with_length(self, writer: AbstractStreamWriter, content_length: int | None) -> None:
        await self.write(writer)


def header_filename(raw: str | None, fallback: str) -> str:
    """A file name safe inside a Content-Disposition header (the manifest part has the exact one)."""
    if raw:
        name = unicodedata.normalize("NFC", raw).replace("\\", "/").rsplit("/", 1)[-1]
        name = "".join(
            "_" if ch == '"' else ch for ch in name if unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp")
        ).strip(" .")
        if name:
            return name
    return fallback


_EXTENSIONS = {"application/json": ".json", "application/xml": ".xml", "text/xml": ".xml", "application/pdf": ".pdf"}


def _extension(media_type: str) -> str:
    essence = media_type.split(";", 1)[0].strip().lower()
    if essence in _EXTENSIONS:
        return _EXTENSIONS[essence]
    return ".xml" if essence.endswith("+xml") else ".json" if essence.endswith("+json") else ".bin"


def multipart_body(envelope: Envelope, blobs: BlobReader) -> tuple[MultipartWriter, list[VerifiedBlobPayload]]:
    """``manifest`` (JSON) first, then ``data`` and ``attachment-<n>`` file parts, streamed."""
    document = describe(envelope)
    writer = MultipartWriter("form-data")
    parts: list[tuple[str, BlobRef, dict[str, Any]]] = []
    if envelope.data:
        parts.append(("data", envelope.data, document["data"]))
    for n, (blob, entry) in enumerate(zip(envelope.attachments, document["attachments"], strict=True), start=1):
        parts.append((f"attachment-{n}", blob, entry))
    for field, _blob, entry in parts:
        entry["field"] = field

    manifest = BytesPayload(_dumps(document), content_type="application/json")
    manifest.set_content_disposition("form-data", name="manifest")
    writer.append_payload(manifest)

    payloads: list[VerifiedBlobPayload] = []
    for field, blob, _entry in parts:
        payload = VerifiedBlobPayload(blobs, blob)
        filename = header_filename(blob.filename, f"{field}{_extension(blob.media_type)}")
        # Raw UTF-8 with quotes escaped, as browsers send it (RFC 7578 4.2), not percent-encoded.
        payload.set_content_disposition("form-data", quote_fields=False, name=field, filename=filename)
        writer.append_payload(payload)
        payloads.append(payload)
    return writer, payloads
