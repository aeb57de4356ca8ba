"""``manifest.json``: what the Fachverfahren reads first, and how a finished delivery is recognised.

Format (version 1)::

    {
      "manifest_version": 1,
      "gateway_id": "<envelope id>",
      "source": {"channel": ..., "type": ..., "reference": ..., "case": ...},
      "received_at": "<ISO 8601>",
      "routing": {"service": ..., "region": ..., ...},
      "metadata": {...},                       # the envelope metadata as received
      "files": [{"part": "data" | "attachment:<id>", "file": "<name in this directory>",
                 "original_filename": <sender's name or null>, "attachment_id": <id or null>,
                 "media_type": ..., "size": <bytes>, "sha512": "<hex>"}, ...]
    }
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.model import BlobRef, Envelope

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
_MAX_MANIFEST_BYTES = 64 << 20  # a manifest larger than this was not written by us


@dataclass(frozen=True, slots=True)
class FileEntry:
    blob: BlobRef
    file: str  # the sanitised name inside the message directory

    def as_dict(self) -> dict[str, Any]:
        return {
            "part": self.blob.name,
            "file": self.file,
            "original_filename": self.blob.filename,
            "attachment_id": self.blob.attachment_id,
            "media_type": self.blob.media_type,
            "size": self.blob.size,
            "sha512": self.blob.sha512.lower(),
        }


def manifest_dict(envelope: Envelope, files: list[FileEntry]) -> dict[str, Any]:
    source = envelope.source
    return {
        "manifest_version": MANIFEST_VERSION,
        "gateway_id": envelope.id,
        "source": {
            "channel": source.channel,
            "type": source.type,
            "reference": source.reference,
            "case": source.case,
        },
        "received_at": envelope.received_at.isoformat(),
        "routing": envelope.routing.as_dict(),
        "metadata": dict(envelope.metadata),
        "files": [entry.as_dict() for entry in files],
    }


def render_manifest(envelope: Envelope, files: list[FileEntry]) -> bytes:
    """UTF-8 JSON; ``TypeError``/``ValueError`` if the metadata is not plain JSON."""
    text = json.dumps(manifest_dict(envelope, files), ensure_ascii=False, allow_nan=False, indent=2)
    return (text + "\n").encode("utf-8")


def is_complete(directory: Path, message_id: str) -> bool:
    """Whether ``directory`` holds a finished delivery of ``message_id`` (manifest and every file)."""
    try:
        manifest_path = directory / MANIFEST_NAME
        if not stat.S_ISREG(manifest_path.lstat().st_mode):
            return False
        with manifest_path.open("rb") as fh:
            raw = fh.read(_MAX_MANIFEST_BYTES + 1)
        if len(raw) > _MAX_MANIFEST_BYTES:
            return False
        manifest = json.loads(raw)
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or manifest.get("manifest_version") != MANIFEST_VERSION:
        return False
    if manifest.get("gateway_id") != message_id or not isinstance(manifest.get("files"), list):
        return False
    for entry in manifest["files"]:
        if not isinstance(entry, dict):
            return False
        name, size = entry.get("file"), entry.get("size")
        if not isinstance(name, str) or os.sep in name or name in ("", ".", ".."):
            return False
        if not isinstance(size, int):
            return False
        try:
            info = (directory / name).lstat()
        except OSError:
            return False
        if not stat.S_ISREG(info.st_mode) or info.st_size != size:
            return False
    return True
