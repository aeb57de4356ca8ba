"""End to end through the sandbox Zustelldienst: pickup, every receipt check, accept, delivery."""

from __future__ import annotations

from pathlib import Path

from gateway.model import MessageState
from .subscriber_helpers import ACCEPT, GEWERBE_DATA, e2e


async def test_json_submission_is_accepted_and_delivered(tmp_path: Path, fitconnect_shared: Path) -> None:
    async with e2e(tmp_path, fitconnect_shared) as gw:
        sent = await gw.send()
        outcome = await gw.outcome(sent)
        assert outcome.event == ACCEPT
        assert outcome.payload["authenticationTags"] == sent.auth_tags
        stored = await gw.wait_stored(sent.submission_id, [MessageState.ACKNOWLEDGED])
        assert stored.envelope.data is not None
        assert stored.envelope.data.size == len(GEWERBE_DATA)
