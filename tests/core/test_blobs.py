"""Content-addressed blob store: streamed writes, fsync + rename (never a partial final file),
crash leftovers removed on open, verification."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.store.blobs import BlobStore

CHUNKS = [bytes([i]) * 70_000 for i in range(5)]
CONTENT = b"".join(CHUNKS)
DIGEST = hashlib.sha512(CONTENT).hexdigest()


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    store = BlobStore(tmp_path / "blobs")
    store.open()
    return store


def files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


async def chunks(parts: list[bytes], fail_after: int | None = None) -> AsyncIterator[bytes]:
    for index, part in enumerate(parts):
        if fail_after is not None and index == fail_after:
            raise ConnectionResetError("sender went away")
        yield part


async def test_streaming_write_is_content_addressed(blobs: BlobStore, tmp_path: Path) -> None:
    ref = await blobs.write_stream(chunks(CHUNKS), name="data", media_type="application/xml", filename="a.xml")
    assert (ref.blob_id, ref.sha512, ref.size) == (DIGEST, DIGEST, len(CONTENT))
    assert (ref.name, ref.media_type, ref.filename) == ("data", "application/xml", "a.xml")
    final = tmp_path / "blobs" / DIGEST[:2] / DIGEST[2:4] / DIGEST
    assert blobs.path(ref) == final
    assert final.read_bytes() == CONTENT
    assert files(tmp_path / "blobs") == [final.relative_to(tmp_path / "blobs").as_posix()]
    read = [c async for c in blobs.iter_chunks(ref, chunk_size=100_000)]
    assert [len(c) for c in read] == [100_000, 100_000, 100_000, 50_000]
    assert b"".join(read) == CONTENT
    assert blobs.exists(ref)
    assert blobs.verify(ref)


async def test_same_content_is_stored_once(blobs: BlobStore, tmp_path: Path) -> None:
    first = await blobs.write_bytes(CONTENT, name="data")
    second = await blobs.write_stream(chunks(CHUNKS), name="attachment:1", filename="copy.bin")
    assert first.blob_id == second.blob_id
    assert second.name == "attachment:1"
    assert len(files(tmp_path / "blobs")) == 1


async def test_final_file_appears_only_on_commit_after_fsync(
    blobs: BlobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        synced.append(f"rename {Path(src).parent.name}/*.part -> {Path(dst).name[:8]}")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    writer = blobs.writer()
    for part in CHUNKS:
        writer.write(part)
    assert files(tmp_path / "blobs")[0].startswith("tmp/")
    assert len(files(tmp_path / "blobs")) == 1
    assert not blobs.file_for(DIGEST).exists()  # nothing visible under the final name while writing
    ref = writer.commit(name="data")
    assert blobs.file_for(DIGEST).read_bytes() == CONTENT
    assert ref.size == len(CONTENT)
    # Order: the temp file is synced, renamed into place, then the directory is synced.
    assert synced[0].endswith(".part")
    assert synced[1] == f"rename tmp/*.part -> {DIGEST[:8]}"
    assert synced[2] == str(blobs.file_for(DIGEST).parent)
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []


async def test_aborted_writer_leaves_nothing(blobs: BlobStore, tmp_path: Path) -> None:
    with pytest.raises(ConnectionResetError):
        await blobs.write_stream(chunks(CHUNKS, fail_after=3), name="data")
    assert files(tmp_path / "blobs") == []
    with blobs.writer() as writer:  # leaving the block without commit aborts
        writer.write(b"half")
    assert files(tmp_path / "blobs") == []
    writer = blobs.writer()
    writer.write(b"x")
    writer.abort()
    assert files(tmp_path / "blobs") == []


def test_crash_leftovers_removed_on_open(tmp_path: Path) -> None:
    tmp = tmp_path / "blobs" / "tmp"
    tmp.mkdir(parents=True)
    (tmp / "0123.part").write_bytes(b"incomplete")
    (tmp / "keep.txt").write_bytes(b"not ours")
    BlobStore(tmp_path / "blobs").open()
    assert sorted(p.name for p in tmp.iterdir()) == ["keep.txt"]


async def test_verify_detects_corruption(blobs: BlobStore) -> None:
    ref = await blobs.write_bytes(b"Antrag auf Baugenehmigung", name="data")
    assert blobs.verify(ref)
    path = blobs.path(ref)
    path.write_bytes(b"Antrag auf Baugenehmigunh")  # one bit flipped, same size
    assert not blobs.verify(ref)
    path.unlink()
    assert not blobs.exists(ref)


def test_blob_ids_must_be_sha512_hex(blobs: BlobStore) -> None:
    for bad in ("../../etc/passwd", DIGEST.upper(), DIGEST[:-1], DIGEST + "0", "g" * 128):
        with pytest.raises(ValueError, match="SHA-512"):
            blobs.file_for(bad)
