"""Sandbox: the submission lifecycle and every error the sender and pickup endpoints answer."""

from __future__ import annotations

import os
import tracemalloc
import uuid
from collections.abc import AsyncIterator

import pytest

from gateway.fitconnect.jose import b64url_encode, decrypt_jwe
from gateway.fitconnect.keys import load_private_jwk
from gateway_sandbox.testing import BAU_SERVICE, TEST_DESTINATION_ID, RunningSandbox, SandboxKeys
from gateway_sandbox.zustelldienst.config import Limits

from .sandbox_helpers import (  # noqa: F401  (api_fixture provides the api fixture)
    JOSE,
    Api,
    accept_set,
    api_fixture,
    create,
    create_body,
    jwe,
    sandbox_api,
    send,
)

SECRET = "insecure_unsafe_qHScgrg_kP-R31jHUwp3GkVkGJolvBchz65b74Lzue0"


async def test_full_flow(fitconnect_sandbox: RunningSandbox, api: Api) -> None:
    sb = fitconnect_sandbox
    keys = sb.keys
    assert keys is not None
    callback = {"url": "https://onlinedienst.example/callback", "secret": SECRET}
    sid, cid, (aid,) = await create(api, 1, callback=callback)
    assert [e.event_name for e in sb.events(cid)] == ["create-submission"]
    assert sb.submission_status(sid) == "incomplete"
    attachment = jwe(keys, b"%PDF-1.7 test", "application/pdf")
    r = await api.call(
        "PUT", f"/v1/submissions/{sid}/attachments/{aid}", auth="sender", data=attachment, content_type=JOSE
    )
    assert r.status == 204
    assert r.body == b""
    metadata, data = jwe(keys, b'{"contentStructure": {"attachments": []}}'), jwe(keys, b'{"a": 1}')
    r = await api.call(
        "PUT", f"/v1/submissions/{sid}", auth="sender", json_body={"encryptedMetadata": metadata, "encryptedData": data}
    )
    assert r.status == 202
    assert r.json == {
        "destinationId": TEST_DESTINATION_ID,
        "submissionId": sid,
        "caseId": cid,
        "attachments": [aid],
        "serviceType": {"name": "Gewerbeanmeldung", "identifier": "urn:de:fim:leika:leistung:99050012104000"},
        "callback": {"url": "https://onlinedienst.example/callback"},  # the secret is never shown
    }
    # Subscriber side.
    r = await api.call("GET", "/v1/submissions", auth="subscriber")
    assert r.json == {
        "count": 1,
        "offset": 0,
        "totalCount": 1,
        "submissions": [{"destinationId": TEST_DESTINATION_ID, "submissionId": sid, "caseId": cid}],
    }
    r = await api.call("GET", f"/v1/submissions/{sid}", auth="subscriber")
    assert r.status == 200
    assert r.json["encryptedMetadata"] == metadata
    assert r.json["encryptedData"] == data
    assert r.json["attachments"] == [aid]
    r = await api.call("GET", f"/v1/submissions/{sid}/attachments/{aid}", auth="subscriber")
    assert r.status == 200
    assert r.content_type == JOSE
    assert r.body.decode() == attachment
    private = load_private_jwk(keys.encryption_private)
    assert decrypt_jwe(r.body.decode(), [private]).plaintext == b"%PDF-1.7 test"
    events = sb.events(cid)
    assert [e.event_name for e in events] == ["create-submission", "submit-submission"]
    assert events[1].payload == {
        "authenticationTags": {
            "metadata": metadata.rsplit(".", 1)[1],
            "data": data.rsplit(".", 1)[1],
            "attachments": {aid: attachment.rsplit(".", 1)[1]},
        }
    }
    # Uppercase UUIDs (as in the spec's examples) name the same submission.
    r = await api.call("GET", f"/v1/submissions/{sid.upper()}", auth="subscriber")
    assert r.status == 200


async def test_submission_without_data_and_attachments(fitconnect_sandbox: RunningSandbox, api: Api) -> None:
    assert fitconnect_sandbox.keys is not None
    sent = await send(api, fitconnect_sandbox.keys, attachments=0, data=False)
    r = await api.call("GET", f"/v1/submissions/{sent.submission_id}", auth="subscriber")
    assert r.status == 200
    assert "encryptedData" not in r.json
    assert r.json["attachments"] == []
    (submit,) = [e for e in fitconnect_sandbox.events(sent.case_id) if e.event_name == "submit-submission"]
    assert submit.payload == {"authenticationTags": {"metadata": sent.tags["metadata"], "attachments": {}}}


