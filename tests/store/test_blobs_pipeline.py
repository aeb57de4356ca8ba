"""The pipelined blob writer: same bytes and hash as a serial write, bounded memory, and every
failure path (an error in the hashing or the writing thread, abort mid-stream, cancellation)
surfaces the error, removes the temp file and leaves no thread running."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.store import blobs as blobs_module
from gateway.store.blobs import BlobStore, BlobWriter

MiB = 1 << 20


def pattern(size: int) -> bytes:
    """Non-repeating content (a repeated block would hide reordered buffers)."""
    blocks = (hashlib.sha512(i.to_bytes(8, "big")).digest() for i in range(size // 64 + 1))
    return b"".join(blocks)[:size]


CONTENT = pattern(5 * MiB + 12345)  # with 1 MiB buffers: five full buffers and a partial one
DIGEST = hashlib.sha512(CONTENT).hexdigest()


@pytest.fixture(autouse=True)
def small_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    """1 MiB buffers (production: larger), so a few MB run through many recycled buffers."""
    monkeypatch.setattr(blobs_module, "BUFFER_BYTES", MiB)


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    store = BlobStore(tmp_path / "blobs")
    store.open()
    return store


def pipeline_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("blob-")]


def temp_files(store: BlobStore) -> list[Path]:
    return list(store.tmp_dir.iterdir())


def write_in_pieces(writer: BlobWriter, content: bytes, piece: int = 300_001) -> None:
    for i in range(0, len(content), piece):
        writer.write(content[i : i + piece])


def test_pipelined_and_serial_writers_store_the_same_blob(blobs: BlobStore) -> None:
    pipelined = blobs.writer(pipelined=True)
    write_in_pieces(pipelined, CONTENT[: 2 * MiB + 7])
    # sha512_hex drains the pipeline (threads stop) and writing may go on afterwards.
    assert pipelined.sha512_hex() == hashlib.sha512(CONTENT[: 2 * MiB + 7]).hexdigest()
    assert pipeline_threads() == []
    write_in_pieces(pipelined, CONTENT[2 * MiB + 7 :], piece=777_777)
    ref = pipelined.commit(name="attachment:a")
    assert pipeline_threads() == []
    assert (ref.blob_id, ref.size) == (DIGEST, len(CONTENT))
    assert blobs.path(ref).read_bytes() == CONTENT

    serial = blobs.writer()
    write_in_pieces(serial, CONTENT, piece=65_536)
    assert serial.commit(name="attachment:b").blob_id == DIGEST
    assert temp_files(blobs) == []


def test_memoryview_and_bytearray_input(blobs: BlobStore) -> None:
    writer = blobs.writer(pipelined=True)
    writer.write(bytearray(CONTENT[:MiB]))
    writer.write(memoryview(CONTENT)[MiB : 3 * MiB])
    writer.write(memoryview(bytearray(CONTENT[3 * MiB :])))
    assert writer.commit(name="data").blob_id == DIGEST


def test_small_blob_starts_no_thread(blobs: BlobStore) -> None:
    writer = blobs.writer(pipelined=True)
    writer.write(b"Antrag")
    writer.write(b" auf Baugenehmigung")
    assert pipeline_threads() == []
    ref = writer.commit(name="data")
    assert blobs.path(ref).read_bytes() == b"Antrag auf Baugenehmigung"


def failing_after(calls: int, real: Callable[..., Any], error: BaseException) -> Callable[..., Any]:
    count = 0

    def wrapper(*args: Any) -> Any:
        nonlocal count
        count += 1
        if count > calls:
            raise error
        return real(*args)

    return wrapper


def test_error_in_the_writing_thread_surfaces_and_abort_cleans_up(
    blobs: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_space = OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(blobs_module, "write_all", failing_after(2, blobs_module.write_all, no_space))
    writer = blobs.writer(pipelined=True)

    def write_and_commit() -> None:
        write_in_pieces(writer, CONTENT)
        writer.commit(name="data")  # if every write() was accepted before the error

    with pytest.raises(OSError) as info:
        write_and_commit()
    assert info.value.errno == errno.ENOSPC
    with pytest.raises(OSError):  # the failure is sticky
        writer.write(b"more")
    with pytest.raises(OSError):
        writer.commit(name="data")
    writer.abort()
    assert temp_files(blobs) == []
    assert pipeline_threads() == []


class FailingSha512:
    """A SHA-512 whose third update fails (stands in for anything going wrong in the hashing thread)."""

    def __init__(self) -> None:
        self._real = hashlib.sha512()
        self._updates = 0

    def update(self, data: Any) -> None:
        self._updates += 1
        if self._updates == 3:
            raise MemoryError("hashing failed")
        self._real.update(data)

    def hexdigest(self) -> str:
        return self._real.hexdigest()


class FakeHashlib:
    sha512 = FailingSha512


def test_error_in_the_hashing_thread_surfaces_and_abort_cleans_up(
    blobs: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(blobs_module, "hashlib", FakeHashlib)
    writer = blobs.writer(pipelined=True)

    def write_and_drain() -> None:
        write_in_pieces(writer, CONTENT)
        writer.drain()

    with pytest.raises(MemoryError, match="hashing failed"):
        write_and_drain()
    with pytest.raises(MemoryError):
        writer.sha512_hex()  # never a digest of a partly hashed stream
    writer.abort()
    assert temp_files(blobs) == []
    assert pipeline_threads() == []


def test_memory_is_bounded_and_abort_from_another_thread_stops_everything(
    blobs: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk "hangs": the producer blocks once every buffer is in flight; abort (from another
    thread) waits for the write in progress, then the pipeline is cancelled and joined."""
    release = threading.Event()
    entered = threading.Event()
    real_write_all = blobs_module.write_all

    def hanging_write_all(fh: Any, data: memoryview) -> None:
        entered.set()
        release.wait()
        real_write_all(fh, data)

    monkeypatch.setattr(blobs_module, "write_all", hanging_write_all)
    writer = blobs.writer(pipelined=True)
    accepted = 0
    outcome: list[BaseException | None] = []

    buffer_bytes, buffers = blobs_module.BUFFER_BYTES, blobs_module.PIPELINE_BUFFERS

    def produce() -> None:
        nonlocal accepted
        try:
            for _ in range(4 * buffers):
                writer.write(CONTENT[:buffer_bytes])
                accepted += buffer_bytes
            outcome.append(None)
        except BaseException as exc:  # ValueError: the writer was aborted meanwhile
            outcome.append(exc)

    producer = threading.Thread(target=produce)
    producer.start()
    assert entered.wait(30)
    producer.join(timeout=0.3)
    assert producer.is_alive()  # blocked: no buffer is free while the disk hangs
    assert accepted <= (buffers + 1) * buffer_bytes

    aborter = threading.Thread(target=writer.abort)
    aborter.start()
    release.set()
    aborter.join(30)
    producer.join(30)
    assert not aborter.is_alive()
    assert not producer.is_alive()
    assert outcome == [None] or isinstance(outcome[0], ValueError)
    assert temp_files(blobs) == []
    assert pipeline_threads() == []


