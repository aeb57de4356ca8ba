"""Every valid shared sample through HTTPS intake to a Fachverfahren folder, byte for byte; mutated copies
are refused with 422 naming the offending path (generated here, nothing copied from ../shared)."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable

import pytest
from lxml import etree

from gateway.model import MessageState

from .conftest import Gateway, shared_catalog, valid_samples

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.shared]

PORTAL = "/xoev/portal/messages"
SAMPLES = valid_samples()
# one sample per standard for the mutations (the library tests mutate every sample)
MUTATION_SAMPLES = [
    "xdomea-3.0.0/samples/xx_Aussonderung.Anbieteverzeichnis.0501.xml",
    "xbeteiligung-1.2/samples/xmlv14/xbeteiligung-test-kommunal.Initiieren.0401.xml",
    "xdatenfelder/samples/2.0/bewohnerparken/S05000058V1.0_xdf2.xml",
]


def sample_bytes(path: str) -> bytes:
    found = shared_catalog()
    if found is None or path == "<absent>":
        pytest.skip("../shared/xoev is absent")
    return (found[0] / path).read_bytes()


@pytest.mark.parametrize("index", range(len(SAMPLES)) if SAMPLES else [-1])
async def test_valid_sample_is_delivered_byte_for_byte(gateway: Gateway, index: int) -> None:
    if index < 0:
        pytest.skip("../shared/xoev is absent")
    path = SAMPLES[index]
    original = sample_bytes(path)
    sender = f"catalog-{index}"  # samples share message UUIDs: one sender each keeps them apart
    status, body, headers = await gateway.post(PORTAL, original, sender=sender)
    assert status == 202, body
    assert headers["Location"] == body["status"] == f"{PORTAL}/{body['id']}"
    stored = await gateway.settled(body["id"])
    assert stored.envelope.state is MessageState.ACKNOWLEDGED, stored.problems
    root = etree.fromstring(original)
    qname = etree.QName(root)
    assert stored.envelope.routing.namespace == qname.namespace
    assert stored.envelope.routing.message_type == qname.localname
    assert stored.envelope.routing.sender == sender

    manifest, directory = gateway.delivered("inbox", body["id"])
    (data,) = [f for f in manifest["files"] if f["part"] == "data"]
    delivered = (directory / data["file"]).read_bytes()
    assert delivered == original
    assert data["sha512"] == hashlib.sha512(original).hexdigest()
    assert data["media_type"] == "application/xml"
    assert manifest["metadata"]["xoev"]["bundle"] == path.split("/", 1)[0]
    assert manifest["metadata"]["sender"] == sender

    # the same bytes again: the same message
    again = await gateway.post(PORTAL, original, sender=sender)
    assert again[0] == 202
    assert (again[1]["id"], again[1]["duplicate"]) == (body["id"], True)


# -- mutations ----------------------------------------------------------------------------------------


def local_path(path: str) -> str:
    """'/xdf:a/xdf:b[2]/code' -> '/a/b/code'."""
    path = re.sub(r"\[\d+\]", "", path)
    return re.sub(r"(^|/)(?:\{[^}]*\}|[^/:{]+:)", r"\1", path)


def element_path(elem: etree._Element) -> str:
    names = [etree.QName(e).localname for e in [elem, *elem.iterancestors()]]
    return "/" + "/".join(reversed(names))


def first(root: etree._Element, local: str) -> etree._Element:
    found = root.xpath(f"//*[local-name()='{local}']")
    assert isinstance(found, list)
    assert found, local
    elem = found[0]
    assert isinstance(elem, etree._Element)
    return elem


def header_of(root: etree._Element) -> etree._Element:
    return next(e for e in root if isinstance(e.tag, str))


def wrong_element(root: etree._Element) -> str:
    header = header_of(root)
    header.tag = f"{{{etree.QName(header).namespace or ''}}}Unerwartet"
    return element_path(root)


def missing_required(root: etree._Element) -> str:
    header = header_of(root)
    header.remove(next(e for e in header if isinstance(e.tag, str)))
    return element_path(header)


def bad_code_type(root: etree._Element) -> str:
    code = first(root, "code")
    etree.SubElement(code, "verschachtelt")  # a code is a simple value: no child elements
    return element_path(code)


MUTATIONS: dict[str, Callable[[etree._Element], str]] = {
    "wrong-element": wrong_element,
    "missing-required-element": missing_required,
    "bad-code-type": bad_code_type,
}


@pytest.mark.parametrize("sample", MUTATION_SAMPLES)
@pytest.mark.parametrize("mutation", list(MUTATIONS))
async def test_mutated_sample_is_refused_with_the_path(gateway: Gateway, sample: str, mutation: str) -> None:
    root = copy.deepcopy(etree.fromstring(sample_bytes(sample)))
    expected = MUTATIONS[mutation](root)
    data = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    status, body, headers = await gateway.post(PORTAL, data, sender="portal-a")
    assert status == 422, body
    assert headers["Content-Type"].startswith("application/problem+json")
    assert body["type"].endswith("/xml-schema-invalid")
    issue = body["issues"][0]
    assert local_path(issue["path"]) == expected
    assert isinstance(issue["line"], int)
    assert issue["rule"]


@pytest.mark.parametrize("sample", MUTATION_SAMPLES)
async def test_wrong_namespace_is_an_unknown_message(gateway: Gateway, sample: str) -> None:
    root = copy.deepcopy(etree.fromstring(sample_bytes(sample)))
    local = etree.QName(root).localname
    root.tag = f"{{urn:example:falsch}}{local}"
    status, body, _ = await gateway.post(PORTAL, etree.tostring(root), sender="portal-a")
    assert status == 422
    assert body["type"].endswith("/xml-unknown-message")
    assert (body["namespace"], body["root"]) == ("urn:example:falsch", local)


async def test_enumeration_violation_names_the_code_without_its_value(gateway: Gateway) -> None:
    root = copy.deepcopy(etree.fromstring(sample_bytes(MUTATION_SAMPLES[0])))
    code = first(root, "code")
    code.text = "Z9Z9"
    status, body, _ = await gateway.post(PORTAL, etree.tostring(root), sender="portal-a")
    assert status == 422
    issue = body["issues"][0]
    assert local_path(issue["path"]) == element_path(code)
    assert issue["rule"].startswith("xs:enumeration")
    assert "value must be one of" in issue["reason"]


@pytest.mark.parametrize("sample", MUTATION_SAMPLES)
async def test_issues_never_echo_document_values(gateway: Gateway, sample: str) -> None:
    root = copy.deepcopy(etree.fromstring(sample_bytes(sample)))
    stamp = (
        first(root, "erstellungszeitpunkt")
        if root.xpath("//*[local-name()='erstellungszeitpunkt']")
        else first(root, "Erstellungszeitpunkt")
    )
    stamp.text = "gestern-GEHEIM-4711"
    async with gateway.session().post(
        gateway.base_url + PORTAL,
        data=etree.tostring(root),
        headers={**gateway.auth("portal-a"), "Content-Type": "application/xml"},
    ) as resp:
        raw = await resp.text()
        assert resp.status == 422
    assert "GEHEIM" not in raw
    body = json.loads(raw)
    issue = next(i for i in body["issues"] if local_path(i["path"]) == element_path(stamp))
    assert issue["rule"] == "xs:simpleType xs:dateTime"
    assert "[value]" in issue["reason"]
