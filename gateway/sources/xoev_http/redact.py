"""Schema issues for the sender, without the document's values.

xmlschema and libxml2 quote the offending value in their reasons (``Invalid datetime string
'gestern' ...``), and a value may be personal data. Before an issue leaves the gateway, every quoted
fragment that is (part of) a text or attribute value of the document is replaced by ``[value]``, and
values of the elements on the issue's line are removed wherever they occur. Paths (element names and
positions), lines and rules come from the schema, not from the data, and are kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from lxml import etree

from gateway.xoev.validation import ValidationIssue

MARK = "[value]"
_QUOTED = re.compile(r"'([^']*)'|\"([^\"]*)\"")
_MIN_FRAGMENT = 3  # shorter fragments ("1", "ab") are too common in reasons to say anything about the data


def _element_values(elem: etree._Element) -> Iterable[str]:
    if elem.text:
        yield elem.text
    if elem.tail:
        yield elem.tail
    if isinstance(elem.tag, str):  # comments and processing instructions have no attributes
        yield from (str(v) for v in elem.attrib.values())


def document_values(tree: etree._ElementTree) -> tuple[set[str], dict[int, list[str]]]:
    """(every stripped text/attribute value, values by source line of their element)."""
    values: set[str] = set()
    by_line: dict[int, list[str]] = {}
    for elem in tree.getroot().iter():
        line = elem.sourceline
        for raw in _element_values(elem):
            value = raw.strip()
            if not value:
                continue
            values.add(value)
            if isinstance(line, int):
                by_line.setdefault(line, []).append(value)
    return values, by_line


def redact_reason(reason: str, values: set[str], line_values: list[str]) -> str:
    def quoted(match: re.Match[str]) -> str:
        content = match.group(1) if match.group(1) is not None else match.group(2)
        stripped = content.strip()
        if stripped and (
            stripped in values or (len(stripped) >= _MIN_FRAGMENT and any(stripped in v for v in line_values))
        ):
            quote = match.group(0)[0]
            return f"{quote}{MARK}{quote}"
        return match.group(0)

    out = _QUOTED.sub(quoted, reason)
    for value in sorted(line_values, key=len, reverse=True):  # unquoted echoes of the offending element
        if len(value) >= _MIN_FRAGMENT and value in out:
            out = out.replace(value, MARK)
    return out


def redacted_issues(tree: etree._ElementTree, issues: Iterable[ValidationIssue]) -> list[dict[str, Any]]:
    """``[{path, line, rule, reason}]`` safe to show the sender."""
    values, by_line = document_values(tree)
    out: list[dict[str, Any]] = []
    for issue in issues:
        line_values = by_line.get(issue.line, []) if issue.line is not None else []
        out.append(
            {
                "path": issue.path,
                "line": issue.line,
                "rule": issue.rule,
                "reason": redact_reason(issue.reason, values, line_values),
            }
        )
    return out
