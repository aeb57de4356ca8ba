"""The ``xoev-http`` source: XÖV messages POSTed by authenticated senders (authorities, portals).

``POST <path>`` takes raw XML or multipart (one XML message part plus attachments). The request is
answered only after the message is durably committed: hostile or malformed XML -> 400, schema
invalid or unknown message -> 422 (issues redacted), then one ``Intake.receive`` -> 202 with the
gateway message id. ``GET <path>/<id>`` shows the sender its message's processing state.

Order of checks (cheap and unauthenticated-safe first): authentication (before the body is read, also
for ``Expect: 100-continue``), media type and declared length, body within limits, hardened parse and
schema validation in the validator's worker processes, author allow-list, test marker, signature
verdict (recorded; the route's policy is enforced after routing), decode, commit, receive.
Catalogue of problem types and the details: docs/xoev.md, "HTTP intake".
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from aiohttp.web_request import Request
from cryptography import x509

from gateway.errors import ConfigError
from gateway.hookspecs import hookimpl
from gateway.http.problem import problem_response
from gateway.model import BlobRef, Envelope, ReplyContext, RoutingKeys, SourceRef
from gateway.pipeline.intake import IncomingMessage, IntakeClosed
from gateway.problems import Problem
from gateway.routing import SIGNATURE_METADATA_KEY
from gateway.sources.base import AckOutcome, AckResult, SourceContext, SourceType
from gateway.sources.xoev_http import auth as intake_auth
from gateway.sources.xoev_http.body import ReceivedBody, read_body, too_large
from gateway.sources.xoev_http.options import SenderConfig, XoevHttpOptions, XoevHttpSourceOptions
from gateway.sources.xoev_http.problems import (
    AUTHOR_NOT_ALLOWED,
    DRAINING,
    MESSAGE_NOT_FOUND,
    MESSAGE_UUID_CONFLICT,
    REVOCATION_UNAVAILABLE,
    SENDER_NOT_ALLOWED,
    STORE_UNAVAILABLE,
    TEST_MESSAGE_REFUSED,
    TOO_MANY_UPLOADS,
    UNAUTHORIZED,
    VALIDATION_UNAVAILABLE,
    XML_REJECTED,
    XML_SCHEMA_INVALID,
    XML_UNKNOWN_MESSAGE,
    Refusal,
)
from gateway.trust.crl import CrlDirectory
from gateway.trust.expiry import expiry_gauge, report_expiry
from gateway.trust.ocsp import OcspChecker
from gateway.trust.path import TrustError
from gateway.xoev.adapters import DECODED_PART
from gateway.xoev.parsing import XmlRejected, parse_xml
from gateway.xoev.subsystem import XoevSubsystem

if TYPE_CHECKING:
    from gateway.xoev.decode import ValidationOutcome

log = structlog.get_logger(__name__)

SOURCE_TYPE = "xoev-http"
_DSIG_NS = b"http://www.w3.org/2000/09/xmldsig#"
# A header message id used as reference and idempotency key (UUIDs, XDatenfelder ids, code list URNs);
# anything else (absurdly long, odd characters) is replaced by the SHA-256 of the document.
_REFERENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}")


def _validation_unavailable() -> Refusal:
    return Refusal(
        503,
        VALIDATION_UNAVAILABLE,
        "Validation unavailable",
        "the XÖV validator cannot process the message now; retry later",
        headers={"Retry-After": "30"},
    )


class XoevHttpSource:
    needs_ack = False  # the sender learns the outcome from the status endpoint
    accept_policy = "delivered"

    def __init__(self, ctx: SourceContext, options: XoevHttpOptions, xoev: XoevSubsystem) -> None:
        self.name = ctx.name
        self.ctx = ctx
        self.options = options
        self.max_body_bytes = options.max_body_bytes or ctx.max_body_bytes
        self.xoev = xoev
        self.validator = xoev.validator
        self.refused = xoev.refused
        self._stopped = asyncio.Event()
        self._uploads: dict[str, int] = {}  # sender id -> its requests in progress (bounded: slowloris)
        config = self.validator.config
        self.crls = CrlDirectory(config.crl_dir) if config.crl_dir is not None else None
        self.ocsp = OcspChecker(config.ocsp) if config.ocsp != "off" else None
        trusted = [x509.load_der_x509_certificate(der) for der in config.trusted_certs]
        report_expiry(expiry_gauge(ctx.metrics.registry), ctx.name, "xmldsig-trusted", trusted)

    # -- Source protocol ------------------------------------------------------------------------

    async def run(self) -> None:
        await self._stopped.wait()  # purely request-driven: nothing to poll

    async def acknowledge(self, envelope: Envelope, outcome: AckOutcome, problems: list[Problem]) -> AckResult:
        return AckResult(done=True)  # never asked: needs_ack is False

    async def check(self) -> str | None:
        if self.validator.registry is None:
            return "the XÖV validator is not running"
        return None

    async def close(self) -> None:
        self._stopped.set()
        if self.ocsp is not None:
            await self.ocsp.close()

    # -- authentication ---------------------------------------------------------------------------

    def _auth(self, request: Request) -> SenderConfig:
        authorization = request.headers.get("Authorization")
        fingerprint = intake_auth.peer_certificate_fingerprint(request.transport)
        outcome = intake_auth.authenticate(self.options.senders, authorization, fingerprint)
        if outcome.sender is not None:
            return outcome.sender
        for other in self.xoev.endpoints:
            if other is not self and intake_auth.authenticate(other.options.senders, authorization, fingerprint).sender:
                raise Refusal(403, SENDER_NOT_ALLOWED, "Sender not allowed", "this sender may not use this endpoint")
        challenge = f'Bearer realm="{self.name}"'
        if outcome.failure == intake_auth.INVALID_TOKEN:
            challenge += ', error="invalid_token"'
        raise Refusal(
            401,
            UNAUTHORIZED,
            "Authentication required",
            f"credentials missing or not accepted ({outcome.failure})",
            headers={"WWW-Authenticate": challenge},
            reason=outcome.failure,
        )

    def _check_uploads(self, sender: SenderConfig) -> None:
        limit = self.options.max_concurrent_uploads
        if self._uploads.get(sender.id, 0) >= limit:
            raise Refusal(
                429,
                TOO_MANY_UPLOADS,
                "Too many uploads in progress",
                f"at most {limit} requests of this sender are processed at once",
                headers={"Retry-After": "10"},
                close=True,
            )

    async def expect(self, request: Request) -> web.StreamResponse | None:
        """``Expect: 100-continue``: refuse before the client sends the body."""
        try:
            self._check_uploads(self._auth(request))
            if request.content_length is not None and request.content_length > self.max_body_bytes:
                raise too_large(self.max_body_bytes)
        except Refusal as refusal:
            return self._refuse(refusal, None)
        if request.headers.get("Expect", "").lower() != "100-continue":
            return problem_response(417, "expectation-failed", "Only Expect: 100-continue is supported")
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0
        return None

    def _refuse(self, refusal: Refusal, sender: SenderConfig | None) -> web.Response:
        self.refused.labels(self.name, refusal.type).inc()
        log.info(
            "xoev_intake_refused",
            source=self.name,
            status=refusal.status,
            problem_types=[refusal.type],
            code=refusal.extra.get("code") or refusal.extra.get("reason"),
            sender=sender.id if sender else None,
        )
        return refusal.response()

    # -- POST ---------------------------------------------------------------------------------------

    async def post_message(self, request: Request) -> web.StreamResponse:
        sender: SenderConfig | None = None
        body: ReceivedBody | None = None
        counted: str | None = None
        try:
            sender = self._auth(request)
            self._check_uploads(sender)
            counted = sender.id
            self._uploads[counted] = self._uploads.get(counted, 0) + 1
            body = await read_body(
                request,
                blobs=self.ctx.blobs,
                max_body=self.max_body_bytes,
                max_xml=self.validator.config.max_bytes,
                max_attachments=self.options.max_attachments,
            )
            return await self._accept(sender, body)
        except Refusal as refusal:
            return self._refuse(refusal, sender)
        except Exception:
            # Storing failed (disk full, database down): nothing was committed, so nothing was accepted.
            # 503 + Retry-After tells the sender to come back, instead of a generic 500 per request.
            log.exception("xoev_intake_store_failed", source=self.name)
            unavailable = Refusal(
                503,
                STORE_UNAVAILABLE,
                "The message could not be stored",
                "nothing was accepted; retry later",
                headers={"Retry-After": "60"},
            )
            return self._refuse(unavailable, sender)
        finally:
            if counted is not None:
                remaining = self._uploads[counted] - 1
                if remaining:
                    self._uploads[counted] = remaining
                else:
                    del self._uploads[counted]
            if body is not None:
                body.abort()  # whatever was not committed (refused or failed) is removed

    async def _accept(self, sender: SenderConfig, body: ReceivedBody) -> web.Response:
        outcome, decoded_data = await self._validate(body.xml)
        identity = outcome.identity
        if sender.authors and (identity is None or identity.author_id not in sender.authors):
            raise Refusal(
                403,
                AUTHOR_NOT_ALLOWED,
                "Author not allowed",
                "the message's author authority is not one this sender may send for",
            )
        test = bool(identity and identity.test)
        if test and not self.options.accept_test_messages:
            raise Refusal(
                422, TEST_MESSAGE_REFUSED, "Test message refused", "this endpoint does not accept test messages"
            )

        signature = await self._signature(body.xml)
        message_uuid = identity.message_id if identity and _REFERENCE.fullmatch(identity.message_id or "") else None
        message_type = identity.message_type if identity else outcome.root
        reference = message_uuid or "sha256:" + hashlib.sha256(body.xml).hexdigest()
        # xdomea's ProzessID names the process, shared by its messages (0501..0504): the type belongs
        # to the key, or the second message of a process would be taken for a resend of the first
        idempotency_key = f"{sender.id}:{message_type}:{reference}"

        decoded_json = self._decoded_json(decoded_data)

        def store_parts() -> tuple[BlobRef, BlobRef | None]:  # both small files in one thread hop
            data = self.ctx.blobs.store_bytes(body.xml, name="data", media_type="application/xml")
            decoded = None
            if decoded_json is not None:
                decoded = self.ctx.blobs.store_bytes(
                    decoded_json, name=DECODED_PART, media_type="application/json", filename="decoded.json"
                )
            return data, decoded

        data, decoded = await asyncio.to_thread(store_parts)
        attachments = [await pending.commit() for pending in body.attachments]
        body.attachments.clear()

        xoev_meta: dict[str, Any] = {
            "standard": identity.standard if identity else None,
            "version": identity.version if identity else None,
            "message_type": message_type,
            "namespace": outcome.namespace,
            "message_id": message_uuid,
            "created_at": identity.created_at.isoformat() if identity and identity.created_at else None,
            "author_id": identity.author_id if identity else None,
            "reader_id": identity.reader_id if identity else None,
            "test": test,
            "extra": dict(identity.extra) if identity else {},
            "bundle": outcome.bundle,
            "entry": outcome.entry,
            "signature": signature,
            "decoded_part": DECODED_PART if decoded else None,
        }
        service = identity.extra.get("service") if identity else None
        incoming = IncomingMessage(
            source=SourceRef(self.name, SOURCE_TYPE, reference, idempotency_key),
            routing=RoutingKeys(
                service=service,
                destination=identity.reader_id if identity else None,
                message_type=message_type,
                namespace=outcome.namespace or None,
                sender=sender.id,
                test=test,
            ),
            metadata={"xoev": xoev_meta, "sender": sender.id, SIGNATURE_METADATA_KEY: signature},
            data=data,
            attachments=[*attachments, *([decoded] if decoded else [])],
            # The way back: answers go to this sender, in this Vorgang, from the reader it wrote to.
            reply=ReplyContext(
                source_type=SOURCE_TYPE,
                sender=sender.id,
                case=identity.extra.get("vorgang") if identity else None,
                destination=identity.reader_id if identity else None,
            ),
        )
        try:
            result = await self.ctx.intake.receive(incoming)
        except IntakeClosed:
            raise Refusal(503, DRAINING, "Service is shutting down", headers={"Retry-After": "30"}) from None
        stored = result.message.envelope
        if not result.created and _content_hashes(stored) != _content_hashes_of(data, attachments):
            raise Refusal(
                409,
                MESSAGE_UUID_CONFLICT,
                "Message UUID already used",
                "a different message with this message UUID (and type) was already received from this sender",
                id=stored.id,
            )
        log.info(
            "xoev_intake_accepted",
            source=self.name,
            sender=sender.id,
            message_id=stored.id,
            state=stored.state.value,
            outcome="new" if result.created else "duplicate",
            count=len(attachments),  # attachments
        )
        status_url = f"{self.options.path}/{stored.id}"
        return web.json_response(
            {"id": stored.id, "status": status_url, "state": stored.state.value, "duplicate": not result.created},
            status=202,
            headers={"Location": status_url},
        )

    def _decoded_json(self, decoded: dict[str, Any] | str | None) -> bytes | None:
        """The decoded part's content; a document that could not be decoded just goes without it."""
        if isinstance(decoded, str):
            log.warning("xoev_intake_decode_failed", source=self.name, error_type=decoded.split(":", 1)[0])
            return None
        if decoded is None:
            return None
        try:
            return json.dumps(decoded, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
        except ValueError:  # e.g. a NaN decoded from an xs:double
            log.warning("xoev_intake_decode_failed", source=self.name, error_type="ValueError")
            return None

    async def _validate(self, xml: bytes) -> tuple[ValidationOutcome, dict[str, Any] | str | None]:
        """The validation outcome and, with ``store_decoded``, the decoded data (one worker round trip)."""
        from gateway.xoev.validator import ValidationUnavailable

        decoded: dict[str, Any] | str | None = None
        try:
            if self.options.store_decoded:
                outcome, decoded = await self.validator.validate_and_decode(xml)
            else:
                outcome = await self.validator.validate_xml(xml)
        except XmlRejected as exc:
            if exc.code == "too-large":
                raise too_large(self.validator.config.max_bytes, "XML message") from None
            raise Refusal(400, XML_REJECTED, "XML rejected", exc.message, code=exc.code, line=exc.line) from None
        except ValidationUnavailable:
            raise _validation_unavailable() from None
        if outcome.valid:
            return outcome, decoded
        if outcome.bundle is None:
            raise Refusal(
                422,
                XML_UNKNOWN_MESSAGE,
                "Unknown message",
                "no schema is registered for the root element",
                namespace=outcome.namespace,
                root=outcome.root,
            )
        from gateway.sources.xoev_http.redact import redacted_issues

        tree = await asyncio.to_thread(parse_xml, xml, self.validator.config.limits)
        issues = await asyncio.to_thread(redacted_issues, tree, outcome.issues)
        raise Refusal(
            422,
            XML_SCHEMA_INVALID,
            "Message is not valid against its schema",
            f"{len(issues)} issue(s) against {outcome.bundle}/{outcome.entry}",
            issues=issues,
        )

    async def _signature(self, xml: bytes) -> dict[str, Any]:
        """The signature verdict against ``[xoev] trusted_certs`` (policy "optional": absent is fine here;
        the route's policy decides after routing)."""
        if _DSIG_NS not in xml:  # no ds:Signature can be in a document that never names the namespace
            return {"status": "absent", "signer": None, "code": None}
        from gateway.xoev.signatures import verify_policy

        config = self.validator.config
        try:
            verdict = await asyncio.to_thread(
                verify_policy, xml, "optional", config.trusted_certs, limits=config.limits, crls=self.crls
            )
        except XmlRejected:  # parsed fine in the worker already; refuse to guess
            return {"status": "invalid", "signer": None, "code": "malformed"}
        if verdict.status == "valid" and self.ocsp is not None:
            try:
                await self.ocsp.check(verdict.chain)
            except TrustError as exc:
                if exc.code == "revoked":
                    return {"status": "invalid", "signer": verdict.signer, "code": "certificate-revoked"}
                # fail-closed and no OCSP answer: our connectivity, not the sender's fault -> come back later
                raise Refusal(
                    503,
                    REVOCATION_UNAVAILABLE,
                    "Revocation status unavailable",
                    "the signing certificate's revocation status cannot be checked now; retry later",
                    headers={"Retry-After": "60"},
                ) from None
        return {"status": verdict.status, "signer": verdict.signer, "code": verdict.code}

    # -- GET status ---------------------------------------------------------------------------------

    async def get_status(self, request: Request) -> web.StreamResponse:
        sender: SenderConfig | None = None
        try:
            sender = self._auth(request)
            stored = None
            message_id = request.match_info["id"]
            if _is_uuid(message_id):
                stored = await self.ctx.lookup().get(message_id)
            env = stored.envelope if stored else None
            if (
                stored is None
                or env is None
                or env.source.channel != self.name
                or env.metadata.get("sender") != sender.id
            ):
                # the same answer for "no such message" and "not yours": ids are not an oracle
                raise Refusal(404, MESSAGE_NOT_FOUND, "No such message")
        except Refusal as refusal:
            return self._refuse(refusal, sender)
        return web.json_response(
            {
                "id": env.id,
                "state": env.state.value,
                "reference": env.source.reference,
                "received_at": env.received_at.isoformat(),
                "problems": [p.as_dict() for p in stored.problems],
            }
        )


def _is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


def _content_hashes_of(data: BlobRef, attachments: Sequence[BlobRef]) -> tuple[str, tuple[str, ...]]:
    return data.sha512, tuple(sorted(a.sha512 for a in attachments))


def _content_hashes(envelope: Envelope) -> tuple[str, tuple[str, ...]]:
    sent = [a for a in envelope.attachments if a.name != DECODED_PART]  # derived from the data
    return (envelope.data.sha512 if envelope.data else ""), tuple(sorted(a.sha512 for a in sent))


def create(ctx: SourceContext, options: XoevHttpOptions) -> XoevHttpSource:
    xoev = ctx.subsystem("xoev", XoevSubsystem)
    if xoev is None:  # the options reader refuses this already; a context built by hand
        raise ConfigError("needs the [xoev] table (schema bundles) in gateway.toml", key="type")
    source = XoevHttpSource(ctx, options, xoev)
    xoev.endpoints.append(source)
    ctx.add_routes(
        [
            web.post(options.path, source.post_message, expect_handler=source.expect),
            web.get(options.path + "/{id}", source.get_status, allow_head=False),
        ]
    )
    return source


@hookimpl
def gateway_source_types() -> list[SourceType]:
    return [
        SourceType(
            name=SOURCE_TYPE,
            create=create,
            options=XoevHttpSourceOptions,
            description="XÖV messages POSTed over HTTP(S) by authenticated senders (token / client certificate)",
        )
    ]
