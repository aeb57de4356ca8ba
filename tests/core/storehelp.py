"""Helpers for store-level tests: envelopes and driving a message into a given state."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from gateway.model import TRANSITIONS, Envelope, MessageState, RoutingKeys, SourceRef, new_message_id
from gateway.store.base import StoredMessage
from gateway.store.sqlite import SQLiteStore


def envelope(channel: str = "ch", key: str | None = None, **changes: Any) -> Envelope:
    key = key or str(uuid.uuid4())
    env = Envelope(
        id=new_message_id(),
        source=SourceRef(channel=channel, type="test", reference=key, idempotency_key=key),
        received_at=datetime.now(UTC),
        routing=RoutingKeys(service="urn:x"),
    )
    return env.with_(**changes)


_V, _R = MessageState.VALIDATED, MessageState.ROUTED
# The way each state is normally reached (every step an allowed transition).
PATHS: dict[MessageState, list[MessageState]] = {
    MessageState.RECEIVED: [],
    MessageState.VALIDATED: [_V],
    MessageState.ROUTED: [_V, _R],
    MessageState.FAILED: [_V, _R, MessageState.FAILED],
    MessageState.DELIVERED: [_V, _R, MessageState.DELIVERED],
    MessageState.ACKNOWLEDGED: [_V, _R, MessageState.DELIVERED, MessageState.ACKNOWLEDGED],
    MessageState.REJECTED: [MessageState.REJECTED],
    MessageState.DEAD: [_V, _R, MessageState.DEAD],
}


def path_to(target: MessageState) -> list[MessageState]:
    chain = PATHS[target]
    current = MessageState.RECEIVED
    for step in chain:
        assert step in TRANSITIONS[current]
        current = step
    return chain


async def message_in(store: SQLiteStore, state: MessageState, **insert: Any) -> StoredMessage:
    stored, _ = await store.insert(envelope(**insert), actor="test")
    for step in path_to(state):
        extra: dict[str, Any] = {"route": "r", "adapter": "a"} if step is MessageState.ROUTED else {}
        stored = await store.transition(stored.envelope.id, step, reason=f"to {step}", actor="test", **extra)
    assert stored.envelope.state is state
    return stored
