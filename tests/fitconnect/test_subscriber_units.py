"""Unit-level parts of the subscriber: token cache, streaming attachment receipt, checks, catalogue/docs."""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.fitconnect.jose import encrypt_jwe
from gateway.fitconnect.keys import PrivateJWK, load_private_jwk
from gateway.fitconnect.problems import CATALOGUE, PROBLEM_PREFIX, InstanceKind, kind
from gateway.problems import Problem
from gateway.sources.fitconnect.acks import upstream_problems
from gateway.sources.fitconnect.attachments import receive_attachment
from gateway.sources.fitconnect.checks import (
    CheckFailed,
    consistency_problems,
    metadata_schema,
    strict_json,
)
from gateway.sources.fitconnect.client import ApiError, SubmissionApi, TokenProvider
from gateway.sources.fitconnect.profile import PROFILES
from gateway.sources.fitconnect.schemas import SchemaIndex
from gateway.store.blobs import BlobStore
from gateway_sandbox.testing import running_sandbox

from .subscriber_helpers import REPO, sandbox_keys


@functools.lru_cache(maxsize=1)
def encryption_key() -> PrivateJWK:
    return load_private_jwk(sandbox_keys().encryption_private)  # the RSA consistency check takes ~0.3 s


SID = "0b0b0b0b-1111-4222-8333-444444444444"
AID = "0a0a0a0a-1111-4222-8333-555555555555"

# -- token cache -------------------------------------------------------------------------------------


async def test_token_renewed_before_expiry_with_a_controlled_clock() -> None:
    now = [1000.0]
    async with (
        running_sandbox(keys=sandbox_keys(), token_lifetime=600) as sandbox,
        aiohttp.ClientSession() as http,
    ):
        creds = sandbox.subscriber
        tokens = TokenProvider(
            lambda: http, sandbox.token_url, creds.client_id, creds.client_secret, clock=lambda: now[0]
        )
        first = await tokens.token()
        now[0] += 600 - 61  # a minute and a second before expiry: still cached
        assert await tokens.token() == first
        assert tokens.fetches == 1
        now[0] += 2  # within the last minute: renewed
        assert await tokens.token() != first
        assert tokens.fetches == 2
        tokens.invalidate("some-other-token")  # a stale 401 for an old token does not drop the new one
        assert tokens.fetches == 2
        assert await tokens.token()


async def test_short_token_lifetimes_renew_at_half_time() -> None:
    now = [0.0]
    async with running_sandbox(keys=sandbox_keys(), token_lifetime=60) as sandbox, aiohttp.ClientSession() as http:
        creds = sandbox.subscriber
        tokens = TokenProvider(
            lambda: http, sandbox.token_url, creds.client_id, creds.client_secret, clock=lambda: now[0]
        )
        await tokens.token()
        now[0] = 29.0
        await tokens.token()
        assert tokens.fetches == 1
        now[0] = 30.5
        await tokens.token()
        assert tokens.fetches == 2


async def test_token_errors_are_api_errors_without_the_secret() -> None:
    async with running_sandbox(keys=sandbox_keys()) as sandbox, aiohttp.ClientSession() as http:
        tokens = TokenProvider(lambda: http, sandbox.token_url, "subscriber-test", "wrong-secret-value")
        with pytest.raises(ApiError) as info:
            await tokens.token()
        assert info.value.status == 401
        assert "wrong-secret-value" not in str(info.value)
        tokens = TokenProvider(lambda: http, "http://127.0.0.1:9/token", "x", "y")
        with pytest.raises(ApiError, match="unreachable"):
            await tokens.token()


# -- streaming attachment receipt against a loopback server -------------------------------------------


