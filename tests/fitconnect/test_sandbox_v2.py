"""Sandbox: the optional v2 profile (paths /v2, publicService, 200 on submit, strict JWE headers)."""

from __future__ import annotations

import uuid

import aiohttp

from gateway.fitconnect.jose import b64url_encode, encrypt_jwe
from gateway.fitconnect.sets import SUBMIT_SUBMISSION, parse_set
from gateway_sandbox.testing import GEWERBE_SERVICE, TEST_DESTINATION_ID, RunningSandbox, SandboxKeys

from .sandbox_helpers import (  # noqa: F401  (api_fixture provides the api fixture)
    JOSE,
    Api,
    Sent,
    accept_set,
    api_fixture,
    encryption_public_key,
    jwe,
    sandbox_api,
)

SERVICE = {"name": "Gewerbeanmeldung", "identifier": GEWERBE_SERVICE}


def _jwe(keys: SandboxKeys, plaintext: bytes, *, cty: str | None, zip_def: bool = False) -> str:
    return encrypt_jwe(plaintext, encryption_public_key(keys), kid=keys.encryption_kid, cty=cty, zip_def=zip_def)


async def test_v2_flow(fitconnect_sandbox: RunningSandbox, api: Api) -> None:
    sb = fitconnect_sandbox
    keys = sb.keys
    assert keys is not None
    r = await api.call("GET", f"/v2/destinations/{TEST_DESTINATION_ID}", auth="sender")
    assert r.status == 200
    assert "services" not in r.json
    assert next(s["identifier"] for s in r.json["publicServices"]) == GEWERBE_SERVICE
    aid = str(uuid.uuid4())
    body = {
        "destinationId": TEST_DESTINATION_ID,
        "announcedAttachments": [aid],
        "publicService": SERVICE,
        "region": "DE09162000",
    }
    r = await api.call("POST", "/v2/submissions", auth="sender", json_body=body)
    assert r.status == 201
    assert set(r.json) == {"submissionId", "caseId"}
    sid, cid = r.json["submissionId"], r.json["caseId"]
    attachment = _jwe(keys, b"%PDF", cty="application/pdf")
    r = await api.call(
        "PUT", f"/v2/submissions/{sid}/attachments/{aid}", auth="sender", data=attachment, content_type=JOSE
    )
    assert r.status == 204
    metadata = _jwe(keys, b"{}", cty="application/json")
    data = _jwe(keys, b"<antrag/>", cty="application/xml")
    r = await api.call(
        "PUT", f"/v2/submissions/{sid}", auth="sender", json_body={"encryptedMetadata": metadata, "encryptedData": data}
    )
    assert r.status == 200  # v1: 202
    assert r.json["publicService"] == SERVICE
    assert "serviceType" not in r.json
    # The subscriber side, v2 paths.
    r = await api.call("GET", f"/v2/submissions?destinationId={TEST_DESTINATION_ID}", auth="subscriber")
    assert r.json["submissions"][0]["submissionId"] == sid
    r = await api.call("GET", f"/v2/submissions/{sid}", auth="subscriber")
    assert r.json["publicService"] == SERVICE
    assert r.json["encryptedData"] == data
    r = await api.call("GET", f"/v2/submissions/{sid}/attachments/{aid}", auth="subscriber")
    assert r.body.decode() == attachment
    r = await api.call("GET", f"/v2/submissions/{sid}/events", auth="subscriber")
    assert [parse_set(t).event for t in r.json["eventLog"]][-1] == SUBMIT_SUBMISSION
    tags = {
        "metadata": metadata.rsplit(".", 1)[1],
        "data": data.rsplit(".", 1)[1],
        "attachments": {aid: attachment.rsplit(".", 1)[1]},
    }
    token = accept_set(keys, Sent(sid, cid, [aid], tags))
    r = await api.call("POST", f"/v2/cases/{cid}/events", auth="subscriber", data=token, content_type=JOSE)
    assert r.status == 204
    # The same submission seen through v1.
    r = await api.call("GET", f"/v1/cases/{cid}/events", auth="sender")
    assert r.json["totalCount"] == 3
    assert (await api.call("GET", "/v2/info")).status == 200


