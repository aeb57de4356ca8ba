"""The HTTP surface against a real runtime (real store, workers, filesystem adapter): health,
readiness, metrics, the admin API and its auth, and graceful shutdown."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

import gateway_filesystem
from core.support import FakeSourcePlugin, ScriptedPlugin, eventually, incoming, write_config
from core.test_observers import Recorder
from gateway.adapters.base import DeliveryResult
from gateway.config import load_config
from gateway.http.app import DISCARDED, create_app
from gateway.model import MessageState, RoutingKeys
from gateway.pipeline.intake import IntakeClosed
from gateway.plugins import PluginHost
from gateway.runtime import Runtime, build_runtime
from gateway.store.sqlite import SQLiteStore

TOKEN = "admin-9c1f0e2d7b"
NAME = "Max Mustermann"
IBAN = "DE02120300000000202051"

CONFIG = """
[http]
admin_token = { file = "admin.token" }
max_body_bytes = 4096

[delivery]
poll_interval = 0.02
shutdown_grace = 5

[retry.default]
max_attempts = 1

[adapters.files]
type = "filesystem"
directory = "out"

[adapters.remote]
type = "scripted"
concurrency = 1

[sources.fit]
type = "fake"

[[routes]]
name = "files"
adapter = "files"
[routes.match]
service = "urn:files"

