"""The ``v2`` API profile (digest §2.10): ``/v2`` paths, ``publicService`` and ``publicServices``.

The sandbox speaks v1 only, so the gateway talks to it through a small loopback proxy that serves
the v2 shape: it maps ``/v2/...`` to ``/v1/...`` and renames the fields in the JSON it returns.
Requests the proxy sees on ``/v1`` fail the test.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
from aiohttp import web

from gateway.model import MessageState
from gateway_sandbox.testing import running_sandbox

from .subscriber_helpers import ACCEPT, GEWERBE_SERVICE, Gateway, free_port, sandbox_keys

RENAMES = {"serviceType": "publicService", "services": "publicServices"}


@asynccontextmanager
async def v2_proxy(upstream: str, seen: list[str]) -> AsyncIterator[str]:
    session = aiohttp.ClientSession()

    async def forward(request: web.Request) -> web.StreamResponse:
        seen.append(f"{request.method} {request.path}")
        path = request.path
        if path.startswith("/v2/"):
            path = "/v1/" + path.removeprefix("/v2/")
        elif not path.startswith("/.well-known/"):
            return web.Response(status=404)
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type", "accept")}
        async with session.request(
            request.method, upstream + path, params=request.query, data=await request.read(), headers=headers
        ) as resp:
            body = await resp.read()
            if resp.content_type == "application/json" and body:
                value = json.loads(body)
                if isinstance(value, dict):
                    value = {RENAMES.get(k, k): v for k, v in value.items()}
                body = json.dumps(value).encode()
            return web.Response(status=resp.status, body=body, content_type=resp.content_type)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        await session.close()


async def test_v2_profile_paths_and_field_names(tmp_path: Path, fitconnect_shared: Path) -> None:
    seen: list[str] = []
    async with running_sandbox(keys=sandbox_keys()) as sandbox, v2_proxy(sandbox.base_url, seen) as proxy:
        # the proxy is not the Zustelldienst: its SETs keep the Zustelldienst's own URL as iss
        options = {"api_profile": "v2", "submission_api_url": proxy, "zustelldienst_issuer": sandbox.base_url}
        gw = Gateway(sandbox, tmp_path, fitconnect_shared, options)
        await gw.start()
        try:
            sent = await gw.send()
            assert (await gw.outcome(sent)).event == ACCEPT
            env = (await gw.wait_stored(sent.submission_id, [MessageState.ACKNOWLEDGED])).envelope
            assert env.routing.service == GEWERBE_SERVICE  # read from publicService
            assert env.routing.region == "09162000"  # from the destination's publicServices
        finally:
            await gw.stop()
    paths = {line.split(" ", 1)[1].split("/")[1] for line in seen}
    assert paths == {"v2", ".well-known"}
    assert f"POST /v2/cases/{sent.case_id}/events" in seen
    assert any(line.startswith("GET /v2/submissions") for line in seen)
