"""Conformance: real requests and responses of a full sender + subscriber flow, error answers
included, validated with openapi-core against the official Submission API OpenAPI 1.1.3.

The specification is read from ``../shared`` (the test skips without it) and adjusted in memory only
where needed to validate at all:

* ``servers`` points at the loopback sandbox instead of the FITKO test system;
* the ``SecurityEventToken`` pattern ``\\w+\\.\\w+\\.\\w+`` is an erratum: it does not allow ``-``, which
  base64url (RFC 7515) uses, so almost every real SET (FITKO's included) would fail it. It is replaced
  by the base64url form ``^[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+$``; the test proves the
  erratum with a real SET first;
* ``application/jose`` bodies (compact JWE/JWS text) are read as ASCII strings and
  ``application/problem+json`` as JSON: openapi-core has no deserializer for these media types;
* the ``OAuth2`` (client credentials) security scheme is checked as what it means on the wire, an
  RFC 6750 bearer token (``type: http, scheme: bearer``): openapi-core cannot check ``oauth2``.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from werkzeug.datastructures import Headers, ImmutableMultiDict

from gateway.fitconnect.sets import REJECT_SUBMISSION, parse_set
from gateway_sandbox.testing import TEST_DESTINATION_ID, RunningSandbox, SandboxKeys
from gateway_sandbox.zustelldienst.config import Limits

from .sandbox_helpers import JOSE, Api, Resp, accept_set, create_body, jwe, sandbox_api, subscriber_set
from .test_replies_sandbox import complete_reply
from .test_sandbox_destinations import _public_jwk

pytestmark = pytest.mark.shared

SET_PATTERN_ERRATUM = r"\w+\.\w+\.\w+"
SET_PATTERN_FIXED = r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$"


@dataclass
class OARequest:
    host_url: str
    path: str
    method: str
    parameters: RequestParameters
    content_type: str
    body: bytes | None

    @property
    def full_url_pattern(self) -> str:
        return self.host_url + self.path


@dataclass
class OAResponse:
    status_code: int
    headers: Headers
    content_type: str
    data: bytes | None


def _load_spec(fitconnect_shared: Path, base_url: str) -> tuple[dict[str, Any], dict[str, Any]]:
    raw = yaml.safe_load((fitconnect_shared / "submission-api-1.1.3.yaml").read_text(encoding="utf-8"))
    assert raw["info"]["version"] == "1.1.3"
    adjusted = copy.deepcopy(raw)
    adjusted["servers"] = [{"url": base_url}]
    schema = adjusted["components"]["schemas"]["SecurityEventToken"]
    assert schema["pattern"] == SET_PATTERN_ERRATUM
    schema["pattern"] = SET_PATTERN_FIXED
    assert adjusted["components"]["securitySchemes"]["OAuth2"]["type"] == "oauth2"
    adjusted["components"]["securitySchemes"]["OAuth2"] = {"type": "http", "scheme": "bearer"}
    return raw, adjusted


def _openapi(spec: dict[str, Any]) -> OpenAPI:
    # Compact JOSE serialisations are plain ASCII text.
    config = Config(
        extra_media_type_deserializers={
            JOSE: lambda body, **_params: body.decode("ascii"),
            "application/problem+json": lambda body, **_params: json.loads(body),  # RFC 7807 JSON
        }
    )
    return OpenAPI.from_dict(spec, config=config)


class CheckedApi(Api):
    """Every call is validated against the specification: request and response."""

    def __init__(self, api: Api, openapi: OpenAPI) -> None:
        super().__init__(api.sb, api.http)
        self._tokens = api._tokens
        self.openapi = openapi
        self.checked: list[tuple[str, str, int]] = []

    async def call(  # type: ignore[override]
        self,
        method: str,
        path: str,
        *,
        request_valid: bool = True,
        **kw: Any,
    ) -> Resp:
        resp = await super().call(method, path, **kw)
        request = self._request(method, path, kw)
        if request_valid:
            self.openapi.validate_request(request)
        else:  # a deliberately wrong request: the specification must refuse it too
            with pytest.raises(Exception):  # noqa: B017 - openapi-core raises several error types
                self.openapi.validate_request(request)
        headers = Headers(list(resp.headers.items()))
        self.openapi.validate_response(
            request, OAResponse(resp.status, headers, resp.headers.get("Content-Type", "").lower(), resp.body)
        )
        self.checked.append((method, re.sub(r"[0-9a-f-]{36}", "{id}", urlsplit(path).path), resp.status))
        return resp

    def _request(self, method: str, path: str, kw: dict[str, Any]) -> OARequest:
        parts = urlsplit(path)
        headers: dict[str, str] = dict(kw.get("headers") or {})
        token = kw.get("token")
        if kw.get("auth") is not None:
            token = self._tokens[kw["auth"]]
        if token:
            headers["Authorization"] = f"Bearer {token}"
        body: bytes | None = None
        content_type = kw.get("content_type") or ""
        if kw.get("json_body") is not None:
            body = json.dumps(kw["json_body"]).encode()
            content_type = content_type or "application/json"
        elif kw.get("data") is not None:
            data = kw["data"]
            body = data.encode() if isinstance(data, str) else data
        if content_type:
            headers["Content-Type"] = content_type
        return OARequest(
            host_url=self.sb.base_url,
            path=parts.path,
            method=method.lower(),
            parameters=RequestParameters(
                query=ImmutableMultiDict(parse_qsl(parts.query)), header=Headers(list(headers.items()))
            ),
            content_type=content_type.lower(),
            body=body,
        )


async def test_the_set_pattern_erratum_is_real(fitconnect_shared: Path) -> None:
    """Why the pattern is adjusted: the unanchored \\w pattern cannot match base64url containing '-'."""
    token = "eyJhbGciOiJQUzUxMiJ9.eyJpc3MiOiJ4LXkifQ.abc-def"  # payload {"iss":"x-y"}; '-' in the signature
    assert re.search(SET_PATTERN_ERRATUM, token) is not None  # unanchored: a partial match passes ...
    with_dash_in_payload = "eyJhbGciOiJQUzUxMiJ9.eyJ-IjoxfQ.sig"
    assert re.search(SET_PATTERN_ERRATUM, with_dash_in_payload) is None  # ... but not '-' in the middle
    assert re.match(SET_PATTERN_FIXED, with_dash_in_payload)


async def test_full_flow_conforms_to_openapi_1_1_3(
    fitconnect_shared: Path, fitconnect_sandbox_keys: SandboxKeys, second_key: RSAPrivateKey
) -> None:
    keys = fitconnect_sandbox_keys
    async with sandbox_api(keys, limits=Limits(max_attachment_bytes=4000)) as plain:
        sb: RunningSandbox = plain.sb
        raw, adjusted = _load_spec(fitconnect_shared, sb.base_url)
        openapi = _openapi(adjusted)
        sb.add_client("ssp", "s3cret", [f"manage:destination:{TEST_DESTINATION_ID}"])
        sb.add_client("elsewhere", "s3cret", ["send:region:DE05"])
        for who in ("sender", "subscriber", "ssp", "elsewhere"):
            await plain.token(who)
        api = CheckedApi(plain, openapi)
        dest = f"/v1/destinations/{TEST_DESTINATION_ID}"

        # --- technical
        await api.call("GET", "/v1/info")
        await api.call("GET", "/.well-known/jwks.json")

        # --- sender
        r = await api.call("GET", dest, auth="sender")
        assert r.status == 200
        kid = r.json["encryptionKid"]
        assert (await api.call("GET", f"{dest}/keys/{kid}")).status == 200
        assert (await api.call("GET", f"{dest}/keys/{keys.signing_kid}")).status == 200
        aid, other_aid = str(uuid.uuid4()), str(uuid.uuid4())
        body = create_body([aid, other_aid], callback={"url": "https://onlinedienst.example/cb", "secret": "s" * 40})
        r = await api.call("POST", "/v1/submissions", auth="sender", json_body=body)
        assert r.status == 201
        sid, cid = r.json["submissionId"], r.json["caseId"]
        attachment = jwe(keys, b"attachment", "application/pdf")
        for a in (aid, other_aid):
            r = await api.call(
                "PUT", f"/v1/submissions/{sid}/attachments/{a}", auth="sender", data=attachment, content_type=JOSE
            )
            assert r.status == 204
        metadata, data = jwe(keys, b"{}"), jwe(keys, b'{"x": 1}')
        r = await api.call(
            "PUT",
            f"/v1/submissions/{sid}",
            auth="sender",
            json_body={"encryptedMetadata": metadata, "encryptedData": data},
        )
        assert r.status == 202
        assert (await api.call("GET", f"/v1/cases/{cid}/events", auth="sender")).status == 200

        # --- subscriber
        assert (await api.call("GET", dest, auth="subscriber")).status == 200
        assert (await api.call("GET", "/v1/destinations", auth="subscriber")).status == 200
        r = await api.call(
            "GET", f"/v1/submissions?destinationId={TEST_DESTINATION_ID}&limit=10&offset=0", auth="subscriber"
        )
        assert r.json["totalCount"] == 1
        assert (await api.call("GET", "/v1/submissions", auth="subscriber")).status == 200
        assert (await api.call("GET", f"/v1/submissions/{sid}", auth="subscriber")).status == 200
        r = await api.call("GET", f"/v1/submissions/{sid}/attachments/{aid}", auth="subscriber")
        assert r.status == 200
        r = await api.call("GET", f"/v1/cases/{cid}/events?limit=50&offset=0", auth="subscriber")
        assert len(r.json["eventLog"]) == 2
        sent_tags = {
            "metadata": metadata.rsplit(".", 1)[1],
            "data": data.rsplit(".", 1)[1],
            "attachments": {a: attachment.rsplit(".", 1)[1] for a in (aid, other_aid)},
        }
        from .sandbox_helpers import Sent

        sent = Sent(sid, cid, [aid, other_aid], sent_tags)
        bad_set = accept_set(keys, sent, issuer=str(uuid.uuid4()))
        r = await api.call("POST", f"/v1/cases/{cid}/events", auth="subscriber", data=bad_set, content_type=JOSE)
        assert r.status == 422
        r = await api.call(
            "POST", f"/v1/cases/{cid}/events", auth="subscriber", data=accept_set(keys, sent), content_type=JOSE
        )
        assert r.status == 204
        r = await api.call(
            "POST", f"/v1/cases/{cid}/events", auth="subscriber", data=accept_set(keys, sent), content_type=JOSE
        )
        assert r.status == 409
        assert (await api.call("GET", f"/v1/submissions/{sid}", auth="subscriber")).status == 404
        assert (await api.call("GET", f"/v1/submissions/{sid}/attachments/{aid}", auth="subscriber")).status == 404
        r = await api.call("GET", f"/v1/cases/{cid}/events", auth="sender")
        assert len(r.json["eventLog"]) == 3

        # --- a reply in the case (the gateway's reply profile, not in the spec): the case's log, now
        # holding reply SETs (sub reply:<id>) too, still conforms to EventLog
        await complete_reply(Api(api.sb, api.http), cid, attachments=0)
        r = await api.call("GET", f"/v1/cases/{cid}/events", auth="subscriber")
        assert parse_set(r.json["eventLog"][-1]).reply_id is not None

        # --- destination management (rollover)
        new_jwk = _public_jwk(second_key, "7a1b2c3d-0000-4000-8000-00000000beef")
        r = await api.call("POST", f"{dest}/keys", auth="ssp", json_body=new_jwk)
        assert r.status == 201
        r = await api.call("PATCH", dest, auth="ssp", json_body={"encryptionKid": new_jwk["kid"]})
        assert r.status == 200

        # --- error answers (only statuses the specification lists for the endpoint)
        assert (await api.call("GET", dest, request_valid=False)).status == 401  # no token: refused by the spec too
        assert (await api.call("GET", dest, auth="elsewhere")).status == 403
        assert (await api.call("GET", f"/v1/destinations/{uuid.uuid4()}", auth="sender")).status == 404
        assert (await api.call("GET", f"{dest}/keys/no-such-key")).status == 404
        assert (await api.call("GET", "/v1/submissions", auth="sender")).status == 403
        assert (await api.call("GET", f"/v1/cases/{uuid.uuid4()}/events", auth="subscriber")).status == 404
        r = await api.call("POST", "/v1/submissions", json_body=create_body([]), request_valid=False)
        assert r.status == 401
        r = await api.call("POST", "/v1/submissions", auth="elsewhere", json_body=create_body([]))
        assert r.status == 403
        r = await api.call(
            "POST", "/v1/submissions", auth="sender", json_body={**create_body([]), "destinationId": str(uuid.uuid4())}
        )
        assert r.status == 404
        r = await api.call(
            "POST", "/v1/submissions", auth="sender", json_body={"destinationId": "x"}, request_valid=False
        )
        assert r.status == 400
        many = [str(uuid.uuid4()) for _ in range(101)]
        r = await api.call("POST", "/v1/submissions", auth="sender", json_body=create_body(many))
        assert r.status == 413
        r = await api.call("POST", "/v1/submissions", auth="sender", json_body=create_body([aid]))
        sid2 = r.json["submissionId"]
        put = f"/v1/submissions/{sid2}/attachments/{aid}"
        r = await api.call("PUT", put, auth="sender", data=attachment, content_type="text/plain", request_valid=False)
        assert r.status == 415
        r = await api.call(
            "PUT", f"/v1/submissions/{sid2}/attachments/{other_aid}", auth="sender", data=attachment, content_type=JOSE
        )
        assert r.status == 422
        r = await api.call("PUT", put, auth="sender", data="not base64url!", content_type=JOSE, request_valid=False)
        assert r.status == 400
        big = jwe(keys, b"b" * 4000)
        r = await api.call("PUT", put, auth="sender", data=big, content_type=JOSE)
        assert r.status == 413
        r = await api.call("PUT", f"/v1/submissions/{sid2}", auth="sender", json_body={"encryptedMetadata": metadata})
        assert r.status == 422
        r = await api.call(
            "PUT", f"/v1/submissions/{uuid.uuid4()}", auth="sender", json_body={"encryptedMetadata": metadata}
        )
        assert r.status == 404
        r = await api.call(
            "PUT", f"/v1/submissions/{sid2}", auth="sender", data="{}", content_type="text/plain", request_valid=False
        )
        assert r.status == 415
        reject = subscriber_set(keys, sent, REJECT_SUBMISSION, {"problems": [{"type": "urn:x", "title": "x"}]})
        r = await api.call("POST", f"/v1/cases/{cid}/events", auth="sender", data=reject, content_type=JOSE)
        assert r.status == 403
        r = await api.call(
            "POST", f"/v1/cases/{uuid.uuid4()}/events", auth="subscriber", data=reject, content_type=JOSE
        )
        assert r.status == 404
        r = await api.call("PATCH", dest, auth="subscriber", json_body={"status": "inactive"})
        assert r.status == 403
        r = await api.call("PATCH", dest, auth="ssp", json_body={"status": "inactive"})
        assert r.status == 200
        r = await api.call("POST", "/v1/submissions", auth="sender", json_body=create_body([]))
        assert r.status == 422

        # Every operation a sender or subscriber uses was exercised.
        operations = {(m, p) for m, p, _ in api.checked}
        for expected in (
            ("GET", "/v1/info"),
            ("GET", "/.well-known/jwks.json"),
            ("GET", "/v1/destinations"),
            ("GET", "/v1/destinations/{id}"),
            ("PATCH", "/v1/destinations/{id}"),
            ("POST", "/v1/destinations/{id}/keys"),
            ("POST", "/v1/submissions"),
            ("GET", "/v1/submissions"),
            ("GET", "/v1/submissions/{id}"),
            ("PUT", "/v1/submissions/{id}"),
            ("GET", "/v1/submissions/{id}/attachments/{id}"),
            ("PUT", "/v1/submissions/{id}/attachments/{id}"),
            ("GET", "/v1/cases/{id}/events"),
            ("POST", "/v1/cases/{id}/events"),
        ):
            assert expected in operations, expected
        assert any(p.startswith("/v1/destinations/{id}/keys/") for _, p in operations)
        statuses = {s for _, _, s in api.checked}
        assert statuses >= {200, 201, 202, 204, 400, 401, 403, 404, 409, 413, 415, 422}
        assert raw["servers"][0]["url"] != sb.base_url  # the original file is untouched


async def test_a_nonconforming_response_would_be_caught(fitconnect_shared: Path) -> None:
    """The validator is not a rubber stamp: a response missing required fields fails."""
    _, adjusted = _load_spec(fitconnect_shared, "http://127.0.0.1:1")
    openapi = _openapi(adjusted)
    request = OARequest(
        "http://127.0.0.1:1",
        f"/v1/submissions/{uuid.uuid4()}",
        "get",
        RequestParameters(header=Headers([("Authorization", "Bearer x")])),
        "",
        None,
    )
    bad = OAResponse(200, Headers([("Content-Type", "application/json")]), "application/json", b'{"submissionId": "x"}')
    with pytest.raises(Exception):  # noqa: B017
        openapi.validate_response(request, bad)
    good_problem = b'{"type": "https://schema.fitko.de/x", "title": "t", "status": 404}'
    openapi.validate_response(request, OAResponse(404, Headers(), "application/problem+json", good_problem))
    with pytest.raises(Exception):  # noqa: B017 - status 418 is not in the specification
        openapi.validate_response(request, OAResponse(418, Headers(), "application/problem+json", good_problem))
    _ = aiohttp  # the real traffic above goes through aiohttp's client
