"""Content-addressed blob storage on disk.

Blobs are written to a temp file, fsynced, then renamed into place (and the directory fsynced), so a
blob file either exists complete or not at all. The name is the SHA-512 of the content, computed by
the store itself while writing: a caller can never register a blob under a wrong hash. Payloads are
streamed in chunks and never held whole in memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from gateway.model import BlobRef

CHUNK = 1 << 20


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobWriter:
    """Incremental writer: ``write()`` chunks, then ``commit()`` (durable) or ``abort()``."""

    def __init__(self, store: BlobStore) -> None:
        self._store = store
        self._tmp = store.tmp_dir / f"{uuid.uuid4().hex}.part"
        self._fh: BinaryIO | None = self._tmp.open("xb")
        self._hash = hashlib.sha512()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        assert self._fh is not None, "writer already closed"
        self._fh.write(data)
        self._hash.update(data)
        self.size += len(data)
        return len(data)

    def sha512_hex(self) -> str:
        """The SHA-512 of what was written so far (the blob id ``commit`` will use)."""
        return self._hash.hexdigest()

    def commit(
        self,
        *,
        name: str,
        media_type: str = "application/octet-stream",
        filename: str | None = None,
        attachment_id: str | None = None,
    ) -> BlobRef:
        assert self._fh is not None, "writer already closed"
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None
        digest = self._hash.hexdigest()
        final = self._store.file_for(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            self._tmp.unlink()  # same content already stored durably
        else:
            os.replace(self._tmp, final)
            _fsync_dir(final.parent)
        return BlobRef(
            name=name,
            blob_id=digest,
            sha512=digest,
            size=self.size,
            media_type=media_type,
            filename=filename,
            attachment_id=attachment_id,
        )

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._fh is not None:
            self.abort()


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"

    def open(self) -> None:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        # Leftovers of a crash are incomplete by construction (never renamed into place).
        for leftover in self.tmp_dir.glob("*.part"):
            leftover.unlink(missing_ok=True)

    def file_for(self, digest: str) -> Path:
        if len(digest) != 128 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError("blob id must be a lowercase SHA-512 hex digest")
        return self.root / digest[:2] / digest[2:4] / digest

    def writer(self) -> BlobWriter:
        return BlobWriter(self)

    async def write_bytes(self, data: bytes, **kwargs: str | None) -> BlobRef:
        def work() -> BlobRef:
            with self.writer() as w:
                w.write(data)
                return w.commit(**kwargs)  # type: ignore[arg-type]

        return await asyncio.to_thread(work)

    async def write_stream(self, chunks: AsyncIterator[bytes], **kwargs: str | None) -> BlobRef:
        writer = self.writer()
        try:
            async for chunk in chunks:
                await asyncio.to_thread(writer.write, chunk)
            return await asyncio.to_thread(lambda: writer.commit(**kwargs))  # type: ignore[arg-type]
        except BaseException:
            writer.abort()
            raise

    # BlobReader protocol -------------------------------------------------------------------

    def path(self, blob: BlobRef) -> Path:
        return self.file_for(blob.blob_id)

    async def iter_chunks(self, blob: BlobRef, chunk_size: int = CHUNK) -> AsyncIterator[bytes]:
        fh = await asyncio.to_thread(self.path(blob).open, "rb")
        try:
            while True:
                chunk = await asyncio.to_thread(fh.read, chunk_size)
                if not chunk:
                    return
                yield chunk
        finally:
            fh.close()

    def exists(self, blob: BlobRef) -> bool:
        return self.path(blob).is_file()

    def verify(self, blob: BlobRef) -> bool:
        """Recompute the hash (used by ``gateway audit verify --blobs`` and adapters that care)."""
        h = hashlib.sha512()
        with self.path(blob).open("rb") as fh:
            while chunk := fh.read(CHUNK):
                h.update(chunk)
        return h.hexdigest() == blob.sha512
