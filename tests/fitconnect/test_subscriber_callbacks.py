"""The callback endpoint: the digest's test vector, stale/future timestamps, wrong HMAC, re-serialised
bodies → ignored (no poll, counted per reason); a valid callback → an immediate poll."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.fitconnect.callbacks import CALLBACK_NEW_EVENTS, sign_callback
from gateway.sources.fitconnect.callback import MAX_CALLBACK_BODY, callback_handler
from gateway.sources.fitconnect.subsystem import FitConnectMetrics, FitConnectSubsystem

from .subscriber_helpers import ACCEPT, Gateway, e2e, eventually

# Test vector from the FIT-Connect docs (digest §2.6), recomputed there.
SECRET = "insecure_unsafe_qHScgrg_kP-R31jHUwp3GkVkGJolvBchz65b74Lzue0"
TIMESTAMP = "1672527599"
BODY = (
    b'{"type":"https://schema.fitko.de/fit-connect/submission-api/callbacks/new-submissions",'
    b'"submissionIds":["f39ab143-d91a-474a-b69f-b00f1a1873c2"],'
    b'"submissions":[{"destinationId":"d12caea8-f372-4eb1-b102-b0a228253a11",'
    b'"submissionId":"f39ab143-d91a-474a-b69f-b00f1a1873c2","caseId":"9eec7d3e-dc66-4f82-9f52-1520bf96a32e"}]}'
)
HMAC = (
    "2056b372b5bcec06d8f11ab79b84b42d6cbe1c8e1178cdfa36e4385dcf717758"
    "aaa7599f417d9ec3e079087884f4fd59680bf713621383e2d4414ef74fb10df3"
)


class Endpoint:
    def __init__(
        self, client: TestClient[Any, Any], metrics: FitConnectMetrics, triggered: list[int], now: list[float]
    ) -> None:
        self.client = client
        self.metrics = metrics
        self.triggered = triggered
        self.now = now

    async def post(self, body: bytes = BODY, *, ts: str = TIMESTAMP, mac: str | None = HMAC, **headers: str) -> int:
        sent = {"Content-Type": "application/json", "callback-timestamp": ts, **headers}
        if mac is not None:
            sent["callback-authentication"] = mac
        resp = await self.client.post("/cb", data=body, headers=sent)
        await resp.read()
        return resp.status

    def invalid(self, reason: str) -> float:
        value: float = self.metrics.callbacks_invalid.labels("fc", reason)._value.get()
        return value


def fitconnect_metrics(gw: Any) -> FitConnectMetrics:
    subsystem = gw.runtime.subsystems["fitconnect"]
    assert isinstance(subsystem, FitConnectSubsystem)
    return subsystem.metrics


@pytest.fixture
async def endpoint(aiohttp_client: Any) -> Endpoint:
    metrics = FitConnectSubsystem().metrics
    triggered: list[int] = []
    now = [int(TIMESTAMP) + 10.0]
    handler = callback_handler(
        name="fc", secret=SECRET, metrics=metrics, trigger=lambda: triggered.append(1), clock=lambda: now[0]
    )
    app = web.Application()
    app.router.add_post("/cb", handler)
    return Endpoint(await aiohttp_client(app), metrics, triggered, now)


async def test_the_documented_test_vector_triggers_a_poll(endpoint: Endpoint) -> None:
    assert await endpoint.post() == 200
    assert endpoint.triggered == [1]


async def test_header_names_are_case_insensitive(endpoint: Endpoint) -> None:
    resp = await endpoint.client.post(
        "/cb",
        data=BODY,
        headers={"Callback-Timestamp": TIMESTAMP, "Callback-Authentication": HMAC.upper()},
    )
    assert resp.status == 200
    assert endpoint.triggered == [1]


@pytest.mark.parametrize(
    ("offset", "reason"),
    [(301.0, "stale"), (-301.0, "future")],
    ids=["older-than-5-minutes", "more-than-5-minutes-ahead"],
)
async def test_timestamps_outside_the_window_are_ignored(endpoint: Endpoint, offset: float, reason: str) -> None:
    endpoint.now[0] = int(TIMESTAMP) + offset
    assert await endpoint.post() == 401
    assert endpoint.triggered == []
    assert endpoint.invalid(reason) == 1


async def test_the_window_edges_are_inclusive(endpoint: Endpoint) -> None:
    for offset in (300.0, -300.0):
        endpoint.now[0] = int(TIMESTAMP) + offset
        assert await endpoint.post() == 200
    assert endpoint.triggered == [1, 1]


async def test_wrong_hmac_is_ignored(endpoint: Endpoint) -> None:
    wrong = ("0" if HMAC[0] != "0" else "1") + HMAC[1:]
    assert await endpoint.post(mac=wrong) == 401
    assert await endpoint.post(mac=HMAC[:-2]) == 401  # truncated
    assert await endpoint.post(mac=sign_callback(SECRET + "x", BODY, int(TIMESTAMP))) == 401
    assert endpoint.triggered == []
    assert endpoint.invalid("bad-hmac") == 3


async def test_a_reserialised_body_does_not_verify(endpoint: Endpoint) -> None:
    """The HMAC covers the raw bytes: the same JSON, pretty-printed, is not the same callback."""
    reserialised = json.dumps(json.loads(BODY), indent=1).encode()
    assert json.loads(reserialised) == json.loads(BODY)
    assert await endpoint.post(reserialised) == 401
    assert endpoint.triggered == []
    assert endpoint.invalid("bad-hmac") == 1


async def test_timestamp_is_part_of_the_signed_message(endpoint: Endpoint) -> None:
    assert await endpoint.post(ts=str(int(TIMESTAMP) + 1)) == 401
    assert endpoint.invalid("bad-hmac") == 1


@pytest.mark.parametrize(
    ("headers", "reason"),
    [({"mac": None}, "missing-headers"), ({"ts": ""}, "missing-headers"), ({"ts": "1672527599.0"}, "bad-timestamp")],
    ids=["no-hmac", "empty-timestamp", "fractional-timestamp"],
)
async def test_missing_or_malformed_headers(endpoint: Endpoint, headers: dict[str, Any], reason: str) -> None:
    assert await endpoint.post(**headers) == 401
    assert endpoint.triggered == []
    assert endpoint.invalid(reason) == 1


async def test_authentic_but_unknown_or_sender_side_types(endpoint: Endpoint) -> None:
    ts = int(TIMESTAMP)
    unknown = b'{"type":"https://schema.fitko.de/fit-connect/submission-api/callbacks/new-replies"}'
    assert await endpoint.post(unknown, mac=sign_callback(SECRET, unknown, ts)) == 200
    assert endpoint.invalid("unknown-type") == 1
    not_json = b"not json"
    assert await endpoint.post(not_json, mac=sign_callback(SECRET, not_json, ts)) == 200
    assert endpoint.invalid("malformed") == 1
    events = json.dumps({"type": CALLBACK_NEW_EVENTS, "submissions": []}).encode()
    assert await endpoint.post(events, mac=sign_callback(SECRET, events, ts)) == 200
    assert endpoint.triggered == []  # none of these means "new submissions"


async def test_oversized_body_is_refused_unread(endpoint: Endpoint) -> None:
    big = b"{" + b" " * MAX_CALLBACK_BODY + b"}"
    assert await endpoint.post(big, mac=sign_callback(SECRET, big, int(TIMESTAMP))) == 413
    assert endpoint.invalid("too-large") == 1
    assert endpoint.triggered == []


# -- through the running gateway, with the sandbox as the caller ----------------------------------------


def polls(gw: Gateway) -> float:
    assert gw.runtime is not None
    value: float = fitconnect_metrics(gw).polls.labels("fc", "ok")._value.get()
    return value


def invalid(gw: Gateway, reason: str) -> float:
    assert gw.runtime is not None
    value: float = fitconnect_metrics(gw).callbacks_invalid.labels("fc", reason)._value.get()
    return value


async def test_sandbox_callbacks_with_faults_are_ignored_valid_ones_poll(
    tmp_path: Path, fitconnect_shared: Path
) -> None:
    secret = "destination-callback-secret-" + "s" * 32
    (tmp_path / "cb.secret").write_text(secret)
    async with e2e(
        tmp_path, fitconnect_shared, poll_interval=3600, callback_secret={"file": str(tmp_path / "cb.secret")}
    ) as gw:
        await eventually(lambda: polls(gw) == 1, what="the startup poll")
        gw.sandbox.set_destination_callback(f"{gw.url}/callbacks/fitconnect/fc", secret)

        for faults, reason in (({"wrong_hmac": True}, "bad-hmac"), ({"stale_timestamp": True}, "stale")):
            gw.sandbox.set_callback_faults(**faults)
            sent = await gw.send()
            await eventually(lambda r=reason: invalid(gw, r) >= 1, what=f"an ignored callback ({reason})")
            await asyncio.sleep(0.2)
            assert polls(gw) == 1  # no poll was triggered
            assert await gw.stored(sent.submission_id) is None
        gw.sandbox.set_callback_faults()

        sent = await gw.send()  # a valid callback: the gateway polls at once and takes everything listed
        assert (await gw.outcome(sent)).event == ACCEPT
        assert polls(gw) >= 2
        assert len([d for d in gw.sandbox.deliveries() if d["state"] == "delivered"]) >= 1
