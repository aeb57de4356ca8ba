"""The online service's side of the way back: it asks for FIT-Connect replies, receives, checks, answers.

What a real online service (Onlinedienst) does with a reply, per the gateway's reply profile
(:mod:`gateway.fitconnect.replies`):

1. submit the application with metadata 2.1.0 carrying ``replyChannel.fitConnect`` (its own RSA-4096
   key, without x5c, and the process standards it understands) and, when asked,
   ``additionalReferenceInfo`` (consent to a digital Bescheid, DeutschlandID application id);
2. learn of a reply by the ``new-replies`` callback (HMAC checked) or by polling ``GET /replies``;
3. fetch it, verify the reply's event log (Zustelldienst SETs, exactly one submit-reply with its
   authentication tags), compare every JWE's tag, decrypt metadata, data and attachments with its
   private key, check the SHA-512 hashes and that the data speaks one of its process standards;
4. answer ``accept-reply`` (with the tags) or ``reject-reply`` with the problems found.

:class:`ReplyBreakage` makes it misbehave for negative tests. Against the sandbox it reports each
processed reply, decrypted, to the inspection API (what the applicant received).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import functools
import hashlib
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.channels.fitconnect.eventlog import fetch_reply_log
from gateway.fitconnect import replies as rp
from gateway.fitconnect.callbacks import HEADER_AUTHENTICATION, HEADER_TIMESTAMP, verify_callback
from gateway.fitconnect.client import ApiError, TokenProvider
from gateway.fitconnect.jose import JWE_ALG, JoseError, PrivateKeyEntry, auth_tag, decrypt_jwe
from gateway.fitconnect.keys import jwk_from_public_key
from gateway.fitconnect.problems import problem
from gateway.problems import Problem
from gateway.sources.fitconnect.client import SubmissionApi
from gateway.sources.fitconnect.eventlog import KeyResolver, LogProblem
from gateway.sources.fitconnect.profile import PROFILES
from gateway_sandbox.online_service.sender import USER_AGENT, OutgoingAttachment, Sender, SentSubmission

log = structlog.get_logger(__name__)

MAX_REPORTED_PART = 1 << 20  # contents above this size are reported by hash only
MAX_REPLY_PART = 64 << 20


@dataclass(frozen=True)
class ApplicantKey:
    """The online service's reply key pair (RSA-OAEP-256; the public JWK goes into the metadata)."""

    private: PrivateKeyEntry = field(repr=False)
    public_jwk: dict[str, Any] = field(repr=False)

    @property
    def kid(self) -> str:
        return self.private.kid

    @classmethod
    def generate(cls, bits: int = 4096, *, kid: str | None = None) -> ApplicantKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        kid = kid or f"reply-{uuid.uuid4()}"
        public = jwk_from_public_key(key.public_key(), kid=kid, alg=JWE_ALG, key_ops=["wrapKey"], x5c=[])
        del public["x5c"]  # the metadata schema has no x5c: a reply key carries no certificate chain
        return cls(PrivateKeyEntry.from_key(kid, key), public)

    def reply_channel(self, process_standards: Sequence[str]) -> dict[str, Any]:
        """The metadata's ``replyChannel``."""
        return {rp.REPLY_CHANNEL: {"processStandards": list(process_standards), "encryptionPublicKey": self.public_jwk}}


@functools.lru_cache(maxsize=1)
def _other_key() -> PrivateKeyEntry:
    # WRONG_KEY: a key the replies were not encrypted to (the online service "lost" its key).
    return PrivateKeyEntry.from_key("other", rsa.generate_private_key(public_exponent=65537, key_size=4096))


class ReplyBreakage(enum.StrEnum):
    """Deliberate misbehaviour for negative tests of a reply sender (the gateway's reply channel)."""

    WRONG_KEY = "wrong-key"  # decrypts with another key than it announced -> encryption-issue
    TAMPERED_CIPHERTEXT = "tampered-ciphertext"  # the sandbox corrupts the stored data JWE -> encryption-issue
    BAD_TAG = "bad-tag"  # the sandbox records another data tag in submit-reply -> incorrect-authentication-tag
    REJECT = "reject"  # everything is fine; rejected on purpose (technical-error)


