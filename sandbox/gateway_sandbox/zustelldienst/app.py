"""``create_sandbox_app``: the local FIT-Connect Zustelldienst as an aiohttp application."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from aiohttp import web

from gateway_sandbox.zustelldienst import api, inspection, reply_api, reply_inspection
from gateway_sandbox.zustelldienst.appkeys import SANDBOX
from gateway_sandbox.zustelldienst.config import SandboxConfig
from gateway_sandbox.zustelldienst.problems import ProblemError
from gateway_sandbox.zustelldienst.service import Sandbox
from gateway_sandbox.zustelldienst.zsd_key import ZsdSigningKey

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_HTTP_KINDS = {404: "not-found", 405: "method-not-allowed", 413: "payload-too-large", 415: "unsupported-media-type"}


@web.middleware
async def _problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    sandbox = request.app[SANDBOX]
    sandbox.learn_base_url(str(request.url.origin()))
    instance = sandbox.base_url + request.path
    try:
        return await handler(request)
    except ProblemError as exc:
        return exc.response(instance)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = _HTTP_KINDS.get(exc.status, "invalid-request")
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return ProblemError(exc.status, kind, exc.reason, headers=headers).response(instance)
    except Exception:
        log.exception("unhandled_error", path=request.path, method=request.method)
        return ProblemError(500, "internal-error", "unexpected error; see the sandbox log").response(instance)


async def _timers(sandbox: Sandbox) -> None:
    while True:
        await asyncio.sleep(sandbox.config.periods.sweep_interval)
        try:
            sandbox.sweep()
        except Exception:  # a broken sweep must not stop later ones
            log.exception("timer_sweep_failed")


async def _background(app: web.Application) -> AsyncIterator[None]:
    sandbox = app[SANDBOX]
    tasks = [
        asyncio.create_task(sandbox.dispatcher.run(), name="sandbox-callbacks"),
        asyncio.create_task(_timers(sandbox), name="sandbox-timers"),
    ]
    log.info("sandbox_started", url=sandbox.base_url, count=len(sandbox.state.destinations))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        sandbox.close()


def create_sandbox_app(config: SandboxConfig, *, zsd_key: ZsdSigningKey | None = None) -> web.Application:
    """A ready aiohttp application; background tasks start and stop with it (``cleanup_ctx``).

    ``zsd_key`` lets tests share one pre-generated RSA-4096 key (generation takes about a second).
    """
    sandbox = Sandbox(config, zsd_key=zsd_key)
    # Request bodies are read through explicit per-endpoint limits (413 problem+json); this is the
    # backstop for anything read in one go.
    app = web.Application(
        middlewares=[_problem_middleware],
        client_max_size=max(config.limits.max_submit_bytes, config.limits.max_json_bytes),
    )
    app[SANDBOX] = sandbox
    api.add_api_routes(app, config.api_versions, extra=(reply_api.versioned,))
    if config.inspection_api:
        app.add_routes(inspection.routes)
        app.add_routes(reply_inspection.routes)
    app.cleanup_ctx.append(_background)
    return app
