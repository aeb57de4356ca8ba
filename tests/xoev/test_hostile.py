"""Hostile XML corpus: every case is refused with its own reason, nothing is fetched or expanded.

Generous timeouts bound each case; nothing asserts on timing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from loopback_server import Loopback
from lxml import etree

from gateway.xoev.decode import validate_xml
from gateway.xoev.parsing import ParseLimits, XmlRejected, parse_with_limits, parse_xml
from gateway.xoev.registry import SchemaRegistry

pytestmark = pytest.mark.timeout(120)

XDOMEA_SAMPLE = "xdomea-3.0.0/samples/xx_Aussonderung.Anbieteverzeichnis.0501.xml"


def rejected(data: bytes, limits: ParseLimits | None = None) -> XmlRejected:
    with pytest.raises(XmlRejected) as info:
        parse_xml(data, limits or ParseLimits())
    return info.value


def test_xxe_local_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    doc = f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file://{secret}">]><r>&x;</r>'.encode()
    exc = rejected(doc)
    assert exc.code == "doctype"
    assert exc.line == 1
    assert "TOP-SECRET" not in str(exc)


def test_xxe_network_entity_never_fetched(loopback: Loopback) -> None:
    doc = f'<!DOCTYPE r [<!ENTITY x SYSTEM "{loopback.url}/xxe">]>\n<r>&x;</r>'.encode()
    assert rejected(doc).code == "doctype"
    assert loopback.hits == []


def test_billion_laughs() -> None:
    entities = ['<!ENTITY lol0 "lol">'] + [f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)]
    doc = f"<?xml version='1.0'?>\n<!DOCTYPE lolz [\n{''.join(entities)}\n]>\n<lolz>&lol9;</lolz>".encode()
    exc = rejected(doc)
    assert exc.code == "doctype"
    assert exc.line == 2


def test_quadratic_blowup() -> None:
    # one large entity referenced many times: no nesting, so expat-style limits may miss it
    doc = (f'<!DOCTYPE r [<!ENTITY a "{"A" * 50_000}">]><r>{"&a;" * 50_000}</r>').encode()
    assert rejected(doc).code == "doctype"


def test_external_dtd_never_fetched(loopback: Loopback) -> None:
    doc = f'<?xml version="1.0"?>\n<!DOCTYPE r SYSTEM "{loopback.url}/evil.dtd">\n<r>&leak;</r>'.encode()
    exc = rejected(doc)
    assert exc.code == "doctype"
    assert loopback.hits == []


def test_parameter_entities(loopback: Loopback) -> None:
    doc = (
        f'<!DOCTYPE r [<!ENTITY % remote SYSTEM "{loopback.url}/pe.dtd"> %remote; '
        "<!ENTITY % inner \"<!ENTITY leak 'x'>\"> %inner;]><r>&leak;</r>"
    ).encode()
    assert rejected(doc).code == "doctype"
    assert loopback.hits == []


def test_doctype_after_prolog_comments_and_pis() -> None:
    doc = b'\xef\xbb\xbf<?xml version="1.0"?>\n<!-- c -->\n<?pi x?>\n<!DOCTYPE r []>\n<r/>'
    exc = rejected(doc)
    assert (exc.code, exc.line) == ("doctype", 4)


def test_undeclared_entity_reference() -> None:
    exc = rejected(b"<r>\n  a&x;b</r>")
    assert (exc.code, exc.line) == ("entity", 2)


def test_schema_location_hint_never_fetched(loopback: Loopback, registry: SchemaRegistry, xoev_shared: Path) -> None:
    sample = (xoev_shared / XDOMEA_SAMPLE).read_bytes()
    hinted = sample.replace(b"http://xdomea.de/schemata/300/", f"{loopback.url}/schemas/".encode())
    assert f"{loopback.url}/schemas/".encode() in hinted
    outcome = validate_xml(hinted, registry=registry)
    assert outcome.valid
    # an invalid document takes the xmlschema error path too: still no fetch
    broken = hinted.replace(b"<xdomea:ProzessID>", b"<xdomea:ProzessIDx>").replace(
        b"</xdomea:ProzessID>", b"</xdomea:ProzessIDx>"
    )
    outcome = validate_xml(broken, registry=registry)
    assert not outcome.valid
    assert outcome.engine == "xmlschema"
    assert loopback.hits == []


def test_deep_nesting_2000() -> None:
    doc = b"<a>" * 2000 + b"</a>" * 2000
    exc = rejected(doc)
    assert exc.code == "too-deep"
    assert "256" in exc.message


def test_deep_nesting_own_limit_below_libxml2() -> None:
    doc = b"<a>" * 40 + b"</a>" * 40
    assert rejected(doc, ParseLimits(max_depth=32)).code == "too-deep"
    parse_xml(doc, ParseLimits(max_depth=40))


def test_one_million_elements() -> None:
    doc = b"<r>" + b"<e/>" * 1_000_000 + b"</r>"
    exc = rejected(doc)
    assert exc.code == "too-many-elements"
    assert "500000" in exc.message


def test_document_too_large() -> None:
    doc = b"<r>" + b"x" * 1000 + b"</r>"
    exc = rejected(doc, ParseLimits(max_bytes=500))
    assert exc.code == "too-large"


def test_huge_attribute_value() -> None:
    doc = b'<r a="' + b"A" * 200_000 + b'"/>'
    exc = rejected(doc)
    assert exc.code == "attribute-too-large"
    assert exc.line == 1


def test_huge_text_node() -> None:
    limits = ParseLimits(max_text_chars=1000)
    assert rejected(b"<r>" + b"T" * 5000 + b"</r>", limits).code == "text-too-large"
    # text between elements (lxml: the tail of the previous element), in the middle and at the end
    assert rejected(b"<r><a/>" + b"T" * 5000 + b"<b/></r>", limits).code == "text-too-large"
    assert rejected(b"<r><a/>" + b"T" * 5000 + b"</r>", limits).code == "text-too-large"
    assert rejected(b"<r><!--c-->" + b"T" * 5000 + b"</r>", limits).code == "text-too-large"
    parse_xml(b"<r><a/>" + b"T" * 1000 + b"<b/>" + b"T" * 1000 + b"</r>", limits)


def test_invalid_utf8() -> None:
    exc = rejected(b'<?xml version="1.0" encoding="UTF-8"?>\n<r>caf\xe9</r>')
    assert exc.code == "encoding"
    assert exc.line == 2


def test_utf16_and_other_declared_encodings_refused() -> None:
    assert rejected('<?xml version="1.0" encoding="UTF-16"?><r/>'.encode("utf-16")).code == "encoding"
    assert rejected(b'<?xml version="1.0" encoding="ISO-8859-1"?><r>caf\xe9</r>').code == "encoding"


def test_not_well_formed() -> None:
    exc = rejected(b"<r>\n<a></r>")
    assert exc.code == "syntax"
    assert exc.line == 2


def test_rejection_survives_pickling() -> None:
    import pickle

    exc = pickle.loads(pickle.dumps(XmlRejected("doctype", "no", 3)))
    assert (exc.code, exc.message, exc.line) == ("doctype", "no", 3)


# -- second layer: the lxml parser alone, as if the byte pre-check had been bypassed ------------------


def test_parser_layer_does_not_expand_or_fetch(tmp_path: Path, loopback: Loopback) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    doc = (
        f'<!DOCTYPE r [<!ENTITY f SYSTEM "file://{secret}"><!ENTITY n SYSTEM "{loopback.url}/n">'
        f'<!ENTITY % p SYSTEM "{loopback.url}/p"> %p;]><r>&f;&n;</r>'
    ).encode()
    with pytest.raises(XmlRejected) as info:
        parse_with_limits(doc, ParseLimits())
    # libxml2 asks for the parameter entity; the refusing resolver stops it
    assert info.value.code == "external-resource"
    assert "TOP-SECRET" not in str(info.value)
    assert loopback.hits == []


def test_parser_layer_refuses_external_dtd(loopback: Loopback) -> None:
    with pytest.raises(XmlRejected) as info:
        parse_with_limits(f'<!DOCTYPE r SYSTEM "{loopback.url}/x.dtd"><r/>'.encode(), ParseLimits())
    assert info.value.code == "external-resource"
    assert loopback.hits == []


def test_parser_layer_refuses_internal_subset_after_parse() -> None:
    for doc in (b'<!DOCTYPE r [<!ENTITY a "b">]><r>x</r>', b'<!DOCTYPE r [<!ENTITY a "b">]><r>&a;</r>'):
        with pytest.raises(XmlRejected) as info:
            parse_with_limits(doc, ParseLimits())
        assert info.value.code == "doctype"


def test_hardened_parse_keeps_ordinary_documents_intact() -> None:
    doc = '<?xml version="1.0" encoding="utf-8"?><!--c--><r a="&lt;&#x41;"><![CDATA[<x>]]>ä</r>'.encode()
    root = parse_xml(doc).getroot()
    assert root.get("a") == "<A"
    assert root.text == "<x>ä"
    assert etree.QName(root).localname == "r"
