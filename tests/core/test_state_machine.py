"""Every pair of states through the real store: allowed transitions succeed with an audit record,
every other one raises InvalidTransition and changes nothing."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from core.storehelp import message_in
from gateway.model import TERMINAL_STATES, TRANSITIONS, InvalidTransition, MessageState, check_transition
from gateway.store.base import MessageNotFound
from gateway.store.sqlite import SQLiteStore

PAIRS = list(itertools.product(MessageState, MessageState))


def test_state_machine_shape() -> None:
    assert set(TRANSITIONS) == set(MessageState)
    assert all(not TRANSITIONS[s] for s in TERMINAL_STATES)
    assert MessageState.ROUTED in TRANSITIONS[MessageState.DEAD]  # operator retry
    assert MessageState.REJECTED in TRANSITIONS[MessageState.DEAD]  # operator discard
    assert not any(MessageState.RECEIVED in targets for targets in TRANSITIONS.values())


@pytest.mark.parametrize(("current", "target"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
async def test_transition_pair(tmp_path: Path, current: MessageState, target: MessageState) -> None:
    store = SQLiteStore(tmp_path / "g.db")
    await store.open()
    try:
        stored = await message_in(store, current)
        mid = stored.envelope.id
        before = await store.audit_trail(mid)
        if target in TRANSITIONS[current]:
            after = await store.transition(mid, target, reason="pair test", actor="tester")
            assert after.envelope.state is target
            assert (await store.get(mid)).envelope.state is target  # type: ignore[union-attr]
            trail = await store.audit_trail(mid)
            assert len(trail) == len(before) + 1
            last = trail[-1]
            assert (last.event, last.from_state, last.to_state) == ("transition", current.value, target.value)
            assert (last.reason, last.actor) == ("pair test", "tester")
        else:
            with pytest.raises(InvalidTransition) as info:
                await store.transition(mid, target, reason="pair test", actor="tester")
            assert (info.value.current, info.value.target) == (current, target)
            assert str(info.value) == f"message {mid}: transition {current} -> {target} is not allowed"
            assert (await store.get(mid)).envelope.state is current  # type: ignore[union-attr]
            assert await store.audit_trail(mid) == before  # rolled back: no audit record
        assert (await store.verify_audit()).ok
    finally:
        await store.close()


def test_check_transition_agrees_with_table() -> None:
    for current, target in PAIRS:
        if target in TRANSITIONS[current]:
            check_transition("m", current, target)
        else:
            with pytest.raises(InvalidTransition):
                check_transition("m", current, target)


async def test_transition_of_unknown_message(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "g.db")
    await store.open()
    try:
        with pytest.raises(MessageNotFound):
            await store.transition("nope", MessageState.VALIDATED, reason="x", actor="y")
        assert (await store.verify_audit()).checked == 0
    finally:
        await store.close()
