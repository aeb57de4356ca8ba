"""The filesystem adapter: one directory per message, made visible atomically by a rename.

A delivery is built in a hidden temporary directory beside its final place (same filesystem),
every file and the directory are fsynced, then the directory is renamed to the message id and
the parent fsynced. A reader therefore sees either nothing or the complete directory with its
``manifest.json``; it must ignore names starting with ``.`` (temporary directories).

Every blob is hashed again while it is copied (its SHA-512 must match the envelope). The copy is
pipelined: the event loop reads the next chunk while one thread hashes and another writes the
earlier ones (both release the GIL), through a few recycled buffers. With ``fsync`` on, large
files are written back as they go and dropped from the page cache, so the final fsync is short.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import hashlib
import os
import secrets
import shutil
from collections import deque
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import structlog

from gateway.adapters.base import Adapter, AdapterContext, BlobReader, Delivery, DeliveryResult
from gateway.model import BlobRef, Envelope
from gateway.options import read_options
from gateway.store.blobs import BlobStore, fsync_dir
from gateway_filesystem.filenames import NameAllocator, data_filename, extension_for, sanitize_filename
from gateway_filesystem.layout import LayoutError
from gateway_filesystem.manifest import MANIFEST_NAME, FileEntry, is_complete, render_manifest
from gateway_filesystem.options import FilesystemOptions, prepare_directory, probe_writable

logger = structlog.get_logger(__name__)

TEMP_PREFIX = ".tmp-"  # + "<id>~<random>": "~" never occurs in an id accepted by the layout
COPY_CHUNK = 1 << 20  # read the blob in chunks of this size
COPY_BUFFERS = 4  # buffers in flight per copied file (bounds the memory: COPY_BUFFERS * COPY_CHUNK)
SMALL_DELIVERY_BYTES = 4 << 20  # messages up to this size (all parts) are copied in one thread call
WRITEBACK_BYTES = 8 << 20  # with fsync on: write back and drop from the page cache every this many bytes

_fdatasync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync


class _Permanent(Exception):
    """Retrying cannot help (the reason is safe to log)."""


class _BlobReadError(Exception):
    """Reading the gateway's own blob failed (not the target directory)."""

    def __init__(self, cause: OSError) -> None:
        super().__init__(cause)
        self.cause = cause


def _os_reason(what: str, exc: OSError) -> str:
    """E.g. ``writing failed: ENOSPC (No space left on device)`` (no paths: they may name a person)."""
    code = errno.errorcode.get(exc.errno, "") if exc.errno is not None else ""
    detail = f" ({exc.strerror})" if exc.strerror else ""
    return f"{what} failed: {code or type(exc).__name__}{detail}"


def _is_temp_of(name: str, message_id: str) -> bool:
    return name.startswith(TEMP_PREFIX) and name[len(TEMP_PREFIX) :].rpartition("~")[0] == message_id


