"""Local schema index: JSON schemas by ``$id`` and XSDs by target namespace, never fetched from the network.

FIT-Connect metadata schemas and the data schemas of a destination's services "should" be resolvable
but must not be assumed reachable (digest §6.11), so the operator points ``metadata_schema_dirs`` and
``data_schema_dirs`` at local copies. Everything is loaded and compiled at startup: a broken schema is
a configuration error, not a reason to reject an application at 3 a.m.

JSON schemas are validated with Draft 2020-12 and a ``referencing`` registry holding exactly the loaded
schemas (an unknown ``$ref`` cannot trigger a download). XSDs are compiled by lxml from local files
with network access disabled.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import jsonschema
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from lxml import etree
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from gateway.errors import ConfigError
from gateway.xoev.parsing import hardened_parser_options

METADATA_ID_RE = re.compile(
    r"https://schema\.fitko\.de/fit-connect/metadata/((0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*))/metadata\.schema\.json"
)
MAX_SCHEMA_FILE_BYTES = 8 << 20
MAX_ERRORS_REPORTED = 5


def metadata_version_of(schema_uri: str) -> str | None:
    """``1.0.0`` for ``https://schema.fitko.de/fit-connect/metadata/1.0.0/metadata.schema.json``."""
    match = METADATA_ID_RE.fullmatch(schema_uri)
    return match.group(1) if match else None


@dataclass(frozen=True, slots=True)
class SchemaIssue:
    """One validation failure, described without payload values (rule + location only)."""

    rule: str
    location: str

    def describe(self) -> str:
        return f"rule '{self.rule}' failed at {self.location}"


def _json_location(error: ValidationError) -> str:
    # Instance paths hold member names and array indices, never values; long or odd member names
    # (which could be data in a free-form map) are elided.
    parts = ["$"]
    for step in error.absolute_path:
        if isinstance(step, int):
            parts.append(f"[{step}]")
        elif re.fullmatch(r"[A-Za-z_$][A-Za-z0-9_$-]{0,63}", step):
            parts.append(f".{step}")
        else:
            parts.append(".<member>")
    return "".join(parts)


@dataclass
class JsonSchemaEntry:
    schema_id: str
    path: Path
    validator: Draft202012Validator

    def issues(self, instance: Any) -> list[SchemaIssue]:
        errors = sorted(self.validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
        return [SchemaIssue(str(e.validator), _json_location(e)) for e in errors[:MAX_ERRORS_REPORTED]]


@dataclass
class XsdEntry:
    namespace: str
    path: Path
    schema: etree.XMLSchema

    def issues(self, tree: etree._ElementTree) -> list[SchemaIssue]:
        if self.schema.validate(tree):
            return []
        out = []
        entries: list[Any] = [*cast(Iterable[Any], self.schema.error_log)]
        for entry in entries[:MAX_ERRORS_REPORTED]:
            # libxml2 messages quote offending values; the error type and the element path do not.
            location = f"line {entry.line}" + (f" ({entry.path})" if entry.path else "")
            out.append(SchemaIssue(entry.type_name or "xsd", location))
        return out or [SchemaIssue("xsd", "document")]


@dataclass
class SchemaIndex:
    json_schemas: dict[str, JsonSchemaEntry] = field(default_factory=dict)
    xsds: dict[str, XsdEntry] = field(default_factory=dict)

    def metadata_versions(self) -> dict[str, str]:
        """``{version: $id}`` of the loaded FIT-Connect metadata schemas."""
        out = {}
        for schema_id in self.json_schemas:
            version = metadata_version_of(schema_id)
            if version is not None:
                out[version] = schema_id
        return out

    def json_schema(self, schema_id: str) -> JsonSchemaEntry | None:
        return self.json_schemas.get(schema_id)

    def xsd(self, namespace: str) -> XsdEntry | None:
        return self.xsds.get(namespace)


def _files(dirs: Iterable[Path], suffix: str) -> Iterator[Path]:
    for directory in dirs:
        yield from sorted(p for p in directory.rglob(f"*{suffix}") if p.is_file())


def _read_json(path: Path, key: str) -> Any:
    if path.stat().st_size > MAX_SCHEMA_FILE_BYTES:
        raise ConfigError(f"schema file {path} is larger than {MAX_SCHEMA_FILE_BYTES} bytes", key=key)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"schema file {path} is not UTF-8 JSON ({type(exc).__name__})", key=key) from None


