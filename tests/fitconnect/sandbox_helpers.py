"""Helpers for the sandbox tests: an HTTP client for the loopback sandbox, valid JWEs and SETs."""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest_asyncio
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from gateway.fitconnect.jose import b64url_encode, encrypt_jwe, sign_jws
from gateway.fitconnect.keys import PrivateJWK, load_private_jwk, load_public_jwk
from gateway.fitconnect.sets import ACCEPT_SUBMISSION, SET_SCHEMA_URI, build_set
from gateway_sandbox.testing import (
    GEWERBE_SCHEMA,
    GEWERBE_SERVICE,
    TEST_DESTINATION_ID,
    RunningSandbox,
    SandboxKeys,
    running_sandbox,
)

JOSE = "application/jose"
PROBLEM_PREFIX = "https://schema.fitko.de/fit-connect/submission-api/problems/"


@dataclass
class Resp:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0].strip()

    def problem(self, status: int, kind: str) -> dict[str, Any]:
        """Assert an application/problem+json answer of this status and type; return it."""
        assert self.status == status, (self.status, self.body[:500])
        assert self.content_type == "application/problem+json", self.headers
        body: dict[str, Any] = self.json
        assert body["type"] == PROBLEM_PREFIX + kind, body
        assert body["status"] == status, body
        assert body["title"], body
        return body


