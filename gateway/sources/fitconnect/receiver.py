"""Receipt of one submission: fetch, every check of digest §9, durable hand-over to the intake.

Order (cheap and decisive first, large downloads last, so a doomed submission never costs a 500 MB
download):

1. ``GET /submissions/{id}`` (bounded), consistency with the listing and our destination;
2. the case's event log (:mod:`.eventlog`): signed SETs, exactly one submit-submission, its tags;
3. metadata: tag, decryption (kid, then every key), JSON, ``$schema``, schema validation;
4. consistency: service, data schema, attachment sets, data presence, reply channel (all reported);
5. data: tag, decryption, SHA-512, syntax, schema;
6. attachments, streamed one after another: tag, decryption, SHA-512, size.

The first stage that fails ends the checks; its problems make the intake reject the submission
durably (the ack worker then posts reject-submission). Either way the submission is stored once with
everything known about it. Payload blobs are only committed for submissions that passed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from gateway.fitconnect.jose import (
    DecryptedJWE,
    JoseError,
    PlaintextTooLarge,
    auth_tag,
    decrypt_jwe,
    parse_jwe,
)
from gateway.model import BlobRef, RoutingKeys, SourceRef
from gateway.pipeline.intake import IncomingMessage
from gateway.problems import Problem
from gateway.sources.fitconnect.attachments import ReceivedAttachment, encrypted_bound, receive_attachment
from gateway.sources.fitconnect.checks import (
    MIME_XML,
    CheckFailed,
    DeclaredData,
    MetadataInfo,
    ServiceMatch,
    check_data,
    consistency_problems,
    data_hash_ok,
    declared_attachments,
    declared_data,
    fail,
    match_service,
    metadata_schema,
    parse_metadata,
    validate_metadata,
    xoev_issue_problems,
)
from gateway.sources.fitconnect.client import ApiError, SubmissionApi, TooLarge
from gateway.sources.fitconnect.eventlog import KeyResolver, LogProblem, fetch_event_log, submit_tags
from gateway.sources.fitconnect.options import SubscriberOptions
from gateway.sources.fitconnect.reply_context import reply_context
from gateway.store.blobs import BlobStore
from gateway.xoev.parsing import XmlRejected
from gateway.xoev.validator import ValidationUnavailable, XoevValidator

log = structlog.get_logger(__name__)

T = TypeVar("T")

SOURCE_TYPE = "fitconnect"
MAX_METADATA_BYTES = 8 << 20
DESTINATION_TTL = 30.0


class Skip(Exception):
    """Not processable now and not a reason to reject (gone, inconsistent listing): try at the next poll."""


@dataclass
class DestinationCache:
    api: SubmissionApi
    destination_id: str
    clock: Callable[[], float] = time.monotonic
    _value: dict[str, Any] | None = None
    _at: float = 0.0

    async def get(self) -> dict[str, Any]:
        if self._value is None or self.clock() - self._at > DESTINATION_TTL:
            self._value = await self.api.get_destination(self.destination_id)
            self._at = self.clock()
        return self._value


@dataclass
class Findings:
    """Everything learnt about a submission so far (stored even when a check failed)."""

    submission_id: str
    case_id: str
    destination_id: str
    problems: list[Problem] = field(default_factory=list)
    submission: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    info: MetadataInfo | None = None
    api_service: str | None = None
    service: ServiceMatch | None = None
    declared: DeclaredData | None = None
    data: bytes | None = None
    attachments: list[tuple[str, ReceivedAttachment]] = field(default_factory=list)


INLINE_BYTES = 256 * 1024


async def _cpu(fn: Callable[..., T], *args: Any, size: int, **kwargs: Any) -> T:
    """CPU work on ``size`` bytes: inline on the loop when small, else in a worker thread.

    A worker-thread hop costs ~60 µs of CPU (futex wake-ups, GIL hand-offs) and buys no parallelism
    for code that holds the GIL (RSA in ``cryptography`` does); small parts are cheaper inline.
    Large ones go to a thread so the loop keeps serving while AES and hashing run.
    """
    if size <= INLINE_BYTES:
        return fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)


def _string_list(value: Any) -> list[str] | None:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


class Receiver:
    def __init__(
        self,
        options: SubscriberOptions,
        api: SubmissionApi,
        keys: KeyResolver,
        blobs: BlobStore,
        destination: DestinationCache,
        xoev: XoevValidator | None = None,
    ) -> None:
        self.options = options
        self.api = api
        self.keys = keys
        self.blobs = blobs
        self.destination = destination
        self.xoev = xoev  # the gateway's XÖV registry: XML data whose schemaUri is an XÖV namespace
        self._keys = list(options.decryption_keys)

    def xoev_namespaces(self) -> frozenset[str]:
        registry = self.xoev.registry if self.xoev is not None else None
        return frozenset(e.namespace for e in registry.entries()) if registry is not None else frozenset()

    # -- the stages ----------------------------------------------------------------------------------

    async def receive(self, submission_id: str, case_id: str) -> IncomingMessage:
        """Run every check; the result carries the problems (if any). Raises ApiError / Skip."""
        found = Findings(submission_id.lower(), case_id.lower(), self.options.destination_id)
        try:
            await self._fetch(found)
            destination = await self.destination.get()
            await self._event_log(found)
            await self._metadata(found, destination)
            self._consistency(found, destination)
            await self._data(found)
            await self._attachments(found)
        except CheckFailed as failed:
            found.problems.extend(failed.problems)
            self._discard(found)
        except BaseException:
            self._discard(found)
            raise
        try:
            return await self._incoming(found)
        except BaseException:
            self._discard(found)
            raise

    async def _fetch(self, found: Findings) -> None:
        limit = MAX_METADATA_BYTES * 2 + encrypted_bound(self.options.max_data_bytes) + 64 * 1024
        try:
            status, body = await self.api.get_submission(found.submission_id, limit=limit)
        except TooLarge:
            raise fail("data-too-large", "the submission's encrypted parts exceed the gateway's size bound") from None
        if status == 404:
            raise Skip("the submission is gone (accepted, rejected or deleted meanwhile)")
        if status != 200:
            raise ApiError("get-submission", "unexpected status", status=status)
        try:
            submission = await _cpu(json.loads, body, size=len(body))  # may be tens of MB
        except ValueError:
            raise ApiError("get-submission", "submission response is not JSON") from None
        if not isinstance(submission, dict):
            raise ApiError("get-submission", "submission response is not an object")
        found.submission = submission
        # §9.4: the submission is ours and consistent with the listing. A mismatch is the Zustelldienst's
        # inconsistency, not the sender's fault: never reject for it, look again later.
        for key, expected in (
            ("submissionId", found.submission_id),
            ("caseId", found.case_id),
            ("destinationId", found.destination_id),
        ):
            value = submission.get(key)
            if not isinstance(value, str) or value.lower() != expected:
                raise Skip(f"submission {key} does not match the listing")
        service = self.options.profile.submission_service(submission)
        if isinstance(service, dict) and isinstance(service.get("identifier"), str):
            found.api_service = service["identifier"]
        if not isinstance(submission.get("encryptedMetadata"), str):
            raise fail("metadata-encryption-issue", "the submission has no encryptedMetadata")
        if "encryptedData" in submission and not isinstance(submission["encryptedData"], str):
            raise fail("data-encryption-issue", "encryptedData is not a string")
        if _string_list(submission.get("attachments", [])) is None:
            raise ApiError("get-submission", "attachments is not a list of ids")

    async def _event_log(self, found: Findings) -> None:
        try:
            event_log = await fetch_event_log(self.api, self.keys, found.case_id)
            found.tags = submit_tags(event_log, found.submission_id)
        except LogProblem as exc:
            found.problems.append(exc.problem)
            # Keep what can be known for the audit (metadata), without further verdicts.
            await self._metadata_best_effort(found)
            raise CheckFailed([]) from None

    async def _decrypt(self, compact: str, max_plaintext: int) -> DecryptedJWE:
        return await _cpu(decrypt_jwe, compact, self._keys, max_plaintext=max_plaintext, size=len(compact))

    async def _metadata_best_effort(self, found: Findings) -> None:
        try:
            decrypted = await self._decrypt(found.submission["encryptedMetadata"], MAX_METADATA_BYTES)
            found.metadata = parse_metadata(decrypted.plaintext)
        except (JoseError, CheckFailed, KeyError, TypeError):
            pass

    async def _metadata(self, found: Findings, destination: dict[str, Any]) -> None:
        compact = found.submission["encryptedMetadata"]
        assert found.tags is not None
        try:
            parse_jwe(compact)
        except JoseError as exc:
            raise fail("metadata-encryption-issue", f"metadata JWE refused ({exc.code})") from None
        if auth_tag(compact) != found.tags["metadata"]:
            raise fail(
                "metadata-incorrect-authentication-tag", "the metadata's authentication tag differs from the event log"
            )
        try:
            decrypted = await self._decrypt(compact, MAX_METADATA_BYTES)
        except PlaintextTooLarge:
            raise fail("metadata-too-large", f"metadata exceeds {MAX_METADATA_BYTES} bytes") from None
        except JoseError as exc:
            raise fail("metadata-encryption-issue", f"metadata cannot be decrypted ({exc.code})") from None
        metadata = parse_metadata(decrypted.plaintext)
        found.metadata = metadata
        versions = _string_list(destination.get("metadataVersions")) or []
        info = metadata_schema(
            metadata,
            supported=self.options.metadata_versions,
            destination_versions=versions,
            allow_missing=self.options.allow_missing_metadata_schema,
        )
        found.info = info
        validate_metadata(metadata, info, self.options.schemas)

    def _consistency(self, found: Findings, destination: dict[str, Any]) -> None:
        assert found.metadata is not None
        assert found.tags is not None
        found.service = match_service(self.options.profile.destination_services(destination), found.api_service)
        found.declared = declared_data(found.metadata)
        problems = consistency_problems(
            metadata=found.metadata,
            api_service=found.api_service,
            service=found.service,
            data_present=isinstance(found.submission.get("encryptedData"), str),
            submission_attachments=_string_list(found.submission.get("attachments", [])) or [],
            tag_attachments=list(found.tags.get("attachments", {})),
            destination_reply_channels=destination.get("replyChannels"),
            schemas=self.options.schemas,
            require_data_schemas=self.options.require_data_schemas,
            xoev_namespaces=self.xoev_namespaces(),
        )
        if problems:
            raise CheckFailed(problems)

    async def _data(self, found: Findings) -> None:
        declared = found.declared
        compact = found.submission.get("encryptedData")
        if declared is None or not isinstance(compact, str):
            return
        assert found.tags is not None
        try:
            tag = auth_tag(compact)  # the profile is checked by decrypt_jwe, in a worker thread
        except JoseError as exc:
            raise fail("data-encryption-issue", f"data JWE refused ({exc.code})") from None
        expected = found.tags.get("data")
        if expected is None:
            raise fail("data-incorrect-authentication-tag", "the event log records no authentication tag for data")
        if tag != expected:
            raise fail("data-incorrect-authentication-tag", "the data's authentication tag differs from the event log")
        bound = self.options.max_data_bytes
        if len(compact) > encrypted_bound(bound):
            raise fail("data-too-large", f"the encrypted data exceeds the bound for {bound} bytes")
        try:
            decrypted = await self._decrypt(compact, bound)
        except PlaintextTooLarge:
            raise fail("data-too-large", f"the data exceeds {bound} bytes") from None
        except JoseError as exc:
            raise fail("data-encryption-issue", f"data cannot be decrypted ({exc.code})") from None
        plaintext = decrypted.plaintext

        def verify() -> None:  # CPU work on up to max_data_bytes: off the event loop
            data_hash_ok(plaintext, declared)
            check_data(plaintext, declared, self.options.schemas, max_bytes=bound)

        await _cpu(verify, size=len(plaintext))
        if (
            declared.mime_type == MIME_XML
            and self.options.schemas.xsd(declared.schema_uri) is None
            and declared.schema_uri in self.xoev_namespaces()
        ):
            await self._validate_with_registry(plaintext, declared)
        found.data = plaintext

    async def _validate_with_registry(self, plaintext: bytes, declared: DeclaredData) -> None:
        """XML data through the same XÖV registry and hardened worker pool as the XÖV HTTP intake."""
        assert self.xoev is not None
        try:
            outcome = await self.xoev.validate_xml(plaintext)
        except XmlRejected as exc:
            where = f" (line {exc.line})" if exc.line is not None else ""
            raise fail("data-syntax-violation", f"XML data refused by the hardened parser: {exc.code}{where}") from None
        except ValidationUnavailable:
            raise Skip("the XÖV validator is not available right now") from None
        problems = xoev_issue_problems(declared, outcome.namespace, outcome.issues)
        if problems:
            raise CheckFailed(problems)

    async def _attachments(self, found: Findings) -> None:
        assert found.metadata is not None
        assert found.tags is not None
        tags = {k.lower(): v for k, v in found.tags.get("attachments", {}).items()}
        raw_ids = {a.lower(): a for a in _string_list(found.submission.get("attachments", [])) or []}
        for declared in declared_attachments(found.metadata):
            received = await receive_attachment(
                self.api,
                self.blobs,
                self._keys,
                submission_id=found.submission_id,
                attachment_id=raw_ids.get(declared.attachment_id, declared.raw_id),
                expected_tag=tags[declared.attachment_id],
                expected_sha512=declared.sha512,
                max_attachment_bytes=self.options.max_attachment_bytes,
                max_inflated_bytes=self.options.max_inflated_bytes,
            )
            found.attachments.append((declared.attachment_id, received))

    # -- hand-over -------------------------------------------------------------------------------------

    def _discard(self, found: Findings) -> None:
        for _, received in found.attachments:
            received.writer.abort()
        found.attachments.clear()
        found.data = None

    async def _incoming(self, found: Findings) -> IncomingMessage:
        data_ref: BlobRef | None = None
        attachment_refs: list[BlobRef] = []
        declared_meta = {a.attachment_id: a for a in declared_attachments(found.metadata or {})}
        if not found.problems:
            data = found.data
            media_type = found.declared.mime_type if found.declared is not None else "application/octet-stream"

            def commit_blobs() -> None:  # every file of the submission in one worker-thread hop
                nonlocal data_ref
                if data is not None:
                    with self.blobs.writer() as writer:
                        writer.write(data)
                        data_ref = writer.commit(name="data", media_type=media_type)
                for attachment_id, received in found.attachments:
                    meta = declared_meta[attachment_id]
                    attachment_refs.append(
                        received.writer.commit(
                            name=f"attachment:{attachment_id}",
                            media_type=meta.mime_type,
                            filename=meta.filename,
                            attachment_id=attachment_id,
                        )
                    )

            await asyncio.to_thread(commit_blobs)
            found.attachments.clear()
        region = None
        if found.service is not None and found.service.regions:
            region = found.service.regions[0]
        schema_uri = found.declared.schema_uri if found.declared is not None else None
        routing = RoutingKeys.from_dict(
            {
                "service": found.api_service,
                "region": region,
                "destination": found.destination_id,
                "namespace": schema_uri,
                "message_type": schema_uri,
                "sender": None,
            }
        )
        fitconnect: dict[str, Any] = {
            "submissionId": found.submission_id,
            "caseId": found.case_id,
            "destinationId": found.destination_id,
            "serviceType": found.api_service,
            "metadataVersion": found.info.version if found.info is not None else None,
            "metadataSchemaAssumed": found.info.assumed if found.info is not None else None,
            "authenticationTags": found.tags,
            "dataSchema": (
                {"schemaUri": found.declared.schema_uri, "mimeType": found.declared.mime_type}
                if found.declared is not None
                else None
            ),
            "attachments": [
                {"id": a.attachment_id, "filename": a.filename, "mimeType": a.mime_type, "purpose": a.purpose}
                for a in declared_meta.values()
            ],
        }
        if found.problems:
            log.info(
                "fitconnect_submission_refused",
                source=self.options.name,
                submission_id=found.submission_id,
                problem_types=sorted({p.type.rsplit("/", 1)[-1] for p in found.problems}),
                instances=sorted({p.instance or "" for p in found.problems}),
            )
        return IncomingMessage(
            source=SourceRef(
                channel=self.options.name,
                type=SOURCE_TYPE,
                reference=found.submission_id,
                idempotency_key=found.submission_id,
                case=found.case_id,
            ),
            routing=routing,
            metadata={"fitconnect": fitconnect, "metadata": found.metadata},
            data=data_ref,
            attachments=attachment_refs,
            problems=list(found.problems),
            needs_ack=True,
            reply=reply_context(found.metadata, case_id=found.case_id, destination_id=found.destination_id),
        )
