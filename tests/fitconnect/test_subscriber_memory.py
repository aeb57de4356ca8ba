"""A 200 MB attachment through the whole receive path under a memory ceiling (separate process).

The gateway runs in a child process (so its peak RSS is its own); the sandbox and the sender run
here. Bound: peak RSS at most 200 MB above the child's baseline after start-up imports. The
measured figure (about 1/10 of that) is in docs/fitconnect-subscriber.md.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from gateway_sandbox.testing import running_sandbox

from .subscriber_helpers import ACCEPT, Gateway, OutgoingAttachment, run_memory_child, sandbox_keys, write_random_file

SIZE = 200 * 1000 * 1000
CEILING = 200 * 1024 * 1024


@pytest.mark.slow
async def test_200mb_attachment_under_a_memory_ceiling(tmp_path: Path, fitconnect_shared: Path) -> None:
    big = tmp_path / "plan.bin"
    digest = write_random_file(big, SIZE)
    async with running_sandbox(keys=sandbox_keys()) as sandbox:
        gw = Gateway(sandbox, tmp_path, fitconnect_shared, {"poll_interval": 0.2})
        gw.port = 1  # the child runs the runtime only (no HTTP server)
        config = gw.write_config()
        sent = await gw.send(attachments=[OutgoingAttachment(mime_type="application/octet-stream", path=big)])
        big.unlink()
        result = await run_memory_child(config, sent.submission_id)
        outcome = await gw.outcome(sent)
    assert outcome.event == ACCEPT
    assert result["state"] == "acknowledged"
    assert result["attachment_bytes"] == [SIZE]
    growth = result["peak_rss"] - result["baseline_rss"]
    print(f"peak RSS growth {growth / 2**20:.1f} MiB for {SIZE / 1e6:.0f} MB in {result['seconds']:.1f} s")
    assert growth < CEILING, f"peak RSS grew by {growth / 2**20:.1f} MiB"
    delivered = list((tmp_path / "out").glob("**/*.bin")) + list((tmp_path / "out").glob("**/attachment*"))
    assert delivered, list((tmp_path / "out").rglob("*"))
    h = hashlib.sha512()
    with delivered[0].open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    assert h.hexdigest() == digest
