"""What adapters and the FIT-Connect subscriber call: validate + identify, and decode to JSON-safe data.

Both functions are synchronous and CPU-bound: call them from a worker thread or process (the
async :class:`gateway.xoev.validator.XoevValidator` does that for you).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import xmlschema

from gateway.errors import GatewayError
from gateway.xoev.identity import MessageIdentity
from gateway.xoev.parsing import DEFAULT_LIMITS, ParseLimits, parse_xml
from gateway.xoev.registry import SchemaRegistry
from gateway.xoev.understanding import identify
from gateway.xoev.validation import ValidationIssue, root_name, validate_tree


class DecodeError(GatewayError):
    """The document is well-formed but cannot be decoded (no schema, or not schema-valid)."""


@dataclass(frozen=True, slots=True)
class ValidationOutcome:
    identity: MessageIdentity | None  # None when invalid or no plugin knows the standard
    issues: tuple[ValidationIssue, ...]  # empty when schema-valid
    namespace: str
    root: str  # local name of the root element
    bundle: str | None = None  # the bundle/entry that validated it (None: no schema registered)
    entry: str | None = None
    engine: str = "none"  # "lxml" fast path | "xmlschema" | "none"

    @property
    def valid(self) -> bool:
        return self.bundle is not None and not self.issues


def validate_xml(
    xml_bytes: bytes,
    *,
    registry: SchemaRegistry,
    hook: Any = None,
    limits: ParseLimits = DEFAULT_LIMITS,
    max_issues: int = 50,
) -> ValidationOutcome:
    """Parse (hardened), validate against the registry and, when valid, identify via the plugin hook.

    Raises :class:`gateway.xoev.parsing.XmlRejected` for hostile or malformed XML; schema problems
    are returned as ``issues``.
    """
    tree = parse_xml(xml_bytes, limits)
    report = validate_tree(registry, tree, max_issues=max_issues)
    identity = identify(hook, tree.getroot()) if hook is not None and report.valid else None
    return ValidationOutcome(
        identity=identity,
        issues=report.issues,
        namespace=report.namespace,
        root=report.root,
        bundle=report.entry.bundle if report.entry else None,
        entry=report.entry.entry if report.entry else None,
        engine=report.engine,
    )


def decode_to_dict(
    registry: SchemaRegistry,
    xml_bytes: bytes,
    *,
    limits: ParseLimits = DEFAULT_LIMITS,
    strip_namespaces: bool = True,
) -> dict[str, Any]:
    """Decode a schema-valid document into JSON-safe data: ``{root name: {"@attr": ..., child: ...}}``.

    Values are typed by the schema (xs:int -> int, xs:boolean -> bool); decimals, dates and binary
    content stay strings so ``json.dumps`` always works. Attributes are prefixed with ``@``. With
    ``strip_namespaces`` the keys are local names (the document's own prefixes are arbitrary).
    """
    tree = parse_xml(xml_bytes, limits)
    namespace, local = root_name(tree)
    entry = registry.lookup(namespace, local)
    if entry is None:
        raise DecodeError(f"no schema is registered for root element {local!r} in namespace {namespace!r}")
    schema = registry.xmlschema(entry.bundle)
    resource = xmlschema.XMLResource(tree, allow="none", defuse="always")
    try:
        data = schema.to_dict(
            resource,
            validation="strict",
            use_location_hints=False,
            decimal_type=str,
            datetime_types=False,
            binary_types=False,
            strip_namespaces=strip_namespaces,
            preserve_root=True,
        )
    except xmlschema.XMLSchemaValidationError as exc:
        raise DecodeError(f"document is not valid against {entry.bundle}/{entry.entry}: {exc.reason}") from None
    if not isinstance(data, dict):
        raise DecodeError("decoded document is not a mapping")
    return data
