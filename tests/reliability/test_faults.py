"""Fault suite: a misbehaving back office, a misbehaving Zustelldienst, a full SQLite database.

Each test runs the real FIT-Connect path (sandbox Zustelldienst, Onlinedienst sender, gateway with
the fitconnect source and SQLite) on loopback, injects faults on a deterministic schedule and then
checks the exactly-once properties (:func:`harness.check_exactly_once`): nothing lost, nothing
accepted or delivered twice, dead letters only where the back office refused for good, with reason.

Time compression (documented, not hidden): the retry policy is configured short, the ack worker's
retry pace (``gateway.delivery.acks.ACK_RETRY_INITIAL``/``MAX``, module constants) and the Submission
API client's timeout (60 s, not an option) are shortened in-process.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.delivery import acks as acks_module
from gateway.model import Envelope, MessageState, RoutingKeys, SourceRef, new_message_id
from gateway.store.sqlite import SQLiteStore
from gateway_sandbox.testing import running_sandbox

from . import harness as h
from .faults import (
    BACK_OFFICE_FAULTS,
    ZSD_FAULTS,
    BackOffice,
    Schedule,
    fault_proxy,
    in_process_gateway,
    zsd_class,
    zsd_eligible,
)

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def fast_ack_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(acks_module, "ACK_RETRY_INITIAL", 0.2)
    monkeypatch.setattr(acks_module, "ACK_RETRY_MAX", 1.0)


def callback_to(sandbox: Any, settings: h.GatewaySettings) -> None:
    sandbox.set_destination_callback(settings.url + "/fitconnect/callback", h.secret("destination-callback.secret.txt"))


def delivered_upstream(sandbox: Any, sent: list[Any]) -> bool:
    return all(h.outcomes(sandbox, s) for s in sent)


async def wait_states(store: Any, count: int, states: set[MessageState], within: float) -> None:
    async def done() -> bool:
        messages = await h.store_messages(store)
        return len(messages) >= count and all(m.envelope.state in states for m in messages)

    await h.wait_until(done, within=within, what=f"{count} messages in {sorted(s.value for s in states)}")


async def test_back_office_errors_timeouts_and_lost_answers(tmp_path: Path, metadata_dir: Path) -> None:
    """500/503/429 (Retry-After), timeouts, slow answers, closed connections, and "stored but the answer
    was lost": every submission reaches the back office once per gateway message id and is accepted
    once; a permanent 422 is a dead letter with its reason, never accepted, never rejected."""
    schedule = Schedule(BACK_OFFICE_FAULTS, every=2, budget=24)
    office = BackOffice(schedule, hang=2.0)
    await office.start()
    try:
        async with running_sandbox(h.example_sandbox_config()) as sandbox:
            settings = h.GatewaySettings(
                directory=tmp_path / "gw",
                api_url=sandbox.base_url,
                metadata_dir=metadata_dir,
                adapter={"type": "webhook", "url": office.url, "format": "json", "timeout": 1.0, "concurrency": 2},
                retry={"initial_delay": 0.1, "max_delay": 0.5, "max_attempts": 60},
            )
            callback_to(sandbox, settings)
            sent = await h.send_all(sandbox, h.applications(random.Random(7), 12))
            poison = {sent[3].submission_id.lower(), sent[8].submission_id.lower()}
            office.poison |= poison
            async with in_process_gateway(settings) as gateway:
                assert gateway.runtime is not None
                store = gateway.runtime.store
                await h.wait_until(
                    lambda: all(h.outcomes(sandbox, s) for s in sent if s.submission_id.lower() not in poison),
                    within=90,
                    what="accepts upstream",
                )
                await wait_states(store, 12, {MessageState.ACKNOWLEDGED, MessageState.DEAD}, within=30)
                verdict = await h.check_exactly_once(
                    sandbox=sandbox,
                    sent=sent,
                    store=store,
                    delivered=office.deliveries(),
                    expect_dead={sid: "HTTP 422" for sid in poison},
                )
    finally:
        await office.close()
    assert verdict.ok, verdict.violations
    assert set(schedule.injected) == set(BACK_OFFICE_FAULTS), schedule.injected  # every kind met a delivery
    # The lost answers made the gateway send the same message again, under the same key.
    assert sum(office.stored_twice.values()) >= 1
    assert {f for _k, f in office.posts} >= {"422", "pass"}


async def test_zustelldienst_errors_timeouts_conflicts_and_lost_answers(tmp_path: Path, metadata_dir: Path) -> None:
    """The Submission API (and token endpoint) answering 5xx/429/409, timing out, closing connections,
    cutting downloads and losing the answer to an accept that it recorded: nothing is rejected by
    mistake, everything is delivered once and accepted once."""
    schedule = Schedule(ZSD_FAULTS, every=3, budget=40, eligible=zsd_eligible, classify=zsd_class)
    async with (
        running_sandbox(h.example_sandbox_config()) as sandbox,
        fault_proxy(sandbox.base_url, schedule, hang=2.5) as proxy,
    ):
        # the proxy is not the Zustelldienst: its SETs keep the sandbox's own URL as iss
        source = {"poll_interval": 0.3, "zustelldienst_issuer": sandbox.base_url}
        settings = h.GatewaySettings(
            directory=tmp_path / "gw", api_url=proxy.url, metadata_dir=metadata_dir, source=source
        )
        callback_to(sandbox, settings)
        sent = await h.send_all(sandbox, h.applications(random.Random(11), 10, attachments=1))
        async with in_process_gateway(settings, api_timeout=1.0) as gateway:
            assert gateway.runtime is not None
            store = gateway.runtime.store
            await h.wait_until(lambda: delivered_upstream(sandbox, sent), within=120, what="accepts upstream")
            await wait_states(store, 10, {MessageState.ACKNOWLEDGED}, within=30)
            counts, leftovers = h.adapter_deliveries(settings.out_dir)
            verdict = await h.check_exactly_once(
                sandbox=sandbox, sent=sent, store=store, delivered=counts, leftovers=leftovers
            )
    assert verdict.ok, verdict.violations
    assert set(schedule.injected) == set(ZSD_FAULTS), schedule.injected  # every kind met a request
    lost_accepts = [p for m, p, f, s in proxy.log if f == "lost-response" and m == "POST" and s == 204]
    faulted_posts = [f for m, p, f, _s in proxy.log if m == "POST" and p.endswith("/events") and f != "pass"]
    assert faulted_posts, "no accept-submission met a fault: the schedule missed the ack path"
    if lost_accepts:  # an accept recorded upstream whose answer was lost is reconciled, not re-sent blindly
        assert verdict.stats.get("ack reconciled after 409", 0) >= len(lost_accepts)


async def test_sqlite_disk_full_fails_safe_and_recovers(tmp_path: Path, metadata_dir: Path) -> None:
    """``SQLITE_FULL`` (``PRAGMA max_page_count`` pinned to the current size on the gateway's own
    connection): nothing is accepted upstream without a durable commit of its delivery, nothing is
    lost, and everything completes once space returns."""
    async with running_sandbox(h.example_sandbox_config()) as sandbox:
        settings = h.GatewaySettings(directory=tmp_path / "gw", api_url=sandbox.base_url, metadata_dir=metadata_dir)
        callback_to(sandbox, settings)
        async with in_process_gateway(settings) as gateway:
            assert gateway.runtime is not None
            store = gateway.runtime.store
            assert isinstance(store, SQLiteStore)
            rng = random.Random(5)
            warm = await h.send_all(sandbox, h.applications(rng, 2))
            await h.wait_until(lambda: delivered_upstream(sandbox, warm), within=30, what="warm-up accepts")

            def pin(conn: sqlite3.Connection) -> int:
                pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
                conn.execute(f"PRAGMA max_page_count = {pages}")
                return pages

            pages = await store._run(pin)
            blocked = await h.send_all(sandbox, h.applications(rng, 8, attachments=2))
            # Give the gateway ample time to pick them up and fail: with space they take ~0.3 s.
            await asyncio.sleep(4.0)
            accepted_while_full = [s for s in blocked if h.outcomes(sandbox, s)]
            page_count = await store._run(lambda c: int(c.execute("PRAGMA page_count").fetchone()[0]))
            assert page_count <= pages, "the database grew past max_page_count"
            assert len(accepted_while_full) < len(blocked), "the limit never bit: the test proves nothing"

            await store._run(lambda c: c.execute("PRAGMA max_page_count = 1073741823"))
            everything = warm + blocked
            await h.wait_until(
                lambda: delivered_upstream(sandbox, everything), within=90, what="accepts after recovery"
            )
            await wait_states(store, len(everything), {MessageState.ACKNOWLEDGED}, within=30)
            counts, leftovers = h.adapter_deliveries(settings.out_dir)
            verdict = await h.check_exactly_once(
                sandbox=sandbox, sent=everything, store=store, delivered=counts, leftovers=leftovers
            )
            # No accept before the delivery was durably recorded: the DELIVERED commit precedes it.
            for s in everything:
                stored = await store.find_by_source(h.SOURCE, s.submission_id.lower())
                assert stored is not None
                trail = await store.audit_trail(stored.envelope.id)
                delivered_at = min(r.at for r in trail if r.to_state == MessageState.DELIVERED.value)
                (accepted_at,) = h.outcome_times(sandbox, s)
                if accepted_at < delivered_at:
                    verdict.fail(f"{s.submission_id}: accepted upstream before its delivery was committed")
    assert verdict.ok, verdict.violations


async def test_sqlite_full_is_reported_as_full(tmp_path: Path) -> None:
    """An operator must read "database or disk is full", not a follow-up error of the error handling."""
    store = SQLiteStore(tmp_path / "gateway.db")
    await store.open()
    try:
        await store._run(lambda c: c.execute(f"PRAGMA max_page_count = {c.execute('PRAGMA page_count').fetchone()[0]}"))
        caught: sqlite3.OperationalError | None = None
        for _ in range(1000):  # fills the free space of the last pages, then needs a new one
            try:
                await store.insert(_envelope(), actor="test")
            except sqlite3.OperationalError as exc:
                caught = exc
                break
        assert caught is not None, "max_page_count never bit"
        assert "full" in str(caught), f"reported as {caught!r}"
    finally:
        await store.close()


def _envelope() -> Envelope:
    key = new_message_id()
    return Envelope(
        id=new_message_id(),
        source=SourceRef(channel="fc", type="fitconnect", reference=key, idempotency_key=key, case="c"),
        received_at=datetime.now(UTC),
        routing=RoutingKeys(service=h.GEWERBE_SERVICE),
        metadata={"padding": "x" * 2000},
    )


async def test_xoev_intake_never_answers_202_without_a_commit(tmp_path: Path) -> None:
    """The XÖV HTTP intake with the database full: no 202 (a 5xx, never a 4xx that would blame the
    sender) for what was not committed; every 202 is in the store; a resend after recovery is taken."""
    settings = h.GatewaySettings(
        directory=tmp_path / "gw", api_url="", metadata_dir=tmp_path, source=None, extra=h.xoev_intake_toml(tmp_path)
    )
    headers = {"Authorization": f"Bearer {h.XOEV_TOKEN}", "Content-Type": "application/xml"}
    answers: dict[str, int] = {}
    async with in_process_gateway(settings) as gateway, aiohttp.ClientSession(headers=headers) as http:
        assert gateway.runtime is not None
        store = gateway.runtime.store
        assert isinstance(store, SQLiteStore)
        url = settings.url + h.XOEV_PATH

        async def post(message_uuid: str) -> int:
            async with http.post(url, data=h.xoev_message(message_uuid)) as resp:
                await resp.read()
                return resp.status

        async def validator_ready() -> bool:
            async with http.get(settings.url + "/readyz") as resp:
                return resp.status == 200

        await h.wait_until(validator_ready, within=90, what="the XÖV validator worker")
        assert await post(str(uuid.uuid4())) == 202
        await store._run(lambda c: c.execute(f"PRAGMA max_page_count = {c.execute('PRAGMA page_count').fetchone()[0]}"))
        for _ in range(40):
            message_uuid = str(uuid.uuid4())
            answers[message_uuid] = await post(message_uuid)
        refused = [u for u, status in answers.items() if status != 202]
        assert refused, "the limit never bit: the test proves nothing"
        # A clean "come back later" (503 store-unavailable + Retry-After), never a 2xx or a generic 500.
        assert all(answers[u] == 503 for u in refused), sorted(set(answers.values()))
        await store._run(lambda c: c.execute("PRAGMA max_page_count = 1073741823"))
        for message_uuid in refused:  # the sender retries what was not acknowledged
            answers[message_uuid] = await post(message_uuid)
        assert set(answers.values()) == {202}
        stored = Counter(m.envelope.source.reference for m in await h.store_messages(store))
    for message_uuid in answers:
        assert stored[message_uuid] == 1, f"{message_uuid}: {stored[message_uuid]} messages for one 202"
