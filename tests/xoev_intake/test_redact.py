"""Schema issues shown to a sender never carry the document's values (quoted or not)."""

from __future__ import annotations

from gateway.sources.xoev_http.redact import MARK, redact_reason, redacted_issues
from gateway.xoev.parsing import parse_xml
from gateway.xoev.validation import ValidationIssue

DOC = b"""<r xmlns="urn:x" kind="Geheimsache">
  <name>Erika Mustermann</name>
  <betrag>zwoelf Euro</betrag>
  <code>0501</code>
</r>"""


def test_quoted_values_are_replaced() -> None:
    values = {"Erika Mustermann", "zwoelf Euro", "0501", "Geheimsache"}
    assert (
        redact_reason("invalid value 'zwoelf Euro' for xs:decimal", values, [])
        == f"invalid value '{MARK}' for xs:decimal"
    )
    assert (
        redact_reason('attribute kind="Geheimsache" not allowed', values, []) == f'attribute kind="{MARK}" not allowed'
    )
    # schema names and enumerations that are not document values stay
    assert redact_reason("Tag 'xdomea:ProzessID' expected", values, []) == "Tag 'xdomea:ProzessID' expected"
    assert (
        redact_reason("value must be one of ['0501', '0502']", values, []) == f"value must be one of ['{MARK}', '0502']"
    )


def test_fragments_and_unquoted_echoes_of_the_offending_line() -> None:
    line_values = ["Erika Mustermann"]
    # a validator that truncates or reformats still quotes a part of the value
    assert redact_reason("value 'Erika Muster' too long", set(), line_values) == f"value '{MARK}' too long"
    assert redact_reason("Erika Mustermann is not a decimal", set(), line_values) == f"{MARK} is not a decimal"
    # short fragments say nothing about the data and are kept ("1", "ab")
    assert redact_reason("length 'ab' exceeds 1", set(), ["ab"]) == "length 'ab' exceeds 1"


def test_issues_by_line() -> None:
    tree = parse_xml(DOC)
    issues = [
        ValidationIssue("/r/betrag", 3, "Invalid decimal 'zwoelf Euro'", "xs:simpleType xs:decimal"),
        ValidationIssue("/r", 1, "attribute kind='Geheimsache' unexpected", "xs:complexType r"),
    ]
    out = redacted_issues(tree, issues)
    assert out == [
        {"path": "/r/betrag", "line": 3, "rule": "xs:simpleType xs:decimal", "reason": f"Invalid decimal '{MARK}'"},
        {"path": "/r", "line": 1, "rule": "xs:complexType r", "reason": f"attribute kind='{MARK}' unexpected"},
    ]
    assert "Erika" not in str(out)
