"""Every catalog sample through the registry; mutated copies fail at the right path; engines agree.

Mutations are generated from the shared samples at test time (nothing is copied into the repo).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from gateway.xoev.decode import validate_xml
from gateway.xoev.parsing import parse_xml
from gateway.xoev.registry import SchemaRegistry
from gateway.xoev.validation import root_name, validate_tree, xmlschema_issues

from .conftest import catalog_at_collection

ENUM_CODE_SETS = {"xdomea-3.0.0", "xdatenfelder"}  # their code elements are closed enumerations


def sample_ids(catalog: list[dict[str, Any]], *, valid: bool) -> list[str]:
    return [r["path"] for item in catalog for r in item["sample_results"] if r["valid"] is valid]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # parametrise over the catalog when it is present (the fixtures skip otherwise)
    if "enum_sample_path" in metafunc.fixturenames:
        paths = [p for p in sample_ids(catalog_at_collection(), valid=True) if p.split("/", 1)[0] in ENUM_CODE_SETS]
        metafunc.parametrize("enum_sample_path", paths or ["<absent>"])
    elif "sample_path" in metafunc.fixturenames or "invalid_sample_path" in metafunc.fixturenames:
        catalog = catalog_at_collection()
        if "sample_path" in metafunc.fixturenames:
            paths = sample_ids(catalog, valid=True) or ["<absent>"]
            metafunc.parametrize("sample_path", paths)
        else:
            paths = sample_ids(catalog, valid=False) or ["<absent>"]
            metafunc.parametrize("invalid_sample_path", paths)


def load(xoev_shared: Path, path: str) -> etree._ElementTree:
    if path == "<absent>":
        pytest.skip("catalog absent")
    return parse_xml((xoev_shared / path).read_bytes())


def local_path(path: str) -> str:
    """'/xdf:a/xdf:b[2]/code' -> '/a/b/code' (prefixes are the document's, positions vary)."""
    path = re.sub(r"\[\d+\]", "", path)
    return re.sub(r"(^|/)(?:\{[^}]*\}|[^/:{]+:)", r"\1", path)


def element_path(elem: etree._Element) -> str:
    names = [etree.QName(e).localname for e in [elem, *elem.iterancestors()]]
    return "/" + "/".join(reversed(names))


def first(tree: etree._ElementTree, local: str) -> etree._Element:
    found = tree.xpath(f"//*[local-name()='{local}']")
    assert isinstance(found, list)
    assert found, local
    elem = found[0]
    assert isinstance(elem, etree._Element)
    return elem


def engines_agree(registry: SchemaRegistry, tree: etree._ElementTree) -> None:
    namespace, local = root_name(tree)
    entry = registry.lookup(namespace, local)
    if entry is None:
        return
    fast = registry.lxml_schema(entry.bundle, namespace)
    xmlschema_valid = next(xmlschema_issues(registry.xmlschema(entry.bundle), tree), None) is None
    if fast is not None:
        assert bool(fast.validate(tree)) == xmlschema_valid, str(fast.error_log)[:500]


# -- the samples ---------------------------------------------------------------------------------------


def test_valid_sample(registry: SchemaRegistry, xoev_shared: Path, sample_path: str) -> None:
    tree = load(xoev_shared, sample_path)
    outcome = validate_xml((xoev_shared / sample_path).read_bytes(), registry=registry)
    assert outcome.valid, outcome.issues[:3]
    assert outcome.bundle == sample_path.split("/", 1)[0]
    assert outcome.engine == "lxml"  # every valid catalog sample takes the fast path
    engines_agree(registry, tree)


def test_invalid_sample(registry: SchemaRegistry, xoev_shared: Path, invalid_sample_path: str) -> None:
    tree = load(xoev_shared, invalid_sample_path)
    report = validate_tree(registry, tree)
    assert not report.valid
    assert report.engine == "xmlschema"  # genericode: libxml2 cannot load the bundle
    issue = report.issues[0]
    assert local_path(issue.path) == "/CodeList"
    assert issue.line == 1
    assert "Identification" in issue.reason
    assert issue.rule is not None
    assert "gc:CodeListDocument" in issue.rule


# -- mutations -------------------------------------------------------------------------------------------


def wrong_element(tree: etree._ElementTree) -> tuple[str, str]:
    header = tree.getroot()[0]
    while not isinstance(header.tag, str):
        header = header.getnext()
    header.tag = f"{{{etree.QName(header).namespace or ''}}}Unerwartet"
    return element_path(tree.getroot()), "Unerwartet"


def missing_required(tree: etree._ElementTree) -> tuple[str, str]:
    header = next(e for e in tree.getroot() if isinstance(e.tag, str))
    required = next(e for e in header if isinstance(e.tag, str))
    header.remove(required)
    return element_path(header), ""


def bad_code_type(tree: etree._ElementTree) -> tuple[str, str]:
    code = first(tree, "code")
    etree.SubElement(code, "verschachtelt")  # a code is a simple value: no child elements
    return element_path(code), ""


def bad_datetime(tree: etree._ElementTree) -> tuple[str, str]:
    try:
        stamp = first(tree, "erstellungszeitpunkt")
    except AssertionError:
        stamp = first(tree, "Erstellungszeitpunkt")
    stamp.text = "gestern"
    return element_path(stamp), "gestern"


def wrong_namespace(tree: etree._ElementTree) -> tuple[str, str]:
    root = tree.getroot()
    root.tag = f"{{urn:example:falsch}}{etree.QName(root).localname}"
    return f"/{{urn:example:falsch}}{etree.QName(root).localname}", "urn:example:falsch"


MUTATIONS: dict[str, Callable[[etree._ElementTree], tuple[str, str]]] = {
    "wrong-element": wrong_element,
    "missing-required-element": missing_required,
    "bad-code-type": bad_code_type,
    "bad-datetime": bad_datetime,
    "wrong-namespace": wrong_namespace,
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_mutated_sample_fails_at_the_right_path(
    registry: SchemaRegistry, xoev_shared: Path, sample_path: str, mutation: str
) -> None:
    tree = copy.deepcopy(load(xoev_shared, sample_path))
    expected_path, mention = MUTATIONS[mutation](tree)
    data = etree.tostring(tree, xml_declaration=True, encoding="UTF-8")
    outcome = validate_xml(data, registry=registry)
    assert not outcome.valid
    assert outcome.issues
    issue = outcome.issues[0]
    if mutation == "wrong-namespace":
        assert issue.path == expected_path
        assert issue.rule == "registry"
        assert outcome.bundle is None
    else:
        assert local_path(issue.path) == expected_path, issue
        assert outcome.engine == "xmlschema"
        assert issue.line is not None
        assert issue.rule
    assert mention in issue.reason
    engines_agree(registry, parse_xml(data))


def test_enumerated_code_outside_its_list(registry: SchemaRegistry, xoev_shared: Path, enum_sample_path: str) -> None:
    # XBeteiligung's codes are open code lists (xoev-code:Code without enumeration): not applicable
    tree = copy.deepcopy(load(xoev_shared, enum_sample_path))
    code = first(tree, "code")
    code.text = "ZZZZ"
    report = validate_tree(registry, tree)
    assert not report.valid
    issue = report.issues[0]
    assert local_path(issue.path) == element_path(code)
    assert issue.rule is not None
    assert issue.rule.startswith("xs:enumeration")
    assert "value must be one of" in issue.reason
    engines_agree(registry, tree)


def test_unknown_root_element(registry: SchemaRegistry) -> None:
    outcome = validate_xml(b'<x:Kopf xmlns:x="urn:xoev-de:xdomea:schema:3.0.0"/>', registry=registry)
    assert outcome.bundle is None
    assert outcome.issues[0].rule == "registry"
    assert "Kopf" in outcome.issues[0].reason


def test_issue_count_is_capped(registry: SchemaRegistry, xoev_shared: Path) -> None:
    data = (xoev_shared / "xdatenfelder/samples/2.0/gewerbeanmeldung/S00000009_xdatenfelder.xml").read_bytes()
    broken, count = re.subn(rb"<code>[^<]*</code>", b"<code>ZZZZ</code>", data)
    assert count > 100
    outcome = validate_xml(broken, registry=registry, max_issues=5)
    assert len(outcome.issues) == 5


@pytest.mark.parametrize("xsi_type", ["fremd:Unbekannt", "nirgends:Typ"])
def test_unknown_xsi_type_is_an_issue_not_an_exception(
    registry: SchemaRegistry, xoev_shared: Path, sample_path: str, xsi_type: str
) -> None:
    # xmlschema raises XMLSchemaKeyError for an xsi:type naming a type no schema defines; that must be
    # a schema issue of the document (HTTP 422), never an exception (which reads as "validator down")
    root = load(xoev_shared, sample_path).getroot()
    target = next(e for e in root.iter() if isinstance(e.tag, str) and e is not root)
    target.set("{http://www.w3.org/2001/XMLSchema-instance}type", xsi_type)
    # declare the foreign prefix on the root (lxml keeps the attribute value as written)
    text = etree.tostring(root).replace(b" ", b' xmlns:fremd="urn:example:fremd" ', 1)
    report = validate_tree(registry, parse_xml(text))
    assert report.entry is not None
    assert not report.valid
    assert report.issues
