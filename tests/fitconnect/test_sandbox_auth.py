"""Sandbox: OAuth token endpoint, bearer checks (401) and scopes (403)."""

from __future__ import annotations

import base64

import aiohttp

from gateway.fitconnect.jose import parse_jws
from gateway_sandbox.testing import BAU_SERVICE, GEWERBE_SERVICE, TEST_DESTINATION_ID, RunningSandbox
from gateway_sandbox.zustelldienst.scopes import URI_SEND, URI_SUBSCRIBE

from .sandbox_helpers import Api, api_fixture, create_body  # noqa: F401  (api_fixture provides the api fixture)

DEST = f"/v1/destinations/{TEST_DESTINATION_ID}"


async def _token_request(sb: RunningSandbox, data: dict[str, str] | str, headers: dict[str, str] | None = None):
    async with aiohttp.ClientSession() as http, http.post(sb.token_url, data=data, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.json()


async def test_token_client_secret_post(fitconnect_sandbox: RunningSandbox) -> None:
    sb = fitconnect_sandbox
    status, headers, body = await _token_request(
        sb, {"grant_type": "client_credentials", "client_id": "sender-test", "client_secret": "sender-test-secret"}
    )
    assert status == 200
    assert headers["Cache-Control"] == "no-store"
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 1800
    assert body["scope"] == "send:region:DE"
    jwt = parse_jws(body["access_token"])  # a signed JWT like the real authorisation server's
    assert jwt.header["typ"] == "at+jwt"
    assert jwt.header["alg"] == "PS512"
    assert jwt.payload["sub"] == "sender-test"
    assert jwt.payload["iss"] == sb.base_url
    assert jwt.payload["exp"] - jwt.payload["iat"] == 1800


async def test_token_http_basic(fitconnect_sandbox: RunningSandbox) -> None:
    sb = fitconnect_sandbox
    basic = base64.b64encode(b"subscriber-test:subscriber-test-secret").decode()
    status, _, body = await _token_request(
        sb, {"grant_type": "client_credentials"}, headers={"Authorization": f"Basic {basic}"}
    )
    assert status == 200
    assert body["scope"] == f"subscribe:destination:{TEST_DESTINATION_ID}"


async def test_token_errors(fitconnect_sandbox: RunningSandbox) -> None:
    sb = fitconnect_sandbox
    good = {"grant_type": "client_credentials", "client_id": "sender-test", "client_secret": "sender-test-secret"}
    status, headers, body = await _token_request(sb, {**good, "client_secret": "wrong"})
    assert (status, body["error"]) == (401, "invalid_client")
    assert "WWW-Authenticate" in headers
    status, _, body = await _token_request(sb, {**good, "client_id": "nobody"})
    assert (status, body["error"]) == (401, "invalid_client")
    status, _, body = await _token_request(sb, {"grant_type": "client_credentials"})
    assert (status, body["error"]) == (401, "invalid_client")
    status, _, body = await _token_request(sb, {**good, "grant_type": "password"})
    assert (status, body["error"]) == (400, "unsupported_grant_type")
    status, _, body = await _token_request(sb, {k: v for k, v in good.items() if k != "grant_type"})
    assert (status, body["error"]) == (400, "invalid_request")
    status, _, body = await _token_request(sb, {**good, "scope": "subscribe:destination:" + TEST_DESTINATION_ID})
    assert (status, body["error"]) == (400, "invalid_scope")
    status, _, body = await _token_request(sb, "grant_type=client_credentials&grant_type=client_credentials")
    assert (status, body["error"]) == (400, "invalid_request")
    status, _, body = await _token_request(
        sb, '{"grant_type": "client_credentials"}', headers={"Content-Type": "application/json"}
    )
    assert (status, body["error"]) == (400, "invalid_request")
    # A client without any assigned scope (no destination linked in the portal) gets invalid_scope.
    sb.add_client("unlinked", "unlinked-secret", [])
    status, _, body = await _token_request(
        sb, {"grant_type": "client_credentials", "client_id": "unlinked", "client_secret": "unlinked-secret"}
    )
    assert (status, body["error"]) == (400, "invalid_scope")


async def test_requested_scope_subset_is_granted(fitconnect_sandbox: RunningSandbox, api: Api) -> None:
    sb = fitconnect_sandbox
    sb.add_client("both", "both-secret", ["send:region:DE", f"subscribe:destination:{TEST_DESTINATION_ID}"])
    token = await sb.token("both", scope="send:region:DE")
    # Only the requested scope is in the token: the pickup list needs subscribe and is forbidden.
    r = await api.call("GET", "/v1/submissions", token=token)
    r.problem(403, "forbidden")
    r = await api.call("GET", DEST, token=token)
    assert r.status == 200
    assert "contactInformation" not in r.json


async def test_401_without_unknown_and_expired_tokens(fitconnect_sandbox: RunningSandbox, api: Api) -> None:
    sb = fitconnect_sandbox
    r = await api.call("GET", DEST)
    body = r.problem(401, "unauthorized")
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert body["instance"] == sb.base_url + DEST
    r = await api.call("GET", DEST, headers={"Authorization": "Basic Zm9vOmJhcg=="})
    r.problem(401, "unauthorized")
    r = await api.call("GET", DEST, token="not.a.token")
    r.problem(401, "unauthorized")
    forged = await sb.token(sb.sender)
    head, payload, sig = forged.split(".")
    r = await api.call("GET", DEST, token=f"{head}.{payload}.{sig[:-4]}AAAA")
    r.problem(401, "unauthorized")
    # Expiry follows the sandbox clock.
    token = await sb.token(sb.sender)
    assert (await api.call("GET", DEST, token=token)).status == 200
    sb.advance(1799)
    assert (await api.call("GET", DEST, token=token)).status == 200
    sb.advance(2)
    r = await api.call("GET", DEST, token=token)
    assert r.problem(401, "unauthorized")["detail"] == "token expired"
    assert (await api.call("GET", DEST, token=await sb.token(sb.sender))).status == 200


async def test_token_lifetime_is_configurable(fitconnect_sandbox_keys) -> None:  # type: ignore[no-untyped-def]
    from gateway_sandbox.testing import running_sandbox

    async with running_sandbox(keys=fitconnect_sandbox_keys, token_lifetime=5) as sb:
        status, _, body = await _token_request(
            sb, {"grant_type": "client_credentials", "client_id": "sender-test", "client_secret": "sender-test-secret"}
        )
        assert status == 200
        assert body["expires_in"] == 5


async def test_revoked_tokens_are_refused(fitconnect_sandbox: RunningSandbox, api: Api) -> None:
    token = await fitconnect_sandbox.token(fitconnect_sandbox.sender)
    r = await api.call("POST", "/_sandbox/tokens/revoke")
    assert r.status == 204
    (await api.call("GET", DEST, token=token)).problem(401, "unauthorized")


async def test_403_outside_scopes(fitconnect_sandbox: RunningSandbox, api: Api) -> None:
    sb = fitconnect_sandbox
    sb.add_client("other-region", "s3cret", ["send:region:DE05"])  # NRW: does not overlap DE09162000
    sb.add_client("munich", "s3cret", ["send:region:DE09"])  # Bavaria covers Munich
    sb.add_client(
        "bau-only", "s3cret", [f"send:region:DE09162000+send:service:{BAU_SERVICE}"]
    )  # region + service scope
    sb.add_client("other-dest", "s3cret", ["subscribe:destination:00000000-0000-4000-8000-000000000000"])
    r = await api.call("GET", DEST, auth="other-region")
    r.problem(403, "forbidden")
    r = await api.call("GET", DEST, auth="other-dest")
    r.problem(403, "forbidden")
    assert (await api.call("GET", DEST, auth="munich")).status == 200
    r = await api.call("POST", "/v1/submissions", auth="other-region", json_body=create_body([]))
    r.problem(403, "forbidden")
    r = await api.call("POST", "/v1/submissions", auth="bau-only", json_body=create_body([], service=GEWERBE_SERVICE))
    r.problem(403, "forbidden")
    r = await api.call("POST", "/v1/submissions", auth="bau-only", json_body=create_body([], service=BAU_SERVICE))
    assert r.status == 201
    # A subscriber cannot send, a sender cannot pick up.
    r = await api.call("POST", "/v1/submissions", auth="subscriber", json_body=create_body([]))
    r.problem(403, "forbidden")
    r = await api.call("GET", "/v1/submissions", auth="sender")
    r.problem(403, "forbidden")
    r = await api.call("GET", f"/v1/submissions?destinationId={TEST_DESTINATION_ID}", auth="other-dest")
    r.problem(403, "forbidden")


async def test_uri_style_scopes_apply_to_linked_destinations(fitconnect_sandbox: RunningSandbox, api: Api) -> None:
    sb = fitconnect_sandbox
    sb.add_client("uri-sub", "s3cret", [URI_SUBSCRIBE], destinations=(TEST_DESTINATION_ID,))
    sb.add_client("uri-sub-unlinked", "s3cret", [URI_SUBSCRIBE])
    sb.add_client("uri-send", "s3cret", [URI_SEND])
    r = await api.call("GET", DEST, auth="uri-sub")
    assert r.status == 200
    assert "contactInformation" in r.json
    (await api.call("GET", DEST, auth="uri-sub-unlinked")).problem(403, "forbidden")
    r = await api.call("GET", DEST, auth="uri-send")
    assert r.status == 200
    assert "contactInformation" not in r.json
    r = await api.call("GET", "/v1/submissions", auth="uri-sub")
    assert r.status == 200
    assert r.json["totalCount"] == 0
