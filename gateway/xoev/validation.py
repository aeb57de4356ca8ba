"""Schema validation of a parsed document: libxml2 fast path, xmlschema for precise error reports.

* valid per libxml2 -> done (the common case; libxml2 validates a 10 KiB message in well under 1 ms);
* invalid per libxml2, or a bundle libxml2 cannot load -> xmlschema lists the issues with XPath,
  line and the XSD rule broken; should xmlschema find nothing where libxml2 did, libxml2's own
  messages are reported, so an invalid verdict always comes with issues.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import xmlschema
from lxml import etree

from gateway.xoev.parsing import source_line
from gateway.xoev.registry import EntryInfo, SchemaRegistry


@dataclass(frozen=True, slots=True)
class ValidationIssue:
    path: str  # XPath of the offending element ("/" for document-level problems)
    line: int | None
    reason: str
    rule: str | None  # the XSD rule broken, e.g. "xs:enumeration in xdomea:NachrichtentypCodeType"


@dataclass(frozen=True, slots=True)
class ValidationReport:
    namespace: str
    root: str  # local name of the root element
    entry: EntryInfo | None  # None: no schema is registered for this root
    issues: tuple[ValidationIssue, ...]
    engine: str  # "lxml" (fast path) | "xmlschema" | "none"

    @property
    def valid(self) -> bool:
        return self.entry is not None and not self.issues


def root_name(tree: etree._ElementTree) -> tuple[str, str]:
    qname = etree.QName(tree.getroot())
    return qname.namespace or "", qname.localname


def validate_tree(registry: SchemaRegistry, tree: etree._ElementTree, *, max_issues: int = 50) -> ValidationReport:
    namespace, local = root_name(tree)
    entry = registry.lookup(namespace, local)
    if entry is None:
        issue = ValidationIssue(
            path=f"/{{{namespace}}}{local}" if namespace else f"/{local}",
            line=source_line(tree.getroot()),
            reason=f"no schema is registered for root element {local!r} in namespace {namespace!r}",
            rule="registry",
        )
        return ValidationReport(namespace, local, None, (issue,), "none")

    fast = registry.lxml_schema(entry.bundle, namespace)
    if fast is not None and fast.validate(tree):
        return ValidationReport(namespace, local, entry, (), "lxml")

    schema = registry.xmlschema(entry.bundle)
    try:
        issues = list(islice(xmlschema_issues(schema, tree), max_issues))
        aborted: str | None = None
    except xmlschema.XMLSchemaException as exc:
        # xmlschema raises instead of reporting for some document errors (an ``xsi:type`` naming a type
        # no schema defines: XMLSchemaKeyError). That is the document's fault, never "validator
        # unavailable": report what libxml2 found, else the exception as the issue.
        issues, aborted = [], f"{type(exc).__name__}: {exc}"
    if not issues and fast is not None:
        issues = list(islice(lxml_issues(fast.error_log), max_issues))
    if not issues and aborted is not None:
        issues = [ValidationIssue(path="/", line=None, reason=aborted, rule="xsi:type")]
    return ValidationReport(namespace, local, entry, tuple(issues), "xmlschema")


def xmlschema_issues(schema: Any, tree: etree._ElementTree) -> Iterator[ValidationIssue]:
    # The tree was parsed by the hardened parser; xmlschema walks it without reparsing and never
    # follows xsi:schemaLocation hints.
    resource = xmlschema.XMLResource(tree, allow="none", defuse="always")
    for error in schema.iter_errors(resource, use_location_hints=False):
        yield ValidationIssue(
            path=error.path or "/",
            line=error.sourceline,
            reason=str(error.reason or error.message),
            rule=describe_rule(error.validator),
        )


def lxml_issues(error_log: Any) -> Iterator[ValidationIssue]:
    for entry in error_log:
        yield ValidationIssue(
            path=entry.path or "/",
            line=entry.line or None,
            reason=entry.message,
            rule=f"libxml2 {entry.type_name}",
        )


def describe_rule(component: Any) -> str | None:
    """A short name of the XSD component that rejected the data, with its named owner."""
    if component is None:
        return None
    kind = _kind(component)
    name = getattr(component, "prefixed_name", None)
    rule = f"{kind} {name}" if name else kind
    owner = getattr(component, "parent", None)
    while owner is not None and getattr(owner, "parent", None) is not None:
        owner = owner.parent  # climb to the global component this rule belongs to
    if owner is not None and owner is not component:
        owner_name = getattr(owner, "prefixed_name", None)
        if owner_name and owner_name != name:
            rule += f" in {_kind(owner)} {owner_name}"
    return rule


def _kind(component: Any) -> str:
    elem = getattr(component, "elem", None)
    tag = getattr(elem, "tag", None)
    if isinstance(tag, str) and tag.startswith("{http://www.w3.org/2001/XMLSchema}"):
        local = tag.split("}", 1)[1]
        if local in ("restriction", "extension", "complexContent", "simpleContent"):
            local = "complexType" if getattr(component, "is_complex", lambda: False)() else "simpleType"
        return f"xs:{local}"
    if getattr(component, "is_simple", lambda: False)():
        return "xs:simpleType"
    return type(component).__name__