[[routes]]
name = "remote"
adapter = "remote"
"""

AiohttpClient = Callable[..., Awaitable[TestClient[Any, Any]]]


class Gateway:
    def __init__(self, runtime: Runtime, scripted: ScriptedPlugin, client: TestClient[Any, Any], recorder: Recorder):
        self.runtime = runtime
        self.scripted = scripted
        self.client = client
        self.recorder = recorder

    @property
    def remote(self) -> Any:
        return self.scripted.instances["remote"]

    async def state(self, mid: str) -> MessageState:
        stored = await self.runtime.store.get(mid)
        assert stored is not None
        return stored.envelope.state

    async def until(self, mid: str, state: MessageState) -> None:
        async def reached() -> bool:
            return await self.state(mid) is state

        await eventually(reached)

    def admin(self, token: str | None = TOKEN) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"} if token else {}


def make_runtime(tmp_path: Path, text: str = CONFIG) -> tuple[Runtime, ScriptedPlugin, Recorder]:
    (tmp_path / "admin.token").write_text(TOKEN + "\n", encoding="utf-8")
    scripted, recorder = ScriptedPlugin(), Recorder()
    host = PluginHost.load(
        entry_points_enabled=False, extra=[gateway_filesystem, scripted, FakeSourcePlugin(), recorder]
    )
    return build_runtime(load_config(write_config(tmp_path, text)), plugins=host), scripted, recorder


@pytest.fixture
async def gw(tmp_path: Path, aiohttp_client: AiohttpClient) -> Gateway:
    runtime, scripted, recorder = make_runtime(tmp_path)
    client = await aiohttp_client(create_app(runtime))
    return Gateway(runtime, scripted, client, recorder)


async def test_healthz(gw: Gateway) -> None:
    resp = await gw.client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}


async def test_readyz(gw: Gateway, tmp_path: Path) -> None:
    resp = await gw.client.get("/readyz")
    body = await resp.json()
    assert resp.status == 200, body
    assert body == {
        "status": "ready",
        "checks": {"store": "ok", "adapter:files": "ok", "adapter:remote": "ok", "source:fit": "ok"},
    }
    gw.remote.check_result = "Fachverfahren unreachable"
    (tmp_path / "out").rmdir()
    resp = await gw.client.get("/readyz")
    body = await resp.json()
    assert resp.status == 503
    assert body["status"] == "not-ready"
    assert body["checks"]["adapter:remote"] == "Fachverfahren unreachable"
    assert body["checks"]["adapter:files"] == "directory does not exist"
    assert body["checks"]["store"] == "ok"


async def test_routed_messages_are_handed_to_a_free_worker_slot_in_the_routing_commit(gw: Gateway) -> None:
    gw.remote.gate = asyncio.Event()
    commits = gw.runtime.store.commits
    first = (await gw.runtime.intake.receive(incoming("fit", "sub-1"))).message
    assert gw.runtime.store.commits - commits == 1  # received, validated, routed and leased together
    assert first.lease_owner == gw.runtime.worker.owner
    await eventually(lambda: len(gw.remote.calls) == 1)  # delivering without a claim or a poll
    trail = await gw.runtime.store.audit_trail(first.envelope.id)
    assert [(r.event, r.to_state, r.actor) for r in trail] == [
        ("transition", "received", "source:fit"),
        ("transition", "validated", "pipeline"),
        ("transition", "routed", "pipeline"),
        ("attempt", "routed", gw.runtime.worker.owner),
    ]
    assert trail[-1].details == {"adapter": "remote", "attempt": 1}
    # The only slot is busy: the next message is routed without a lease, for the claim loop.
    second = (await gw.runtime.intake.receive(incoming("fit", "sub-2"))).message
    assert second.lease_owner is None
    # A duplicate of the message being delivered must not start a second delivery.
    again = await gw.runtime.intake.receive(incoming("fit", "sub-1"))
    assert not again.created
    gw.remote.gate.set()
    await gw.until(first.envelope.id, MessageState.ACKNOWLEDGED)
    await gw.until(second.envelope.id, MessageState.ACKNOWLEDGED)
    assert [c.envelope.id for c in gw.remote.calls] == [first.envelope.id, second.envelope.id]
    assert gw.remote.max_active == 1  # concurrency = 1 held, hand-over included
    assert gw.runtime.worker._reserved == {"files": 0, "remote": 0}


async def test_metrics_after_traffic(gw: Gateway) -> None:
    gw.remote.script = [DeliveryResult.permanent("no")]
    ok = (await gw.runtime.intake.receive(incoming("fit", routing=RoutingKeys(service="urn:files")))).message
    dead = (await gw.runtime.intake.receive(incoming("fit"))).message
    await gw.runtime.intake.receive(
        incoming("fit", ok.envelope.source.reference, routing=RoutingKeys(service="urn:files"))
    )
    await gw.until(ok.envelope.id, MessageState.ACKNOWLEDGED)
    await gw.until(dead.envelope.id, MessageState.DEAD)
    # A reader may see a commit before its writer returns (that waits for the WAL fsync, then counts).
    await eventually(lambda: gw.runtime.worker.in_flight == 0)
    resp = await gw.client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = await resp.text()
    for line in (
        'gateway_messages_received_total{source="fit"} 2.0',
        'gateway_messages_duplicate_total{source="fit"} 1.0',
        'gateway_messages_routed_total{route="files",source="fit"} 1.0',
        'gateway_messages_delivered_total{adapter="files",route="files",source="fit"} 1.0',
        'gateway_messages_dead_total{adapter="remote",route="remote",source="fit"} 1.0',
        'gateway_delivery_attempts_total{adapter="remote",outcome="permanent"} 1.0',
        'gateway_delivery_latency_seconds_count{adapter="files"} 1.0',
        'gateway_delivery_attempt_seconds_count{adapter="files"} 1.0',
        'gateway_queue_depth{state="acknowledged"} 1.0',
        'gateway_queue_depth{state="dead"} 1.0',
        'gateway_queue_depth{state="routed"} 0.0',
    ):
        assert line in text.splitlines(), line


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}],
    ids=["none", "wrong", "scheme", "bare"],
)
async def test_admin_needs_the_token(gw: Gateway, headers: dict[str, str]) -> None:
    for method, path in (("GET", "/admin/messages"), ("GET", "/admin/messages/x"), ("POST", "/admin/messages/x/retry")):
        resp = await gw.client.request(method, path, headers=headers)
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="gateway-admin"'
        assert resp.content_type == "application/problem+json"
        assert (await resp.json())["type"].endswith("/unauthorized")


async def test_admin_disabled_without_token(tmp_path: Path, aiohttp_client: AiohttpClient) -> None:
    runtime, _s, _r = make_runtime(tmp_path, CONFIG.replace('admin_token = { file = "admin.token" }', ""))
    client = await aiohttp_client(create_app(runtime))
    resp = await client.get("/admin/messages", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 403
    assert (await resp.json())["type"].endswith("/admin-disabled")
    assert (await client.get("/healthz")).status == 200


async def test_admin_list_show_retry_discard(gw: Gateway) -> None:
    gw.remote.script = [DeliveryResult.permanent("Fachverfahren says no"), DeliveryResult.permanent("still no")]
    first = (await gw.runtime.intake.receive(incoming("fit"))).message.envelope.id
    second = (await gw.runtime.intake.receive(incoming("fit"))).message.envelope.id
    await gw.until(first, MessageState.DEAD)
    await gw.until(second, MessageState.DEAD)
    ok = (
        await gw.runtime.intake.receive(incoming("fit", routing=RoutingKeys(service="urn:files")))
    ).message.envelope.id
    await gw.until(ok, MessageState.ACKNOWLEDGED)

    resp = await gw.client.get("/admin/messages", params={"state": "dead"}, headers=gw.admin())
    body = await resp.json()
    assert resp.status == 200
    assert (body["limit"], body["offset"]) == (100, 0)
    assert sorted(m["id"] for m in body["messages"]) == sorted([first, second])
    assert {m["last_error"] for m in body["messages"]} == {
        "permanent failure: Fachverfahren says no",
        "permanent failure: still no",
    }
    resp = await gw.client.get("/admin/messages", params={"limit": "1", "offset": "2"}, headers=gw.admin())
    assert [m["id"] for m in (await resp.json())["messages"]] == [ok]
    assert (await gw.client.get("/admin/messages", params={"state": "lost"}, headers=gw.admin())).status == 400
    assert (await gw.client.get("/admin/messages", params={"limit": "x"}, headers=gw.admin())).status == 400

    resp = await gw.client.get(f"/admin/messages/{first}", headers=gw.admin())
    shown = await resp.json()
    assert resp.status == 200
    assert shown["state"] == "dead"
    assert shown["route"] == "remote"
    assert [(a["from"], a["to"]) for a in shown["audit"] if a["event"] == "transition"][-1] == ("routed", "dead")
    missing = await gw.client.get("/admin/messages/does-not-exist", headers=gw.admin())
    assert missing.status == 404
    assert (await missing.json())["type"].endswith("/message-not-found")

    resp = await gw.client.post(f"/admin/messages/{first}/retry", headers=gw.admin())
    assert resp.status == 200
    assert (await resp.json())["state"] == "routed"
    await gw.until(first, MessageState.ACKNOWLEDGED)  # the running worker picks it up
    trail = await gw.runtime.store.audit_trail(first)
    assert [(r.from_state, r.to_state) for r in trail if r.event == "transition"][-4:] == [
        ("routed", "dead"),
        ("dead", "routed"),
        ("routed", "delivered"),
        ("delivered", "acknowledged"),
    ]
    assert next(r for r in trail if r.from_state == "dead").actor == "admin-api"
    conflict = await gw.client.post(f"/admin/messages/{first}/retry", headers=gw.admin())
    assert conflict.status == 409
    assert "acknowledged, not dead" in (await conflict.json())["detail"]

    resp = await gw.client.post(f"/admin/messages/{second}/discard", headers=gw.admin())
    discarded = await resp.json()
    assert resp.status == 200
    assert discarded["state"] == "rejected"
    assert discarded["problems"] == [{"type": DISCARDED, "instance": None}]
    assert (await gw.client.post(f"/admin/messages/{second}/discard", headers=gw.admin())).status == 409
    assert (await gw.client.post("/admin/messages/nope/discard", headers=gw.admin())).status == 404
    # Operator actions are transitions like any other: observers see them.
    assert ("dead", "routed") in gw.recorder.seen[first]
    assert gw.recorder.seen[second][-1] == ("dead", "rejected")


async def test_admin_responses_carry_no_payload_or_metadata(gw: Gateway) -> None:
    runtime = gw.runtime
    data = await runtime.blobs.write_bytes(f"<antrag>{NAME}</antrag>".encode(), name="data")
    attachment = await runtime.blobs.write_bytes(b"scan", name="attachment:1", filename=f"{NAME} {IBAN}.pdf")
    message = incoming(
        "fit",
        routing=RoutingKeys(service="urn:files"),
        metadata={"antragsteller": NAME, "iban": IBAN},
        data=data,
        attachments=[attachment],
    )
    mid = (await runtime.intake.receive(message)).message.envelope.id
    await gw.until(mid, MessageState.ACKNOWLEDGED)
    texts = [
        await (await gw.client.get("/admin/messages", headers=gw.admin())).text(),
        await (await gw.client.get(f"/admin/messages/{mid}", headers=gw.admin())).text(),
    ]
    for text in texts:
        assert mid in text
        for marker in (NAME, IBAN, "Mustermann", "antrag"):
            assert marker not in text
    shown = json.loads(texts[1])
    assert [p["name"] for p in shown["parts"]] == ["data", "attachment:1"]
    assert shown["parts"][0]["sha512"] == data.sha512
    assert "filename" not in shown["parts"][1]


async def test_channel_routes_body_limit_and_errors(gw: Gateway) -> None:
    ok = await gw.client.post("/fit/intake", data=b"x" * 4096)
    assert ok.status == 200
    assert await ok.json() == {"size": 4096}
    big = await gw.client.post("/fit/intake", data=b"x" * 4097)
    assert big.status == 413
    assert big.content_type == "application/problem+json"
    assert (await big.json())["type"].endswith("/payload-too-large")
    failed = await gw.client.post("/fit/intake?fail=1", data=NAME.encode())
    body = await failed.text()
    assert failed.status == 500
    assert NAME not in body
    assert json.loads(body)["type"].endswith("/internal-error")


async def test_unknown_path_is_a_problem(gw: Gateway) -> None:
    resp = await gw.client.get("/nope")
    assert resp.status == 404
    assert resp.content_type == "application/problem+json"


async def test_draining_answers_503_except_healthz(gw: Gateway) -> None:
    await gw.client.server.app.shutdown()  # what the runner does first on SIGTERM
    assert gw.runtime.draining
    assert gw.runtime.intake.draining
    assert (await gw.client.get("/healthz")).status == 200
    for method, path in (("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/admin/messages"), ("POST", "/x")):
        resp = await gw.client.request(method, path, headers=gw.admin())
        assert resp.status == 503, path
        assert resp.headers["Retry-After"] == "30"
        assert (await resp.json())["type"].endswith("/draining")
    with pytest.raises(IntakeClosed):
        await gw.runtime.intake.receive(incoming("fit"))


async def test_shutdown_lets_in_flight_delivery_finish(tmp_path: Path, aiohttp_client: AiohttpClient) -> None:
    runtime, scripted, _r = make_runtime(tmp_path)
    client = await aiohttp_client(create_app(runtime))
    remote = scripted.instances["remote"]
    remote.gate = asyncio.Event()
    mid = (await runtime.intake.receive(incoming("fit"))).message.envelope.id
    await eventually(lambda: remote.active == 1)
    closing = asyncio.create_task(client.close())
    await eventually(lambda: runtime.draining)
    remote.gate.set()  # the delivery completes during the grace period
    await closing
    assert await stored_state(tmp_path, mid) == (MessageState.ACKNOWLEDGED, None)
    assert remote.closed


async def test_shutdown_releases_the_lease_of_an_unfinished_delivery(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    runtime, scripted, _r = make_runtime(tmp_path, CONFIG.replace("shutdown_grace = 5", "shutdown_grace = 0.1"))
    client = await aiohttp_client(create_app(runtime))
    remote = scripted.instances["remote"]
    remote.gate = asyncio.Event()  # never opened: the Fachverfahren hangs
    mid = (await runtime.intake.receive(incoming("fit"))).message.envelope.id
    await eventually(lambda: remote.active == 1)
    await client.close()
    assert await stored_state(tmp_path, mid) == (MessageState.ROUTED, None)  # deliverable at once after restart


async def stored_state(tmp_path: Path, mid: str) -> tuple[MessageState, str | None]:
    store = SQLiteStore(tmp_path / "var" / "gateway.db")
    await store.open()
    try:
        stored = await store.get(mid)
    finally:
        await store.close()
    assert stored is not None
    return stored.envelope.state, stored.lease_owner
