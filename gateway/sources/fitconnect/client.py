"""The subscriber's calls of the Submission API, on the shared client (:mod:`gateway.fitconnect.client`).

Everything that goes wrong here is an :class:`ApiError`: a reason to try again later, never a reason
to reject an application. Attachments are streamed by the caller (:meth:`SubmissionApi.attachment`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from gateway import __version__
from gateway.fitconnect.client import (
    JOSE,
    MAX_JSON_BYTES,
    ApiError,
    FitConnectClient,
    TokenProvider,
    TooLarge,
    error_summary,
    segment,
)
from gateway.sources.fitconnect.profile import ApiProfile

__all__ = ["JOSE", "MAX_JSON_BYTES", "ApiError", "SubmissionApi", "TokenProvider", "TooLarge", "error_summary"]

USER_AGENT = f"ozg-gateway/{__version__} (fitconnect-subscriber)"


class SubmissionApi(FitConnectClient):
    """The subscriber's calls of the Submission API (paths per :class:`ApiProfile`)."""

    def __init__(
        self,
        *,
        base_url: str,
        profile: ApiProfile,
        tokens_for: Callable[[Callable[[], aiohttp.ClientSession]], TokenProvider],
        timeout: float = 60.0,
    ) -> None:
        super().__init__(
            base_url=base_url, prefix=profile.prefix, tokens_for=tokens_for, timeout=timeout, user_agent=USER_AGENT
        )
        self.profile = profile

    async def list_submissions(self, destination_id: str, *, limit: int, offset: int) -> dict[str, Any]:
        return await self.get_json(
            "/submissions",
            what="list-submissions",
            params={"destinationId": destination_id, "limit": limit, "offset": offset},
        )

    async def get_submission(self, submission_id: str, *, limit: int) -> tuple[int, bytes]:
        return await self.request(
            "GET", f"/submissions/{segment(submission_id, 'get-submission')}", what="get-submission", limit=limit
        )

    async def get_destination(self, destination_id: str) -> dict[str, Any]:
        return await self.get_json(
            f"/destinations/{segment(destination_id, 'get-destination')}", what="get-destination"
        )

    async def get_destination_key(self, destination_id: str, kid: str) -> tuple[int, bytes]:
        # Public endpoint (no security in the spec).
        what = "get-destination-key"
        return await self.request(
            "GET",
            f"/destinations/{segment(destination_id, what)}/keys/{segment(kid, what)}",
            what=what,
            auth=False,
        )

    async def get_jwks(self) -> dict[str, Any]:
        return await self.get_json("/.well-known/jwks.json", what="get-zsd-jwks", auth=False, versioned=False)

    async def get_events(self, case_id: str, *, limit: int, offset: int) -> tuple[int, bytes]:
        return await self.request(
            "GET",
            f"/cases/{segment(case_id, 'get-events')}/events",
            what="get-events",
            params={"limit": limit, "offset": offset},
        )

    async def post_event(self, case_id: str, token: str) -> tuple[int, bytes]:
        return await self.request(
            "POST",
            f"/cases/{segment(case_id, 'post-event')}/events",
            what="post-event",
            body=token.encode("ascii"),
            content_type=JOSE,
        )

    @asynccontextmanager
    async def attachment(self, submission_id: str, attachment_id: str) -> AsyncIterator[aiohttp.ClientResponse]:
        """The attachment response, status 200 checked; the caller streams ``resp.content``."""
        what = "get-attachment"
        async with self.stream(
            f"/submissions/{segment(submission_id, what)}/attachments/{segment(attachment_id, what)}",
            what=what,
        ) as resp:
            yield resp