class Api:
    """Plain aiohttp calls against the sandbox, as any third-party client would make them."""

    def __init__(self, sb: RunningSandbox, http: aiohttp.ClientSession) -> None:
        self.sb = sb
        self.http = http
        self._tokens: dict[str, str] = {}

    async def token(self, who: str) -> str:
        """Cached access token of ``"sender"``, ``"subscriber"`` or any client id."""
        if who not in self._tokens:
            if who == "sender":
                client = self.sb.sender
            elif who == "subscriber":
                client = self.sb.subscriber
            else:
                client = self.sb.client(who)
            self._tokens[who] = await self.sb.token(client)
        return self._tokens[who]

    def drop_tokens(self) -> None:
        """Forget cached tokens (after fast-forwarding past their lifetime)."""
        self._tokens.clear()

    async def call(
        self,
        method: str,
        path: str,
        *,
        auth: str | None = None,
        token: str | None = None,
        json_body: Any = None,
        data: bytes | str | None = None,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Resp:
        hdrs = dict(headers or {})
        if auth is not None:
            token = await self.token(auth)
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        if json_body is not None:
            data = json.dumps(json_body)
            content_type = content_type or "application/json"
        if content_type is not None:
            hdrs["Content-Type"] = content_type
        payload: Any = data
        if isinstance(data, str):
            payload = data.encode()
        if isinstance(payload, bytes) and len(payload) > 256 * 1024:
            payload = io.BytesIO(payload)  # aiohttp warns about large raw bodies
        async with self.http.request(method, self.sb.base_url + path, data=payload, headers=hdrs) as resp:
            body = await resp.read()
            return Resp(resp.status, dict(resp.headers), body)


@dataclass
class Sent:
    submission_id: str
    case_id: str
    attachment_ids: list[str] = field(default_factory=list)
    tags: dict[str, Any] = field(default_factory=dict)
    metadata_jwe: str = ""
    data_jwe: str | None = None
    attachment_jwes: dict[str, str] = field(default_factory=dict)


def encryption_public_key(keys: SandboxKeys) -> Any:
    return load_public_jwk(keys.public_jwk("encryption"))


def jwe(keys: SandboxKeys, plaintext: bytes, cty: str = "application/json") -> str:
    return encrypt_jwe(plaintext, encryption_public_key(keys), kid=keys.encryption_kid, cty=cty)


def signing_key(keys: SandboxKeys) -> PrivateJWK:
    return load_private_jwk(keys.signing_private)


def create_body(attachments: list[str], *, service: str = GEWERBE_SERVICE, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "destinationId": TEST_DESTINATION_ID,
        "announcedAttachments": attachments,
        "serviceType": {"name": "Gewerbeanmeldung", "identifier": service},
    }
    body.update(extra)
    return body


async def create(api: Api, attachments: int = 0, **extra: Any) -> tuple[str, str, list[str]]:
    ids = [str(uuid.uuid4()) for _ in range(attachments)]
    r = await api.call("POST", "/v1/submissions", auth="sender", json_body=create_body(ids, **extra))
    assert r.status == 201, r.body
    return r.json["submissionId"], r.json["caseId"], ids


async def send(
    api: Api,
    keys: SandboxKeys,
    *,
    attachments: int = 1,
    data: bool = True,
    callback: dict[str, str] | None = None,
    case_id: str | None = None,
) -> Sent:
    """A complete, valid submission (create, upload, submit)."""
    extra: dict[str, Any] = {}
    if callback is not None:
        extra["callback"] = callback
    if case_id is not None:
        extra["caseId"] = case_id
    sid, cid, ids = await create(api, attachments, **extra)
    sent = Sent(sid, cid, ids)
    for i, aid in enumerate(ids):
        compact = jwe(keys, f"attachment {i}".encode(), "application/pdf")
        r = await api.call(
            "PUT", f"/v1/submissions/{sid}/attachments/{aid}", auth="sender", data=compact, content_type=JOSE
        )
        assert r.status == 204, r.body
        sent.attachment_jwes[aid] = compact
    metadata = {
        "$schema": "https://schema.fitko.de/fit-connect/metadata/1.0.0/metadata.schema.json",
        "contentStructure": {
            "data": {
                "hash": {"type": "sha512", "content": "0" * 128},
                "submissionSchema": {"schemaUri": GEWERBE_SCHEMA, "mimeType": "application/json"},
            },
            "attachments": [],
        },
    }
    sent.metadata_jwe = jwe(keys, json.dumps(metadata).encode())
    body = {"encryptedMetadata": sent.metadata_jwe}
    if data:
        sent.data_jwe = jwe(keys, b'{"firma": "Test GmbH"}')
        body["encryptedData"] = sent.data_jwe
    r = await api.call("PUT", f"/v1/submissions/{sid}", auth="sender", json_body=body)
    assert r.status == 202, r.body
    sent.tags = {"metadata": sent.metadata_jwe.rsplit(".", 1)[1]}
    if data:
        assert sent.data_jwe is not None
        sent.tags["data"] = sent.data_jwe.rsplit(".", 1)[1]
    sent.tags["attachments"] = {a: c.rsplit(".", 1)[1] for a, c in sent.attachment_jwes.items()}
    return sent


def accept_set(keys: SandboxKeys, sent: Sent, **kwargs: Any) -> str:
    return subscriber_set(keys, sent, ACCEPT_SUBMISSION, {"authenticationTags": sent.tags}, **kwargs)


def subscriber_set(
    keys: SandboxKeys,
    sent: Sent,
    event: str,
    payload: dict[str, Any],
    *,
    issuer: str = TEST_DESTINATION_ID,
    case_id: str | None = None,
    submission_id: str | None = None,
    key: RSAPrivateKey | None = None,
    kid: str | None = None,
    jti: str | None = None,
    iat: int | None = None,
) -> str:
    return build_set(
        issuer=issuer,
        submission_id=submission_id or sent.submission_id,
        case_id=case_id or sent.case_id,
        event=event,
        payload=payload,
        key=key or signing_key(keys).key,
        kid=kid or keys.signing_kid,
        iat=iat,
        jti=jti,
    )


def raw_set(keys: SandboxKeys, sent: Sent, *, header: dict[str, Any] | None = None, **claims: Any) -> str:
    """A SET with arbitrary claims (None removes one), signed PS512 unless ``header`` says otherwise."""
    import time

    base: dict[str, Any] = {
        "$schema": SET_SCHEMA_URI,
        "jti": str(uuid.uuid4()),
        "iss": TEST_DESTINATION_ID,
        "iat": int(time.time()),
        "sub": f"submission:{sent.submission_id}",
        "txn": f"case:{sent.case_id}",
        "events": {ACCEPT_SUBMISSION: {"authenticationTags": sent.tags}},
    }
    for name, value in claims.items():
        name = "$schema" if name == "schema" else name
        if value is None:
            base.pop(name, None)
        else:
            base[name] = value
    if header is None:
        return sign_jws(base, signing_key(keys).key, kid=keys.signing_kid)
    # A hand-made header: the signature is junk, the token must be refused before it matters.
    head = b64url_encode(json.dumps(header).encode())
    body = b64url_encode(json.dumps(base).encode())
    return f"{head}.{body}.{b64url_encode(b'not-a-signature')}"


@asynccontextmanager
async def sandbox_api(keys: SandboxKeys, **overrides: Any) -> AsyncIterator[Api]:
    """A sandbox with non-default settings (``overrides`` go to ``default_config``) and its Api."""
    async with running_sandbox(keys=keys, **overrides) as sb, aiohttp.ClientSession() as http:
        yield Api(sb, http)


@pytest_asyncio.fixture(name="api")
async def api_fixture(fitconnect_sandbox: RunningSandbox) -> AsyncIterator[Api]:
    """``api``: an :class:`Api` on the test's sandbox (import ``api_fixture`` to use it)."""
    async with aiohttp.ClientSession() as http:
        yield Api(fitconnect_sandbox, http)


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A loopback callback receiver answering with the given statuses in turn (then 200)."""

    url: str = ""
    statuses: list[int] = field(default_factory=list)
    calls: list[Received] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append(Received(dict(request.headers), await request.read(), time.monotonic()))
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)

    async def wait(self, count: int, within: float = 15.0) -> list[Received]:
        deadline = time.monotonic() + within
        while len(self.calls) < count:
            assert time.monotonic() < deadline, f"expected {count} callbacks, got {len(self.calls)}"
            await asyncio.sleep(0.02)
        return self.calls


@pytest_asyncio.fixture(name="receiver")
async def receiver_fixture() -> AsyncIterator[Receiver]:
    """``receiver``: a loopback callback receiver (import ``receiver_fixture`` to use it)."""
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/callback", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    rec.url = f"http://127.0.0.1:{port}/callback"
    try:
        yield rec
    finally:
        await runner.cleanup()