async def test_cancelled_write_stream_leaves_no_thread_and_no_temp_file(blobs: BlobStore) -> None:
    handed_out = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        for i in range(0, 4 * MiB, 256 * 1024):
            yield CONTENT[i : i + 256 * 1024]
        handed_out.set()
        await asyncio.Event().wait()  # the sender stalls
        yield b""  # pragma: no cover

    task = asyncio.create_task(blobs.write_stream(endless(), name="data"))
    await handed_out.wait()
    assert pipeline_threads() != []  # the pipeline is really running
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert temp_files(blobs) == []
    assert pipeline_threads() == []


def test_large_blobs_are_written_back_as_they_go(blobs: BlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real = blobs_module._fdatasync

    def fdatasync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else "?")
        real(fd)

    monkeypatch.setattr(blobs_module, "_fdatasync", fdatasync)
    monkeypatch.setattr(blobs_module, "WRITEBACK_BYTES", MiB)
    for pipelined in (True, False):
        synced.clear()
        writer = blobs.writer(pipelined=pipelined)
        write_in_pieces(writer, CONTENT)
        ref = writer.commit(name="data")
        # Every MiB (pipelined: whole buffers) or the first write past it (serial: 300 kB pieces).
        assert len(synced) == (5 if pipelined else 4)
        assert all(name.endswith(".part") or name == "?" for name in synced)
        assert blobs.path(ref).read_bytes() == CONTENT


async def test_reading_back_in_chunks_drops_behind_without_changing_bytes(
    blobs: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    dropped: list[tuple[int, int]] = []
    real = blobs_module.drop_cached

    def drop_cached(fd: int, offset: int, length: int) -> None:
        dropped.append((offset, length))
        real(fd, offset, length)

    monkeypatch.setattr(blobs_module, "drop_cached", drop_cached)
    monkeypatch.setattr(blobs_module, "READ_DROP_BYTES", 2 * MiB)
    ref = await blobs.write_bytes(CONTENT, name="data")
    read = b"".join([chunk async for chunk in blobs.iter_chunks(ref, chunk_size=MiB)])
    assert read == CONTENT
    assert dropped == [(0, 2 * MiB), (2 * MiB, 2 * MiB)]
