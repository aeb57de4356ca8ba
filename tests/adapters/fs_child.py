"""Child process for filesystem adapter tests that need a real process crash or a real write error.

Usage: python fs_child.py {crash|fsize} BLOB_DIR TARGET_DIR MESSAGE_ID
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from adapters.blobdir import BlobDir, make_context, make_envelope
from gateway.adapters.base import Delivery
from gateway.model import BlobRef, Envelope
from gateway_filesystem import create

BIG = bytes(range(256)) * 800  # 200 KiB, 200 chunks of 1 KiB
CRASH_AFTER_CHUNKS = 50
FSIZE_LIMIT = 64 * 1024


def envelope(blobs: BlobDir, message_id: str) -> Envelope:
    return make_envelope(blobs, message_id=message_id, attachments=[(b"small", "a.txt"), (BIG, "big.pdf")])


class CrashingBlobDir(BlobDir):
    """Kills the process (no cleanup, no finally blocks) half-way through the big attachment."""

    served = 0

    async def iter_chunks(self, blob: BlobRef, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        async for chunk in super().iter_chunks(blob, chunk_size):
            self.served += 1
            if self.served > CRASH_AFTER_CHUNKS:
                os._exit(17)
            yield chunk


async def main(mode: str, blob_dir: Path, target: Path, message_id: str) -> None:
    if mode == "crash":
        blobs: BlobDir = CrashingBlobDir(blob_dir, chunk_size=1024)
    else:
        blobs = BlobDir(blob_dir, chunk_size=1024)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of dying
        resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, resource.RLIM_INFINITY))
    adapter = create(make_context(target.parent), {"directory": str(target)})
    result = await adapter.deliver(Delivery(envelope(blobs, message_id), blobs, 1, message_id))
    print(json.dumps({"outcome": str(result.outcome), "reason": result.reason}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]))