class _PipelinedCopy:
    """Hash and write one target file in two threads, buffer by buffer in order, while the event
    loop reads ahead. Chunks are copied into recycled buffers at once (short-lived chunks let the
    allocator reuse their memory instead of faulting in new pages). A file smaller than one buffer
    is hashed and written in one step, without the threads. :meth:`close` joins both threads.
    """

    def __init__(self, fh: BinaryIO, *, writeback: bool) -> None:
        self._fh = fh
        self._writeback = writeback
        self._written = 0
        self._synced = 0
        self._hasher = hashlib.sha512()
        self._hash_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fs-copy-hash")
        self._write_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fs-copy-write")
        self._in_flight: deque[tuple[asyncio.Future[None], asyncio.Future[None], bytearray]] = deque()
        self._buf = bytearray()  # the first buffer grows with the data: small files stay small
        self._fill = 0
        self._pipelined = False

    async def put(self, chunk: bytes) -> None:
        """Take the next chunk; raises an earlier chunk's write error (``OSError``)."""
        view, off = memoryview(chunk), 0
        while off < len(view):
            take = min(COPY_CHUNK - self._fill, len(view) - off)
            self._buf[self._fill : self._fill + take] = view[off : off + take]
            self._fill += take
            off += take
            if self._fill == COPY_CHUNK:
                self._submit(memoryview(self._buf))
                self._buf, self._fill = await self._free_buffer(), 0

    def _submit(self, data: memoryview) -> None:
        self._pipelined = True
        loop = asyncio.get_running_loop()
        hashed = loop.run_in_executor(self._hash_thread, self._hasher.update, data)
        written = loop.run_in_executor(self._write_thread, self._write, data)
        self._in_flight.append((hashed, written, self._buf))

    async def _free_buffer(self) -> bytearray:
        if len(self._in_flight) < COPY_BUFFERS:
            return bytearray(COPY_CHUNK)
        hashed, written, buf = self._in_flight.popleft()
        await hashed
        await written
        return buf

    def _write(self, data: memoryview) -> None:
        done = 0
        while done < len(data):  # an unbuffered file may write less than asked
            done += self._fh.write(data[done:]) or 0
        self._written += len(data)
        if self._writeback and self._written - self._synced >= WRITEBACK_BYTES:
            fd = self._fh.fileno()
            _fdatasync(fd)
            if hasattr(os, "posix_fadvise"):  # only advice: the written-back pages may go
                with contextlib.suppress(OSError):
                    os.posix_fadvise(fd, self._synced, self._written - self._synced, os.POSIX_FADV_DONTNEED)
            self._synced = self._written

    def _hash_and_write(self, data: memoryview) -> None:
        self._hasher.update(data)
        self._write(data)

    async def finish(self) -> str:
        """Wait until everything is hashed and written; the SHA-512 hex of the whole file."""
        if self._fill and not self._pipelined:  # in the writing thread: close() joins it even if cancelled
            data = memoryview(self._buf)[: self._fill]
            await asyncio.get_running_loop().run_in_executor(self._write_thread, self._hash_and_write, data)
        elif self._fill:
            self._submit(memoryview(self._buf)[: self._fill])
        self._fill = 0
        while self._in_flight:
            hashed, written, _ = self._in_flight.popleft()
            await hashed
            await written
        return self._hasher.hexdigest()

    def close(self) -> None:
        """Discard what is queued and join both threads (they finish at most one buffer each)."""
        for hashed, written, _ in self._in_flight:
            hashed.cancel()  # nobody awaits them any more: no "exception never retrieved"
            written.cancel()
        self._in_flight.clear()
        self._hash_thread.shutdown(wait=True, cancel_futures=True)
        self._write_thread.shutdown(wait=True, cancel_futures=True)


def _close_quietly(fh: BinaryIO) -> None:
    with contextlib.suppress(OSError):
        fh.close()


def _failure(exc: BaseException) -> DeliveryResult | None:
    """The result for an error while building a delivery; ``None``: not ours, re-raise it."""
    if isinstance(exc, _Permanent):
        return DeliveryResult.permanent(str(exc))
    if isinstance(exc, _BlobReadError):
        return DeliveryResult.transient(_os_reason("reading the stored blob", exc.cause))
    if isinstance(exc, OSError):
        return DeliveryResult.transient(_os_reason("writing", exc))
    return None


def _existing(final: Path, message_id: str, reference: str) -> DeliveryResult:
    if is_complete(final, message_id):
        return DeliveryResult.delivered(reference, reason="already delivered")
    return DeliveryResult.permanent(
        "target directory exists without a complete manifest for this message; not overwriting"
    )


def plan_files(envelope: Envelope) -> list[FileEntry]:
    """Decide every file name up front: data part first, then attachments in envelope order."""
    data_name = data_filename(envelope.data.media_type) if envelope.data else None
    names = NameAllocator(reserved=(MANIFEST_NAME, data_name) if data_name else (MANIFEST_NAME,))
    files = [FileEntry(envelope.data, data_name)] if envelope.data and data_name else []
    for n, blob in enumerate(envelope.attachments, start=1):
        wanted = sanitize_filename(blob.filename) or f"attachment-{n}{extension_for(blob.media_type)}"
        files.append(FileEntry(blob, names.allocate(wanted)))
    return files


