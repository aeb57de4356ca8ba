"""Sandbox: destination views, public keys and key rollover (spec endpoints and inspection API)."""

from __future__ import annotations

import uuid
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from gateway.fitconnect.keys import jwk_from_public_key, self_signed_certificate, x5c_entry
from gateway_sandbox.testing import (
    GEWERBE_SCHEMA,
    GEWERBE_SERVICE,
    REPLY_PROCESS_STANDARDS,
    TEST_DESTINATION_ID,
    RunningSandbox,
)

from .sandbox_helpers import Api, api_fixture, create_body  # noqa: F401  (api_fixture provides the api fixture)

DEST = f"/v1/destinations/{TEST_DESTINATION_ID}"
MANAGE = f"manage:destination:{TEST_DESTINATION_ID}"


def _public_jwk(key: RSAPrivateKey, kid: str, purpose: str = "encryption") -> dict[str, Any]:
    cert = self_signed_certificate(key, common_name="rollover TEST ONLY", purpose=purpose)  # type: ignore[arg-type]
    alg, ops = ("RSA-OAEP-256", ["wrapKey"]) if purpose == "encryption" else ("PS512", ["verify"])
    return jwk_from_public_key(key.public_key(), kid=kid, alg=alg, key_ops=ops, x5c=[x5c_entry(cert)])


async def test_public_and_private_views(fitconnect_sandbox: RunningSandbox, api: Api) -> None:
    sb = fitconnect_sandbox
    assert sb.keys is not None
    sb.set_destination_callback("https://fachverfahren.example/callback", "x" * 40)
    public = {
        "destinationId": TEST_DESTINATION_ID,
        "status": "active",
        "services": [
            {
                "identifier": GEWERBE_SERVICE,
                "submissionSchemas": [{"schemaUri": GEWERBE_SCHEMA, "mimeType": "application/json"}],
                "regions": ["DE09162000"],
            },
            {
                "identifier": "urn:de:fim:leika:leistung:99010003001006",
                "submissionSchemas": [{"schemaUri": "urn:example:demo:bauantrag:1.0", "mimeType": "application/xml"}],
                "regions": ["DE09162000"],
            },
        ],
        "encryptionKid": sb.keys.encryption_kid,
        "metadataVersions": ["1.0.0", "2.1.0"],
        "replyChannels": {"fitConnect": {"processStandards": list(REPLY_PROCESS_STANDARDS)}},
    }
    r = await api.call("GET", DEST, auth="sender")
    assert r.status == 200
    assert r.headers["Cache-Control"] == "no-cache"
    assert r.json == public
    r = await api.call("GET", DEST, auth="subscriber")
    assert r.json == {
        **public,
        "contactInformation": {
            "legalName": "Sandbox-Teststadt",
            "address": "Teststraße 1, 80331 München",
            "phone": "+49 89 0000000",
            "email": "sandbox@teststadt.example",
        },
        "callback": {"url": "https://fachverfahren.example/callback"},  # never the secret
    }
    (await api.call("GET", f"/v1/destinations/{uuid.uuid4()}", auth="sender")).problem(404, "destination-not-found")
    (await api.call("GET", "/v1/destinations/nope", auth="sender")).problem(404, "not-found")


async def test_keys_are_public(fitconnect_sandbox: RunningSandbox, api: Api) -> None:
    keys = fitconnect_sandbox.keys
    assert keys is not None
    for purpose, kid in (("encryption", keys.encryption_kid), ("signing", keys.signing_kid)):
        r = await api.call("GET", f"{DEST}/keys/{kid}")  # no token needed
        assert r.status == 200
        assert r.headers["Cache-Control"] == "no-cache"
        assert r.json == keys.public_jwk(purpose)
    (await api.call("GET", f"{DEST}/keys/unknown-kid")).problem(404, "key-not-found")
    (await api.call("GET", f"/v1/destinations/{uuid.uuid4()}/keys/{keys.encryption_kid}")).problem(
        404, "destination-not-found"
    )


async def test_destination_list(fitconnect_sandbox: RunningSandbox, api: Api) -> None:
    r = await api.call("GET", "/v1/destinations", auth="subscriber")
    assert r.status == 200
    assert r.json["totalCount"] == 1
    assert r.json["destinations"][0]["destinationId"] == TEST_DESTINATION_ID
    assert "contactInformation" in r.json["destinations"][0]
    (await api.call("GET", "/v1/destinations", auth="sender")).problem(403, "forbidden")


