"""THE FIT-Connect HTTP client: OAuth token cache, bounded reads, one retry on 401, problem-aware errors.

Used by every party the project plays: the subscriber (:mod:`gateway.sources.fitconnect`), the reply
channel (:mod:`gateway.channels.fitconnect`) and the test online service (``gateway_sandbox``). Only
the transport lives here; each user adds its endpoints on top.

* One ``aiohttp`` session per client, created lazily (an injected session is used, never closed).
* Client-credentials tokens (``client_secret_post``, digest §2.1) are cached and renewed 60 s before
  expiry (never later than half the lifetime); one refresh runs at a time; a 401 drops the token and
  the call is retried exactly once with a fresh one.
* Response bodies are read with a hard size bound (a hostile or broken server cannot make the caller
  buffer without limit); large downloads are streamed by the caller (:meth:`FitConnectClient.stream`).
* Every failure to talk to the API is an :class:`ApiError` whose ``detail`` is safe to log (problem
  type/title or the first bytes of the body; never a token or secret).
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from gateway import __version__
from gateway.fitconnect.ids import path_segment

USER_AGENT = f"ozg-gateway/{__version__} (fitconnect)"
JOSE = "application/jose"
JSON = "application/json"
TOKEN_RENEW_MARGIN = 60.0  # renew this many seconds before expiry (never less than half the lifetime)
MAX_JSON_BYTES = 4 << 20  # destinations, listings, event logs, keys, tokens
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # never into a log line
MAX_ERROR_BODY = 2048
DEFAULT_TIMEOUT = 60.0


class ApiError(Exception):
    """The API (or the token endpoint) could not be used right now. ``detail`` is safe to log.

    ``what`` names the call (e.g. ``"token"``, ``"create-reply"``), ``status`` the HTTP status when
    there was an answer (``None``: no answer, e.g. a timeout or a refused connection).
    """

    def __init__(self, what: str, detail: str, *, status: int | None = None) -> None:
        super().__init__(f"{what}: {detail}" + (f" (HTTP {status})" if status is not None else ""))
        self.what = what
        self.detail = detail
        self.status = status


class TooLarge(ApiError):
    """A response body exceeds its bound."""


class TokenProvider:
    """Client-credentials token, cached, renewed before expiry; one refresh at a time."""

    def __init__(
        self,
        session: Callable[[], aiohttp.ClientSession],
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        user_agent: str = USER_AGENT,
    ) -> None:
        self._session = session
        self._url = token_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._clock = clock
        self._user_agent = user_agent
        self._token: str | None = None
        self._renew_at = 0.0
        self._lock = asyncio.Lock()
        self.fetches = 0  # how many tokens were requested (tests, diagnostics)

    async def token(self) -> str:
        if self._token is not None and self._clock() < self._renew_at:
            return self._token
        async with self._lock:
            # Another task may have refreshed while this one waited for the lock.
            if self._token is not None and self._clock() < self._renew_at:
                return self._token
            return await self._fetch()

    def invalidate(self, token: str) -> None:
        """The API refused ``token`` (401): drop it unless someone already replaced it."""
        if self._token == token:
            self._token = None
            self._renew_at = 0.0

    async def _fetch(self) -> str:
        form = {"grant_type": "client_credentials", "client_id": self._client_id, "client_secret": self._client_secret}
        started = self._clock()
        try:
            async with self._session().post(
                self._url, data=form, headers={"User-Agent": self._user_agent, "Accept": JSON}
            ) as resp:
                body = await read_limited(resp, MAX_JSON_BYTES, "token")
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApiError("token", f"token endpoint unreachable ({type(exc).__name__})") from None
        self.fetches += 1
        if status != 200:
            raise ApiError("token", error_summary(body), status=status)
        try:
            parsed = json.loads(body)
            token = parsed["access_token"]
            lifetime = float(parsed.get("expires_in", 300))
        except (ValueError, KeyError, TypeError):
            raise ApiError("token", "token response is not the expected JSON") from None
        if not isinstance(token, str) or not token:
            raise ApiError("token", "token response has no access_token")
        margin = min(TOKEN_RENEW_MARGIN, lifetime / 2)
        self._token = token
        self._renew_at = started + max(0.0, lifetime - margin)
        return token


async def read_limited(resp: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    declared = resp.content_length
    if declared is not None and declared > limit:
        raise TooLarge(what, f"response body of {declared} bytes exceeds {limit}", status=resp.status)
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise TooLarge(what, f"response body exceeds {limit} bytes", status=resp.status)
        chunks.append(chunk)
    return b"".join(chunks)


def error_summary(body: bytes) -> str:
    """A short, safe description of an error body (problem type/title or the first bytes)."""
    try:
        parsed = json.loads(body[: MAX_ERROR_BODY * 4])
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        parts = [str(parsed[k])[:200] for k in ("type", "error", "title", "issue") if k in parsed]
        if parts:
            return _CONTROL.sub("?", " / ".join(parts))
    # it goes into log lines: no CR/LF or other controls from the server's body
    return _CONTROL.sub("?", body[:200].decode("utf-8", "replace")) or "no body"


def segment(value: str, what: str) -> str:
    """The last check where a value from a message becomes part of a request path (see docs/hostile-input.md)."""
    try:
        return path_segment(value)
    except ValueError:
        raise ApiError(what, "refused: an id is not a single URL-safe path segment") from None


def problem_type(body: bytes) -> str | None:
    """The last path segment of a problem+json ``type`` (e.g. ``reply-already-exists``), if any."""
    try:
        parsed = json.loads(body[: MAX_ERROR_BODY * 4])
    except ValueError:
        return None
    kind = parsed.get("type") if isinstance(parsed, dict) else None
    return kind.rstrip("/").rsplit("/", 1)[-1] if isinstance(kind, str) and kind else None


def json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        raise ApiError(what, "response is not JSON") from None
    if not isinstance(value, dict):
        raise ApiError(what, "response is not a JSON object")
    return value


def _retry_after(headers: Mapping[str, str]) -> float | None:
    raw = headers.get("Retry-After")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None  # an HTTP date: the caller's own backoff applies


@dataclass(frozen=True, slots=True)
class HttpResult:
    status: int
    body: bytes
    retry_after: float | None = None  # seconds, from a Retry-After header (429/503)


# A request body: raw bytes, a JSON value, or a file (opened per attempt, so the 401 retry resends it).
Body = bytes | Path | None


class FitConnectClient:
    """A FIT-Connect API (Submission API v1/v2 and its reply endpoints) at ``base_url``.

    ``prefix`` is the API generation's path prefix (``/v1``, ``/v2``); paths given to the methods are
    without it unless ``versioned=False`` (token endpoint, ``/.well-known/jwks.json``).
    """

    def __init__(
        self,
        *,
        base_url: str,
        prefix: str,
        tokens_for: Callable[[Callable[[], aiohttp.ClientSession]], TokenProvider],
        timeout: float = DEFAULT_TIMEOUT,
        user_agent: str = USER_AGENT,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.prefix = prefix
        self.user_agent = user_agent
        self._timeout = timeout
        self._session = session
        self._owns_session = session is None
        self.tokens = tokens_for(self.session)

    @classmethod
    def with_credentials(
        cls,
        *,
        base_url: str,
        prefix: str,
        token_url: str,
        client_id: str,
        client_secret: str,
        timeout: float = DEFAULT_TIMEOUT,
        user_agent: str = USER_AGENT,
        session: aiohttp.ClientSession | None = None,
    ) -> FitConnectClient:
        return cls(
            base_url=base_url,
            prefix=prefix,
            timeout=timeout,
            user_agent=user_agent,
            session=session,
            tokens_for=lambda s: TokenProvider(s, token_url, client_id, client_secret, user_agent=user_agent),
        )

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No total limit on the session (large transfers take what they take), but a stalled
            # connection or a silent server fails within the timeout; short calls add a total bound.
            self._session = aiohttp.ClientSession(
                headers={"User-Agent": self.user_agent},
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=self._timeout),
                raise_for_status=False,
            )
            self._owns_session = True
        return self._session

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    def url(self, path: str, *, versioned: bool = True) -> str:
        return f"{self.base_url}{self.prefix if versioned else ''}{path}"

    async def call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: Mapping[str, str | int] | None = None,
        body: Body = None,
        json_body: Any = None,
        content_type: str | None = None,
        accept: str = JSON,
        auth: bool = True,
        versioned: bool = True,
        limit: int = MAX_JSON_BYTES,
        bounded: bool = True,
    ) -> HttpResult:
        """One call; with ``auth`` a 401 drops the token and retries once with a fresh one.

        ``bounded=False`` lifts the total time bound (uploads of large files: only the per-read
        timeout applies). Raises :class:`ApiError` when there is no answer, never for a status.
        """
        if json_body is not None:
            body = json.dumps(json_body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            content_type = content_type or JSON
        # A per-call timeout replaces the session's: bounded calls get a total limit, unbounded ones keep
        # the session's per-read limit.
        extra: dict[str, Any] = {"timeout": aiohttp.ClientTimeout(total=self._timeout)} if bounded else {}
        for attempt in (1, 2):
            headers = {"Accept": accept, "User-Agent": self.user_agent}
            token = None
            if auth:
                token = await self.tokens.token()
                headers["Authorization"] = f"Bearer {token}"
            if content_type is not None:
                headers["Content-Type"] = content_type
            try:
                with _opened(body) as data:
                    async with self.session().request(
                        method, self.url(path, versioned=versioned), params=params, data=data, headers=headers, **extra
                    ) as resp:
                        content = await read_limited(resp, limit, what)
                        result = HttpResult(resp.status, content, _retry_after(resp.headers))
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise ApiError(what, f"request failed ({type(exc).__name__})") from None
            except OSError as exc:  # the file to upload cannot be read
                raise ApiError(what, f"request body unreadable ({type(exc).__name__})") from None
            if result.status == 401 and token is not None and attempt == 1:
                self.tokens.invalidate(token)
                continue
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    async def request(self, method: str, path: str, *, what: str, **kwargs: Any) -> tuple[int, bytes]:
        """:meth:`call` as ``(status, body)``."""
        result = await self.call(method, path, what=what, **kwargs)
        return result.status, result.body

    async def expect(self, method: str, path: str, statuses: tuple[int, ...], *, what: str, **kwargs: Any) -> bytes:
        """The body of a call that must answer one of ``statuses``; any other is an :class:`ApiError`."""
        result = await self.call(method, path, what=what, **kwargs)
        if result.status not in statuses:
            raise ApiError(what, error_summary(result.body), status=result.status)
        return result.body

    async def get_json(self, path: str, *, what: str, auth: bool = True, **kwargs: Any) -> dict[str, Any]:
        return json_object(await self.expect("GET", path, (200,), what=what, auth=auth, **kwargs), what)

    @asynccontextmanager
    async def stream(self, path: str, *, what: str, accept: str = JOSE) -> AsyncIterator[aiohttp.ClientResponse]:
        """A GET response, status 200 checked; the caller streams ``resp.content`` (no size bound here)."""
        for attempt in (1, 2):
            token = await self.tokens.token()
            headers = {"Accept": accept, "Authorization": f"Bearer {token}", "User-Agent": self.user_agent}
            try:
                async with self.session().get(self.url(path), headers=headers) as resp:
                    if resp.status == 401 and attempt == 1:
                        self.tokens.invalidate(token)
                        continue
                    if resp.status != 200:
                        body = await read_limited(resp, MAX_JSON_BYTES, what)
                        raise ApiError(what, error_summary(body), status=resp.status)
                    yield resp
                    return
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise ApiError(what, f"download failed ({type(exc).__name__})") from None


@contextmanager
def _opened(body: Body) -> Iterator[Any]:
    """A fresh body per attempt: bytes as a file-like payload (aiohttp streams it instead of writing a
    large value in one go), a path opened for reading and closed afterwards."""
    if isinstance(body, Path):
        with body.open("rb") as fh:
            yield fh
    elif isinstance(body, bytes):
        yield io.BytesIO(body)
    else:
        yield None