async def test_create_submission_errors(fitconnect_sandbox: RunningSandbox, api: Api) -> None:
    sb = fitconnect_sandbox

    async def post(body: object, **kw: object) -> object:
        return await api.call("POST", "/v1/submissions", auth="sender", json_body=body, **kw)  # type: ignore[arg-type]

    good = create_body([])
    for field in ("destinationId", "announcedAttachments", "serviceType"):
        (await post({k: v for k, v in good.items() if k != field})).problem(400, "invalid-request")  # type: ignore[attr-defined]
    bad_bodies = [
        {**good, "destinationId": "not-a-uuid"},
        {**good, "announcedAttachments": ["nope"]},
        {**good, "announcedAttachments": "x"},
        {**good, "announcedAttachments": [str(uuid.UUID(int=1))] * 2},
        {**good, "serviceType": {"identifier": "urn:de:fim:leika:leistung:99050012104000"}},  # name required
        {**good, "serviceType": {"name": "x", "identifier": "leistung-99050012104000"}},  # not a URN
        {**good, "serviceType": {"name": "x", "identifier": "urn:De:x"}},
        {**good, "caseId": "x"},
        {**good, "callback": {"url": "ftp://x.example", "secret": SECRET}},
        {**good, "callback": {"url": "https://x.example/cb", "secret": "short"}},
        {**good, "callback": {"url": "https://x.example/cb", "secret": "x" * 513}},
        {**good, "callback": {"url": "https://x.example/cb"}},
        [good],
    ]
    for body in bad_bodies:
        r = await post(body)
        r.problem(400, "invalid-request")  # type: ignore[attr-defined]
    r = await api.call("POST", "/v1/submissions", auth="sender", data="{not json", content_type="application/json")
    r.problem(400, "invalid-request")
    r = await api.call("POST", "/v1/submissions", auth="sender", data="x=1", content_type="text/plain")
    r.problem(400, "invalid-request")
    r = await post({**good, "destinationId": str(uuid.uuid4())})
    r.problem(404, "destination-not-found")  # type: ignore[attr-defined]
    r = await post({**good, "serviceType": {"name": "x", "identifier": "urn:de:fim:leika:leistung:99999999999999"}})
    r.problem(422, "service-not-offered")  # type: ignore[attr-defined]
    r = await post({**good, "caseId": str(uuid.uuid4())})
    r.problem(422, "case-not-found")  # type: ignore[attr-defined]
    r = await post({**good, "announcedAttachments": [str(uuid.uuid4()) for _ in range(101)]})
    r.problem(413, "payload-too-large")  # type: ignore[attr-defined]
    r = await post({**good, "padding": "x" * (1024 * 1024)})
    r.problem(413, "payload-too-large")  # type: ignore[attr-defined]
    for status in ("created", "inactive", "decommissioned"):
        sb.sandbox.update_destination(TEST_DESTINATION_ID, status=status)
        body = (await post(good)).problem(422, "destination-state-invalid")  # type: ignore[attr-defined]
        assert status in body["detail"]
    sb.sandbox.update_destination(TEST_DESTINATION_ID, status="active")
    assert (await post(good)).status == 201  # type: ignore[attr-defined]


async def test_http_callbacks_need_the_sandbox_option(fitconnect_sandbox_keys: SandboxKeys) -> None:
    body = create_body([], callback={"url": "http://127.0.0.1:9/cb", "secret": SECRET})
    async with sandbox_api(fitconnect_sandbox_keys, allow_insecure_callbacks=False) as api_:
        r = await api_.call("POST", "/v1/submissions", auth="sender", json_body=body)
        assert "allow_insecure_callbacks" in r.problem(400, "invalid-request")["detail"]
    async with sandbox_api(fitconnect_sandbox_keys, allow_insecure_callbacks=True) as api_:
        r = await api_.call("POST", "/v1/submissions", auth="sender", json_body=body)
        assert r.status == 201


async def test_reply_in_existing_case(fitconnect_sandbox: RunningSandbox, api: Api) -> None:
    assert fitconnect_sandbox.keys is not None
    first = await send(api, fitconnect_sandbox.keys, attachments=0)
    second = await send(api, fitconnect_sandbox.keys, attachments=0, case_id=first.case_id)
    assert second.case_id == first.case_id
    assert second.submission_id != first.submission_id
    names = [e.event_name for e in fitconnect_sandbox.events(first.case_id)]
    assert names == ["create-submission", "submit-submission"] * 2


