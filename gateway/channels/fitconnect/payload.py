"""The encrypted parts of one FIT-Connect reply, built from an outgoing answer (no network).

Per the reply profile: metadata (2.1.0 document), data and each attachment are separate compact JWEs
RSA-OAEP-256/A256GCM to the applicant's key, with ``kid`` and ``cty``, without ``zip``. The data part
is the answer's data document, or for an answer without one the profile's JSON rendering of its
content. Attachments are encrypted from the blob store's files into temporary files (streamed, so a
large Bescheid PDF never sits in memory twice) and uploaded from there.

Ids are derived from the answer's idempotency key (UUIDv5), so every attempt for the same answer
names the same reply and the same attachments: that is what makes a retry after a crash resume the
reply on the Zustelldienst instead of creating a second one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.channels.base import Outgoing
from gateway.fitconnect import replies as rp
from gateway.fitconnect.jose import auth_tag, encrypt_jwe, encrypt_jwe_stream
from gateway.fitconnect.metadata import AttachmentSpec
from gateway.fitconnect.reply_key import ReplyKey
from gateway.model import Answer, BlobRef

# Fixed namespace of the gateway's reply ids (never change it: ids of answers in flight would change).
REPLY_ID_NAMESPACE = uuid.UUID("0f7d3c52-6a4e-4c1b-9d2e-8b5a1f0c3e71")
DATA_MIME_TYPES = ("application/json", "application/xml")
JSON = "application/json"


def reply_id_for(idempotency_key: str) -> str:
    return str(uuid.uuid5(REPLY_ID_NAMESPACE, f"reply:{idempotency_key}"))


def attachment_ids_for(idempotency_key: str, answer: Answer) -> list[str]:
    """One id per attachment of the answer, stable across attempts (position and content address)."""
    return [
        str(uuid.uuid5(REPLY_ID_NAMESPACE, f"attachment:{idempotency_key}:{index}:{blob.blob_id}"))
        for index, blob in enumerate(answer.attachments)
    ]


def data_refusal(answer: Answer) -> str | None:
    """Why the answer's data document cannot be a reply's data part (None: it can, or there is none)."""
    if answer.data is not None and answer.data.media_type not in DATA_MIME_TYPES:
        return f"the answer's data is {answer.data.media_type}; FIT-Connect reply data must be JSON or XML"
    return None


@dataclass
class ReplyAttachment:
    attachment_id: str
    jwe_path: Path
    tag: str


@dataclass
class ReplyPayload:
    reply_id: str
    metadata: dict[str, Any] = field(repr=False)
    encrypted_metadata: str = field(repr=False)
    encrypted_data: str = field(repr=False)
    attachments: list[ReplyAttachment]
    tags: dict[str, Any]  # authenticationTags the Zustelldienst must record in submit-reply
    _tmp: Path | None = None

    @property
    def announced(self) -> list[str]:
        return [a.attachment_id for a in self.attachments]

    def cleanup(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


async def _read(outgoing: Outgoing, blob: BlobRef) -> bytes:
    chunks = [chunk async for chunk in outgoing.blobs.iter_chunks(blob)]
    return b"".join(chunks)


def _encrypt_file(source: Path, target: Path, key: ReplyKey, cty: str) -> str:
    with source.open("rb") as src, target.open("wb") as dst:
        return encrypt_jwe_stream(src, dst, key.key, kid=key.kid, cty=cty)


async def build_payload(outgoing: Outgoing, key: ReplyKey, process_standard: str) -> ReplyPayload:
    """Encrypt the answer for ``key``; raises OSError when a blob cannot be read."""
    answer = outgoing.answer
    ids = attachment_ids_for(outgoing.idempotency_key, answer)
    if answer.data is not None:
        data, data_mime = await _read(outgoing, answer.data), answer.data.media_type
    else:
        data = rp.answer_document(kind=answer.kind.value, bescheid=answer.bescheid, content=answer.content)
        data_mime = JSON
    tmp = Path(tempfile.mkdtemp(prefix="fitconnect-reply-"))
    try:
        attachments: list[ReplyAttachment] = []
        specs: list[AttachmentSpec] = []
        for attachment_id, blob in zip(ids, answer.attachments, strict=True):
            target = tmp / f"{attachment_id}.jwe"
            tag = await asyncio.to_thread(_encrypt_file, outgoing.blobs.path(blob), target, key, blob.media_type)
            attachments.append(ReplyAttachment(attachment_id, target, tag))
            specs.append(
                AttachmentSpec(
                    attachment_id=attachment_id,
                    sha512_hex=blob.sha512,  # the blob store is content-addressed by this hash
                    mime_type=blob.media_type,
                    filename=blob.filename,
                )
            )
        metadata = rp.reply_metadata(
            data_sha512=hashlib.sha512(data).hexdigest(),
            process_standard=process_standard,
            data_mime_type=data_mime,
            attachments=specs,
            sender_reference=answer.id,
        )
        metadata_json = json.dumps(metadata, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        encrypted_metadata = encrypt_jwe(metadata_json, key.key, kid=key.kid, cty=JSON)
        encrypted_data = encrypt_jwe(data, key.key, kid=key.kid, cty=data_mime)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tags = rp.authentication_tags(
        metadata=auth_tag(encrypted_metadata),
        data=auth_tag(encrypted_data),
        attachments={a.attachment_id: a.tag for a in attachments},
    )
    return ReplyPayload(
        reply_id=reply_id_for(outgoing.idempotency_key),
        metadata=metadata,
        encrypted_metadata=encrypted_metadata,
        encrypted_data=encrypted_data,
        attachments=attachments,
        tags=tags,
        _tmp=tmp,
    )
