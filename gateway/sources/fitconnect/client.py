"""HTTP client for the Submission API, subscriber side: OAuth token cache, bounded reads, one retry on 401.

Everything that goes wrong here is an :class:`ApiError`: a reason to try again later, never a reason
to reject an application. Response bodies are read with a hard size bound (a hostile or broken
server cannot make the gateway buffer without limit); attachments are streamed by the caller.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from gateway import __version__
from gateway.fitconnect.ids import path_segment
from gateway.sources.fitconnect.profile import ApiProfile

USER_AGENT = f"ozg-gateway/{__version__} (fitconnect-subscriber)"
JOSE = "application/jose"
TOKEN_RENEW_MARGIN = 60.0  # renew this many seconds before expiry (never less than half the lifetime)
MAX_JSON_BYTES = 4 << 20  # destinations, listings, event logs, keys, tokens
MAX_ERROR_BODY = 2048
STREAM_CHUNK = 1 << 20
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class ApiError(Exception):
    """The Submission API (or the token endpoint) could not be used right now. ``detail`` is safe to log."""

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
    ) -> None:
        self._session = session
        self._url = token_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._clock = clock
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
                self._url, data=form, headers={"User-Agent": USER_AGENT, "Accept": "application/json"}
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


def _segment(value: str, what: str) -> str:
    """The last check where a value from a message becomes part of a request path."""
    try:
        return path_segment(value)
    except ValueError:
        raise ApiError(what, "refused: an id is not a single URL-safe path segment") from None


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        raise ApiError(what, "response is not JSON") from None
    if not isinstance(value, dict):
        raise ApiError(what, "response is not a JSON object")
    return value


class SubmissionApi:
    """The subscriber's calls of the Submission API (paths per :class:`ApiProfile`)."""

    def __init__(
        self,
        *,
        base_url: str,
        profile: ApiProfile,
        tokens_for: Callable[[Callable[[], aiohttp.ClientSession]], TokenProvider],
        timeout: float = 60.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.profile = profile
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self.tokens = tokens_for(self.session)

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={"User-Agent": USER_AGENT},
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=self._timeout),
                raise_for_status=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, path: str, *, versioned: bool = True) -> str:
        return f"{self.base_url}{self.profile.prefix if versioned else ''}{path}"

    async def request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: Mapping[str, str | int] | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
        accept: str = "application/json",
        auth: bool = True,
        versioned: bool = True,
        limit: int = MAX_JSON_BYTES,
    ) -> tuple[int, bytes]:
        """One call; with ``auth`` a 401 drops the token and retries once with a fresh one."""
        for attempt in (1, 2):
            headers = {"Accept": accept}
            token = None
            if auth:
                token = await self.tokens.token()
                headers["Authorization"] = f"Bearer {token}"
            if content_type is not None:
                headers["Content-Type"] = content_type
            try:
                async with self.session().request(
                    method,
                    self.url(path, versioned=versioned),
                    params=params,
                    data=body,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=self._timeout),
                ) as resp:
                    data = await read_limited(resp, limit, what)
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise ApiError(what, f"request failed ({type(exc).__name__})") from None
            if status == 401 and token is not None and attempt == 1:
                self.tokens.invalidate(token)
                continue
            return status, data
        raise AssertionError("unreachable")  # pragma: no cover

    async def get_json(self, path: str, *, what: str, auth: bool = True, **kwargs: Any) -> dict[str, Any]:
        status, body = await self.request("GET", path, what=what, auth=auth, **kwargs)
        if status != 200:
            raise ApiError(what, error_summary(body), status=status)
        return _json_object(body, what)

    # -- the endpoints ----------------------------------------------------------------------------

    async def list_submissions(self, destination_id: str, *, limit: int, offset: int) -> dict[str, Any]:
        return await self.get_json(
            "/submissions",
            what="list-submissions",
            params={"destinationId": destination_id, "limit": limit, "offset": offset},
        )

    async def get_submission(self, submission_id: str, *, limit: int) -> tuple[int, bytes]:
        path = f"/submissions/{_segment(submission_id, 'get-submission')}"
        return await self.request("GET", path, what="get-submission", limit=limit)

    async def get_destination(self, destination_id: str) -> dict[str, Any]:
        return await self.get_json(
            f"/destinations/{_segment(destination_id, 'get-destination')}", what="get-destination"
        )

    async def get_destination_key(self, destination_id: str, kid: str) -> tuple[int, bytes]:
        # Public endpoint (no security in the spec). Both values come from a SET (the event log
        # checked their form already).
        what = "get-destination-key"
        path = f"/destinations/{_segment(destination_id, what)}/keys/{_segment(kid, what)}"
        return await self.request("GET", path, what=what, auth=False)

    async def get_jwks(self) -> dict[str, Any]:
        return await self.get_json("/.well-known/jwks.json", what="get-zsd-jwks", auth=False, versioned=False)

    async def get_events(self, case_id: str, *, limit: int, offset: int) -> tuple[int, bytes]:
        return await self.request(
            "GET",
            f"/cases/{_segment(case_id, 'get-events')}/events",
            what="get-events",
            params={"limit": limit, "offset": offset},
        )

    async def post_event(self, case_id: str, token: str) -> tuple[int, bytes]:
        return await self.request(
            "POST",
            f"/cases/{_segment(case_id, 'post-event')}/events",
            what="post-event",
            body=token.encode("ascii"),
            content_type=JOSE,
        )

    @asynccontextmanager
    async def attachment(self, submission_id: str, attachment_id: str) -> AsyncIterator[aiohttp.ClientResponse]:
        """The attachment response, status 200 checked; the caller streams ``resp.content``."""
        what = "get-attachment"
        path = f"/submissions/{_segment(submission_id, what)}/attachments/{_segment(attachment_id, what)}"
        for attempt in (1, 2):
            token = await self.tokens.token()
            headers = {"Accept": JOSE, "Authorization": f"Bearer {token}"}
            try:
                async with self.session().get(self.url(path), headers=headers) as resp:
                    if resp.status == 401 and attempt == 1:
                        self.tokens.invalidate(token)
                        continue
                    if resp.status != 200:
                        body = await read_limited(resp, MAX_JSON_BYTES, "get-attachment")
                        raise ApiError("get-attachment", error_summary(body), status=resp.status)
                    yield resp
                    return
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise ApiError("get-attachment", f"download failed ({type(exc).__name__})") from None