_SANDBOX_TAMPER = {ReplyBreakage.TAMPERED_CIPHERTEXT: "corrupt-ciphertext", ReplyBreakage.BAD_TAG: "auth-tag-mismatch"}
REJECT_ON_PURPOSE = "rejected on purpose by the test online service"


@dataclass
class ReceivedAttachment:
    attachment_id: str
    filename: str | None
    mime_type: str
    content: bytes = field(repr=False)


@dataclass
class ReceivedReply:
    """One reply as the online service processed it (the applicant's view when ``accepted``)."""

    reply_id: str
    case_id: str
    destination_id: str
    accepted: bool = False
    problems: list[Problem] = field(default_factory=list)
    metadata: dict[str, Any] | None = None
    data: bytes | None = field(default=None, repr=False)
    data_mime_type: str | None = None
    process_standard: str | None = None
    attachments: list[ReceivedAttachment] = field(default_factory=list)
    authentication_tags: dict[str, Any] | None = None

    @property
    def decision(self) -> str:
        return "accept-reply" if self.accepted else "reject-reply"

    def data_json(self) -> Any:
        assert self.data is not None
        return json.loads(self.data)

    def report(self) -> dict[str, Any]:
        """What the sandbox's inspection API shows (contents base64; large parts by hash only)."""

        def part(content: bytes) -> dict[str, Any]:
            out: dict[str, Any] = {"size": len(content), "sha512": hashlib.sha512(content).hexdigest()}
            if len(content) <= MAX_REPORTED_PART:
                out["content"] = base64.b64encode(content).decode("ascii")
            return out

        return {
            "replyId": self.reply_id,
            "caseId": self.case_id,
            "decision": self.decision,
            "problems": [p.as_dict() for p in self.problems],
            "metadata": self.metadata,
            "processStandard": self.process_standard,
            "data": {"mimeType": self.data_mime_type, **part(self.data)} if self.data is not None else None,
            "attachments": [
                {"attachmentId": a.attachment_id, "filename": a.filename, "mimeType": a.mime_type, **part(a.content)}
                for a in self.attachments
            ],
        }


class _Refuse(Exception):
    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__("; ".join(p.detail for p in problems))
        self.problems = list(problems)


def _refuse(code: str, detail: str, *, attachment_id: str | None = None) -> _Refuse:
    return _Refuse([problem(code, detail, attachment_id=attachment_id)])