class AttachmentServer:
    def __init__(self, body: bytes | Callable[[], bytes], status: int = 200, chunked: bool = False) -> None:
        self.body = body
        self.status = status
        self.chunked = chunked

    def app(self) -> web.Application:
        async def token(request: web.Request) -> web.Response:
            return web.json_response({"access_token": "t", "expires_in": 600, "token_type": "Bearer"})

        async def attachment(request: web.Request) -> web.StreamResponse:
            body = self.body() if callable(self.body) else self.body
            if self.status != 200:
                return web.json_response({"type": "x", "title": "broken"}, status=self.status)
            if not self.chunked:
                return web.Response(body=body, content_type="application/jose")
            resp = web.StreamResponse(headers={"Content-Type": "application/jose"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for i in range(0, len(body), 7001):
                await resp.write(body[i : i + 7001])
            await resp.write_eof()
            return resp

        app = web.Application()
        app.router.add_post("/token", token)
        app.router.add_get("/v1/submissions/{sid}/attachments/{aid}", attachment)
        return app


async def receive(
    tmp_path: Path, server: AttachmentServer, *, tag: str, sha: str, max_bytes: int = 1 << 20, inflated: int = 1 << 20
) -> Any:
    srv = TestServer(server.app())
    await srv.start_server()
    base = str(srv.make_url("")).rstrip("/")
    api = SubmissionApi(
        base_url=base, profile=PROFILES["v1"], tokens_for=lambda s: TokenProvider(s, base + "/token", "c", "s")
    )
    blobs = BlobStore(tmp_path / "blobs")
    blobs.open()
    keys = [encryption_key()]
    try:
        return await receive_attachment(
            api,
            blobs,
            keys,
            submission_id=SID,
            attachment_id=AID,
            expected_tag=tag,
            expected_sha512=sha,
            max_attachment_bytes=max_bytes,
            max_inflated_bytes=inflated,
        )
    finally:
        await api.close()
        await srv.close()


def encrypted(content: bytes, *, zip_def: bool = False) -> str:
    key = encryption_key()
    return encrypt_jwe(content, key.key.public_key(), kid=key.kid, cty="application/pdf", zip_def=zip_def)


def failure(exc: CheckFailed) -> tuple[str, str | None]:
    (problem,) = exc.problems
    return problem.type.removeprefix(PROBLEM_PREFIX), problem.instance


@pytest.mark.parametrize("chunked", [False, True])
async def test_attachment_streamed_into_an_uncommitted_blob(tmp_path: Path, chunked: bool) -> None:
    content = bytes(range(256)) * 3000
    jwe = encrypted(content)
    got = await receive(
        tmp_path,
        AttachmentServer(jwe.encode(), chunked=chunked),
        tag=jwe.rsplit(".", 1)[1],
        sha=hashlib.sha512(content).hexdigest(),
    )
    assert got.result.size == len(content)
    ref = got.writer.commit(name=f"attachment:{AID}", attachment_id=AID)
    assert ref.sha512 == hashlib.sha512(content).hexdigest()


async def test_zip_def_attachment_is_inflated_within_its_bound(tmp_path: Path) -> None:
    content = b"A" * (3 << 20)
    jwe = encrypted(content, zip_def=True)
    tag, sha = jwe.rsplit(".", 1)[1], hashlib.sha512(content).hexdigest()
    got = await receive(tmp_path, AttachmentServer(jwe.encode()), tag=tag, sha=sha, max_bytes=1 << 20, inflated=4 << 20)
    assert got.result.size == len(content)
    got.writer.abort()
    with pytest.raises(CheckFailed) as info:
        await receive(tmp_path, AttachmentServer(jwe.encode()), tag=tag, sha=sha, max_bytes=8 << 20, inflated=1 << 20)
    assert failure(info.value) == ("technical-error", f"attachment:{AID}")


@pytest.mark.parametrize(
    ("mangle", "expected"),
    [
        (lambda j: j.rsplit(".", 1)[0], "encryption-issue"),  # truncated: no tag segment
        (lambda j: j + ".extra", "encryption-issue"),  # six segments
        (lambda j: "eyJhbGciOiJub25lIn0" + j[j.index(".") :], "encryption-issue"),  # alg none
        (lambda j: j[:-3] + ("AAA" if not j.endswith("AAA") else "BBB"), "encryption-issue"),  # GCM tag broken
        (lambda j: "x" * 100, "encryption-issue"),  # not a JWE at all
    ],
    ids=["truncated", "six-segments", "alg-none", "bad-gcm-tag", "garbage"],
)
async def test_broken_attachment_jwe(tmp_path: Path, mangle: Callable[[str], str], expected: str) -> None:
    content = b"%PDF demo"
    jwe = encrypted(content)
    with pytest.raises(CheckFailed) as info:
        await receive(
            tmp_path,
            AttachmentServer(mangle(jwe).encode()),
            tag=jwe.rsplit(".", 1)[1],
            sha=hashlib.sha512(content).hexdigest(),
        )
    assert failure(info.value) == (expected, f"attachment:{AID}")
    assert not list((tmp_path / "blobs" / "tmp").glob("*.part"))  # the unauthenticated temp file is gone


async def test_attachment_over_the_bound_is_cut_off_while_streaming(tmp_path: Path) -> None:
    content = bytes(2 << 20)
    jwe = encrypted(content)
    with pytest.raises(CheckFailed) as info:
        await receive(tmp_path, AttachmentServer(jwe.encode(), chunked=True), tag="x", sha="0", max_bytes=1 << 20)
    assert failure(info.value) == ("technical-error", f"attachment:{AID}")
    assert not list((tmp_path / "blobs" / "tmp").glob("*.part"))


async def test_server_errors_are_retryable_not_rejections(tmp_path: Path) -> None:
    with pytest.raises(ApiError) as info:
        await receive(tmp_path, AttachmentServer(b"", status=503), tag="x", sha="0")
    assert info.value.status == 503
    assert not list((tmp_path / "blobs" / "tmp").glob("*.part"))


# -- checks ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"a": 1, "a": 2}', "duplicate"),
        (b'{"a": NaN}', "NaN"),
        (b'{"a": Infinity}', "Infinity"),
        (b"\xff{}", "UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nesting"),
        (b'{"a": ', "line 1"),
    ],
)
def test_strict_json(raw: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        strict_json(raw)


def test_metadata_schema_selection() -> None:
    supported = {"1.0.0": "id-1", "2.1.0": "id-2"}
    uri = "https://schema.fitko.de/fit-connect/metadata/{}/metadata.schema.json"
    info = metadata_schema({}, supported=supported, destination_versions=["1.0.0"], allow_missing=True)
    assert (info.version, info.assumed) == ("1.0.0", True)
    info = metadata_schema(
        {"$schema": uri.format("2.1.0")}, supported=supported, destination_versions=["2.1.0"], allow_missing=False
    )
    assert (info.version, info.schema_id, info.assumed) == ("2.1.0", "id-2", False)
    for metadata, versions, code in (
        ({}, ["1.0.0"], "missing-schema"),
        ({"$schema": 5}, ["1.0.0"], "unsupported-schema"),
        ({"$schema": "https://example.org/metadata.schema.json"}, ["1.0.0"], "unsupported-schema"),
        ({"$schema": uri.format("1.1.0")}, ["1.1.0"], "unsupported-schema"),
        ({"$schema": uri.format("2.1.0")}, ["1.0.0"], "unsupported-schema"),
    ):
        with pytest.raises(CheckFailed) as info_:
            metadata_schema(metadata, supported=supported, destination_versions=versions, allow_missing=False)
        assert failure(info_.value) == (code, "metadata")


def test_duplicate_attachment_ids_in_metadata() -> None:
    """The Python SDK 0.4.2 gave every attachment the same id: that is an attachments mismatch."""
    item = {"attachmentId": AID, "purpose": "attachment", "mimeType": "application/pdf", "hash": {"content": "0"}}
    metadata = {"contentStructure": {"attachments": [item, dict(item)]}}
    problems = consistency_problems(
        metadata=metadata,
        api_service=None,
        service=None,
        data_present=False,
        submission_attachments=[AID],
        tag_attachments=[AID],
        destination_reply_channels=None,
        schemas=SchemaIndex(),
        require_data_schemas=True,
    )
    assert [p.type.removeprefix(PROBLEM_PREFIX) for p in problems] == ["unsupported-service", "attachments-mismatch"]


def test_upstream_problems_keep_catalogue_types_and_wrap_the_rest() -> None:
    own = kind("data-hash-mismatch").problem("SHA-512 differs")
    routing = Problem("https://ozg-gateway.example/problems/no-route", "Message could not be routed", "no rule")
    out = upstream_problems([own, routing])
    assert out[0] == own.as_dict()
    assert out[1]["type"] == PROBLEM_PREFIX + "technical-error"
    assert "no-route" in out[1]["detail"]
    assert "instance" not in out[1]
    assert upstream_problems([])[0]["type"] == PROBLEM_PREFIX + "technical-error"


def test_catalogue_instances() -> None:
    assert kind("attachment-hash-mismatch").instance_for(AID.upper()) == f"attachment:{AID}"
    with pytest.raises(ValueError, match="attachment id"):
        kind("attachment-hash-mismatch").instance_for(None)
    assert kind("invalid-event-log").instance_for() is None
    assert {k.instance for k in CATALOGUE.values()} == set(InstanceKind)


def test_problem_docs_list_every_catalogue_entry() -> None:
    doc = (REPO / "docs" / "fitconnect-problems.md").read_text(encoding="utf-8")
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([a-z-]+)` \|.*$", doc, re.MULTILINE)}
    assert sorted(rows) == sorted(CATALOGUE)
    for code, entry in CATALOGUE.items():
        row = rows[code]
        assert f"`{entry.suffix}`" in row, code
        assert entry.title in row, code
        instance = {"none": "–", "metadata": "`metadata`", "data": "`data`", "attachment": "`attachment:<id>`"}
        assert instance[entry.instance.value] in row, code
        assert ("confirmed" if entry.confirmed else "unconfirmed") in row, code


def test_attachment_ids_must_be_uuids() -> None:
    """Ids end up in request paths: a non-UUID id is refused before any download."""
    bad = "../../destinations/x"
    item = {"attachmentId": bad, "purpose": "attachment", "mimeType": "application/pdf", "hash": {"content": "0"}}
    problems = consistency_problems(
        metadata={"contentStructure": {"attachments": [item]}},
        api_service=None,
        service=None,
        data_present=False,
        submission_attachments=[bad],
        tag_attachments=[bad],
        destination_reply_channels=None,
        schemas=SchemaIndex(),
        require_data_schemas=True,
    )
    assert [p.detail for p in problems if "attachments-mismatch" in p.type] == ["an attachment id is not a UUID"]
