"""The way back end to end: a sandbox Zustelldienst, a real gateway with its ``fitconnect`` source, the
``fitconnect`` reply channel on that source, and the sandbox's test online service as the applicant.

Until the answer store and worker exist, a test plays the worker: it takes the stored message with the
ReplyContext the source built at intake, builds the :class:`Outgoing` and calls ``send``/``confirm``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.channels.base import ChannelContext, ConfirmResult, Outgoing, SendResult
from gateway.channels.fitconnect.channel import FitConnectReplyChannel
from gateway.model import Answer, AnswerKind, BlobRef, Envelope, MessageState, ReplyContext
from gateway.pipeline.intake import IncomingMessage
from gateway.plugins import PluginHost
from gateway_sandbox.online_service.replies import ApplicantKey, OnlineService, ReplyBreakage
from gateway_sandbox.online_service.sender import SentSubmission
from gateway_sandbox.testing import REPLY_PROCESS_STANDARDS

from .subscriber_helpers import GEWERBE_DATA, GEWERBE_SCHEMA, GEWERBE_SERVICE, Gateway, e2e

PDF = b"%PDF-1.7\n% Bescheid\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"
CALLBACK_SECRET = "destination-callback-secret-" + "r" * 32


@dataclass
class WayBack:
    gw: Gateway
    applicant: OnlineService
    channel: FitConnectReplyChannel
    contexts: dict[str, ReplyContext | None] = field(default_factory=dict)  # by submission id

    async def submit(self, **options: Any) -> tuple[SentSubmission, Envelope]:
        """An application with a fitConnect reply channel; returns it and the stored message with the
        ReplyContext the source built (until the store keeps it, taken from the intake's input)."""
        sent = await self.applicant.submit(
            destination_id=self.gw.sandbox.destination_id,
            service_identifier=GEWERBE_SERVICE,
            data=GEWERBE_DATA,
            data_schema_uri=GEWERBE_SCHEMA,
            **options,
        )
        stored = await self.gw.wait_stored(sent.submission_id, [MessageState.ACKNOWLEDGED])
        envelope = stored.envelope
        if envelope.reply is None:
            envelope = envelope.with_(reply=self.contexts[sent.submission_id])
        return sent, envelope

    def blob(self, content: bytes, *, media_type: str, filename: str | None = None) -> BlobRef:
        runtime = self.gw.runtime
        assert runtime is not None
        with runtime.blobs.writer() as writer:
            writer.write(content)
            return writer.commit(name="attachment", media_type=media_type, filename=filename)

    def outgoing(
        self,
        message: Envelope,
        *,
        key: str | None = None,
        content: dict[str, Any] | None = None,
        attachments: Sequence[BlobRef] = (),
        data: BlobRef | None = None,
        reference: str | None = None,
        attempt: int = 1,
    ) -> Outgoing:
        runtime = self.gw.runtime
        assert runtime is not None
        answer_id = key or str(uuid.uuid4())
        answer = Answer(
            id=answer_id,
            message_id=message.id,
            kind=AnswerKind.REPLY,
            caller="test",
            idempotency_key=f"idem-{answer_id}",
            created_at=datetime.now(UTC),
            content=content if content is not None else {"title": "Ihr Antrag", "text": "Bitte reichen Sie ... nach."},
            data=data,
            attachments=tuple(attachments),
            reference=reference,
        )
        return Outgoing(answer=answer, message=message, blobs=runtime.blobs, attempt=attempt, idempotency_key=answer_id)

    async def send(self, outgoing: Outgoing) -> SendResult:
        return await self.channel.send(outgoing)

    async def confirm(self, outgoing: Outgoing, result: SendResult) -> ConfirmResult:
        return await self.channel.confirm(
            Outgoing(
                answer=outgoing.answer.with_(reference=result.reference),
                message=outgoing.message,
                blobs=outgoing.blobs,
                attempt=outgoing.attempt,
                idempotency_key=outgoing.idempotency_key,
            )
        )


def channel_for(gw: Gateway, options: dict[str, Any] | None = None, *, name: str = "fc-reply") -> Any:
    runtime = gw.runtime
    assert runtime is not None
    ctx = ChannelContext(
        name=name,
        base_dir=gw.tmp,
        resolve_secret=lambda raw, key: None,
        production=False,
        sources=runtime.sources,
        options_key=f"reply_channels.{name}",
    )
    channel_type = PluginHost.load().reply_channel_types["fitconnect"]
    return channel_type.create(ctx, options or {"source": gw.name, "process_standards": list(REPLY_PROCESS_STANDARDS)})


def _secret_file(tmp_path: Path) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "cb.secret"
    path.write_text(CALLBACK_SECRET)
    return path


@asynccontextmanager
async def way_back(
    tmp_path: Path,
    metadata_dir: Path,
    key: ApplicantKey,
    *,
    breakage: ReplyBreakage | None = None,
    process_standards: Sequence[str] = REPLY_PROCESS_STANDARDS,
    channel_options: dict[str, Any] | None = None,
    **source_options: Any,
) -> AsyncIterator[WayBack]:
    secret = {"file": str(_secret_file(tmp_path))}
    async with e2e(tmp_path, metadata_dir, callback_secret=secret, **source_options) as gw:
        gw.sandbox.set_destination_callback(f"{gw.url}/callbacks/fitconnect/{gw.name}", CALLBACK_SECRET)
        runtime = gw.runtime
        assert runtime is not None
        contexts: dict[str, ReplyContext | None] = {}
        receive = runtime.intake.receive

        async def capture(incoming: IncomingMessage) -> Any:
            contexts[incoming.source.reference] = incoming.reply
            return await receive(incoming)

        runtime.intake.receive = capture  # type: ignore[method-assign]
        channel = channel_for(gw, channel_options)
        applicant = gw.sandbox.online_service(key, process_standards=tuple(process_standards), breakage=breakage)
        try:
            yield WayBack(gw, applicant, channel, contexts)
        finally:
            await channel.close()
            await applicant.close()