async def test_v2_submission_events_only_show_that_submission(fitconnect_sandbox: RunningSandbox, api: Api) -> None:
    keys = fitconnect_sandbox.keys
    assert keys is not None
    created = []
    for case_id in (None, "same"):
        body = {"destinationId": TEST_DESTINATION_ID, "announcedAttachments": [], "publicService": SERVICE}
        if case_id:
            body["caseId"] = created[0][1]
        r = await api.call("POST", "/v2/submissions", auth="sender", json_body=body)
        created.append((r.json["submissionId"], r.json["caseId"]))
    r = await api.call("GET", f"/v2/submissions/{created[1][0]}/events", auth="sender")
    assert r.json["totalCount"] == 1
    assert parse_set(r.json["eventLog"][0]).submission_id == created[1][0]
    r = await api.call("GET", f"/v1/cases/{created[0][1]}/events", auth="sender")
    assert r.json["totalCount"] == 2
    assert (await api.call("GET", f"/v1/submissions/{created[0][0]}/events", auth="sender")).status == 404  # v2 only


async def test_v2_rules(fitconnect_sandbox: RunningSandbox, api: Api) -> None:
    sb = fitconnect_sandbox
    keys = sb.keys
    assert keys is not None
    v1_body = {"destinationId": TEST_DESTINATION_ID, "announcedAttachments": [], "serviceType": SERVICE}
    r = await api.call("POST", "/v2/submissions", auth="sender", json_body=v1_body)
    assert "publicService is required" in r.problem(400, "invalid-request")["detail"]
    body = {"destinationId": TEST_DESTINATION_ID, "announcedAttachments": [str(uuid.uuid4())], "publicService": SERVICE}
    (await api.call("POST", "/v2/submissions", auth="sender", json_body={**body, "region": "09"})).problem(
        400, "invalid-request"
    )
    r = await api.call("POST", "/v2/submissions", auth="sender", json_body=body)
    sid, aid = r.json["submissionId"], body["announcedAttachments"][0]
    zipped = _jwe(keys, b"x" * 100, cty="application/pdf", zip_def=True)
    r = await api.call("PUT", f"/v2/submissions/{sid}/attachments/{aid}", auth="sender", data=zipped, content_type=JOSE)
    assert "'zip'" in r.problem(422, "invalid-jwe")["detail"]
    ok = _jwe(keys, b"x", cty=None)  # attachments need no cty
    r = await api.call("PUT", f"/v2/submissions/{sid}/attachments/{aid}", auth="sender", data=ok, content_type=JOSE)
    assert r.status == 204
    for metadata in (
        _jwe(keys, b"{}", cty=None),
        _jwe(keys, b"{}", cty="text/plain"),
        jwe(keys, b"{}", "application/pdf"),
    ):
        r = await api.call("PUT", f"/v2/submissions/{sid}", auth="sender", json_body={"encryptedMetadata": metadata})
        assert "Invalid JWE Header 'cty'" in r.problem(422, "invalid-jwe")["detail"]
    garbage_header = b64url_encode(b"not json") + "." + ".".join(jwe(keys, b"{}").split(".")[1:])
    r = await api.call("PUT", f"/v2/submissions/{sid}", auth="sender", json_body={"encryptedMetadata": garbage_header})
    r.problem(422, "invalid-jwe")
    # The same JWE without cty is fine on v1 (the v1 ZSD stores JWEs opaquely).
    v1 = await api.call("POST", "/v1/submissions", auth="sender", json_body=v1_body)
    r = await api.call(
        "PUT",
        f"/v1/submissions/{v1.json['submissionId']}",
        auth="sender",
        json_body={"encryptedMetadata": _jwe(keys, b"{}", cty=None)},
    )
    assert r.status == 202
    # v2 needs a User-Agent (the real system's bot filter answers 403).
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{sb.base_url}/v2/destinations/{TEST_DESTINATION_ID}",
            headers={"Authorization": f"Bearer {await api.token('sender')}"},
            skip_auto_headers=["User-Agent"],
        ) as resp,
    ):
        assert resp.status == 403
        assert "User-Agent" in (await resp.json())["detail"]
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{sb.base_url}/v1/destinations/{TEST_DESTINATION_ID}",
            headers={"Authorization": f"Bearer {await api.token('sender')}"},
            skip_auto_headers=["User-Agent"],
        ) as resp,
    ):
        assert resp.status == 200  # v1 does not care


async def test_v2_can_be_switched_off(fitconnect_sandbox_keys: SandboxKeys) -> None:
    async with sandbox_api(fitconnect_sandbox_keys, api_versions=("v1",)) as api:
        (await api.call("GET", "/v2/info")).problem(404, "not-found")
        assert (await api.call("GET", "/v1/info")).status == 200
