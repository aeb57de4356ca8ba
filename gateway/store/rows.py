"""Row ↔ model mapping, written once for every backend (JSON columns hold canonical JSON text)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from gateway.model import (
    AckState,
    Answer,
    AnswerKind,
    AnswerState,
    BlobRef,
    Envelope,
    MessageState,
    ReplyContext,
    RoutingKeys,
    SourceRef,
)
from gateway.problems import Problem
from gateway.store.plan import dumps
from gateway.store.records import AuditRecord, StoredAnswer, StoredMessage


def _blob_to_json(blob: BlobRef) -> dict[str, Any]:
    return {
        "name": blob.name,
        "blob_id": blob.blob_id,
        "sha512": blob.sha512,
        "size": blob.size,
        "media_type": blob.media_type,
        "filename": blob.filename,
        "attachment_id": blob.attachment_id,
    }


def _blob_columns(data: BlobRef | None, attachments: tuple[BlobRef, ...]) -> dict[str, Any]:
    return {
        "data": dumps(_blob_to_json(data)) if data else None,
        "attachments": dumps([_blob_to_json(a) for a in attachments]),
    }


def _blobs(row: Any) -> tuple[BlobRef | None, tuple[BlobRef, ...]]:
    data = json.loads(row["data"]) if row["data"] else None
    return (BlobRef(**data) if data else None), tuple(BlobRef(**a) for a in json.loads(row["attachments"]))


def _bookkeeping(row: Any) -> dict[str, Any]:
    """What the store keeps beside a message or an answer, in the same columns for both."""
    return {
        "problems": tuple(Problem.from_dict(p) for p in json.loads(row["problems"])),
        "next_attempt_at": row["next_attempt_at"],
        "lease_owner": row["lease_owner"],
        "lease_until": row["lease_until"],
        "last_error": row["last_error"],
        "queued_at": row["queued_at"],
        "updated_at": row["updated_at"],
    }


def envelope_columns(envelope: Envelope) -> dict[str, Any]:
    return {
        "id": envelope.id,
        "channel": envelope.source.channel,
        "source_type": envelope.source.type,
        "reference": envelope.source.reference,
        "idempotency_key": envelope.source.idempotency_key,
        "case_ref": envelope.source.case,
        "received_at": envelope.received_at.timestamp(),
        "routing": dumps(envelope.routing.as_dict()),
        "metadata": dumps(dict(envelope.metadata)),
        **_blob_columns(envelope.data, envelope.attachments),
        "state": envelope.state.value,
        "ack": envelope.ack.value,
        "route": envelope.route,
        "adapter": envelope.adapter,
        "attempts": envelope.attempts,
        "reply": dumps(envelope.reply.as_dict()) if envelope.reply is not None else None,
    }


def row_to_message(row: Any) -> StoredMessage:
    data, attachments = _blobs(row)
    reply = row["reply"]
    envelope = Envelope(
        id=row["id"],
        source=SourceRef(
            channel=row["channel"],
            type=row["source_type"],
            reference=row["reference"],
            idempotency_key=row["idempotency_key"],
            case=row["case_ref"],
        ),
        received_at=datetime.fromtimestamp(row["received_at"], UTC),
        routing=RoutingKeys.from_dict(json.loads(row["routing"])),
        metadata=json.loads(row["metadata"]),
        data=data,
        attachments=attachments,
        state=MessageState(row["state"]),
        ack=AckState(row["ack"]),
        route=row["route"],
        adapter=row["adapter"],
        attempts=row["attempts"],
        reply=ReplyContext.from_dict(json.loads(reply)) if reply else None,
    )
    return StoredMessage(envelope=envelope, ack_attempts=row["ack_attempts"], **_bookkeeping(row))


def answer_columns(answer: Answer, *, sequence: int, now: float) -> dict[str, Any]:
    """A new answer's row: what the Fachverfahren handed over; state and routing are the store's."""
    return {
        "id": answer.id,
        "message_id": answer.message_id,
        "kind": answer.kind.value,
        "caller": answer.caller,
        "idempotency_key": answer.idempotency_key,
        "created_at": answer.created_at.timestamp(),
        "content": dumps(dict(answer.content)),
        **_blob_columns(answer.data, answer.attachments),
        "bescheid": 1 if answer.bescheid else 0,
        "sequence": sequence,
        "state": AnswerState.HANDED_OVER.value,
        "updated_at": now,
    }


def row_to_answer(row: Any) -> StoredAnswer:
    data, attachments = _blobs(row)
    answer = Answer(
        id=row["id"],
        message_id=row["message_id"],
        kind=AnswerKind(row["kind"]),
        caller=row["caller"],
        idempotency_key=row["idempotency_key"],
        created_at=datetime.fromtimestamp(row["created_at"], UTC),
        content=json.loads(row["content"]),
        data=data,
        attachments=attachments,
        bescheid=bool(row["bescheid"]),
        sequence=row["sequence"],
        state=AnswerState(row["state"]),
        channel=row["channel"],
        fallback_reason=row["fallback_reason"],
        attempts=row["attempts"],
        reference=row["reference"],
    )
    return StoredAnswer(
        answer=answer,
        sent_at=row["sent_at"],
        confirmed_at=row["confirmed_at"],
        polls=row["polls"],
        **_bookkeeping(row),
    )


def row_to_audit(row: Mapping[str, Any] | Any) -> AuditRecord:
    return AuditRecord(
        seq=int(row["seq"]),
        message_id=row["message_id"],
        at=row["at"],
        event=row["event"],
        from_state=row["from_state"],
        to_state=row["to_state"],
        reason=row["reason"],
        actor=row["actor"],
        details=json.loads(row["details"]),
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )
