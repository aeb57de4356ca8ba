from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from adapters.blobdir import BlobDir, FailingBlobDir, corrupt, make_context, make_envelope
from gateway.adapters.base import Adapter, Delivery, DeliveryOutcome
from gateway.model import Envelope
from gateway_filesystem import FilesystemAdapter, create
from gateway_filesystem.adapter import TEMP_PREFIX

REPO_ROOT = Path(__file__).resolve().parents[2]
PDF = b"%PDF-1.7\n" + bytes(range(256)) * 40


def make_adapter(tmp_path: Path, **options: Any) -> Adapter:
    options.setdefault("directory", "out")
    return create(make_context(tmp_path), options)


async def deliver(adapter: Adapter, envelope: Envelope, blobs: BlobDir, attempt: int = 1) -> Any:
    return await adapter.deliver(Delivery(envelope, blobs, attempt, envelope.id))


def listing(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*"))


def sha512(data: bytes) -> str:
    return hashlib.sha512(data).hexdigest()


async def test_delivers_complete_directory_with_manifest(tmp_path: Path, blobs: BlobDir) -> None:
    adapter = make_adapter(tmp_path)
    attachments: list[tuple[bytes, str | None]] = [
        (PDF, "../../Bauzeichnung.pdf"),
        (b"second", "bauzeichnung.PDF"),  # collides ignoring case
        (b"third", None),  # no name at all
        (b"fourth", "manifest.json"),  # must not replace the manifest
    ]
    envelope = make_envelope(blobs, attachments=attachments, metadata={"a": [1, "ü"], "b": None})
    result = await deliver(adapter, envelope, blobs)

    assert result.outcome is DeliveryOutcome.DELIVERED
    assert result.reference == envelope.id
    out = tmp_path / "out"
    assert listing(out) == [
        envelope.id,
        f"{envelope.id}/Bauzeichnung.pdf",
        f"{envelope.id}/attachment-3.pdf",
        f"{envelope.id}/bauzeichnung-2.PDF",
        f"{envelope.id}/data.json",
        f"{envelope.id}/manifest-2.json",
        f"{envelope.id}/manifest.json",
    ]
    folder = out / envelope.id
    assert (folder / "data.json").read_bytes() == b'{"antrag": {"name": "Erika Mustermann"}}'
    assert (folder / "Bauzeichnung.pdf").read_bytes() == PDF
    assert (folder / "bauzeichnung-2.PDF").read_bytes() == b"second"
    assert (folder / "attachment-3.pdf").read_bytes() == b"third"
    assert (folder / "manifest-2.json").read_bytes() == b"fourth"

    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["manifest_version"] == 1
    assert manifest["gateway_id"] == envelope.id
    assert manifest["source"] == {
        "channel": "fitconnect-bauamt",
        "type": "fitconnect",
        "reference": envelope.source.reference,
        "case": envelope.source.case,
    }
    assert manifest["received_at"] == "2026-11-24T21:30:05+00:00"
    assert manifest["routing"] == envelope.routing.as_dict()
    assert manifest["metadata"] == {"a": [1, "ü"], "b": None}
    files = manifest["files"]
    assert [f["file"] for f in files] == [
        "data.json",
        "Bauzeichnung.pdf",
        "bauzeichnung-2.PDF",
        "attachment-3.pdf",
        "manifest-2.json",
    ]
    assert [f["original_filename"] for f in files] == [
        None,
        "../../Bauzeichnung.pdf",
        "bauzeichnung.PDF",
        None,
        "manifest.json",
    ]
    assert files[0]["part"] == "data"
    assert files[0]["media_type"] == "application/json"
    for entry, blob in zip(files, envelope.blobs, strict=True):
        content = (folder / entry["file"]).read_bytes()
        assert entry["part"] == blob.name
        assert entry["attachment_id"] == blob.attachment_id
        assert entry["size"] == len(content)
        assert entry["sha512"] == sha512(content)


async def test_layout_with_received_date_and_xml_data(tmp_path: Path, blobs: BlobDir) -> None:
    adapter = make_adapter(tmp_path, layout="{received_date}/{id}", directory=str(tmp_path / "abs"))
    envelope = make_envelope(blobs, data=b"<a/>", data_media_type="application/xml", attachments=[])
    result = await deliver(adapter, envelope, blobs)
    assert result.outcome is DeliveryOutcome.DELIVERED
    assert result.reference == f"2026-11-24/{envelope.id}"
    assert listing(tmp_path / "abs") == [
        "2026-11-24",
        f"2026-11-24/{envelope.id}",
        f"2026-11-24/{envelope.id}/data.xml",
        f"2026-11-24/{envelope.id}/manifest.json",
    ]


async def test_message_without_data_part(tmp_path: Path, blobs: BlobDir) -> None:
    adapter = make_adapter(tmp_path)
    envelope = make_envelope(blobs, data=None, attachments=[(b"x", "data.json")])
    assert (await deliver(adapter, envelope, blobs)).outcome is DeliveryOutcome.DELIVERED
    assert listing(tmp_path / "out" / envelope.id) == ["data.json", "manifest.json"]


async def test_redelivery_is_idempotent_and_does_not_rewrite(tmp_path: Path, blobs: BlobDir) -> None:
    adapter = make_adapter(tmp_path)
    envelope = make_envelope(blobs, attachments=[(PDF, "plan.pdf")])
    assert (await deliver(adapter, envelope, blobs)).outcome is DeliveryOutcome.DELIVERED
    folder = tmp_path / "out" / envelope.id
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}

    again = await deliver(adapter, envelope, blobs, attempt=2)
    assert again.outcome is DeliveryOutcome.DELIVERED
    assert again.reason == "already delivered"
    assert again.reference == envelope.id
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()} == before
    assert listing(tmp_path / "out") == [
        envelope.id,
        f"{envelope.id}/data.json",
        f"{envelope.id}/manifest.json",
        f"{envelope.id}/plan.pdf",
    ]


@pytest.mark.parametrize("damage", ["no-manifest", "other-id", "file-missing", "truncated-file", "garbage"])
async def test_existing_incomplete_directory_is_never_overwritten(tmp_path: Path, blobs: BlobDir, damage: str) -> None:
    adapter = make_adapter(tmp_path)
    envelope = make_envelope(blobs, attachments=[(PDF, "plan.pdf")])
    assert (await deliver(adapter, envelope, blobs)).outcome is DeliveryOutcome.DELIVERED
    folder = tmp_path / "out" / envelope.id
    manifest = folder / "manifest.json"
    if damage == "no-manifest":
        manifest.unlink()
    elif damage == "other-id":
        manifest.write_text(manifest.read_text().replace(envelope.id, "someone-else"))
    elif damage == "file-missing":
        (folder / "plan.pdf").unlink()
    elif damage == "truncated-file":
        (folder / "plan.pdf").write_bytes(PDF[:100])
    else:
        manifest.write_text("{not json")
    before = listing(folder)

    result = await deliver(adapter, envelope, blobs, attempt=2)
    assert result.outcome is DeliveryOutcome.PERMANENT
    assert "not overwriting" in result.reason
    assert listing(folder) == before
    assert [p.name for p in (tmp_path / "out").iterdir()] == [envelope.id]  # no temp left


@pytest.mark.parametrize("tamper", ["same-size", "longer", "shorter"])
async def test_hash_mismatch_is_permanent_and_leaves_nothing(tmp_path: Path, blobs: BlobDir, tamper: str) -> None:
    adapter = make_adapter(tmp_path)
    envelope = make_envelope(blobs, attachments=[(b"ok", "ok.txt"), (PDF, "plan.pdf")])
    bad = {"same-size": PDF[:-1] + b"X", "longer": PDF + b"X", "shorter": PDF[:-1]}[tamper]
    corrupt(blobs, envelope.attachments[1], bad)

    result = await deliver(adapter, envelope, blobs)
    assert result.outcome is DeliveryOutcome.PERMANENT
    assert result.reason.startswith(f"part {envelope.attachments[1].name}: stored blob")
    assert "plan" not in result.reason  # no file names (they may name a person) in reasons
    assert listing(tmp_path / "out") == []


async def test_blob_read_failure_midway_leaves_no_trace_and_retry_succeeds(tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path)
    failing = FailingBlobDir(tmp_path / "blobs", fail_after=3, error=OSError(5, "Input/output error"))
    envelope = make_envelope(failing, attachments=[(PDF, "plan.pdf")])  # data 1 chunk + PDF 10 chunks

    result = await deliver(adapter, envelope, failing)
    assert result.outcome is DeliveryOutcome.TRANSIENT
    assert result.reason == "reading the stored blob failed: EIO (Input/output error)"
    assert listing(tmp_path / "out") == []

    retry = await deliver(adapter, envelope, BlobDir(tmp_path / "blobs"), attempt=2)
    assert retry.outcome is DeliveryOutcome.DELIVERED
    assert (tmp_path / "out" / envelope.id / "plan.pdf").read_bytes() == PDF


async def test_cancellation_midway_removes_temp_directory(tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path)
    failing = FailingBlobDir(tmp_path / "blobs", fail_after=3, error=asyncio.CancelledError())
    envelope = make_envelope(failing, attachments=[(PDF, "plan.pdf")])
    with pytest.raises(asyncio.CancelledError):
        await deliver(adapter, envelope, failing)
    assert listing(tmp_path / "out") == []


def run_child(mode: str, tmp_path: Path, message_id: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(REPO_ROOT / p) for p in ("", "plugins", "tests"))
    script = Path(__file__).with_name("fs_child.py")
    return subprocess.run(
        [sys.executable, str(script), mode, str(tmp_path / "blobs"), str(tmp_path / "out"), message_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_process_crash_midway_then_retry_cleans_up_and_delivers(tmp_path: Path, blobs: BlobDir) -> None:
    from adapters.fs_child import BIG
    from adapters.fs_child import envelope as child_envelope

    message_id = "0b7e4c1a-1111-4222-8333-444455556666"
    crashed = await asyncio.to_thread(run_child, "crash", tmp_path, message_id)
    assert crashed.returncode == 17, crashed.stderr

    out = tmp_path / "out"
    leftovers = [p for p in out.iterdir()]
    assert len(leftovers) == 1
    assert leftovers[0].name.startswith(f"{TEMP_PREFIX}{message_id}~")
    assert (leftovers[0] / "big.pdf").stat().st_size < len(BIG)  # really died half-way
    assert not (out / message_id).exists()

    adapter = make_adapter(tmp_path)
    result = await deliver(adapter, child_envelope(blobs, message_id), blobs, attempt=2)
    assert result.outcome is DeliveryOutcome.DELIVERED
    assert [p.name for p in out.iterdir()] == [message_id]
    assert (out / message_id / "big.pdf").read_bytes() == BIG


async def test_write_error_is_transient(tmp_path: Path, blobs: BlobDir) -> None:
    """A real EFBIG from write() (file size limit in a child process) stands in for a full disk."""
    from adapters.fs_child import envelope as child_envelope

    message_id = "0b7e4c1a-1111-4222-8333-777788889999"
    child_envelope(blobs, message_id)  # store the blobs the child will read
    done = await asyncio.to_thread(run_child, "fsize", tmp_path, message_id)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])  # earlier lines: structlog output
    assert result == {"outcome": "transient", "reason": "writing failed: EFBIG (File too large)"}
    assert listing(tmp_path / "out") == []


async def test_unusable_target_path_is_transient(tmp_path: Path, blobs: BlobDir) -> None:
    adapter = make_adapter(tmp_path, layout="{received_date}/{id}")
    (tmp_path / "out" / "2026-11-24").write_bytes(b"a file where a directory belongs")
    result = await deliver(adapter, make_envelope(blobs), blobs)
    assert result.outcome is DeliveryOutcome.TRANSIENT
    assert result.reason.startswith("preparing the target directory failed: ENOTDIR")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
async def test_permission_error_is_transient(tmp_path: Path, blobs: BlobDir) -> None:
    adapter = make_adapter(tmp_path)
    (tmp_path / "out").chmod(0o555)
    try:
        result = await deliver(adapter, make_envelope(blobs), blobs)
        assert await adapter.check() is not None
    finally:
        (tmp_path / "out").chmod(0o755)
    assert result.outcome is DeliveryOutcome.TRANSIENT
    assert "EACCES" in result.reason


@pytest.mark.parametrize("bad_id", ["../escape", ".hidden", "a/b", "", "x" * 200, "id~with~tilde"])
async def test_unsafe_message_id_is_permanent(tmp_path: Path, blobs: BlobDir, bad_id: str) -> None:
    adapter = make_adapter(tmp_path)
    result = await deliver(adapter, make_envelope(blobs, message_id=bad_id), blobs)
    assert result.outcome is DeliveryOutcome.PERMANENT
    assert result.reason == "the message's id is not usable as a path segment"
    assert listing(tmp_path / "out") == []


async def test_unsafe_channel_in_layout_is_permanent(tmp_path: Path, blobs: BlobDir) -> None:
    adapter = make_adapter(tmp_path, layout="{channel}/{id}")
    envelope = make_envelope(blobs)
    envelope = envelope.with_(source=envelope.source.__class__(**{**_source_dict(envelope), "channel": ".."}))
    result = await deliver(adapter, envelope, blobs)
    assert result.outcome is DeliveryOutcome.PERMANENT
    assert listing(tmp_path / "out") == []


def _source_dict(envelope: Envelope) -> dict[str, Any]:
    s = envelope.source
    return {
        "channel": s.channel,
        "type": s.type,
        "reference": s.reference,
        "idempotency_key": s.idempotency_key,
        "case": s.case,
    }


async def test_non_json_metadata_is_permanent(tmp_path: Path, blobs: BlobDir) -> None:
    adapter = make_adapter(tmp_path)
    for metadata in ({"when": object()}, {"x": float("nan")}):
        result = await deliver(adapter, make_envelope(blobs, metadata=metadata), blobs)
        assert result.outcome is DeliveryOutcome.PERMANENT
        assert result.reason == "envelope metadata is not JSON-serialisable"
    assert listing(tmp_path / "out") == []


async def test_modes_are_applied(tmp_path: Path, blobs: BlobDir) -> None:
    adapter = make_adapter(tmp_path, layout="{received_year}/{received_month}/{id}", dir_mode="0750", file_mode=0o640)
    envelope = make_envelope(blobs, attachments=[(b"x", "x.txt")])
    assert (await deliver(adapter, envelope, blobs)).outcome is DeliveryOutcome.DELIVERED
    folder = tmp_path / "out" / "2026" / "11" / envelope.id
    for directory in (folder, folder.parent, folder.parent.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o750
    for name in ("data.json", "x.txt", "manifest.json"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o640


async def test_many_chunks_and_fsync_off(tmp_path: Path) -> None:
    blobs = BlobDir(tmp_path / "blobs", chunk_size=1000)
    adapter = make_adapter(tmp_path, fsync=False)
    big = os.urandom(123_457)
    envelope = make_envelope(blobs, attachments=[(big, "big.bin")])
    assert (await deliver(adapter, envelope, blobs)).outcome is DeliveryOutcome.DELIVERED
    assert (tmp_path / "out" / envelope.id / "big.bin").read_bytes() == big


async def test_parallel_attempts_of_one_message_end_with_one_directory(tmp_path: Path, blobs: BlobDir) -> None:
    adapter = make_adapter(tmp_path)
    envelope = make_envelope(blobs, attachments=[(PDF, "plan.pdf")])
    results = await asyncio.gather(*(deliver(adapter, envelope, blobs, attempt=n) for n in (1, 2, 3)))
    # Each attempt removes the others' temporaries as stale, so some may fail transiently; the
    # survivor is complete and nothing half-written is ever visible under the final name.
    assert any(r.outcome is DeliveryOutcome.DELIVERED for r in results)
    assert all(r.outcome is not DeliveryOutcome.PERMANENT for r in results)
    assert [p.name for p in (tmp_path / "out").iterdir()] == [envelope.id]
    assert (await deliver(adapter, envelope, blobs, attempt=4)).reason == "already delivered"


async def test_check_reports_readiness(tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path)
    assert isinstance(adapter, FilesystemAdapter)
    assert await adapter.check() is None
    (tmp_path / "out").rmdir()
    assert await adapter.check() == "directory does not exist"
    await adapter.close()