async def test_attachment_upload_errors(fitconnect_sandbox: RunningSandbox, api: Api) -> None:
    sb = fitconnect_sandbox
    assert sb.keys is not None
    sid, _, (aid,) = await create(api, 1)
    good = jwe(sb.keys, b"x")
    path = f"/v1/submissions/{sid}/attachments/{aid}"
    r = await api.call("PUT", path, auth="sender", data=good, content_type="application/octet-stream")
    r.problem(415, "unsupported-media-type")
    r = await api.call("PUT", path, auth="sender", data=good)
    r.problem(415, "unsupported-media-type")
    r = await api.call(
        "PUT", f"/v1/submissions/{sid}/attachments/{uuid.uuid4()}", auth="sender", data=good, content_type=JOSE
    )
    r.problem(422, "attachment-not-announced")
    r = await api.call("PUT", path, auth="sender", data="not a jwe!", content_type=JOSE)
    r.problem(400, "invalid-request")
    r = await api.call("PUT", path, auth="sender", data="", content_type=JOSE)
    r.problem(400, "invalid-request")
    for bad in ("a.b.c.d", "a.b.c.d.e.f", "a..c.d.e", "a.b.c.d."):
        r = await api.call("PUT", path, auth="sender", data=bad, content_type=JOSE)
        r.problem(422, "invalid-jwe")
    r = await api.call(
        "PUT", f"/v1/submissions/{uuid.uuid4()}/attachments/{aid}", auth="sender", data=good, content_type=JOSE
    )
    r.problem(404, "submission-not-found")
    r = await api.call("PUT", f"/v1/submissions/nope/attachments/{aid}", auth="sender", data=good, content_type=JOSE)
    r.problem(400, "invalid-request")
    sb.add_client("other-sender", "s3cret", ["send:region:DE"])
    r = await api.call("PUT", path, auth="other-sender", data=good, content_type=JOSE)
    r.problem(403, "forbidden")
    assert sb.sandbox.state.submissions[sid].uploaded == []  # nothing above stored anything
    # Overwrite is allowed; the latest upload counts.
    assert (await api.call("PUT", path, auth="sender", data=good, content_type=JOSE)).status == 204
    newer = jwe(sb.keys, b"y")
    assert (await api.call("PUT", path, auth="sender", data=newer, content_type=JOSE)).status == 204
    r = await api.call(
        "PUT", f"/v1/submissions/{sid}", auth="sender", json_body={"encryptedMetadata": jwe(sb.keys, b"{}")}
    )
    assert r.status == 202
    (submit,) = [e for e in sb.events(r.json["caseId"]) if e.event_name == "submit-submission"]
    assert submit.payload["authenticationTags"]["attachments"] == {aid: newer.rsplit(".", 1)[1]}
    # After submit the attachments are closed.
    r = await api.call("PUT", path, auth="sender", data=good, content_type=JOSE)
    r.problem(422, "submission-state-invalid")


async def test_attachment_size_limit(fitconnect_sandbox_keys: SandboxKeys) -> None:
    async with sandbox_api(fitconnect_sandbox_keys, limits=Limits(max_attachment_bytes=2000)) as api_:
        sid, _, (aid,) = await create(api_, 1)
        path = f"/v1/submissions/{sid}/attachments/{aid}"
        big = jwe(fitconnect_sandbox_keys, b"z" * 1500)  # > 2000 characters once encrypted
        assert len(big) > 2000
        (await api_.call("PUT", path, auth="sender", data=big, content_type=JOSE)).problem(413, "payload-too-large")

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit bites mid-stream
            for i in range(0, len(big), 500):
                yield big[i : i + 500].encode()

        r = await api_.call("PUT", path, auth="sender", data=chunks(), content_type=JOSE)  # type: ignore[arg-type]
        r.problem(413, "payload-too-large")
        assert not api_.sb.sandbox.blobs.exists(sid, f"attachment:{aid}")
        small = jwe(fitconnect_sandbox_keys, b"ok")
        assert (await api_.call("PUT", path, auth="sender", data=small, content_type=JOSE)).status == 204


