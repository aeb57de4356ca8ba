"""Per-route signature policy (required / optional / ignored) × signature (valid / absent / tampered /
untrusted) through HTTPS and routing; the XÖV test marker goes to the test route, and is refused in
production mode."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from gateway.model import MessageState
from gateway.routing import SIGNATURE_INVALID, SIGNATURE_REQUIRED, TEST_IN_PRODUCTION
from gateway.xoev.signatures import sign_xml

from .conftest import Gateway, Pki, all_bundles, antrag, start_gateway

pytestmark = pytest.mark.asyncio(loop_scope="session")

PORTAL = "/xoev/portal/messages"


def signed(pki: Pki, *, signer: str = "signer") -> bytes:
    identity = pki.signer if signer == "signer" else pki.stranger
    return sign_xml(antrag(antragsteller="Erika Mustermann"), identity.key, identity.cert)


def variant(pki: Pki, kind: str) -> bytes:
    if kind == "valid":
        return signed(pki)
    if kind == "absent":
        return antrag()
    if kind == "tampered":
        document = signed(pki)
        changed = document.replace(b"Erika Mustermann", b"Max Mustermann")
        assert changed != document
        return changed
    if kind == "untrusted":
        return signed(pki, signer="stranger")
    raise AssertionError(kind)


# sender -> route: req -> sig-required, opt -> sig-optional, ign -> sig-ignored (all to adapter "signed")
EXPECTED: dict[tuple[str, str], str | None] = {
    ("req", "valid"): None,
    ("req", "absent"): SIGNATURE_REQUIRED,
    ("req", "tampered"): SIGNATURE_INVALID,
    ("req", "untrusted"): SIGNATURE_INVALID,
    ("opt", "valid"): None,
    ("opt", "absent"): None,
    ("opt", "tampered"): SIGNATURE_INVALID,
    ("opt", "untrusted"): SIGNATURE_INVALID,
    ("ign", "valid"): None,
    ("ign", "absent"): None,
    ("ign", "tampered"): None,
    ("ign", "untrusted"): None,
}
VERDICTS = {
    "valid": ("valid", None),
    "absent": ("absent", None),
    "tampered": ("invalid", "tampered"),
    "untrusted": ("invalid", "untrusted-certificate"),
}


@pytest.mark.parametrize(("sender", "kind"), list(EXPECTED))
async def test_signature_policy_through_routes(gateway: Gateway, sender: str, kind: str) -> None:
    status, body, _ = await gateway.post(PORTAL, variant(gateway.pki, kind), sender=sender)
    assert status == 202, body  # accepted for processing: the route decides
    stored = await gateway.settled(body["id"])
    signature = stored.envelope.metadata["xoev"]["signature"]
    assert (signature["status"], signature["code"]) == VERDICTS[kind]
    if kind == "valid":
        assert signature["signer"] == "CN=Gemeinde Musterstadt Signatur,O=Gateway Tests"
    refusal = EXPECTED[(sender, kind)]
    status, shown, _ = await gateway.get(f"{PORTAL}/{body['id']}", sender=sender)
    assert status == 200
    if refusal is None:
        assert stored.envelope.state is MessageState.ACKNOWLEDGED
        manifest, directory = gateway.delivered("signed", body["id"])
        (data,) = [f for f in manifest["files"] if f["part"] == "data"]
        assert (directory / data["file"]).read_bytes() == variant_bytes(stored, gateway)
        assert shown["problems"] == []
    else:
        assert stored.envelope.state is MessageState.REJECTED
        assert [p.type for p in stored.problems] == [refusal]
        assert shown["state"] == "rejected"
        assert [p["type"] for p in shown["problems"]] == [refusal]
        assert not (gateway.out_dir / "signed" / body["id"]).exists()


def variant_bytes(stored: Any, gateway: Gateway) -> bytes:
    return gateway.runtime.blobs.path(stored.envelope.data).read_bytes()


# -- the test marker ------------------------------------------------------------------------------------


async def test_test_message_goes_to_the_test_route(gateway: Gateway) -> None:
    status, body, _ = await gateway.post(PORTAL, antrag(test=True), sender="portal-a")
    assert status == 202
    stored = await gateway.settled(body["id"])
    assert stored.envelope.routing.test is True
    assert stored.envelope.metadata["xoev"]["test"] is True
    assert (stored.envelope.state, stored.envelope.route) == (MessageState.ACKNOWLEDGED, "tests")
    manifest, _ = gateway.delivered("tests", body["id"])
    assert manifest["routing"]["test"] is True


async def test_endpoint_that_refuses_test_messages(gateway: Gateway) -> None:
    status, body, _ = await gateway.post("/xoev/behoerden", antrag(test=True), sender="amt-x")
    assert status == 422
    assert body["type"].endswith("/test-message-refused")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def production(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, antrag_bundle: Path, xoev_cache: Path
) -> AsyncIterator[Gateway]:
    work = tmp_path_factory.mktemp("production")
    async with start_gateway(work, pki, all_bundles(antrag_bundle)[:1], xoev_cache, mode="production") as gw:
        yield gw


async def test_test_message_refused_in_production(production: Gateway) -> None:
    status, body, _ = await production.post(PORTAL, antrag(test=True), sender="portal-a")
    assert status == 202  # durably received, then refused by routing (the sender sees why)
    stored = await production.settled(body["id"])
    assert stored.envelope.state is MessageState.REJECTED
    assert [p.type for p in stored.problems] == [TEST_IN_PRODUCTION]
    status, shown, _ = await production.get(f"{PORTAL}/{body['id']}", sender="portal-a")
    assert (status, shown["state"]) == (200, "rejected")
    assert shown["problems"][0]["type"] == TEST_IN_PRODUCTION
    assert not (production.out_dir / "tests" / body["id"]).exists()
    # a real message still goes through
    status, body, _ = await production.post(PORTAL, antrag(), sender="portal-a")
    assert status == 202
    assert (await production.settled(body["id"])).envelope.state is MessageState.ACKNOWLEDGED