def _compile_xsd(path: Path, key: str) -> XsdEntry:
    options = hardened_parser_options()
    parser = etree.XMLParser(**options)
    try:
        doc = etree.parse(str(path), parser)
    except (OSError, etree.XMLSyntaxError) as exc:
        raise ConfigError(f"XSD {path} cannot be read: {exc}", key=key) from None
    namespace = doc.getroot().get("targetNamespace")
    if not namespace:
        raise ConfigError(f"XSD {path} has no targetNamespace (needed to match submission schemas)", key=key)
    try:
        schema = etree.XMLSchema(doc)
    except etree.XMLSchemaParseError as exc:
        raise ConfigError(f"XSD {path} does not compile: {exc}", key=key) from None
    return XsdEntry(namespace, path, schema)


def load_schema_index(
    *, json_dirs: Iterable[tuple[Path, str]], xsd_dirs: Iterable[tuple[Path, str]] = ()
) -> SchemaIndex:
    """Load every ``*.json`` with a string ``$id`` and every ``*.xsd``; ``(dir, config key)`` pairs."""
    index = SchemaIndex()
    raw: dict[str, tuple[Path, Any]] = {}
    for directory, key in json_dirs:
        for path in _files([directory], ".json"):
            document = _read_json(path, key)
            if not isinstance(document, dict) or not isinstance(document.get("$id"), str):
                continue  # not a schema (or an anonymous one nobody can reference)
            schema_id = document["$id"]
            if schema_id in raw and raw[schema_id][0] != path:
                previous = raw[schema_id][0]
                if json.loads(previous.read_bytes()) != document:
                    raise ConfigError(f"two different schemas claim $id {schema_id} ({previous}, {path})", key=key)
                continue
            try:
                Draft202012Validator.check_schema(document)
            except jsonschema.SchemaError as exc:
                raise ConfigError(f"{path} is not a valid JSON schema: {exc.message}", key=key) from None
            raw[schema_id] = (path, document)
    registry: Registry[Any] = Registry().with_resources(
        (schema_id, Resource.from_contents(document, default_specification=DRAFT202012))
        for schema_id, (_, document) in raw.items()
    )
    for schema_id, (path, document) in raw.items():
        validator = Draft202012Validator(
            document, registry=registry, format_checker=Draft202012Validator.FORMAT_CHECKER
        )
        index.json_schemas[schema_id] = JsonSchemaEntry(schema_id, path, validator)
    for directory, key in xsd_dirs:
        for path in _files([directory], ".xsd"):
            entry = _compile_xsd(path, key)
            if entry.namespace in index.xsds:
                # Included/imported parts of one schema share a namespace; the first file (sorted) wins.
                continue
            index.xsds[entry.namespace] = entry
    return index


def referenced_unknown(index: SchemaIndex) -> Mapping[str, str]:
    """``{schema $id: unresolvable $ref}`` for loaded JSON schemas whose references point outside the index."""
    problems: dict[str, str] = {}
    for schema_id, entry in index.json_schemas.items():
        for ref in _refs(entry.validator.schema):
            if ref.startswith("#"):
                continue
            base = ref.split("#", 1)[0]
            if base and base not in index.json_schemas:
                resolved = _resolve(schema_id, base)
                if resolved not in index.json_schemas:
                    problems[schema_id] = ref
                    break
    return problems


def _resolve(base: str, ref: str) -> str:
    from urllib.parse import urljoin

    return urljoin(base, ref)


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("$ref", "$dynamicRef") and isinstance(v, str):
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)
