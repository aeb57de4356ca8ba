"""Reading a request body: raw XML, or multipart with one XML message part plus attachments.

The XML message is read into memory (it is validated as a whole, and bounded by the limits);
attachments are streamed into uncommitted blob writers (temporary files, hashed while written) and
committed only once the message is accepted, so a refused request leaves nothing in the blob store.

Which part is the message:

* ``multipart/form-data``: the part named ``message``;
* ``multipart/related``: the part whose Content-ID is the ``start`` parameter, else the first part.

Every other part is an attachment, whatever its type. Parts must not be transfer- or content-encoded
(``Content-Transfer-Encoding`` other than binary/8bit/7bit, ``Content-Encoding``): HTTP carries binary.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from email.message import Message

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.http.limits import BodyTimeout
from gateway.model import BlobRef
from gateway.sources.xoev_http.problems import (
    MULTIPART_INVALID,
    PAYLOAD_TOO_LARGE,
    REQUEST_TIMEOUT,
    TOO_MANY_ATTACHMENTS,
    UNSUPPORTED_MEDIA_TYPE,
    Refusal,
)
from gateway.store.blobs import BlobStore, BlobWriter

CHUNK = 256 * 1024
XML_TYPES = frozenset({"application/xml", "text/xml"})
MULTIPART_TYPES = frozenset({"multipart/form-data", "multipart/related"})
_IDENTITY_TRANSFER = frozenset({"binary", "8bit", "7bit"})
_ATTACHMENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:+=-]{0,127}")
_MAX_FILENAME = 1024
# C0 controls (but HTAB), DEL and C1 controls: never part of a header value a sender means; a NUL
# in a stored file name or id would also be refused by PostgreSQL (and taken for a store failure).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def content_type(header: str | None) -> tuple[str, Message]:
    """(lowercase media type, parsed header for parameters) of a Content-Type header value."""
    message = Message()
    message["content-type"] = header or ""
    return message.get_content_type() if header else "", message


def is_xml_type(media_type: str) -> bool:
    return media_type in XML_TYPES or (media_type.startswith("application/") and media_type.endswith("+xml"))


def check_xml_type(header: str | None, what: str) -> None:
    media_type, parsed = content_type(header)
    if not is_xml_type(media_type):
        raise Refusal(
            415,
            UNSUPPORTED_MEDIA_TYPE,
            "Unsupported media type",
            f"{what} must be application/xml or text/xml, got {media_type or 'none'}",
        )
    charset = parsed.get_param("charset")
    if isinstance(charset, str) and charset.lower() not in ("utf-8", "utf8"):
        raise Refusal(415, UNSUPPORTED_MEDIA_TYPE, "Unsupported charset", f"{what}: XÖV messages are UTF-8 only")


def too_large(limit: int, what: str = "request body") -> Refusal:
    return Refusal(413, PAYLOAD_TOO_LARGE, "Request body too large", f"the {what} exceeds {limit} bytes")


@dataclass
class PendingAttachment:
    """An attachment on disk but not yet in the blob store (``commit`` makes it durable)."""

    writer: BlobWriter
    attachment_id: str
    media_type: str
    filename: str | None
    size: int = 0

    async def commit(self) -> BlobRef:
        return await asyncio.to_thread(
            self.writer.commit,
            name=f"attachment:{self.attachment_id}",
            media_type=self.media_type,
            filename=self.filename,
            attachment_id=self.attachment_id,
        )


@dataclass
class ReceivedBody:
    xml: bytes
    attachments: list[PendingAttachment] = field(default_factory=list)

    def abort(self) -> None:
        for attachment in self.attachments:
            attachment.writer.abort()


class _Budget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> None:
        self.used += size
        if self.used > self.limit:
            raise too_large(self.limit)


async def read_body(
    request: web.Request, *, blobs: BlobStore, max_body: int, max_xml: int, max_attachments: int
) -> ReceivedBody:
    try:
        return await _read_body(
            request, blobs=blobs, max_body=max_body, max_xml=max_xml, max_attachments=max_attachments
        )
    except BodyTimeout as exc:  # set on the stream by gateway.http.limits
        raise Refusal(408, REQUEST_TIMEOUT, "Request body too slow", str(exc), close=True) from None


async def _read_body(
    request: web.Request, *, blobs: BlobStore, max_body: int, max_xml: int, max_attachments: int
) -> ReceivedBody:
    media_type, parsed = content_type(request.headers.get("Content-Type"))
    if request.content_length is not None and request.content_length > max_body:
        raise too_large(max_body)
    if media_type in MULTIPART_TYPES:
        return await _read_multipart(request, media_type, parsed, blobs, _Budget(max_body), max_xml, max_attachments)
    check_xml_type(request.headers.get("Content-Type"), "the request body")
    budget = _Budget(max_body)
    xml = bytearray()
    async for chunk in request.content.iter_chunked(CHUNK):
        budget.take(len(chunk))
        xml += chunk
        if len(xml) > max_xml:
            raise too_large(max_xml, "XML message")
    return ReceivedBody(bytes(xml))


def _strip_cid(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value[1:-1] if value.startswith("<") and value.endswith(">") else value


async def _read_multipart(
    request: web.Request,
    media_type: str,
    parsed: Message,
    blobs: BlobStore,
    budget: _Budget,
    max_xml: int,
    max_attachments: int,
) -> ReceivedBody:
    if not parsed.get_param("boundary"):
        raise Refusal(400, MULTIPART_INVALID, "Malformed multipart body", "the Content-Type has no boundary")
    start_param = parsed.get_param("start")
    start = _strip_cid(start_param) if isinstance(start_param, str) else None
    related = media_type == "multipart/related"
    xml: bytes | None = None
    attachments: list[PendingAttachment] = []
    ids: set[str] = set()
    try:
        reader = await request.multipart()
        index = 0
        while True:
            try:
                part = await reader.next()
            except (ValueError, HttpProcessingError) as exc:  # aiohttp: malformed boundary / part headers
                reason = exc.message if isinstance(exc, HttpProcessingError) else str(exc)
                raise Refusal(400, MULTIPART_INVALID, "Malformed multipart body", _printable(reason)[:200]) from None
            if part is None:
                break
            if isinstance(part, MultipartReader) or not isinstance(part, BodyPartReader):
                raise Refusal(400, MULTIPART_INVALID, "Nested multipart", "nested multipart parts are not accepted")
            _check_part_headers(part, index)
            _check_part_encoding(part, index)
            cid = _strip_cid(part.headers.get("Content-ID"))
            if _is_message_part(related, start, cid, part.name, index):
                if xml is not None:
                    raise Refusal(
                        400, MULTIPART_INVALID, "Two message parts", "exactly one XML message part is accepted"
                    )
                check_xml_type(part.headers.get("Content-Type"), "the message part")
                xml = await _read_part(part, budget, max_xml)
            else:
                if len(attachments) >= max_attachments:
                    raise Refusal(
                        400, TOO_MANY_ATTACHMENTS, "Too many attachments", f"at most {max_attachments} are accepted"
                    )
                attachment_id = _attachment_id(cid, part.name if not related else None, index, ids)
                attachments.append(await _stream_part(part, blobs, budget, attachment_id))
            index += 1
    except BaseException:
        for attachment in attachments:
            attachment.writer.abort()
        raise
    if xml is None:
        for attachment in attachments:
            attachment.writer.abort()
        which = "the start part" if related else 'a part named "message"'
        raise Refusal(400, MULTIPART_INVALID, "No message part", f"the multipart body has no XML message ({which})")
    return ReceivedBody(xml, attachments)


def _is_message_part(related: bool, start: str | None, cid: str | None, name: str | None, index: int) -> bool:
    if related:  # the start part, or the first one
        return cid == start if start is not None else index == 0
    return name == "message"  # multipart/form-data: the field "message"


def _printable(text: str) -> str:
    return _CONTROL.sub("?", text)


def _check_part_headers(part: BodyPartReader, index: int) -> None:
    """No control character in a part's headers, nor in the names and file names they decode to
    (RFC 2231 ``filename*=UTF-8''%00`` decodes to a NUL that no raw-byte check sees)."""
    decoded = [part.name or "", part.filename or ""]
    if any(_CONTROL.search(text) for item in part.headers.items() for text in item) or any(
        _CONTROL.search(text) for text in decoded
    ):
        raise Refusal(
            400,
            MULTIPART_INVALID,
            "Control character in part headers",
            f"part {index}: a header holds a control character",
        )


def _check_part_encoding(part: BodyPartReader, index: int) -> None:
    transfer = part.headers.get("Content-Transfer-Encoding", "binary").strip().lower()
    if transfer not in _IDENTITY_TRANSFER:
        raise Refusal(
            400, MULTIPART_INVALID, "Unsupported part encoding", f"part {index}: Content-Transfer-Encoding {transfer}"
        )
    encoding = part.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding != "identity":
        raise Refusal(400, MULTIPART_INVALID, "Unsupported part encoding", f"part {index}: Content-Encoding {encoding}")


def _attachment_id(cid: str | None, name: str | None, index: int, seen: set[str]) -> str:
    """Content-ID, else the form field name, else the part's position (as the XML may refer to it)."""
    for candidate in (cid, name):
        if candidate and _ATTACHMENT_ID.fullmatch(candidate):
            chosen = candidate
            break
    else:
        chosen = f"part-{index}"
    if chosen in seen:
        raise Refusal(400, MULTIPART_INVALID, "Duplicate attachment", f"part {index}: attachment id {chosen} repeats")
    seen.add(chosen)
    return chosen


async def _read_part(part: BodyPartReader, budget: _Budget, limit: int) -> bytes:
    data = bytearray()
    while chunk := await part.read_chunk(CHUNK):
        budget.take(len(chunk))
        data += chunk
        if len(data) > limit:
            raise too_large(limit, "XML message")
    return bytes(data)


async def _stream_part(
    part: BodyPartReader, blobs: BlobStore, budget: _Budget, attachment_id: str
) -> PendingAttachment:
    media_type, _ = content_type(part.headers.get("Content-Type"))
    filename = part.filename
    if filename is not None and (len(filename) > _MAX_FILENAME or not filename.strip()):
        filename = None
    writer = await asyncio.to_thread(blobs.writer)
    pending = PendingAttachment(writer, attachment_id, media_type or "application/octet-stream", filename)
    try:
        while chunk := await part.read_chunk(CHUNK):
            budget.take(len(chunk))
            await asyncio.to_thread(writer.write, chunk)
            pending.size += len(chunk)
    except BaseException:
        writer.abort()
        raise
    return pending
