"""Test helpers: a file-per-blob BlobReader (content-addressed by SHA-512) and envelope builders."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.adapters.base import AdapterContext
from gateway.errors import ConfigError
from gateway.model import BlobRef, Envelope, RoutingKeys, SourceRef, new_message_id


class BlobDir:
    """Blobs as files named by their SHA-512 hex in one directory; implements ``BlobReader``."""

    def __init__(self, root: Path, chunk_size: int | None = None) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.chunk_size = chunk_size  # forces small chunks so tests can fail "mid-way"

    def put(
        self,
        content: bytes,
        *,
        name: str = "data",
        media_type: str = "application/octet-stream",
        filename: str | None = None,
        attachment_id: str | None = None,
    ) -> BlobRef:
        digest = hashlib.sha512(content).hexdigest()
        path = self.root / digest
        if not path.exists():
            path.write_bytes(content)
            path.chmod(0o444)
        return BlobRef(
            name=name,
            blob_id=digest,
            sha512=digest,
            size=len(content),
            media_type=media_type,
            filename=filename,
            attachment_id=attachment_id,
        )

    def attachment(self, content: bytes, filename: str | None, media_type: str = "application/pdf") -> BlobRef:
        attachment_id = hashlib.sha256(content + (filename or "").encode()).hexdigest()[:32]
        return self.put(
            content,
            name=f"attachment:{attachment_id}",
            media_type=media_type,
            filename=filename,
            attachment_id=attachment_id,
        )

    # --- BlobReader protocol ---
    def path(self, blob: BlobRef) -> Path:
        return self.root / blob.blob_id

    async def iter_chunks(self, blob: BlobRef, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        size = self.chunk_size or chunk_size
        fh = await asyncio.to_thread(self.path(blob).open, "rb")
        try:
            while chunk := await asyncio.to_thread(fh.read, size):
                yield chunk
        finally:
            fh.close()


class FailingBlobDir(BlobDir):
    """Raises ``error`` after ``fail_after`` chunks have been handed out (counted over all blobs)."""

    def __init__(self, root: Path, *, fail_after: int, error: BaseException, chunk_size: int = 1024) -> None:
        super().__init__(root, chunk_size=chunk_size)
        self.fail_after = fail_after
        self.error = error
        self.served = 0

    async def iter_chunks(self, blob: BlobRef, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        async for chunk in super().iter_chunks(blob, chunk_size):
            if self.served >= self.fail_after:
                raise self.error
            self.served += 1
            yield chunk


def corrupt(blobs: BlobDir, blob: BlobRef, content: bytes) -> None:
    """Replace a stored blob's bytes behind the store's back (simulates bit rot / tampering)."""
    path = blobs.path(blob)
    path.chmod(0o644)
    path.write_bytes(content)


def make_envelope(
    blobs: BlobDir,
    *,
    message_id: str | None = None,
    data: bytes | None = b'{"antrag": {"name": "Erika Mustermann"}}',
    data_media_type: str = "application/json",
    attachments: list[tuple[bytes, str | None]] | None = None,
    metadata: Mapping[str, Any] | None = None,
    received_at: datetime | None = None,
) -> Envelope:
    data_ref = blobs.put(data, name="data", media_type=data_media_type) if data is not None else None
    return Envelope(
        id=message_id if message_id is not None else new_message_id(),
        source=SourceRef(
            channel="fitconnect-bauamt",
            type="fitconnect",
            reference="4f2c1e7a-0000-4000-8000-000000000001",
            idempotency_key="4f2c1e7a-0000-4000-8000-000000000001",
            case="9a1b2c3d-0000-4000-8000-000000000002",
        ),
        received_at=received_at or datetime(2026, 11, 24, 21, 30, 5, tzinfo=UTC),
        routing=RoutingKeys(
            service="urn:de:fim:leika:leistung:99050012104000",
            region="064350014014",
            destination="d1e2f3a4-0000-4000-8000-000000000003",
        ),
        metadata=dict(metadata) if metadata is not None else {"publicServiceType": {"name": "Bauantrag"}},
        data=data_ref,
        attachments=tuple(blobs.attachment(content, name) for content, name in attachments or ()),
    )


def resolve_secret(base_dir: Path) -> Any:
    """A stand-in for the host's resolver: ``{ file = "..." }`` or ``{ env = "..." }``; ``ConfigError``
    (without a key: the caller knows it) when the secret cannot be read."""

    def resolve(options: Mapping[str, Any], key: str) -> str | None:
        ref = options.get(key)
        if ref is None:
            return None
        if "file" in ref:
            try:
                return (base_dir / ref["file"]).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"cannot read secret file {ref['file']}: {exc.strerror}") from None
        if ref["env"] not in os.environ:
            raise ConfigError(f"environment variable {ref['env']} is not set")
        return os.environ[ref["env"]].strip()

    return resolve


def make_context(base_dir: Path, name: str = "test-adapter", production: bool = False) -> AdapterContext:
    return AdapterContext(name=name, base_dir=base_dir, resolve_secret=resolve_secret(base_dir), production=production)
