"""The delivery worker with the real intake, router and SQLite store and a scripted adapter:
outcomes, retries, dead letters and operator actions, concurrency limits, leases and crashes."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import pytest

from core.support import BASE_CONFIG, eventually, harness, make_worker, metric_value, run_cli
from gateway.adapters.base import Delivery, DeliveryResult
from gateway.http.app import DISCARDED
from gateway.model import MessageState

HAPPY = [
    (None, "received"),
    ("received", "validated"),
    ("validated", "routed"),
    ("routed", "delivered"),
    ("delivered", "acknowledged"),
]


async def test_delivered_then_acknowledged_without_ack_source(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        result = await h.receive()
        mid = result.message.envelope.id
        assert result.created
        assert result.message.envelope.state is MessageState.ROUTED
        assert result.message.envelope.route == "all"
        assert result.message.envelope.adapter == "alpha"
        assert await h.worker.deliver_once() == 1
        assert await h.state(mid) is MessageState.ACKNOWLEDGED
        (call,) = h.alpha.calls
        assert (call.attempt, call.idempotency_key, call.envelope.id) == (1, mid, mid)
        assert await h.transitions(mid) == HAPPY
        trail = await h.store.audit_trail(mid)
        delivered = next(r for r in trail if r.to_state == "delivered" and r.event == "transition")
        assert delivered.details == {"reference": "fv-ref"}
        assert delivered.actor == "worker-1"
        labels = {"source": "test-channel", "route": "all", "adapter": "alpha"}
        assert metric_value(h.metrics, "gateway_messages_delivered_total", labels) == 1
        assert (
            metric_value(h.metrics, "gateway_delivery_attempts_total", {"adapter": "alpha", "outcome": "delivered"})
            == 1
        )
        assert await h.worker.deliver_once() == 0  # nothing left
        assert (await h.store.verify_audit()).ok


async def test_transient_failure_is_retried_after_backoff(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        h.alpha.script = [DeliveryResult.transient("HTTP 503 from Fachverfahren")]
        mid = (await h.receive()).message.envelope.id
        assert await h.worker.deliver_once() == 1
        stored = await h.get(mid)
        assert stored.envelope.state is MessageState.FAILED
        assert stored.last_error == "HTTP 503 from Fachverfahren"
        assert stored.envelope.attempts == 1
        # Backoff after attempt 1: full jitter in [0, initial_delay = 1.0].
        assert stored.next_attempt_at is not None
        assert h.clock() <= stored.next_attempt_at <= h.clock() + 1.0
        if stored.next_attempt_at > h.clock():
            assert await h.worker.deliver_once() == 0  # not due yet
        h.clock.advance(1.0)
        assert await h.worker.deliver_once() == 1
        assert await h.state(mid) is MessageState.ACKNOWLEDGED
        assert [c.attempt for c in h.alpha.calls] == [1, 2]
        assert ("routed", "failed") in await h.transitions(mid)
        assert ("failed", "delivered") in await h.transitions(mid)


async def test_permanent_failure_is_dead_at_once(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        h.alpha.script = [DeliveryResult.permanent("schema not supported by Fachverfahren")]
        mid = (await h.receive()).message.envelope.id
        await h.worker.deliver_once()
        stored = await h.get(mid)
        assert stored.envelope.state is MessageState.DEAD
        assert stored.last_error == "permanent failure: schema not supported by Fachverfahren"
        assert len(h.alpha.calls) == 1
        assert (
            metric_value(
                h.metrics, "gateway_messages_dead_total", {"source": "test-channel", "route": "all", "adapter": "alpha"}
            )
            == 1
        )
        h.clock.advance(10_000)
        assert await h.worker.deliver_once() == 0  # dead letters are not retried automatically


async def test_retries_exhausted_goes_dead(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        h.alpha.default = DeliveryResult.transient("timeout")
        mid = (await h.receive()).message.envelope.id
        for _ in range(3):  # max_attempts = 3
            assert await h.worker.deliver_once() == 1
            h.clock.advance(10.0)  # >= max_delay: always due again
        stored = await h.get(mid)
        assert stored.envelope.state is MessageState.DEAD
        assert stored.envelope.attempts == 3
        assert stored.last_error == "timeout; retries exhausted (3/3 attempts)"
        assert await h.transitions(mid) == [*HAPPY[:3], ("routed", "failed"), ("failed", "failed"), ("failed", "dead")]


async def test_max_age_exceeded_goes_dead(tmp_path: Path) -> None:
    config = BASE_CONFIG.replace("max_age = 3600.0", "max_age = 5.0")
    async with harness(tmp_path, config) as h:
        h.alpha.default = DeliveryResult.transient("timeout")
        mid = (await h.receive()).message.envelope.id
        h.clock.advance(5.0)  # the message is as old as the policy allows
        await h.worker.deliver_once()
        stored = await h.get(mid)
        assert stored.envelope.state is MessageState.DEAD
        assert stored.envelope.attempts == 1
        assert stored.last_error == "timeout; maximum age 5s exceeded"


async def test_route_selects_its_retry_policy(tmp_path: Path) -> None:
    config = BASE_CONFIG.replace('adapter = "alpha"\n', 'adapter = "alpha"\nretry = "once"\n') + (
        "[retry.once]\nmax_attempts = 1\n"
    )
    async with harness(tmp_path, config) as h:
        h.alpha.default = DeliveryResult.transient("timeout")
        mid = (await h.receive()).message.envelope.id
        await h.worker.deliver_once()
        assert (await h.get(mid)).last_error == "timeout; retries exhausted (1/1 attempts)"


@pytest.mark.parametrize(
    ("step", "error"),
    [
        (RuntimeError("bug in adapter"), "adapter raised RuntimeError"),
        (OSError(28, "No space left on device"), "adapter raised OSError"),
    ],
)
async def test_adapter_that_raises_is_a_transient_failure(tmp_path: Path, step: Exception, error: str) -> None:
    async with harness(tmp_path) as h:
        h.alpha.script = [step]
        mid = (await h.receive()).message.envelope.id
        await h.worker.deliver_once()
        stored = await h.get(mid)
        assert stored.envelope.state is MessageState.FAILED
        assert stored.last_error == error
        h.clock.advance(10)
        await h.worker.deliver_once()
        assert await h.state(mid) is MessageState.ACKNOWLEDGED


async def test_adapter_returning_garbage_is_transient(tmp_path: Path) -> None:
    async def wrong(_d: Delivery) -> DeliveryResult:
        return "ok"  # type: ignore[return-value]

    async with harness(tmp_path) as h:
        h.alpha.script = [wrong]
        mid = (await h.receive()).message.envelope.id
        await h.worker.deliver_once()
        assert (await h.get(mid)).last_error == "adapter returned str, not DeliveryResult"


async def test_dead_letter_retry_via_cli_keeps_history(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with harness(tmp_path) as h:
        h.alpha.script = [DeliveryResult.permanent("rejected by Fachverfahren")]
        mid = (await h.receive()).message.envelope.id
        await h.worker.deliver_once()
        assert await h.state(mid) is MessageState.DEAD
        config = str(tmp_path / "gateway.toml")

        assert await run_cli(["dead-letters", "--config", config, "list"]) == 0
        out = capsys.readouterr().out
        assert mid in out
        assert "permanent failure: rejected by Fachverfahren" in out
        assert out.strip().endswith("1 dead letter(s)")

        assert await run_cli(["dead-letters", "--config", config, "retry", mid]) == 0
        assert capsys.readouterr().out.strip() == f"{mid}: back on the delivery path (history kept)"
        stored = await h.get(mid)
        assert stored.envelope.state is MessageState.ROUTED
        assert stored.envelope.attempts == 0
        h.clock.advance(60)  # the CLI stamped next_attempt_at with the real clock
        assert await h.worker.deliver_once() == 1
        assert await h.state(mid) is MessageState.ACKNOWLEDGED
        assert [c.attempt for c in h.alpha.calls] == [1, 1]
        assert await h.transitions(mid) == [
            *HAPPY[:3],
            ("routed", "dead"),
            ("dead", "routed"),
            ("routed", "delivered"),
            ("delivered", "acknowledged"),
        ]
        retry = next(r for r in await h.store.audit_trail(mid) if r.from_state == "dead")
        assert retry.reason == "operator retry"
        assert retry.actor.startswith("cli:")
        assert retry.details == {"previous_attempts": 1}
        # Retrying something that is not dead is refused.
        assert await run_cli(["dead-letters", "--config", config, "retry", mid]) == 1
        assert "is acknowledged, not dead" in capsys.readouterr().err
        assert (await h.store.verify_audit()).ok


async def test_dead_letter_discard_via_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with harness(tmp_path) as h:
        h.alpha.script = [DeliveryResult.permanent("no")]
        mid = (await h.receive()).message.envelope.id
        await h.worker.deliver_once()
        config = str(tmp_path / "gateway.toml")
        assert await run_cli(["dead-letters", "--config", config, "show", mid]) == 0
        shown = capsys.readouterr().out
        assert f'"id": "{mid}"' in shown
        assert '"state": "dead"' in shown
        assert await run_cli(["dead-letters", "--config", config, "discard", mid]) == 0
        assert "discarded" in capsys.readouterr().out
        stored = await h.get(mid)
        assert stored.envelope.state is MessageState.REJECTED
        assert [p.type for p in stored.problems] == [DISCARDED]
        assert await run_cli(["dead-letters", "--config", config, "show", "nope"]) == 1
        assert "no message nope" in capsys.readouterr().err


async def test_bounded_concurrency_per_adapter(tmp_path: Path) -> None:
    beta_route = '[[routes]]\nname = "b"\nadapter = "beta"\n[routes.match]\nservice = "urn:beta"\n'
    config = BASE_CONFIG + '[adapters.beta]\ntype = "scripted"\nconcurrency = 1\n' + beta_route
    config = config.replace(
        'name = "all"\nadapter = "alpha"\n', 'name = "all"\nadapter = "alpha"\n[routes.match]\nservice = "urn:de:*"\n'
    )
    async with harness(tmp_path, config) as h:
        from core.support import incoming
        from gateway.model import RoutingKeys

        gate = asyncio.Event()
        beta = h.adapters.instances["beta"]
        h.alpha.gate = gate
        beta.gate = gate
        ids = [(await h.receive()).message.envelope.id for _ in range(6)]
        ids += [
            (await h.receive(incoming(routing=RoutingKeys(service="urn:beta")))).message.envelope.id for _ in range(3)
        ]
        task = asyncio.create_task(h.worker.run())
        await eventually(lambda: h.alpha.active == 2 and beta.active == 1)
        for _ in range(20):  # give an unbounded worker every chance to start more calls
            h.worker.wake()
            await asyncio.sleep(0.01)
        assert (h.alpha.active, beta.active) == (2, 1)
        assert h.worker.in_flight == 3
        gate.set()

        async def all_done() -> bool:
            return all([await h.state(i) is MessageState.ACKNOWLEDGED for i in ids])

        await eventually(all_done)
        assert (h.alpha.max_active, beta.max_active) == (2, 1)
        assert (len(h.alpha.calls), len(beta.calls)) == (6, 3)
        await h.worker.stop(grace=5)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_lease_is_renewed_during_a_long_delivery(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        # Lease 0.3 s (renewed every 0.1 s of real time); validity is judged by the fake clock only.
        worker = make_worker(h, "slow-worker", lease_seconds=0.3)
        gate = asyncio.Event()
        h.alpha.gate = gate
        mid = (await h.receive()).message.envelope.id
        start = h.clock()
        delivery = asyncio.create_task(worker.deliver_once())
        await eventually(lambda: h.alpha.active == 1)
        assert (await h.get(mid)).lease_until == start + 0.3
        for step in range(1, 6):  # five lease lengths pass, each inside a renewed lease
            h.clock.advance(0.25)
            now = h.clock()

            async def renewed(now: float = now) -> bool:
                return (await h.get(mid)).lease_until == now + 0.3

            await eventually(renewed)
            other = make_worker(h, f"other-{step}")
            assert (
                await other.store.claim_deliveries(
                    owner=other.owner, adapter="alpha", limit=1, now=h.clock(), lease_seconds=60
                )
                == []
            )
        assert h.clock() - start > 1.0  # far longer than the original 0.3 s lease
        gate.set()
        assert await delivery == 1
        assert await h.state(mid) is MessageState.ACKNOWLEDGED
        assert len(h.alpha.calls) == 1


async def test_crashed_worker_message_is_delivered_by_another_after_lease_expiry(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        crashing = make_worker(h, "crashing", lease_seconds=30)
        h.alpha.gate = asyncio.Event()  # the first attempt hangs until the "crash"
        mid = (await h.receive()).message.envelope.id
        task = asyncio.create_task(crashing.deliver_once())
        await eventually(lambda: h.alpha.active == 1)
        task.cancel()  # the process dies: nothing released, the lease stays behind
        with contextlib.suppress(asyncio.CancelledError):
            await task
        stored = await h.get(mid)
        assert stored.lease_owner == "crashing"
        assert stored.envelope.state is MessageState.ROUTED
        h.alpha.gate = None
        survivor = make_worker(h, "survivor")
        h.clock.advance(29)
        assert await survivor.deliver_once() == 0  # the lease still protects the message
        h.clock.advance(2)
        assert await survivor.deliver_once() == 1
        stored = await h.get(mid)
        assert stored.envelope.state is MessageState.ACKNOWLEDGED
        assert stored.envelope.attempts == 2
        assert [c.attempt for c in h.alpha.calls] == [1, 2]
        attempts = [(r.actor, r.details["attempt"]) for r in await h.store.audit_trail(mid) if r.event == "attempt"]
        assert attempts == [("crashing", 1), ("survivor", 2)]


async def test_late_result_of_a_superseded_worker_is_dropped(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        slow = make_worker(h, "slow", lease_seconds=10)
        first_call = asyncio.Event()
        release = asyncio.Event()

        async def hang(_d: Delivery) -> DeliveryResult:
            first_call.set()
            await release.wait()
            return DeliveryResult.permanent("stale verdict")

        h.alpha.script = [hang]
        mid = (await h.receive()).message.envelope.id
        task = asyncio.create_task(slow.deliver_once())
        await first_call.wait()
        h.clock.advance(11)  # the slow worker's lease ran out (its renewal comes too late)
        assert await make_worker(h, "fast").deliver_once() == 1
        assert await h.state(mid) is MessageState.ACKNOWLEDGED
        release.set()
        await task
        assert await h.state(mid) is MessageState.ACKNOWLEDGED  # the stale "permanent" did not win


async def test_stop_releases_leases_of_unfinished_deliveries(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        h.alpha.gate = asyncio.Event()  # never opened
        mid = (await h.receive()).message.envelope.id
        task = asyncio.create_task(h.worker.run())
        await eventually(lambda: h.alpha.active == 1)
        await h.worker.stop(grace=0.05)
        await asyncio.wait_for(task, 5)  # the loop ends by itself
        stored = await h.get(mid)
        assert stored.lease_owner is None
        assert stored.envelope.state is MessageState.ROUTED
        assert stored.envelope.attempts == 1
        h.alpha.gate = None
        assert await make_worker(h, "next").deliver_once() == 1  # no need to wait for lease expiry


async def test_stop_lets_in_flight_deliveries_finish(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        gate = asyncio.Event()
        h.alpha.gate = gate
        mid = (await h.receive()).message.envelope.id
        task = asyncio.create_task(h.worker.run())
        await eventually(lambda: h.alpha.active == 1)
        stopping = asyncio.create_task(h.worker.stop(grace=30))
        await asyncio.sleep(0.05)
        assert not stopping.done()
        gate.set()
        await stopping
        await asyncio.wait_for(task, 5)
        assert await h.state(mid) is MessageState.ACKNOWLEDGED


class ClaimGate:
    """Wraps the store so a test can hold the worker inside ``claim_deliveries``."""

    def __init__(self, store: object) -> None:
        self._store = store
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    async def claim_deliveries(self, **kwargs: object) -> object:
        self.entered.set()
        await self.release.wait()
        return await self._store.claim_deliveries(**kwargs)  # type: ignore[attr-defined]


async def test_stop_during_a_claim_does_not_leave_a_delivery_behind(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        gate = ClaimGate(h.store)
        h.worker.store = gate  # type: ignore[assignment]
        mid = (await h.receive()).message.envelope.id
        task = asyncio.create_task(h.worker.run())
        await gate.entered.wait()  # the worker is claiming right now
        stopping = asyncio.create_task(h.worker.stop(grace=30))
        await asyncio.sleep(0.05)
        gate.release.set()  # the claim completes after stop() was called
        await stopping
        await asyncio.wait_for(task, 5)
        # Whatever the claim took was either delivered within the grace period or released.
        stored = await h.get(mid)
        assert h.alpha.active == 0
        assert stored.lease_owner is None
        assert stored.envelope.state in (MessageState.ACKNOWLEDGED, MessageState.ROUTED)
        assert h.worker.in_flight == 0


class FlakyRenewals:
    """Wraps the store: the first lease renewal fails like a busy database would."""

    def __init__(self, store: object) -> None:
        self._store = store
        self.failures = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    async def renew_lease(self, message_id: str, *, owner: str, until: float) -> None:
        if self.failures == 0:
            self.failures += 1
            raise sqlite3.OperationalError("database is locked")
        await self._store.renew_lease(message_id, owner=owner, until=until)  # type: ignore[attr-defined]


async def test_a_failed_renewal_does_not_end_renewing(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        worker = make_worker(h, "w", lease_seconds=0.3)
        flaky = FlakyRenewals(h.store)
        worker.store = flaky  # type: ignore[assignment]
        gate = asyncio.Event()
        h.alpha.gate = gate
        mid = (await h.receive()).message.envelope.id
        delivery = asyncio.create_task(worker.deliver_once())
        await eventually(lambda: flaky.failures == 1)
        h.clock.advance(0.2)
        target = h.clock() + 0.3

        async def renewed() -> bool:
            return (await h.get(mid)).lease_until == target

        await eventually(renewed)  # the renewer survived the failure
        gate.set()
        assert await delivery == 1
        assert await h.state(mid) is MessageState.ACKNOWLEDGED


class CountingRenewals:
    def __init__(self, store: object) -> None:
        self._store = store
        self.outcomes: list[str] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    async def renew_lease(self, message_id: str, *, owner: str, until: float) -> None:
        try:
            await self._store.renew_lease(message_id, owner=owner, until=until)  # type: ignore[attr-defined]
        except Exception as exc:
            self.outcomes.append(type(exc).__name__)
            raise
        self.outcomes.append("ok")


async def test_renewal_stops_when_the_lease_is_lost(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        slow = make_worker(h, "slow", lease_seconds=0.3)
        counting = CountingRenewals(h.store)
        slow.store = counting  # type: ignore[assignment]
        gate = asyncio.Event()
        h.alpha.gate = gate
        mid = (await h.receive()).message.envelope.id
        delivery = asyncio.create_task(slow.deliver_once())
        await eventually(lambda: h.alpha.active == 1)
        h.clock.advance(1.0)  # the lease is gone; the next renewal gets LeaseLost
        await eventually(lambda: "LeaseLost" in counting.outcomes)
        await asyncio.sleep(0.35)  # more than three renewal periods
        assert counting.outcomes.count("LeaseLost") == 1
        assert counting.outcomes[-1] == "LeaseLost"
        gate.set()
        await delivery
        assert await h.state(mid) is MessageState.ROUTED  # the result after losing the lease was dropped


async def test_retry_after_from_the_adapter_sets_the_next_attempt(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:  # max_delay = 10
        h.alpha.script = [DeliveryResult.transient("HTTP 429", retry_after=7.5)]
        mid = (await h.receive()).message.envelope.id
        await h.worker.deliver_once()
        stored = await h.get(mid)
        assert stored.envelope.state is MessageState.FAILED
        assert stored.next_attempt_at == h.clock() + 7.5
        h.clock.advance(7.4)
        assert await h.worker.deliver_once() == 0
        h.clock.advance(0.1)
        assert await h.worker.deliver_once() == 1