@dataclass(slots=True)
class FilesystemAdapter:
    name: str
    options: FilesystemOptions

    async def check(self) -> str | None:
        return await asyncio.to_thread(probe_writable, self.options.directory)

    async def close(self) -> None:
        return None

    async def deliver(self, delivery: Delivery) -> DeliveryResult:
        envelope = delivery.envelope
        log = logger.bind(adapter=self.name, message_id=envelope.id, attempt=delivery.attempt)
        try:
            segments = self.options.layout.render(envelope)
        except LayoutError as exc:
            return DeliveryResult.permanent(str(exc))
        final = self.options.directory.joinpath(*segments)
        reference = "/".join(segments)
        result = await self._deliver(envelope, delivery.blobs, final, reference)
        log.info("filesystem_delivery", outcome=str(result.outcome), reason=result.reason, path=reference)
        return result

    async def _deliver(self, envelope: Envelope, blobs: BlobReader, final: Path, reference: str) -> DeliveryResult:
        parts = [envelope.data, *envelope.attachments] if envelope.data else list(envelope.attachments)
        if isinstance(blobs, BlobStore) and sum(b.size for b in parts) <= SMALL_DELIVERY_BYTES:
            # Small (the usual application): every step in one worker-thread call. A thread hop per
            # step (~60 µs of CPU each, a dozen of them) would cost more than the copying itself.
            return await asyncio.to_thread(self._deliver_at_once, envelope, blobs, final, reference)
        try:
            if await asyncio.to_thread(os.path.lexists, final):
                return await self._existing(final, envelope.id, reference)
            files = plan_files(envelope)
            render_manifest(envelope, files)  # fail before copying anything if metadata is not JSON
            temp = await asyncio.to_thread(self._prepare, final, envelope.id)
        except (TypeError, ValueError):
            return DeliveryResult.permanent("envelope metadata is not JSON-serialisable")
        except OSError as exc:
            return DeliveryResult.transient(_os_reason("preparing the target directory", exc))

        try:
            for entry in files:
                await self._copy(blobs, entry.blob, temp / entry.file)
            manifest = render_manifest(envelope, files)
            renamed = await asyncio.to_thread(self._finish, temp, final, manifest)
        except BaseException as exc:
            # Runs for cancellation too; the thread finishes even if we are cancelled again.
            await asyncio.to_thread(shutil.rmtree, temp, True)
            failed = _failure(exc)
            if failed is None:
                raise
            return failed
        if not renamed:  # someone else finished first (e.g. a parallel attempt)
            await asyncio.to_thread(shutil.rmtree, temp, True)
            return await self._existing(final, envelope.id, reference)
        return DeliveryResult.delivered(reference)

    async def _existing(self, final: Path, message_id: str, reference: str) -> DeliveryResult:
        return await asyncio.to_thread(_existing, final, message_id, reference)

    def _deliver_at_once(self, envelope: Envelope, blobs: BlobStore, final: Path, reference: str) -> DeliveryResult:
        """The same steps and outcomes as the streaming path, synchronously (in a worker thread)."""
        try:
            if os.path.lexists(final):
                return _existing(final, envelope.id, reference)
            files = plan_files(envelope)
            render_manifest(envelope, files)  # fail before copying anything if metadata is not JSON
            temp = self._prepare(final, envelope.id)
        except (TypeError, ValueError):
            return DeliveryResult.permanent("envelope metadata is not JSON-serialisable")
        except OSError as exc:
            return DeliveryResult.transient(_os_reason("preparing the target directory", exc))
        try:
            for entry in files:
                self._copy_at_once(blobs.path(entry.blob), entry.blob, temp / entry.file)
            renamed = self._finish(temp, final, render_manifest(envelope, files))
        except BaseException as exc:
            shutil.rmtree(temp, True)
            failed = _failure(exc)
            if failed is None:
                raise
            return failed
        if not renamed:
            shutil.rmtree(temp, True)
            return _existing(final, envelope.id, reference)
        return DeliveryResult.delivered(reference)

    def _copy_at_once(self, source: Path, blob: BlobRef, target: Path) -> None:
        """Copy one small blob, checking size and SHA-512 (as :meth:`_copy` does while streaming)."""
        try:
            with source.open("rb") as fh:
                content = fh.read(blob.size + 1)
        except OSError as exc:
            raise _BlobReadError(exc) from exc
        if len(content) > blob.size:
            raise _Permanent(f"part {blob.name}: stored blob is larger than its recorded size")
        if len(content) != blob.size or hashlib.sha512(content).hexdigest() != blob.sha512.lower():
            raise _Permanent(f"part {blob.name}: stored blob does not match its recorded sha512")
        out = self._open_new(target)
        complete = False
        try:
            view = memoryview(content)
            while view:  # unbuffered: write() may write less than asked
                view = view[out.write(view) or 0 :]
            complete = True
        finally:
            (self._close_file if complete else _close_quietly)(out)

    def _mkdir(self, path: Path) -> None:
        os.mkdir(path)
        if self.options.dir_mode is not None:
            os.chmod(path, self.options.dir_mode)

    def _prepare(self, final: Path, message_id: str) -> Path:
        """Create missing layout directories, drop stale temporaries of this message, make a new one."""
        parent = self.options.directory
        for segment in final.relative_to(parent).parts[:-1]:
            parent = parent / segment
            try:
                self._mkdir(parent)
            except FileExistsError:
                continue
            if self.options.fsync:
                fsync_dir(parent.parent)
        with os.scandir(parent) as entries:
            stale = [Path(e.path) for e in entries if _is_temp_of(e.name, message_id)]
        for path in stale:  # left by a crashed attempt; the lease guarantees no live writer
            shutil.rmtree(path)
        temp = parent / f"{TEMP_PREFIX}{message_id}~{secrets.token_hex(8)}"
        self._mkdir(temp)
        return temp

    def _open_new(self, path: Path) -> BinaryIO:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags, 0o666)  # O_EXCL: never clobber, even if names were to collide
        try:
            if self.options.file_mode is not None:
                os.fchmod(fd, self.options.file_mode)
            return os.fdopen(fd, "wb", buffering=0)  # the copy writes whole buffers itself
        except BaseException:
            os.close(fd)
            raise

    def _close_file(self, fh: BinaryIO) -> None:
        try:
            fh.flush()
            if self.options.fsync:
                os.fsync(fh.fileno())
        finally:
            fh.close()

    async def _copy(self, blobs: BlobReader, blob: BlobRef, target: Path) -> None:
        """Stream one blob into ``target``, checking size and SHA-512 on the way."""
        fh = await asyncio.to_thread(self._open_new, target)
        complete = False
        copy = _PipelinedCopy(fh, writeback=self.options.fsync)
        try:
            size = 0
            chunks: AsyncIterator[bytes] = blobs.iter_chunks(blob, COPY_CHUNK)
            try:
                while True:
                    try:
                        chunk = await anext(chunks)
                    except StopAsyncIteration:
                        break
                    except OSError as exc:
                        raise _BlobReadError(exc) from exc
                    size += len(chunk)
                    if size > blob.size:
                        raise _Permanent(f"part {blob.name}: stored blob is larger than its recorded size")
                    await copy.put(chunk)  # an OSError here is the target's (writing failed)
            finally:
                aclose = getattr(chunks, "aclose", None)
                if aclose is not None:
                    await aclose()
            digest = await copy.finish()
            if size != blob.size or digest != blob.sha512.lower():
                raise _Permanent(f"part {blob.name}: stored blob does not match its recorded sha512")
            complete = True
        finally:
            # No thread may still write when the file is closed (and its directory removed).
            copy.close()
            # On failure the file is discarded with its directory: close it without letting a
            # flush error (e.g. ENOSPC again) hide the original cause.
            await asyncio.to_thread(self._close_file if complete else _close_quietly, fh)

    def _finish(self, temp: Path, final: Path, manifest: bytes) -> bool:
        """Write the manifest, make it all durable, rename; ``False`` if ``final`` appeared meanwhile."""
        fh = self._open_new(temp / MANIFEST_NAME)
        try:
            fh.write(manifest)
        finally:
            self._close_file(fh)
        if self.options.fsync:
            fsync_dir(temp)
        if os.path.lexists(final):
            return False
        try:
            # On POSIX a directory only replaces an *empty* directory; ours never are.
            os.rename(temp, final)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY) or os.path.lexists(final):
                return False
            raise
        if self.options.fsync:
            fsync_dir(final.parent)
        return True


def create(ctx: AdapterContext, options: FilesystemOptions | Mapping[str, Any]) -> Adapter:
    """The ``AdapterType.create`` hook, at start: prepare the directory. Raw options (a direct call)
    are read first (``ConfigErrors`` with every problem)."""
    if not isinstance(options, FilesystemOptions):
        options = read_options(FilesystemOptions, options, base_dir=ctx.base_dir, production=ctx.production)
    return FilesystemAdapter(ctx.name, dataclasses.replace(options, directory=prepare_directory(options)))