async def test_large_attachment_is_streamed(fitconnect_sandbox: RunningSandbox, api: Api) -> None:
    """16 MB up and down without the sandbox holding the body in memory."""
    sb = fitconnect_sandbox
    assert sb.keys is not None
    sid, _, (aid,) = await create(api, 1)
    header = jwe(sb.keys, b"").rsplit(".", 2)[0]  # protected header, encrypted key, iv of a real JWE
    ciphertext = b64url_encode(os.urandom(12 * 1024 * 1024))
    body = f"{header}.{ciphertext}.{b64url_encode(os.urandom(16))}".encode()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 256 * 1024):
            yield body[i : i + 256 * 1024]

    path = f"/v1/submissions/{sid}/attachments/{aid}"
    tracemalloc.start()
    try:
        r = await api.call("PUT", path, auth="sender", data=chunks(), content_type=JOSE)  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.status == 204, r.body
    assert peak < 8 * 1024 * 1024, peak  # the 16 MB body (plus our own copy) never sat in memory at once
    assert sb.sandbox.blobs.part_path(sid, f"attachment:{aid}").stat().st_size == len(body)
    r = await api.call(
        "PUT", f"/v1/submissions/{sid}", auth="sender", json_body={"encryptedMetadata": jwe(sb.keys, b"{}")}
    )
    assert r.status == 202
    received = bytearray()
    async with api.http.get(
        sb.base_url + path, headers={"Authorization": f"Bearer {await api.token('subscriber')}"}
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == JOSE
        async for piece in resp.content.iter_chunked(1 << 20):
            received += piece
    assert bytes(received) == body


async def test_submit_errors(fitconnect_sandbox: RunningSandbox, api: Api) -> None:
    sb = fitconnect_sandbox
    assert sb.keys is not None
    sid, _, (aid,) = await create(api, 1)
    metadata = jwe(sb.keys, b"{}")
    path = f"/v1/submissions/{sid}"
    r = await api.call("PUT", path, auth="sender", data='{"encryptedMetadata": "a.b.c.d.e"}', content_type="text/plain")
    r.problem(415, "unsupported-media-type")
    body = r.problem  # keep mypy quiet about reuse
    del body
    r = await api.call("PUT", path, auth="sender", json_body={"encryptedMetadata": metadata})
    missing = r.problem(422, "missing-attachments")
    assert missing["missing"] == [aid]
    await api.call("PUT", f"{path}/attachments/{aid}", auth="sender", data=jwe(sb.keys, b"a"), content_type=JOSE)
    for bad in ({}, {"encryptedData": metadata}, {"encryptedMetadata": 5}, {"encryptedMetadata": "has space.b.c.d.e"}):
        (await api.call("PUT", path, auth="sender", json_body=bad)).problem(400, "invalid-request")
    r = await api.call("PUT", path, auth="sender", json_body={"encryptedMetadata": "a.b.c.d"})
    r.problem(422, "invalid-jwe")
    r = await api.call("PUT", path, auth="sender", json_body={"encryptedMetadata": metadata, "encryptedData": "x.y"})
    assert "encryptedData" in r.problem(422, "invalid-jwe")["detail"]
    r = await api.call(
        "PUT", f"/v1/submissions/{uuid.uuid4()}", auth="sender", json_body={"encryptedMetadata": metadata}
    )
    r.problem(404, "submission-not-found")
    assert sb.submission_status(sid) == "incomplete"
    assert (await api.call("PUT", path, auth="sender", json_body={"encryptedMetadata": metadata})).status == 202
    r = await api.call("PUT", path, auth="sender", json_body={"encryptedMetadata": metadata})
    r.problem(422, "submission-state-invalid")


async def test_submit_body_limit_and_jwe_profile(fitconnect_sandbox_keys: SandboxKeys) -> None:
    keys = fitconnect_sandbox_keys
    async with sandbox_api(keys, limits=Limits(max_submit_bytes=4000), check_jwe_profile=True) as a:
        sid, _, _ = await create(a, 0)
        path = f"/v1/submissions/{sid}"
        big = jwe(keys, b"x" * 3000)
        r = await a.call("PUT", path, auth="sender", json_body={"encryptedMetadata": big})
        r.problem(413, "payload-too-large")
        # Off-profile JWE (A128GCM) is refused only with check_jwe_profile.
        header = b64url_encode(b'{"alg":"RSA-OAEP-256","enc":"A128GCM"}')
        off = ".".join([header, *jwe(keys, b"{}").split(".")[1:]])
        detail = (await a.call("PUT", path, auth="sender", json_body={"encryptedMetadata": off})).problem(
            422, "invalid-jwe"
        )["detail"]
        assert "A128GCM" in detail
        assert (
            await a.call("PUT", path, auth="sender", json_body={"encryptedMetadata": jwe(keys, b"{}")})
        ).status == 202


async def test_pickup_pagination_and_filters(fitconnect_sandbox: RunningSandbox, api: Api) -> None:
    sb = fitconnect_sandbox
    assert sb.keys is not None
    sent = [await send(api, sb.keys, attachments=0, data=False) for _ in range(7)]
    await create(api, 0)  # incomplete: never listed
    ids = [s.submission_id for s in sent]
    seen = []
    for offset in (0, 3, 6):
        r = await api.call("GET", f"/v1/submissions?limit=3&offset={offset}", auth="subscriber")
        assert r.status == 200
        assert r.json["offset"] == offset
        assert r.json["totalCount"] == 7
        assert r.json["count"] == len(r.json["submissions"]) == min(3, 7 - offset)
        seen += [s["submissionId"] for s in r.json["submissions"]]
    assert seen == ids  # oldest first, each exactly once
    r = await api.call("GET", "/v1/submissions?offset=50", auth="subscriber")
    assert r.json == {"count": 0, "offset": 50, "totalCount": 7, "submissions": []}
    r = await api.call("GET", f"/v1/submissions?destinationId={TEST_DESTINATION_ID}&limit=500", auth="subscriber")
    assert r.json["count"] == 7
    for query in ("limit=0", "limit=501", "offset=-1", "limit=x", "destinationId=nope"):
        (await api.call("GET", f"/v1/submissions?{query}", auth="subscriber")).problem(400, "invalid-request")
    # Accepted submissions leave the list.
    r = await api.call(
        "POST",
        f"/v1/cases/{sent[0].case_id}/events",
        auth="subscriber",
        data=accept_set(sb.keys, sent[0]),
        content_type=JOSE,
    )
    assert r.status == 204
    r = await api.call("GET", "/v1/submissions", auth="subscriber")
    assert r.json["totalCount"] == 6
    assert ids[0] not in [s["submissionId"] for s in r.json["submissions"]]


async def test_get_submission_and_attachment_errors(fitconnect_sandbox: RunningSandbox, api: Api) -> None:
    sb = fitconnect_sandbox
    assert sb.keys is not None
    incomplete, _, _ = await create(api, 0)
    sent = await send(api, sb.keys, attachments=1)
    (await api.call("GET", f"/v1/submissions/{uuid.uuid4()}", auth="subscriber")).problem(404, "submission-not-found")
    (await api.call("GET", f"/v1/submissions/{incomplete}", auth="subscriber")).problem(404, "submission-not-found")
    (await api.call("GET", "/v1/submissions/nope", auth="subscriber")).problem(400, "invalid-request")
    sb.add_client("other-dest", "s3cret", ["subscribe:destination:00000000-0000-4000-8000-000000000000"])
    (await api.call("GET", f"/v1/submissions/{sent.submission_id}", auth="other-dest")).problem(403, "forbidden")
    base = f"/v1/submissions/{sent.submission_id}/attachments"
    (await api.call("GET", f"{base}/{uuid.uuid4()}", auth="subscriber")).problem(404, "attachment-not-found")
    (await api.call("GET", f"{base}/{sent.attachment_ids[0]}", auth="other-dest")).problem(403, "forbidden")
    (await api.call("GET", f"{base}/{sent.attachment_ids[0]}", auth="sender")).problem(403, "forbidden")
    # After acceptance the content is gone: 404 for the submission and its attachments.
    r = await api.call(
        "POST", f"/v1/cases/{sent.case_id}/events", auth="subscriber", data=accept_set(sb.keys, sent), content_type=JOSE
    )
    assert r.status == 204
    (await api.call("GET", f"/v1/submissions/{sent.submission_id}", auth="subscriber")).problem(
        404, "submission-not-found"
    )
    (await api.call("GET", f"{base}/{sent.attachment_ids[0]}", auth="subscriber")).problem(404, "submission-not-found")
    assert not sb.sandbox.blobs.exists(sent.submission_id, "metadata")


async def test_unknown_routes_and_methods_are_problems(api: Api) -> None:
    (await api.call("GET", "/v1/nothing")).problem(404, "not-found")
    r = await api.call("DELETE", "/v1/submissions")
    r.problem(405, "method-not-allowed")
    assert "GET" in r.headers["Allow"]


async def test_info_and_jwks(fitconnect_sandbox: RunningSandbox, api: Api) -> None:
    r = await api.call("GET", "/v1/info")
    assert r.json == {"version": {"major": 1, "minor": 1, "patch": 3}}
    r = await api.call("GET", "/.well-known/jwks.json")
    (key,) = r.json["keys"]
    assert key["kid"] == fitconnect_sandbox.sandbox.zsd.kid
    assert key["alg"] == "PS512"
    assert key["key_ops"] == ["verify"]
    assert len(key["n"]) >= 683
    assert key["x5c"]


@pytest.mark.parametrize("service", [BAU_SERVICE])
async def test_second_service(api: Api, service: str) -> None:
    r = await api.call("POST", "/v1/submissions", auth="sender", json_body=create_body([], service=service))
    assert r.status == 201
