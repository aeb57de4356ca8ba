"""Content-addressed blob storage on disk.

Blobs are written to a temp file, fsynced, then renamed into place (and the directory fsynced), so a
blob file either exists complete or not at all. The name is the SHA-512 of the content, computed by
the store itself while writing: a caller can never register a blob under a wrong hash. Payloads are
streamed in chunks and never held whole in memory.

Large blobs are written through a small pipeline: ``write()`` copies into one of a few recycled
buffers and returns; a hashing thread and a writing thread work on earlier buffers meanwhile
(``hashlib`` and ``os.write`` release the GIL), so SHA-512 and disk writes overlap each other and the
caller's own work (e.g. decryption). Memory stays bounded by ``PIPELINE_BUFFERS * BUFFER_BYTES``.
The writing thread also writes back what it wrote every ``WRITEBACK_BYTES`` and drops those pages
from the page cache: a 500 MB blob then never sits dirty in RAM (the final fsync is short) and
the pages are recycled instead of new memory being faulted in for each MB.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import queue
import threading
import uuid
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from gateway.model import BlobRef

CHUNK = 1 << 20
BUFFER_BYTES = 4 << 20  # unit of work of a writer's pipeline (fewer, larger hand-overs: measured faster than 1 MiB)
PIPELINE_BUFFERS = 3  # buffers per writer at most: one filled, one hashed, one written (bounds its memory)
WRITEBACK_BYTES = 8 << 20  # write back and drop from the page cache every this many bytes
READ_DROP_BYTES = 8 << 20  # iter_chunks: drop what was read from the page cache every this many bytes

_fdatasync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a created or renamed file) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def drop_cached(fd: int, offset: int, length: int) -> None:
    """Advise the kernel that ``length`` bytes from ``offset`` will not be read again soon.

    Only clean pages are dropped (write them back first); the advice is best-effort and a no-op
    where ``posix_fadvise`` does not exist or does not apply."""
    fadvise = getattr(os, "posix_fadvise", None)
    if fadvise is None or length <= 0:
        return
    with contextlib.suppress(OSError):
        fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def write_all(fh: BinaryIO, data: memoryview) -> None:
    """``fh.write`` until every byte is written (an unbuffered file may write less than asked)."""
    done = 0
    while done < len(data):
        done += fh.write(data[done:]) or 0


class _Writeback:
    """Write back and drop from the page cache what the pipeline wrote, every WRITEBACK_BYTES."""

    def __init__(self) -> None:
        self.written = 0
        self.synced = 0

    def wrote(self, fd: int, n: int) -> None:
        self.written += n
        if self.written - self.synced >= WRITEBACK_BYTES:
            _fdatasync(fd)  # I/O errors surface here (and again at the final fsync)
            drop_cached(fd, self.synced, self.written - self.synced)
            self.synced = self.written


class _Pipeline:
    """Two threads for one writer: buffer -> hashing thread -> writing thread -> free again.

    Each stage takes buffers in order, so the hash and the file see the bytes in write order. After
    the first error (or :meth:`cancel`), buffers still flow back to the free pool without being
    processed, so a producer waiting for a buffer is never stuck; :meth:`finish` re-raises the error.
    """

    def __init__(self, fh: BinaryIO, hasher: Any, writeback: _Writeback) -> None:
        self._fh = fh
        self._hasher = hasher
        self._writeback = writeback
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._created = 0
        self._to_hash: queue.SimpleQueue[tuple[bytearray, int] | None] = queue.SimpleQueue()
        self._to_write: queue.SimpleQueue[tuple[bytearray, int] | None] = queue.SimpleQueue()
        self.error: BaseException | None = None
        self._stopping = False  # cancelled: skip the remaining buffers
        self._threads = [
            threading.Thread(target=self._hash_loop, name="blob-hash", daemon=True),
            threading.Thread(target=self._write_loop, name="blob-write", daemon=True),
        ]
        self._stopped = False
        for thread in self._threads:
            thread.start()

    def buffer(self) -> bytearray:
        """A free buffer (waits while PIPELINE_BUFFERS are in flight)."""
        if self._created < PIPELINE_BUFFERS:
            try:
                return self._free.get_nowait()
            except queue.Empty:
                self._created += 1
                return bytearray(BUFFER_BYTES)
        return self._free.get()

    def submit(self, buf: bytearray, n: int) -> None:
        self._to_hash.put((buf, n))

    def _skipping(self) -> bool:
        return self._stopping or self.error is not None

    def _hash_loop(self) -> None:
        while (item := self._to_hash.get()) is not None:
            if not self._skipping():
                try:
                    with memoryview(item[0]) as view, view[: item[1]] as data:
                        self._hasher.update(data)
                except BaseException as exc:  # hashing does not fail short of MemoryError
                    self.error = self.error or exc
            self._to_write.put(item)
        self._to_write.put(None)

    def _write_loop(self) -> None:
        while (item := self._to_write.get()) is not None:
            buf, n = item
            if not self._skipping():
                try:
                    with memoryview(buf) as view, view[:n] as data:
                        write_all(self._fh, data)
                    self._writeback.wrote(self._fh.fileno(), n)
                except BaseException as exc:  # OSError (ENOSPC, EIO, EFBIG); recorded, never lost
                    self.error = self.error or exc
            self._free.put(buf)

    def _join(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._to_hash.put(None)
        for thread in self._threads:
            thread.join()

    def finish(self) -> None:
        """Process everything submitted, stop the threads; raise the first error of a stage."""
        self._join()
        if self.error is not None:
            raise self.error

    def cancel(self) -> None:
        """Stop as soon as possible, discarding what is not yet processed; joins the threads."""
        self._stopping = True
        self._join()

    def cancel_nowait(self) -> None:
        """Let the threads end on their own (the writer was dropped without commit or abort)."""
        self._stopping = True
        if not self._stopped:
            self._stopped = True
            self._to_hash.put(None)


class BlobWriter:
    """Incremental writer: ``write()`` chunks, then ``commit()`` (durable) or ``abort()``.

    A ``pipelined`` writer (for large streams) may return from ``write`` before the bytes are
    hashed and on disk (see the module docstring); a failure of its pipeline surfaces at the next
    ``write``, ``drain``, ``sha512_hex`` or ``commit``. ``drain`` waits until everything written so
    far is hashed and written and stops the pipeline's threads: no thread of the writer runs after
    ``drain``, ``commit`` or ``abort`` returned, so a pipelined writer that is kept uncommitted for a
    while should be drained first. A writer is used by one thread at a time, but ``abort`` may come
    from another (it waits for a ``write`` in progress). Without ``pipelined`` every ``write``
    hashes and writes before it returns, in the calling thread.
    """

    def __init__(self, store: BlobStore, *, pipelined: bool = False) -> None:
        self._store = store
        self._tmp = store.tmp_dir / f"{uuid.uuid4().hex}.part"
        self._fh: BinaryIO | None = self._tmp.open("xb", buffering=0)
        self._hash = hashlib.sha512()
        self.size = 0
        self._lock = threading.Lock()
        self._cur: bytearray | None = None  # the buffer being filled
        self._fill = 0
        self._pipelined = pipelined
        self._pipe: _Pipeline | None = None
        self._finalizer: weakref.finalize[[], BlobWriter] | None = None
        self._writeback = _Writeback()
        self._failed: BaseException | None = None

    # -- writing -----------------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> int:
        with self._lock, memoryview(data) as raw, raw.cast("B") as view:
            self._check_usable()
            n, off = len(view), 0
            if not self._pipelined:
                assert self._fh is not None
                write_all(self._fh, view)
                self._hash.update(view)
                self._writeback.wrote(self._fh.fileno(), n)
                self.size += n
                return n
            while off < n:
                if self._cur is None:
                    # Until one buffer is full the first one grows with the data: small blobs never
                    # allocate a whole buffer nor start threads.
                    self._cur = self._pipe.buffer() if self._pipe is not None else bytearray()
                    self._fill = 0
                take = min(BUFFER_BYTES - self._fill, n - off)
                self._cur[self._fill : self._fill + take] = view[off : off + take]
                self._fill += take
                off += take
                if self._fill == BUFFER_BYTES:
                    self._submit()
            self.size += n
            return n

    def _check_usable(self) -> None:
        if self._fh is None:
            raise ValueError("blob writer already closed")
        if self._failed is not None:
            raise self._failed
        if self._pipe is not None and self._pipe.error is not None:
            self._failed = self._pipe.error
            raise self._failed

    def _submit(self) -> None:
        assert self._fh is not None
        assert self._cur is not None
        if self._pipe is None:
            self._pipe = _Pipeline(self._fh, self._hash, self._writeback)
            # Dropped without commit or abort (a bug elsewhere): let the threads end anyway.
            self._finalizer = weakref.finalize(self, self._pipe.cancel_nowait)
        self._pipe.submit(self._cur, self._fill)
        self._cur, self._fill = None, 0

    def _stop_pipeline(self) -> _Pipeline:
        assert self._pipe is not None
        assert self._finalizer is not None
        pipe, self._pipe = self._pipe, None
        self._finalizer.detach()
        self._finalizer = None
        return pipe

    def drain(self) -> None:
        """Hash and write everything written so far; the pipeline's threads are stopped on return."""
        with self._lock:
            self._drain()

    def _drain(self) -> None:
        self._check_usable()
        assert self._fh is not None
        try:
            if self._cur is not None and self._fill:
                if self._pipe is None:  # a small blob: no threads needed
                    with memoryview(self._cur) as view, view[: self._fill] as data:
                        write_all(self._fh, data)
                        self._hash.update(data)
                    self._cur, self._fill = None, 0
                else:
                    self._submit()
            if self._pipe is not None:
                pipe = self._stop_pipeline()
                pipe.finish()
        except BaseException as exc:
            self._failed = exc
            raise

    def sha512_hex(self) -> str:
        """The SHA-512 of what was written so far (the blob id ``commit`` will use)."""
        with self._lock:
            self._drain()
            return self._hash.hexdigest()

    # -- ending ------------------------------------------------------------------------------------

    def commit(
        self,
        *,
        name: str,
        media_type: str = "application/octet-stream",
        filename: str | None = None,
        attachment_id: str | None = None,
    ) -> BlobRef:
        with self._lock:
            self._drain()
            assert self._fh is not None
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
                fsync_dir(final.parent)
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
        with self._lock:
            if self._pipe is not None:
                self._stop_pipeline().cancel()
            self._cur = None
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

    def writer(self, *, pipelined: bool = False) -> BlobWriter:
        """A new writer; ``pipelined`` for large streams (hashing and writing in threads)."""
        return BlobWriter(self, pipelined=pipelined)

    def store_bytes(self, data: bytes, **kwargs: str | None) -> BlobRef:
        """Write and commit a small blob synchronously (from a worker thread: it fsyncs)."""
        with self.writer() as w:
            w.write(data)
            return w.commit(**kwargs)  # type: ignore[arg-type]

    async def write_bytes(self, data: bytes, **kwargs: str | None) -> BlobRef:
        return await asyncio.to_thread(self.store_bytes, data, **kwargs)

    async def write_stream(self, chunks: AsyncIterator[bytes], **kwargs: str | None) -> BlobRef:
        writer = self.writer(pipelined=True)  # committed or aborted right after the stream ends
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
        """The blob's bytes; what was read is dropped from the page cache as reading goes on (a
        delivery reads a blob once: keeping 500 MB cached would only push useful pages out)."""
        fh = await asyncio.to_thread(self.path(blob).open, "rb", buffering=0)
        dropped = read = 0
        try:
            while True:
                chunk = await asyncio.to_thread(fh.read, chunk_size)
                if not chunk:
                    return
                read += len(chunk)
                if read - dropped >= READ_DROP_BYTES:
                    drop_cached(fh.fileno(), dropped, read - dropped)
                    dropped = read
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
