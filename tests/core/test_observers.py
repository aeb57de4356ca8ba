"""gateway_message_transition: observers see every persisted state transition (the audit trail is
the reference), and an observer that raises never breaks the pipeline."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from core.support import FakeSource, harness, incoming
from gateway.adapters.base import DeliveryResult
from gateway.hookspecs import hookimpl
from gateway.model import Envelope, MessageState
from gateway.problems import Problem
from gateway.sources.base import AckResult


class Recorder:
    __name__ = "transition-recorder"

    def __init__(self) -> None:
        self.seen: dict[str, list[tuple[str, str]]] = defaultdict(list)

    @hookimpl
    def gateway_message_transition(self, envelope: Envelope, previous: str, reason: str) -> None:
        self.seen[envelope.id].append((previous, envelope.state.value))


class AsyncRecorder(Recorder):
    __name__ = "async-transition-recorder"

    @hookimpl
    def gateway_message_transition(self, envelope: Envelope, previous: str, reason: str) -> object:
        async def record() -> None:
            self.seen[envelope.id].append((previous, envelope.state.value))

        return record()


class Broken:
    __name__ = "broken-observer"

    @hookimpl
    def gateway_message_transition(self, envelope: Envelope, previous: str, reason: str) -> None:
        raise RuntimeError("observer bug")


async def test_observers_see_every_transition(tmp_path: Path) -> None:
    recorder, async_recorder = Recorder(), AsyncRecorder()
    source = FakeSource("fit")
    source.script = [AckResult(False, "busy")]
    async with harness(tmp_path, extra_plugins=[Broken(), recorder, async_recorder], sources={"fit": source}) as h:
        h.alpha.script = [
            DeliveryResult.transient("503"),  # routed -> failed
            DeliveryResult.transient("503"),  # failed -> failed
            DeliveryResult.delivered("x"),  # failed -> delivered -> acknowledged
            DeliveryResult.permanent("no"),  # routed -> dead
            DeliveryResult.delivered("y"),  # routed -> delivered; acknowledged by the ack worker
        ]
        first = (await h.receive()).message.envelope.id
        for _ in range(3):
            await h.worker.deliver_once()
            h.clock.advance(10)
        dead = (await h.receive()).message.envelope.id
        await h.worker.deliver_once()
        rejected = (await h.receive(incoming(problems=[Problem("https://x/p", "bad")]))).message.envelope.id
        acked = (await h.receive(incoming("fit", needs_ack=True))).message.envelope.id
        await h.worker.deliver_once()
        await h.acker.ack_once()  # fails
        h.clock.advance(10)
        await h.acker.ack_once()  # done: delivered -> acknowledged
        assert await h.state(first) is MessageState.ACKNOWLEDGED
        assert await h.state(dead) is MessageState.DEAD
        assert await h.state(acked) is MessageState.ACKNOWLEDGED
        for mid in (first, dead, rejected, acked):
            expected = [(a, b) for a, b in (await h.transitions(mid))[1:]]  # after the insert
            assert recorder.seen[mid] == expected, mid
            assert async_recorder.seen[mid] == expected, mid
        assert recorder.seen[first][-3:] == [
            ("failed", "failed"),
            ("failed", "delivered"),
            ("delivered", "acknowledged"),
        ]
