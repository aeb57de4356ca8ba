"""Sandbox: the inspection API (seeding, decoded events, status) and the event-log fault modes."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from gateway.fitconnect.jose import DecryptionError, JoseError, decrypt_jwe, parse_jws, verify_jws
from gateway.fitconnect.keys import load_private_jwk, load_public_jwk
from gateway.fitconnect.sets import SUBMIT_SUBMISSION
from gateway_sandbox.online_service.sender import Breakage, OutgoingAttachment, Sender
from gateway_sandbox.testing import GEWERBE_SCHEMA, GEWERBE_SERVICE, TEST_DESTINATION_ID, RunningSandbox, SandboxKeys

from .sandbox_helpers import (  # noqa: F401  (api_fixture provides the api fixture)
    Api,
    Sent,
    api_fixture,
    create,
    create_body,
    sandbox_api,
    send,
)


def _submit_events(sb: RunningSandbox, sent: Sent) -> list[Any]:
    return [e for e in sb.events(sent.case_id) if e.event == SUBMIT_SUBMISSION]


def _verifies(sb: RunningSandbox, token: str) -> bool:
    try:
        verify_jws(parse_jws(token), load_public_jwk(sb.sandbox.zsd.public_jwk))
    except JoseError:
        return False
    return True


async def test_index_and_status_views(fitconnect_sandbox: RunningSandbox, api: Api) -> None:
    sb = fitconnect_sandbox
    assert sb.keys is not None
    r = await api.call("GET", "/_sandbox/")
    assert r.json["tokenUrl"] == sb.token_url
    assert "POST /_sandbox/cases/{caseId}/tamper" in r.json["endpoints"]
    assert "PUT /v1/submissions/{submissionId}" in r.json["endpoints"]
    sent = await send(api, sb.keys, attachments=1)
    incomplete, _, _ = await create(api, 0)
    r = await api.call("GET", f"/_sandbox/submissions/{sent.submission_id}")
    view = r.json
    assert view["status"] == "submitted"
    assert view["authenticationTags"] == sent.tags
    assert view["uploadedAttachments"] == sent.attachment_ids
    assert view["events"] == [
        "https://schema.fitko.de/fit-connect/events/create-submission",
        "https://schema.fitko.de/fit-connect/events/submit-submission",
    ]
    r = await api.call("GET", "/_sandbox/submissions?status=incomplete")
    assert [s["submissionId"] for s in r.json["submissions"]] == [incomplete]
    (await api.call("GET", f"/_sandbox/submissions/{uuid.uuid4()}")).problem(404, "submission-not-found")
    r = await api.call("GET", f"/_sandbox/cases/{sent.case_id}/events")
    events = r.json["events"]
    assert [e["event"] for e in events] == view["events"]
    assert events[1]["header"]["typ"] == "secevent+jwt"
    assert events[1]["claims"]["events"][SUBMIT_SUBMISSION] == {"authenticationTags": sent.tags}
    assert events[1]["claims"]["iss"] == sb.base_url
    (await api.call("GET", f"/_sandbox/cases/{uuid.uuid4()}/events")).problem(404, "case-not-found")


async def test_seed_destination_and_client(fitconnect_sandbox: RunningSandbox, api: Api) -> None:
    keys = fitconnect_sandbox.keys
    assert keys is not None
    dest_id = str(uuid.uuid4())
    body = {
        "destinationId": dest_id,
        "services": [
            {
                "identifier": GEWERBE_SERVICE,
                "submissionSchemas": [{"schemaUri": GEWERBE_SCHEMA, "mimeType": "application/json"}],
                "regions": ["DE05"],
            }
        ],
        "metadataVersions": ["1.0.0"],
        "encryptionKeys": [keys.public_jwk("encryption")],
        "signingKeys": [keys.public_jwk("signing")],
        "contactInformation": {"legalName": "Y", "address": "Z", "phone": "1", "email": "a@b.example"},
        "callback": {"url": "https://cb.example/x", "secret": "s" * 32},
    }
    r = await api.call("POST", "/_sandbox/destinations", json_body=body)
    assert r.status == 201, r.body
    assert r.json["encryptionKid"] == keys.encryption_kid
    assert r.json["callback"] == {"url": "https://cb.example/x"}
    assert (await api.call("POST", "/_sandbox/destinations", json_body=body)).status == 200
    r = await api.call(
        "POST", "/_sandbox/clients", json_body={"id": "nrw-sender", "secret": "pw", "scopes": ["send:region:DE05"]}
    )
    assert r.status == 201
    r = await api.call(
        "POST", "/v1/submissions", auth="nrw-sender", json_body={**create_body([]), "destinationId": dest_id}
    )
    assert r.status == 201
    r = await api.call("POST", "/v1/submissions", auth="nrw-sender", json_body=create_body([]))  # Munich: not NRW
    r.problem(403, "forbidden")
    assert [c["id"] for c in (await api.call("GET", "/_sandbox/clients")).json["clients"]][-1] == "nrw-sender"
    for bad in (
        {**body, "destinationId": "x"},
        {**body, "encryptionKeys": []},
        {**body, "signingKeys": [keys.public_jwk("encryption")]},  # an encryption key is no signing key
        {**body, "encryptionKeys": [{**keys.public_jwk("encryption"), "n": "AQAB"}]},
        {**body, "services": [{"identifier": "nope"}]},
        {**body, "contactInformation": {}},
    ):
        r = await api.call("POST", "/_sandbox/destinations", json_body=bad)
        assert r.status == 400, (bad, r.body)
        assert r.json["type"].rsplit("/", 1)[1] in ("invalid-request", "key-invalid"), r.json
    for bad_client in ({"id": "x", "secret": "y", "scopes": ["root"]}, {"id": "x", "scopes": []}, {"secret": "y"}):
        (await api.call("POST", "/_sandbox/clients", json_body=bad_client)).problem(400, "invalid-request")


async def test_inspection_api_can_be_disabled(fitconnect_sandbox_keys: SandboxKeys) -> None:
    async with sandbox_api(fitconnect_sandbox_keys, inspection_api=False) as api:
        (await api.call("GET", "/_sandbox/")).problem(404, "not-found")
        (await api.call("POST", "/_sandbox/clock/advance", json_body={"seconds": 1})).problem(404, "not-found")
        assert (await api.call("GET", "/v1/info")).status == 200


async def _tamper(api: Api, sent: Sent, mode: str, part: str | None = None) -> Any:
    body: dict[str, Any] = {"submissionId": sent.submission_id, "mode": mode}
    if part is not None:
        body["part"] = part
    return await api.call("POST", f"/_sandbox/cases/{sent.case_id}/tamper", json_body=body)


@pytest.mark.parametrize("part", ["metadata", "data", "attachment"])
async def test_tamper_auth_tag_mismatch(fitconnect_sandbox: RunningSandbox, api: Api, part: str) -> None:
    sb = fitconnect_sandbox
    assert sb.keys is not None
    sent = await send(api, sb.keys, attachments=1)
    (before,) = _submit_events(sb, sent)
    target = f"attachment:{sent.attachment_ids[0]}" if part == "attachment" else part
    r = await _tamper(api, sent, "auth-tag-mismatch", target)
    assert r.status == 204, r.body
    (after,) = _submit_events(sb, sent)
    tags = after.payload["authenticationTags"]
    expected = {**sent.tags, "attachments": dict(sent.tags["attachments"])}
    if part == "attachment":
        changed = tags["attachments"][sent.attachment_ids[0]]
        original = expected["attachments"][sent.attachment_ids[0]]
        expected["attachments"][sent.attachment_ids[0]] = changed
    else:
        changed, original = tags[part], expected[part]
        expected[part] = changed
    assert changed != original
    assert len(changed) == len(original)
    assert tags == expected  # only that tag changed
    assert _verifies(sb, after.token)  # properly re-signed
    assert after.claims["jti"] == before.claims["jti"]


async def test_tamper_event_modes(fitconnect_sandbox: RunningSandbox, api: Api) -> None:
    sb = fitconnect_sandbox
    assert sb.keys is not None
    sent = [await send(api, sb.keys, attachments=0) for _ in range(4)]
    assert (await _tamper(api, sent[0], "drop-submit-event")).status == 204
    assert _submit_events(sb, sent[0]) == []
    assert [e.event_name for e in sb.events(sent[0].case_id)] == ["create-submission"]

    assert (await _tamper(api, sent[1], "duplicate-submit-event")).status == 204
    first, second = _submit_events(sb, sent[1])
    assert first.payload == second.payload
    assert first.claims["jti"] != second.claims["jti"]
    assert _verifies(sb, second.token)

    assert (await _tamper(api, sent[2], "missing-authentication-tags")).status == 204
    (event,) = _submit_events(sb, sent[2])
    assert event.payload == {}
    assert _verifies(sb, event.token)

    assert (await _tamper(api, sent[3], "wrong-set-key")).status == 204
    (event,) = _submit_events(sb, sent[3])
    assert event.header["kid"] == sb.sandbox.zsd.kid  # the published kid ...
    assert not _verifies(sb, event.token)  # ... but another key
    assert event.payload == {"authenticationTags": sent[3].tags}


async def test_tamper_corrupt_ciphertext(fitconnect_sandbox: RunningSandbox, api: Api) -> None:
    sb = fitconnect_sandbox
    assert sb.keys is not None
    sent = await send(api, sb.keys, attachments=1)
    private = load_private_jwk(sb.keys.encryption_private)
    assert (await _tamper(api, sent, "corrupt-ciphertext", "data")).status == 204
    r = await api.call("GET", f"/v1/submissions/{sent.submission_id}", auth="subscriber")
    data = r.json["encryptedData"]
    assert data.rsplit(".", 1)[1] == sent.tags["data"]  # tag unchanged, so only decryption fails
    with pytest.raises(DecryptionError):
        decrypt_jwe(data, [private])
    assert decrypt_jwe(r.json["encryptedMetadata"], [private]).plaintext  # the rest is intact
    aid = sent.attachment_ids[0]
    assert (await _tamper(api, sent, "corrupt-ciphertext", f"attachment:{aid}")).status == 204
    r = await api.call("GET", f"/v1/submissions/{sent.submission_id}/attachments/{aid}", auth="subscriber")
    with pytest.raises(DecryptionError):
        decrypt_jwe(r.body.decode(), [private])


async def test_tamper_errors(fitconnect_sandbox: RunningSandbox, api: Api) -> None:
    sb = fitconnect_sandbox
    assert sb.keys is not None
    sent = await send(api, sb.keys, attachments=0, data=False)
    other = await send(api, sb.keys, attachments=0)
    sid, cid, _ = await create(api, 0)
    (await _tamper(api, Sent(sent.submission_id, str(uuid.uuid4())), "drop-submit-event")).problem(
        404, "case-not-found"
    )
    (await _tamper(api, Sent(other.submission_id, sent.case_id), "drop-submit-event")).problem(
        404, "submission-not-found"
    )
    (await _tamper(api, sent, "explode")).problem(400, "invalid-request")
    (await _tamper(api, sent, "auth-tag-mismatch")).problem(400, "invalid-request")  # part missing
    (await _tamper(api, sent, "auth-tag-mismatch", "signature")).problem(400, "invalid-request")
    (await _tamper(api, sent, "auth-tag-mismatch", "data")).problem(422, "invalid-request")  # no data sent
    (await _tamper(api, sent, "auth-tag-mismatch", f"attachment:{uuid.uuid4()}")).problem(422, "invalid-request")
    (await _tamper(api, Sent(sid, cid), "duplicate-submit-event")).problem(422, "submission-state-invalid")
    r = await api.call("POST", f"/_sandbox/cases/{sent.case_id}/tamper", json_body={"mode": "drop-submit-event"})
    r.problem(400, "invalid-request")


async def test_sender_library_against_the_sandbox(fitconnect_sandbox: RunningSandbox) -> None:
    """The project's test sender (an independent client) submits and breaks submissions here."""
    sb = fitconnect_sandbox
    creds = sb.sender
    async with Sender(sb.base_url, sb.token_url, creds.client_id, creds.client_secret) as sender:
        sent = await sender.send(
            destination_id=TEST_DESTINATION_ID,
            service_identifier=GEWERBE_SERVICE,
            service_name="Gewerbeanmeldung",
            data=b'{"betrieb": "Test"}',
            data_schema_uri=GEWERBE_SCHEMA,
            data_mime_type="application/json",
            attachments=[OutgoingAttachment(mime_type="application/pdf", filename="a.pdf", content=b"%PDF")],
        )
        assert sb.submission_status(sent.submission_id) == "submitted"
        (submit,) = [e for e in sb.events(sent.case_id) if e.event == SUBMIT_SUBMISSION]
        assert submit.payload == {"authenticationTags": sent.auth_tags}
        broken = await sender.send(
            destination_id=TEST_DESTINATION_ID,
            service_identifier=GEWERBE_SERVICE,
            service_name="Gewerbeanmeldung",
            data=b"{}",
            data_schema_uri=GEWERBE_SCHEMA,
            data_mime_type="application/json",
            breakage=Breakage.AUTH_TAG_MISMATCH,
        )
        (submit,) = [e for e in sb.events(broken.case_id) if e.event == SUBMIT_SUBMISSION]
        assert submit.payload["authenticationTags"]["data"] != broken.auth_tags["data"]
