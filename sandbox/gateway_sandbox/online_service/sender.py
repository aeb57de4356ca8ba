"""A FIT-Connect test sender: what an online service (Onlinedienst) does to submit an application.

Used by the demo, by tests and by ``gateway sandbox send``. The work is split in two:

* :func:`prepare_submission` (no I/O besides temp files): hashes, metadata, JWE encryption of
  metadata, data and each attachment, and the deliberate defects of a :class:`Breakage`;
* :class:`Sender` (aiohttp): token, destination and key lookup plus key validation, then
  ``POST /v1/submissions``, ``PUT`` attachments, ``PUT`` submit, and for Zustelldienst-side
  breakages the sandbox's inspection API.

Large attachments given as file paths are hashed and encrypted in streaming fashion into temp files
and uploaded from there, so memory stays bounded.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import os
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.fitconnect.client import ApiError, FitConnectClient
from gateway.fitconnect.jose import (
    JWE_ALG,
    auth_tag,
    b64url_decode,
    b64url_encode,
    encrypt_jwe,
    encrypt_jwe_stream,
)
from gateway.fitconnect.keys import load_public_jwk, thumbprint, validate_public_jwk
from gateway.fitconnect.metadata import AttachmentSpec, build_metadata, metadata_schema_uri

log = structlog.get_logger(__name__)

USER_AGENT = "ozg-gateway-test-sender/0.1"
JOSE_CONTENT_TYPE = "application/jose"
_HASH_CHUNK = 1 << 20


class Breakage(enum.StrEnum):
    """Deliberately broken submissions for negative tests of a subscriber."""

    # Sender side: built into what the sender encrypts and uploads.
    TAMPERED_CIPHERTEXT = "tampered-ciphertext"  # a ciphertext byte of the data JWE flipped
    FOREIGN_KEY = "foreign-key"  # data encrypted to a key the destination does not hold
    HASH_MISMATCH = "hash-mismatch"  # metadata states a wrong data hash
    ATTACHMENT_HASH_MISMATCH = "attachment-hash-mismatch"  # wrong hash of the first attachment
    ATTACHMENTS_MISMATCH = "attachments-mismatch"  # metadata lists an attachment never announced
    MISSING_DATA = "missing-data"  # metadata declares data, no encryptedData sent
    INVALID_METADATA_JSON = "invalid-metadata-json"  # metadata plaintext is not JSON
    METADATA_SCHEMA_VIOLATION = "metadata-schema-violation"  # contentStructure.attachments not an array
    UNSUPPORTED_METADATA_VERSION = "unsupported-metadata-version"  # $schema names metadata 9.0.0
    SERVICE_MISMATCH = "service-mismatch"  # metadata service differs from the API serviceType (1.x)
    WRONG_ALGORITHM = "wrong-algorithm"  # data JWE with enc A128GCM
    # Zustelldienst side: asked of the sandbox after submit.
    AUTH_TAG_MISMATCH = "auth-tag-mismatch"
    MISSING_SUBMIT_EVENT = "missing-submit-event"
    DUPLICATE_SUBMIT_EVENT = "duplicate-submit-event"
    MISSING_AUTHENTICATION_TAGS = "missing-authentication-tags"
    SET_WRONG_KEY = "set-wrong-key"


SANDBOX_TAMPER_MODES: Mapping[Breakage, str] = {
    Breakage.AUTH_TAG_MISMATCH: "auth-tag-mismatch",
    Breakage.MISSING_SUBMIT_EVENT: "drop-submit-event",
    Breakage.DUPLICATE_SUBMIT_EVENT: "duplicate-submit-event",
    Breakage.MISSING_AUTHENTICATION_TAGS: "missing-authentication-tags",
    Breakage.SET_WRONG_KEY: "wrong-set-key",
}

_NEEDS_DATA = frozenset(
    {Breakage.TAMPERED_CIPHERTEXT, Breakage.FOREIGN_KEY, Breakage.HASH_MISMATCH, Breakage.MISSING_DATA,
     Breakage.WRONG_ALGORITHM}
)  # fmt: skip


@dataclass(frozen=True)
class SenderQuirks:
    """Behaviour of legacy senders seen in the wild (e.g. the Python SDK 0.4.2)."""

    zip_def: bool = False  # JWE zip: DEF
    kid_thumbprint: bool = False  # JWE kid = RFC 7638 thumbprint instead of the destination's kid
    omit_metadata_schema: bool = False  # metadata without $schema


@dataclass(frozen=True)
class OutgoingAttachment:
    """An attachment given as bytes or, for large ones, as a file path (streamed)."""

    mime_type: str
    filename: str | None = None
    content: bytes | None = None
    path: Path | None = None
    purpose: str = "attachment"
    description: str | None = None
    attachment_id: str | None = None  # default: a new UUID

    def __post_init__(self) -> None:
        if (self.content is None) == (self.path is None):
            raise ValueError("an attachment needs exactly one of content or path")


@dataclass
class SentSubmission:
    submission_id: str
    case_id: str
    destination_id: str
    auth_tags: dict[str, Any]  # {"metadata": tag, "data": tag?, "attachments": {id: tag}}
    metadata: dict[str, Any] = field(default_factory=dict)
    attachment_ids: list[str] = field(default_factory=list)


class SenderError(ApiError):
    """A step of the submission failed (HTTP status and a short, non-personal detail)."""

    @property
    def step(self) -> str:
        return self.what


@contextmanager
def sender_errors() -> Iterator[None]:
    """The shared client's :class:`ApiError` as the sender's :class:`SenderError` (same step, status)."""
    try:
        yield
    except SenderError:
        raise
    except ApiError as exc:
        raise SenderError(exc.what, exc.detail, status=exc.status) from None


# --------------------------------------------------------------------------------------------------
# Preparation (pure crypto + temp files)


@dataclass
class PreparedAttachment:
    attachment_id: str
    jwe: str | None  # in-memory JWE, or
    jwe_path: Path | None  # a temp file holding the JWE (large attachments)
    tag: str


@dataclass
class PreparedSubmission:
    metadata: dict[str, Any]
    encrypted_metadata: str
    encrypted_data: str | None
    attachments: list[PreparedAttachment]
    announced_attachments: list[str]
    auth_tags: dict[str, Any]
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    def cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


@functools.lru_cache(maxsize=1)
def _foreign_key() -> rsa.RSAPrivateKey:
    # A key nobody configured: the destination cannot unwrap what is encrypted to it.
    return rsa.generate_private_key(public_exponent=65537, key_size=4096)


def _sha512_file(path: Path) -> str:
    digest = hashlib.sha512()
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _encrypt_a128gcm(plaintext: bytes, recipient: RSAPublicKey, *, kid: str, cty: str | None) -> str:
    """A well-formed JWE outside the FIT-Connect profile (enc A128GCM) for WRONG_ALGORITHM."""
    header: dict[str, Any] = {"alg": JWE_ALG, "enc": "A128GCM", "kid": kid}
    if cty is not None:
        header["cty"] = cty
    protected = b64url_encode(json.dumps(header, separators=(",", ":")).encode("utf-8"))
    cek = AESGCM.generate_key(bit_length=128)
    iv = os.urandom(12)
    sealed = AESGCM(cek).encrypt(iv, plaintext, protected.encode("ascii"))
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    encrypted_key = recipient.encrypt(cek, oaep)
    return ".".join(
        (
            protected,
            b64url_encode(encrypted_key),
            b64url_encode(iv),
            b64url_encode(sealed[:-16]),
            b64url_encode(sealed[-16:]),
        )
    )


def _flip_ciphertext_byte(compact: str) -> str:
    segments = compact.split(".")
    ciphertext = bytearray(b64url_decode(segments[3]))
    if not ciphertext:
        raise ValueError("tampered-ciphertext needs non-empty data")
    ciphertext[0] ^= 0x01
    segments[3] = b64url_encode(bytes(ciphertext))
    return ".".join(segments)


def prepare_submission(
    *,
    recipient: RSAPublicKey,
    kid: str,
    service_identifier: str,
    service_name: str,
    data: bytes | None,
    data_schema_uri: str | None,
    data_mime_type: str | None,
    attachments: Sequence[OutgoingAttachment],
    metadata_version: str = "1.0.0",
    quirks: SenderQuirks = SenderQuirks(),
    breakage: Breakage | None = None,
    reply_channel: dict[str, Any] | None = None,
    reference_info: dict[str, Any] | None = None,
) -> PreparedSubmission:
    """Hash, build metadata, encrypt everything and apply ``breakage``; raise ValueError if impossible.

    ``reply_channel`` becomes the metadata's ``replyChannel``, ``reference_info`` its
    ``additionalReferenceInfo`` (consent to a digital Bescheid, DeutschlandID application id).
    """
    if breakage in _NEEDS_DATA and data is None:
        raise ValueError(f"breakage {breakage} needs data")
    if breakage is Breakage.ATTACHMENT_HASH_MISMATCH and not attachments:
        raise ValueError("attachment-hash-mismatch needs at least one attachment")
    if breakage is Breakage.SERVICE_MISMATCH and not metadata_version.startswith("1."):
        raise ValueError("service-mismatch needs metadata 1.x (2.x carries no service in the metadata)")
    data_mime = data_mime_type or "application/json"
    tmp: tempfile.TemporaryDirectory[str] | None = None
    try:
        specs: list[AttachmentSpec] = []
        prepared: list[PreparedAttachment] = []
        for index, att in enumerate(attachments):
            attachment_id = att.attachment_id or str(uuid.uuid4())
            if att.content is not None:
                digest = hashlib.sha512(att.content).hexdigest()
                jwe = encrypt_jwe(att.content, recipient, kid=kid, cty=att.mime_type, zip_def=quirks.zip_def)
                prepared.append(PreparedAttachment(attachment_id, jwe, None, auth_tag(jwe)))
            else:
                assert att.path is not None
                digest = _sha512_file(att.path)
                if tmp is None:
                    tmp = tempfile.TemporaryDirectory(prefix="fitconnect-sender-")
                jwe_path = Path(tmp.name) / f"{attachment_id}.jwe"
                with att.path.open("rb") as src, jwe_path.open("wb") as dst:
                    tag = encrypt_jwe_stream(src, dst, recipient, kid=kid, cty=att.mime_type, zip_def=quirks.zip_def)
                prepared.append(PreparedAttachment(attachment_id, None, jwe_path, tag))
            if breakage is Breakage.ATTACHMENT_HASH_MISMATCH and index == 0:
                digest = hashlib.sha512(b"not the attachment").hexdigest()
            specs.append(
                AttachmentSpec(
                    attachment_id=attachment_id,
                    sha512_hex=digest,
                    mime_type=att.mime_type,
                    filename=att.filename,
                    purpose=att.purpose,
                    description=att.description,
                )
            )

        data_hash = hashlib.sha512(data).hexdigest() if data is not None else None
        if breakage is Breakage.HASH_MISMATCH:
            data_hash = hashlib.sha512(b"not the data").hexdigest()
        metadata = build_metadata(
            version=metadata_version,
            service_identifier=service_identifier,
            service_name=service_name,
            data_sha512=data_hash,
            data_schema_uri=data_schema_uri if data is not None else None,
            data_mime_type=data_mime if data is not None else None,
            attachments=specs,
            reply_channel=reply_channel,
            omit_schema=quirks.omit_metadata_schema,
        )
        if reference_info is not None:
            metadata["additionalReferenceInfo"] = dict(reference_info)
        _break_metadata(metadata, breakage, service_identifier)

        metadata_bytes = json.dumps(metadata, ensure_ascii=False).encode("utf-8")
        if breakage is Breakage.INVALID_METADATA_JSON:
            metadata_bytes = metadata_bytes[:-1]  # an unterminated object
        encrypted_metadata = encrypt_jwe(
            metadata_bytes, recipient, kid=kid, cty="application/json", zip_def=quirks.zip_def
        )

        encrypted_data: str | None = None
        if data is not None and breakage is not Breakage.MISSING_DATA:
            if breakage is Breakage.FOREIGN_KEY:
                encrypted_data = encrypt_jwe(
                    data, _foreign_key().public_key(), kid=kid, cty=data_mime, zip_def=quirks.zip_def
                )
            elif breakage is Breakage.WRONG_ALGORITHM:
                encrypted_data = _encrypt_a128gcm(data, recipient, kid=kid, cty=data_mime)
            else:
                encrypted_data = encrypt_jwe(data, recipient, kid=kid, cty=data_mime, zip_def=quirks.zip_def)
            if breakage is Breakage.TAMPERED_CIPHERTEXT:
                encrypted_data = _flip_ciphertext_byte(encrypted_data)

        tags: dict[str, Any] = {"metadata": auth_tag(encrypted_metadata)}
        if encrypted_data is not None:
            tags["data"] = auth_tag(encrypted_data)
        tags["attachments"] = {p.attachment_id: p.tag for p in prepared}
        return PreparedSubmission(
            metadata=metadata,
            encrypted_metadata=encrypted_metadata,
            encrypted_data=encrypted_data,
            attachments=prepared,
            announced_attachments=[p.attachment_id for p in prepared],
            auth_tags=tags,
            _tmp=tmp,
        )
    except BaseException:
        if tmp is not None:
            tmp.cleanup()
        raise


def _break_metadata(metadata: dict[str, Any], breakage: Breakage | None, service_identifier: str) -> None:
    content = metadata["contentStructure"]
    if breakage is Breakage.ATTACHMENTS_MISMATCH:
        content["attachments"].append(
            {
                "attachmentId": str(uuid.uuid4()),
                "purpose": "attachment",
                "mimeType": "application/pdf",
                "filename": "never-uploaded.pdf",
                "hash": {"type": "sha512", "content": hashlib.sha512(b"").hexdigest()},
            }
        )
    elif breakage is Breakage.METADATA_SCHEMA_VIOLATION:
        content["attachments"] = "none"
    elif breakage is Breakage.UNSUPPORTED_METADATA_VERSION:
        metadata["$schema"] = metadata_schema_uri("9.0.0")
    elif breakage is Breakage.SERVICE_MISMATCH:
        other = "urn:de:fim:leika:leistung:99000000000000"
        if other == service_identifier:
            other = "urn:de:fim:leika:leistung:99000000000001"
        metadata["publicServiceType"] = {"name": "Andere Leistung", "identifier": other}


# --------------------------------------------------------------------------------------------------
# HTTP


class Sender:
    """Submit applications to a FIT-Connect Submission API (v1 paths), over the shared client."""

    def __init__(
        self,
        submission_api_url: str,
        token_url: str,
        client_id: str,
        client_secret: str,
        session: aiohttp.ClientSession | None = None,
        *,
        trust_anchors: Sequence[x509.Certificate] = (),
        allow_self_signed: bool = True,  # a test sender talks to TEST systems and the sandbox
    ) -> None:
        self.api = FitConnectClient.with_credentials(
            base_url=submission_api_url,
            prefix="/v1",
            token_url=token_url,
            client_id=client_id,
            client_secret=client_secret,
            user_agent=USER_AGENT,
            session=session,
        )
        self._trust_anchors = tuple(trust_anchors)
        self._allow_self_signed = allow_self_signed

    async def __aenter__(self) -> Sender:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.api.close()

    async def destination_key(self, destination_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The destination and its validated encryption JWK."""
        with sender_errors():
            destination = await self.api.get_json(f"/destinations/{destination_id}", what="destination")
            kid = destination.get("encryptionKid")
            if not isinstance(kid, str) or not kid:
                raise SenderError("destination", "destination has no encryptionKid")
            jwk = await self.api.get_json(f"/destinations/{destination_id}/keys/{kid}", what="key")
        validate_public_jwk(
            jwk,
            purpose="encryption",
            trust_anchors=self._trust_anchors,
            allow_self_signed=self._allow_self_signed,
        )
        return destination, jwk

    async def send(
        self,
        *,
        destination_id: str,
        service_identifier: str,
        service_name: str,
        data: bytes | None,
        data_schema_uri: str | None,
        data_mime_type: str | None,
        attachments: Sequence[OutgoingAttachment] = (),
        metadata_version: str = "1.0.0",
        quirks: SenderQuirks = SenderQuirks(),
        breakage: Breakage | None = None,
        callback: tuple[str, str] | None = None,
        reply_channel: dict[str, Any] | None = None,
        reference_info: dict[str, Any] | None = None,
    ) -> SentSubmission:
        """Submit one application; ``reply_channel`` and ``reference_info`` go into the metadata as
        ``replyChannel`` and ``additionalReferenceInfo`` (e.g. from :class:`~.replies.OnlineService`)."""
        destination, jwk = await self.destination_key(destination_id)
        versions = destination.get("metadataVersions")
        if (
            isinstance(versions, list)
            and metadata_version not in versions
            and breakage is not Breakage.UNSUPPORTED_METADATA_VERSION
        ):
            raise SenderError("destination", f"destination does not offer metadata version {metadata_version}")
        kid = thumbprint(jwk) if quirks.kid_thumbprint else str(jwk["kid"])
        prepared = prepare_submission(
            recipient=load_public_jwk(jwk),
            kid=kid,
            service_identifier=service_identifier,
            service_name=service_name,
            data=data,
            data_schema_uri=data_schema_uri,
            data_mime_type=data_mime_type,
            attachments=attachments,
            metadata_version=metadata_version,
            quirks=quirks,
            breakage=breakage,
            reply_channel=reply_channel,
            reference_info=reference_info,
        )
        try:
            with sender_errors():
                return await self._upload(
                    destination_id, service_identifier, service_name, prepared, breakage, callback
                )
        finally:
            prepared.cleanup()

    async def _upload(
        self,
        destination_id: str,
        service_identifier: str,
        service_name: str,
        prepared: PreparedSubmission,
        breakage: Breakage | None,
        callback: tuple[str, str] | None,
    ) -> SentSubmission:
        create: dict[str, Any] = {
            "destinationId": destination_id,
            "announcedAttachments": prepared.announced_attachments,
            "serviceType": {"name": service_name, "identifier": service_identifier},
        }
        if callback is not None:
            create["callback"] = {"url": callback[0], "secret": callback[1]}
        body = await self.api.expect("POST", "/submissions", (201,), what="create-submission", json_body=create)
        try:
            created = json.loads(body)
            submission_id, case_id = str(created["submissionId"]), str(created["caseId"])
        except (ValueError, KeyError, TypeError):
            raise SenderError("create-submission", "response lacks submissionId/caseId") from None
        log.info("fitconnect_sender_created", submission_id=submission_id, case_id=case_id)

        for att in prepared.attachments:
            await self.api.expect(
                "PUT",
                f"/submissions/{submission_id}/attachments/{att.attachment_id}",
                (204,),
                what="upload-attachment",
                body=att.jwe_path if att.jwe_path is not None else (att.jwe or "").encode("ascii"),
                content_type=JOSE_CONTENT_TYPE,
                bounded=False,
            )

        submit: dict[str, Any] = {"encryptedMetadata": prepared.encrypted_metadata}
        if prepared.encrypted_data is not None:
            submit["encryptedData"] = prepared.encrypted_data
        await self.api.expect(
            "PUT",
            f"/submissions/{submission_id}",
            (202, 200),
            what="submit-submission",
            json_body=submit,
            bounded=False,
        )
        log.info("fitconnect_sender_submitted", submission_id=submission_id, mode=str(breakage or "none"))

        if breakage in SANDBOX_TAMPER_MODES:
            assert breakage is not None
            await self.sandbox_tamper(case_id, submission_id, breakage, prepared)

        return SentSubmission(
            submission_id=submission_id,
            case_id=case_id,
            destination_id=destination_id,
            auth_tags=prepared.auth_tags,
            metadata=prepared.metadata,
            attachment_ids=list(prepared.announced_attachments),
        )

    async def sandbox_tamper(
        self, case_id: str, submission_id: str, breakage: Breakage, prepared: PreparedSubmission | None = None
    ) -> None:
        """Ask the local sandbox (inspection API, not part of FIT-Connect) to break the stored submission."""
        body: dict[str, Any] = {"submissionId": submission_id, "mode": SANDBOX_TAMPER_MODES[breakage]}
        if breakage is Breakage.AUTH_TAG_MISMATCH:
            body["part"] = "data" if prepared is None or prepared.encrypted_data is not None else "metadata"
        with sender_errors():
            await self.api.expect(
                "POST",
                f"/_sandbox/cases/{case_id}/tamper",
                (204,),
                what="sandbox-tamper",
                json_body=body,
                auth=False,
                versioned=False,
            )
