"""The filesystem adapter's pipelined copy (hashing and writing threads) with multi-MB blobs: same
bytes and the same integrity check as before, written back as it goes only with fsync on, and every
failure (read error, write error, mismatch, cancellation) ends with no thread and no temp directory."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import resource
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from adapters.blobdir import BlobDir, FailingBlobDir, corrupt, make_context, make_envelope
from gateway.adapters.base import Adapter, Delivery, DeliveryOutcome
from gateway.model import Envelope
from gateway_filesystem import adapter as adapter_module
from gateway_filesystem import create

MiB = 1 << 20
BIG = b"".join(hashlib.sha512(i.to_bytes(4, "big")).digest() for i in range(11 * MiB // 128)) + b"odd"  # 5.5 MiB
OTHER = bytes(range(256)) * 9000 + b"x"


def make_adapter(tmp_path: Path, **options: Any) -> Adapter:
    options.setdefault("directory", "out")
    return create(make_context(tmp_path), options)


async def deliver(adapter: Adapter, envelope: Envelope, blobs: BlobDir) -> Any:
    return await adapter.deliver(Delivery(envelope, blobs, 1, envelope.id))


def copy_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("fs-copy")]


def listing(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*"))


@pytest.mark.parametrize("chunk_size", [None, 300_001, 4 * MiB])
async def test_large_blobs_are_copied_exactly(tmp_path: Path, chunk_size: int | None) -> None:
    blobs = BlobDir(tmp_path / "blobs", chunk_size=chunk_size)
    envelope = make_envelope(blobs, attachments=[(BIG, "big.bin"), (OTHER, "other.bin")])
    result = await deliver(make_adapter(tmp_path), envelope, blobs)
    assert result.outcome is DeliveryOutcome.DELIVERED
    assert (tmp_path / "out" / envelope.id / "big.bin").read_bytes() == BIG
    assert (tmp_path / "out" / envelope.id / "other.bin").read_bytes() == OTHER
    assert copy_threads() == []


@pytest.mark.parametrize("fsync", [True, False])
async def test_written_back_as_it_goes_only_with_fsync(
    tmp_path: Path, fsync: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real = adapter_module._fdatasync

    def fdatasync(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(adapter_module, "_fdatasync", fdatasync)
    monkeypatch.setattr(adapter_module, "WRITEBACK_BYTES", MiB)
    blobs = BlobDir(tmp_path / "blobs")
    envelope = make_envelope(blobs, attachments=[(BIG, "big.bin")])
    assert (await deliver(make_adapter(tmp_path, fsync=fsync), envelope, blobs)).outcome is DeliveryOutcome.DELIVERED
    assert len(synced) == (len(BIG) // MiB if fsync else 0)
    assert (tmp_path / "out" / envelope.id / "big.bin").read_bytes() == BIG


async def test_read_error_mid_copy(tmp_path: Path) -> None:
    failing = FailingBlobDir(
        tmp_path / "blobs", fail_after=12, error=OSError(errno.EIO, "Input/output error"), chunk_size=256 * 1024
    )
    envelope = make_envelope(failing, attachments=[(BIG, "big.bin")])
    result = await deliver(make_adapter(tmp_path), envelope, failing)
    assert result.outcome is DeliveryOutcome.TRANSIENT
    assert result.reason == "reading the stored blob failed: EIO (Input/output error)"
    assert listing(tmp_path / "out") == []
    assert copy_threads() == []


async def test_cancellation_mid_copy(tmp_path: Path) -> None:
    failing = FailingBlobDir(tmp_path / "blobs", fail_after=12, error=asyncio.CancelledError(), chunk_size=256 * 1024)
    envelope = make_envelope(failing, attachments=[(BIG, "big.bin")])
    with pytest.raises(asyncio.CancelledError):
        await deliver(make_adapter(tmp_path), envelope, failing)
    assert listing(tmp_path / "out") == []
    assert copy_threads() == []


async def test_mismatch_of_a_large_blob_is_permanent(tmp_path: Path) -> None:
    blobs = BlobDir(tmp_path / "blobs")
    envelope = make_envelope(blobs, attachments=[(BIG, "big.bin")])
    corrupt(blobs, envelope.attachments[0], BIG[:-1] + b"!")  # same size, last byte differs
    result = await deliver(make_adapter(tmp_path), envelope, blobs)
    assert result.outcome is DeliveryOutcome.PERMANENT
    assert result.reason.endswith("stored blob does not match its recorded sha512")
    assert listing(tmp_path / "out") == []
    assert copy_threads() == []


async def test_write_error_mid_copy_is_transient(tmp_path: Path) -> None:
    """A real EFBIG (file size limit) in the writing thread, 2 MiB into a 5.5 MiB file."""
    blobs = BlobDir(tmp_path / "blobs")
    envelope = make_envelope(blobs, attachments=[(BIG, "big.bin")])
    adapter = make_adapter(tmp_path)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG from write() instead of dying
    resource.setrlimit(resource.RLIMIT_FSIZE, (2 * MiB, hard))
    try:
        result = await deliver(adapter, envelope, blobs)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert result.outcome is DeliveryOutcome.TRANSIENT
    assert result.reason == "writing failed: EFBIG (File too large)"
    assert listing(tmp_path / "out") == []
    assert copy_threads() == []