class OnlineService:
    """A test online service that submits with a FIT-Connect reply channel and answers the replies."""

    def __init__(
        self,
        submission_api_url: str,
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        key: ApplicantKey,
        process_standards: Sequence[str],
        breakage: ReplyBreakage | None = None,
        trust_anchors: Sequence[x509.Certificate] = (),
        allow_self_signed: bool = True,  # a test online service talks to TEST systems and the sandbox
        report_to_sandbox: bool = True,
    ) -> None:
        self._credentials = (submission_api_url, token_url, client_id, client_secret)
        self.key = key
        self.process_standards = tuple(process_standards)
        self.breakage = breakage
        self.report_to_sandbox = report_to_sandbox
        self.api = SubmissionApi(
            base_url=submission_api_url,
            profile=PROFILES["v1"],
            tokens_for=lambda s: TokenProvider(s, token_url, client_id, client_secret, user_agent=USER_AGENT),
        )
        # The reply SETs are the Zustelldienst's own: their issuer is its API URL.
        self.keys = KeyResolver(self.api, tuple(trust_anchors), allow_self_signed, zsd_issuer=submission_api_url)
        self.received: dict[str, ReceivedReply] = {}  # by reply id, in the order processed
        self.callbacks_received = 0
        self._callback_secret: str | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()

    async def __aenter__(self) -> OnlineService:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.api.close()

    # -- submitting ------------------------------------------------------------------------------------

    async def submit(
        self,
        *,
        destination_id: str,
        service_identifier: str,
        data: bytes,
        data_schema_uri: str,
        data_mime_type: str = "application/json",
        attachments: Sequence[OutgoingAttachment] = (),
        consent_digital_bescheid: bool | None = None,
        application_id: str | None = None,
        callback: tuple[str, str] | None = None,
        reply_key: dict[str, Any] | None = None,
    ) -> SentSubmission:
        """Submit an application (metadata 2.1.0) whose applicant wants the answer over FIT-Connect.

        ``reply_key`` replaces the announced public key (negative tests: a weak or malformed key).
        """
        channel = self.key.reply_channel(self.process_standards)
        if reply_key is not None:
            channel[rp.REPLY_CHANNEL]["encryptionPublicKey"] = reply_key
        reference: dict[str, Any] = {}
        if consent_digital_bescheid is not None:
            reference["zustimmungZumDigitalenBescheid"] = consent_digital_bescheid
        if application_id is not None:
            reference["idBundDeApplicationId"] = application_id
        url, token_url, client_id, secret = self._credentials
        async with Sender(url, token_url, client_id, secret) as sender:
            return await sender.send(
                destination_id=destination_id,
                service_identifier=service_identifier,
                service_name="Testleistung",
                data=data,
                data_schema_uri=data_schema_uri,
                data_mime_type=data_mime_type,
                attachments=attachments,
                metadata_version=rp.REPLY_METADATA_VERSION,
                callback=callback,
                reply_channel=channel,
                reference_info=reference or None,
            )

    # -- receiving -------------------------------------------------------------------------------------

    async def pending(self) -> list[str]:
        """Ids of the submitted replies waiting for this online service (every page)."""
        out: list[str] = []
        offset = 0
        while True:
            page = await self.api.get_json(rp.REPLIES, what="list-replies", params={"limit": 100, "offset": offset})
            items = page.get("replies")
            if not isinstance(items, list):
                raise ApiError("list-replies", "response has no replies array")
            out.extend(i["replyId"] for i in items if isinstance(i, dict) and isinstance(i.get("replyId"), str))
            offset += len(items)
            total = page.get("totalCount")
            if not items or not isinstance(total, int) or offset >= total:
                return out

    async def poll(self) -> list[ReceivedReply]:
        """Receive and answer every pending reply (the polling way; callbacks call this too)."""
        async with self._lock:  # a callback and a poll must not answer the same reply twice
            done = []
            for reply_id in await self.pending():
                if reply_id not in self.received:
                    done.append(await self._receive(reply_id))
            return done

    async def wait_for(self, count: int, *, within: float = 20.0) -> list[ReceivedReply]:
        """Until ``count`` replies were processed (by callback or poll); raises AssertionError on timeout."""
        deadline = time.monotonic() + within
        while len(self.received) < count:
            self._changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"expected {count} replies, the online service has {len(self.received)}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=min(remaining, 0.5))
        return list(self.received.values())

    async def _receive(self, reply_id: str) -> ReceivedReply:
        view = await self.api.get_json(rp.path(rp.REPLY, replyId=reply_id), what="get-reply", limit=2 * MAX_REPLY_PART)
        received = ReceivedReply(reply_id, str(view.get("caseId", "")).lower(), str(view.get("destinationId", "")))
        if self.breakage in _SANDBOX_TAMPER:
            await self._sandbox_tamper(reply_id, _SANDBOX_TAMPER[self.breakage])
            view = await self.api.get_json(rp.path(rp.REPLY, replyId=reply_id), what="get-reply",
                                           limit=2 * MAX_REPLY_PART)  # fmt: skip
        try:
            await self._check(view, received)
            if self.breakage is ReplyBreakage.REJECT:
                raise _refuse("technical-error", REJECT_ON_PURPOSE)
            received.accepted = True
        except _Refuse as refused:
            received.problems = refused.problems
        await self._answer(received)
        self.received[reply_id] = received
        self._changed.set()
        if self.report_to_sandbox:
            await self._report(received)
        log.info("online_service_reply_answered", reply_id=reply_id, outcome=received.decision)
        return received

    async def _check(self, view: dict[str, Any], received: ReceivedReply) -> None:
        try:
            # The very check the gateway's reply channel uses: one definition of a valid reply log.
            reply_log = await fetch_reply_log(self.api, self.keys, reply_id=received.reply_id, case_id=received.case_id)
        except LogProblem as exc:
            raise _Refuse([exc.problem]) from None
        tags = reply_log.tags
        received.authentication_tags = tags
        keys = [_other_key()] if self.breakage is ReplyBreakage.WRONG_KEY else [self.key.private]

        metadata_jwe = view.get("encryptedMetadata")
        if not isinstance(metadata_jwe, str):
            raise _refuse("metadata-encryption-issue", "the reply has no encryptedMetadata")
        metadata = json_safe(_open(metadata_jwe, tags.get("metadata"), keys, "metadata"), "metadata")
        received.metadata = metadata
        content = metadata.get("contentStructure") if isinstance(metadata, dict) else None
        declared = content.get("data") if isinstance(content, dict) else None
        if not isinstance(declared, dict):
            raise _refuse("missing-data", "the reply's metadata declares no data")
        schema = declared.get("submissionSchema") or {}
        standard, mime = schema.get("schemaUri"), schema.get("mimeType")
        if standard not in self.process_standards:
            raise _refuse("data-unsupported-schema", "the reply's data is in a process standard this online "
                                                     "service did not offer")  # fmt: skip
        received.process_standard, received.data_mime_type = standard, mime

        data_jwe = view.get("encryptedData")
        if not isinstance(data_jwe, str):
            raise _refuse("missing-data", "the reply declares data but has no encryptedData")
        data = _open(data_jwe, tags.get("data"), keys, "data")
        if hashlib.sha512(data).hexdigest() != str((declared.get("hash") or {}).get("content", "")).lower():
            raise _refuse("data-hash-mismatch", "SHA-512 of the reply's data differs from its metadata")
        received.data = data

        listed = content.get("attachments") if isinstance(content, dict) else None
        declared_attachments = {str(a.get("attachmentId", "")).lower(): a for a in listed or [] if isinstance(a, dict)}
        uploaded = {str(a).lower() for a in view.get("attachments", [])}
        tagged = {str(a).lower() for a in tags.get("attachments", {})}
        if not set(declared_attachments) == uploaded == tagged:
            raise _refuse("attachments-mismatch", "the reply's attachments, metadata and tags name different sets")
        for attachment_id, meta in declared_attachments.items():
            received.attachments.append(await self._attachment(received.reply_id, attachment_id, meta, tags, keys))

    async def _attachment(
        self, reply_id: str, attachment_id: str, meta: dict[str, Any], tags: dict[str, Any], keys: list[Any]
    ) -> ReceivedAttachment:
        path = rp.path(rp.REPLY_ATTACHMENT, replyId=reply_id, attachmentId=attachment_id)
        body = await self.api.expect("GET", path, (200,), what="get-reply-attachment", accept="application/jose",
                                     limit=2 * MAX_REPLY_PART)  # fmt: skip
        expected = {k.lower(): v for k, v in tags.get("attachments", {}).items()}[attachment_id]
        content = _open(body.decode("ascii", "replace"), expected, keys, "attachment", attachment_id)
        if hashlib.sha512(content).hexdigest() != str((meta.get("hash") or {}).get("content", "")).lower():
            raise _refuse("attachment-hash-mismatch", "SHA-512 of an attachment differs from its metadata",
                          attachment_id=attachment_id)  # fmt: skip
        return ReceivedAttachment(attachment_id, meta.get("filename"), str(meta.get("mimeType", "")), content)

    async def _answer(self, received: ReceivedReply) -> None:
        if received.accepted:
            assert received.authentication_tags is not None
            body = rp.decision_body(rp.ACCEPT_REPLY, authentication_tags=received.authentication_tags)
        else:
            body = rp.decision_body(rp.REJECT_REPLY, problems=[p.as_dict() for p in received.problems])
        await self.api.expect(
            "POST",
            rp.path(rp.REPLY_EVENTS, replyId=received.reply_id),
            (rp.DECISION_STATUS,),
            what="answer-reply",
            json_body=body,
        )

    async def _sandbox_tamper(self, reply_id: str, mode: str) -> None:
        await self.api.expect("POST", f"/_sandbox/replies/{reply_id}/tamper", (204,), what="sandbox-tamper",
                              json_body={"mode": mode, "part": "data"}, auth=False, versioned=False)  # fmt: skip

    async def _report(self, received: ReceivedReply) -> None:
        with contextlib.suppress(ApiError):  # not a sandbox (or an old one): nothing to report to
            await self.api.expect("PUT", f"/_sandbox/replies/{received.reply_id}/received", (204,),
                                  what="sandbox-report", json_body=received.report(), auth=False,
                                  versioned=False)  # fmt: skip

    # -- callbacks -------------------------------------------------------------------------------------

    def callback_handler(self, secret: str) -> Any:
        """An aiohttp handler for the online service's callback URL: HMAC checked, ``new-replies``
        starts a poll in the background (the callback is answered at once)."""
        self._callback_secret = secret

        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            verdict = verify_callback(
                secret,
                request.headers.get(HEADER_TIMESTAMP),
                request.headers.get(HEADER_AUTHENTICATION),
                body,
                now=time.time(),
            )
            if not verdict.ok:
                return web.json_response({"error": verdict.reason}, status=401)
            self.callbacks_received += 1
            try:
                kind = json.loads(body).get("type")
            except (ValueError, AttributeError):
                kind = None
            if kind == rp.CALLBACK_NEW_REPLIES:
                task = asyncio.create_task(self._poll_logged())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            return web.json_response({"status": "ok"})

        return handle

    async def _poll_logged(self) -> None:
        try:
            await self.poll()
        except (ApiError, aiohttp.ClientError) as exc:
            log.warning("online_service_poll_failed", reason=str(exc))

    @asynccontextmanager
    async def listening(self, secret: str | None = None) -> AsyncIterator[tuple[str, str]]:
        """Serve the callback URL on a loopback port; yields ``(url, secret)`` for :meth:`submit`."""
        secret = secret or "online-service-callback-" + uuid.uuid4().hex
        app = web.Application()
        app.router.add_post("/callbacks/fit-connect", self.callback_handler(secret))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        try:
            await web.SockSite(runner, sock).start()
            yield f"http://127.0.0.1:{sock.getsockname()[1]}/callbacks/fit-connect", secret
        finally:
            await runner.cleanup()
            sock.close()


def _open(compact: str, expected_tag: Any, keys: list[Any], part: str, attachment_id: str | None = None) -> bytes:
    """Tag check and decryption of one JWE of the reply, refusing with the catalogue's problem."""
    try:
        tag = auth_tag(compact)
    except JoseError as exc:
        raise _refuse(f"{part}-encryption-issue", f"the {part} JWE is malformed ({exc.code})",
                      attachment_id=attachment_id) from None  # fmt: skip
    if tag != expected_tag:
        raise _refuse(f"{part}-incorrect-authentication-tag", f"the {part}'s tag differs from submit-reply",
                      attachment_id=attachment_id)  # fmt: skip
    try:
        return decrypt_jwe(compact, keys, max_plaintext=MAX_REPLY_PART).plaintext
    except JoseError as exc:
        raise _refuse(f"{part}-encryption-issue", f"the {part} cannot be decrypted ({exc.code})",
                      attachment_id=attachment_id) from None  # fmt: skip


def json_safe(raw: bytes, part: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        raise _refuse(f"{part}-syntax-violation", f"the reply's {part} is not JSON") from None
    if not isinstance(value, dict):
        raise _refuse(f"{part}-syntax-violation", f"the reply's {part} is not a JSON object")
    return value
