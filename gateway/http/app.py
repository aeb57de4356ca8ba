"""The gateway's aiohttp application: health, readiness, metrics, admin API, channel routes.

Resources and background workers live in ``cleanup_ctx``; shutdown first flips the app into
*draining* (every request except liveness gets 503, intake stops), then lets in-flight deliveries
finish or releases their leases.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from gateway.errors import ConfigError
from gateway.http.limits import BODY_TIMEOUT, handler_args, limits_middleware
from gateway.http.problem import problem_response
from gateway.model import AckState, MessageState
from gateway.plugins import PluginHost
from gateway.problems import Problem
from gateway.runtime import Runtime
from gateway.store.base import StoredMessage

log = structlog.get_logger(__name__)

RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime", Runtime)
ADMIN_TOKEN: web.AppKey[str | None] = web.AppKey("admin_token", str)

DISCARDED = "https://ozg-gateway.example/problems/discarded-by-operator"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def draining_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    if runtime.draining and request.path != "/healthz":
        return problem_response(503, "draining", "Service is shutting down", headers={"Retry-After": "30"})
    return await handler(request)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status == 413:
            return problem_response(413, "payload-too-large", "Request body too large", exc.text or "")
        if exc.status in (404, 405):
            return problem_response(exc.status, "not-found" if exc.status == 404 else "method-not-allowed", exc.reason)
        raise
    except Exception:
        log.exception("request_failed", path=request.path, method=request.method)
        return problem_response(500, "internal-error", "Internal error", "the error was logged")


def message_summary(stored: StoredMessage) -> dict[str, Any]:
    """What the admin API shows: ids, states, routing, errors. Never payload content or metadata."""
    env = stored.envelope
    return {
        "id": env.id,
        "state": env.state.value,
        "ack": env.ack.value,
        "source": {"channel": env.source.channel, "type": env.source.type, "reference": env.source.reference},
        "received_at": env.received_at.isoformat(),
        "route": env.route,
        "adapter": env.adapter,
        "attempts": env.attempts,
        "next_attempt_at": stored.next_attempt_at,
        "last_error": stored.last_error,
        "problems": [{"type": p.type, "instance": p.instance} for p in stored.problems],
        "parts": [{"name": b.name, "size": b.size, "sha512": b.sha512, "media_type": b.media_type} for b in env.blobs],
    }


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    checks: dict[str, str] = {}
    try:
        await runtime.store.ping()
        checks["store"] = "ok"
    except Exception as exc:
        checks["store"] = f"failed: {type(exc).__name__}"
    for name, adapter in runtime.adapters.items():
        try:
            problem = await adapter.check()
        except Exception as exc:
            problem = f"check raised {type(exc).__name__}"
        checks[f"adapter:{name}"] = problem or "ok"
    for name, source in runtime.sources.items():
        try:
            problem = await source.check()
        except Exception as exc:
            problem = f"check raised {type(exc).__name__}"
        checks[f"source:{name}"] = problem or "ok"
    ready = all(v == "ok" for v in checks.values())
    return web.json_response(
        {"status": "ready" if ready else "not-ready", "checks": checks}, status=200 if ready else 503
    )


async def metrics(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    try:
        for state, count in (await runtime.store.count_by_state()).items():
            runtime.metrics.queue_depth.labels(state).set(count)
    except Exception:
        log.exception("metrics_queue_depth_failed")
    return web.Response(
        body=runtime.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
    )


@web.middleware
async def admin_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/admin"):
        return await handler(request)
    expected = request.app[ADMIN_TOKEN]
    if expected is None:
        return problem_response(403, "admin-disabled", "Admin API is disabled (no [http] admin_token configured)")
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected.encode()):
        return problem_response(
            401, "unauthorized", "Bearer token required", headers={"WWW-Authenticate": 'Bearer realm="gateway-admin"'}
        )
    return await handler(request)


async def admin_list(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    states = []
    for raw in request.query.getall("state", []):
        try:
            states.append(MessageState(raw))
        except ValueError:
            return problem_response(
                400, "bad-request", "Unknown state", f"state must be one of {[s.value for s in MessageState]}"
            )
    try:
        limit = min(max(int(request.query.get("limit", "100")), 1), 1000)
        offset = max(int(request.query.get("offset", "0")), 0)
    except ValueError:
        return problem_response(400, "bad-request", "limit and offset must be integers")
    rows = await runtime.store.list_messages(states=states or None, limit=limit, offset=offset)
    return web.json_response({"messages": [message_summary(r) for r in rows], "limit": limit, "offset": offset})


async def _get_or_404(request: web.Request) -> StoredMessage | web.Response:
    stored = await request.app[RUNTIME].store.get(request.match_info["id"])
    if stored is None:
        return problem_response(404, "message-not-found", "No such message")
    return stored


async def admin_show(request: web.Request) -> web.Response:
    stored = await _get_or_404(request)
    if isinstance(stored, web.Response):
        return stored
    trail = await request.app[RUNTIME].store.audit_trail(stored.envelope.id)
    return web.json_response({**message_summary(stored), "audit": [r.as_dict() for r in trail]})


async def admin_retry(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    stored = await _get_or_404(request)
    if isinstance(stored, web.Response):
        return stored
    try:
        result = await retry_dead_letter(runtime, stored, actor="admin-api")
    except ValueError as exc:
        return problem_response(409, "invalid-state", "Only dead letters can be retried", str(exc))
    return web.json_response(message_summary(result))


async def admin_discard(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    stored = await _get_or_404(request)
    if isinstance(stored, web.Response):
        return stored
    force = request.query.get("force") in ("1", "true", "yes")
    try:
        result = await discard_dead_letter(
            runtime.store, stored, actor="admin-api", force=force, plugins=runtime.plugins
        )
    except ValueError as exc:
        return problem_response(409, "invalid-state", "Cannot discard", str(exc))
    runtime.acker.wake()
    return web.json_response(message_summary(result))


async def retry_dead_letter(runtime: Runtime, stored: StoredMessage, *, actor: str) -> StoredMessage:
    if stored.envelope.state is not MessageState.DEAD:
        raise ValueError(f"message is {stored.envelope.state.value}, not dead")
    result = await runtime.store.transition(
        stored.envelope.id,
        MessageState.ROUTED,
        reason="operator retry",
        actor=actor,
        reset_attempts=True,
        details={"previous_attempts": stored.envelope.attempts},
    )
    await runtime.plugins.message_transition(result.envelope, MessageState.DEAD.value, "operator retry")
    runtime.worker.wake()
    return result


async def discard_dead_letter(
    store: Any, stored: StoredMessage, *, actor: str, force: bool, plugins: PluginHost | None = None
) -> StoredMessage:
    env = stored.envelope
    if env.state is not MessageState.DEAD:
        raise ValueError(f"message is {env.state.value}, not dead")
    if env.ack is AckState.DONE and not force:
        raise ValueError("upstream was already told it was accepted: discarding loses an accepted application (force)")
    problem = Problem(DISCARDED, "Discarded by the operator after failed delivery", "delivery failed permanently")
    result: StoredMessage = await store.transition(
        env.id,
        MessageState.REJECTED,
        reason="operator discard",
        actor=actor,
        problems=[problem],
        ack=AckState.PENDING if env.ack is AckState.WAITING else None,
    )
    if plugins is not None:
        await plugins.message_transition(result.envelope, MessageState.DEAD.value, "operator discard")
    return result


def create_app(runtime: Runtime) -> web.Application:
    config = runtime.config
    app = web.Application(
        client_max_size=config.http.max_body_bytes,
        middlewares=[error_middleware, limits_middleware, draining_middleware, admin_auth],
        handler_args=handler_args(config.http.header_timeout),
    )
    app[RUNTIME] = runtime
    app[BODY_TIMEOUT] = config.http.body_timeout
    try:
        app[ADMIN_TOKEN] = config.http.admin_token.resolve() if config.http.admin_token else None
    except ConfigError as exc:  # checked when the file was read; gone since (e.g. a deleted secret file)
        raise ConfigError(exc.reason, key=exc.key, file=str(config.file)) from None
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/admin/messages", admin_list)
    app.router.add_get("/admin/messages/{id}", admin_show)
    app.router.add_post("/admin/messages/{id}/retry", admin_retry)
    app.router.add_post("/admin/messages/{id}/discard", admin_discard)
    app.router.add_routes(runtime.routes)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await runtime.start()
        yield
        await runtime.stop()

    async def on_shutdown(app: web.Application) -> None:
        runtime.drain.begin()  # before open requests are waited for: new ones get 503

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(on_shutdown)
    return app