async def test_key_rollover_via_the_spec_endpoints(
    fitconnect_sandbox: RunningSandbox, api: Api, second_key: RSAPrivateKey
) -> None:
    sb = fitconnect_sandbox
    assert sb.keys is not None
    sb.add_client("ssp", "s3cret", [MANAGE])
    new_kid = "c66e4423-e28d-4a1f-911d-818f9ab60221"
    new_jwk = _public_jwk(second_key, new_kid)
    r = await api.call("POST", f"{DEST}/keys", auth="ssp", json_body=new_jwk)
    assert r.status == 201
    assert r.headers["Location"] == f"{DEST}/keys/{new_kid}"
    r = await api.call("POST", f"{DEST}/keys", auth="ssp", json_body=new_jwk)
    assert r.status == 201  # "added or already exists"
    # The new key is published, but senders keep using the old one until encryptionKid switches.
    assert (await api.call("GET", f"{DEST}/keys/{new_kid}")).json == new_jwk
    assert (await api.call("GET", DEST, auth="sender")).json["encryptionKid"] == sb.keys.encryption_kid
    r = await api.call("PATCH", DEST, auth="ssp", json_body={"encryptionKid": new_kid})
    assert r.status == 200
    assert r.headers["Cache-Control"] == "no-cache"
    assert r.json["encryptionKid"] == new_kid
    assert "contactInformation" in r.json  # PrivateDestination
    assert (await api.call("GET", DEST, auth="sender")).json["encryptionKid"] == new_kid
    # The old key stays available (submissions encrypted to it may still be in flight).
    assert (await api.call("GET", f"{DEST}/keys/{sb.keys.encryption_kid}")).status == 200


async def test_key_and_patch_errors(fitconnect_sandbox: RunningSandbox, api: Api, second_key: RSAPrivateKey) -> None:
    sb = fitconnect_sandbox
    assert sb.keys is not None
    sb.add_client("ssp", "s3cret", [MANAGE])
    good = _public_jwk(second_key, "another-key-0001")
    (await api.call("POST", f"{DEST}/keys", auth="subscriber", json_body=good)).problem(403, "forbidden")
    (await api.call("POST", f"{DEST}/keys", json_body=good)).problem(401, "unauthorized")
    (await api.call("POST", f"/v1/destinations/{uuid.uuid4()}/keys", auth="ssp", json_body=good)).problem(
        404, "destination-not-found"
    )
    small = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cases = [
        (_public_jwk(small, "small-key-0001"), "n-size"),
        ({**good, "key_ops": ["encrypt"]}, "key_ops"),
        ({**good, "alg": "RS256"}, "alg"),
        ({**good, "x5c": []}, None),
        ({**sb.keys.public_jwk("encryption"), "n": good["n"], "x5c": good["x5c"]}, "kid-conflict"),
    ]
    for jwk, issue in cases:
        body = (await api.call("POST", f"{DEST}/keys", auth="ssp", json_body=jwk)).problem(400, "key-invalid")
        if issue:
            assert body["issue"] == issue, body
    r = await api.call("PATCH", DEST, auth="ssp", json_body={"encryptionKid": "not-registered"})
    r.problem(400, "key-not-found")
    r = await api.call("PATCH", DEST, auth="ssp", json_body={"encryptionKid": sb.keys.signing_kid})
    r.problem(400, "key-not-found")  # a signing key cannot become the encryption key
    for bad in (
        {"status": "created"},
        {"status": "gone"},
        {"metadataVersions": ["1.0"]},
        {"services": []},
        {"contactInformation": {"legalName": "x"}},
        {"callback": {"url": "https://x.example/cb", "secret": "short"}},
        {"replyChannels": {"carrierPigeon": {}}},
    ):
        (await api.call("PATCH", DEST, auth="ssp", json_body=bad)).problem(400, "invalid-request")
    (await api.call("PATCH", DEST, auth="subscriber", json_body={"status": "inactive"})).problem(403, "forbidden")
    r = await api.call("PATCH", DEST, auth="ssp", json_body={"status": "inactive", "metadataVersions": ["2.1.0"]})
    assert r.json["status"] == "inactive"
    assert r.json["metadataVersions"] == ["2.1.0"]
    r = await api.call("POST", "/v1/submissions", auth="sender", json_body=create_body([]))
    r.problem(422, "destination-state-invalid")


async def test_key_rollover_via_the_inspection_api(
    fitconnect_sandbox: RunningSandbox, api: Api, second_key: RSAPrivateKey
) -> None:
    new_jwk = _public_jwk(second_key, "rollover-via-inspection")
    r = await api.call("POST", f"/_sandbox/destinations/{TEST_DESTINATION_ID}/keys", json_body=new_jwk)
    assert r.status == 201
    assert r.json == {"kid": "rollover-via-inspection", "created": True}
    r = await api.call("POST", f"/_sandbox/destinations/{TEST_DESTINATION_ID}/keys", json_body=new_jwk)
    assert r.status == 200
    assert r.json["created"] is False
    r = await api.call(
        "PATCH", f"/_sandbox/destinations/{TEST_DESTINATION_ID}", json_body={"encryptionKid": "rollover-via-inspection"}
    )
    assert r.status == 200
    assert "rollover-via-inspection" in r.json["encryptionKeys"]
    assert (await api.call("GET", DEST, auth="sender")).json["encryptionKid"] == "rollover-via-inspection"
