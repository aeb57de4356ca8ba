"""The file closure of a bundle's entry schemas, resolved exactly as the schema loaders resolve it.

Used to (1) sandbox a bundle: every include/import must resolve to a file inside the bundle dir or
to a configured ``locations`` mapping, never to the network, (2) compute the cache key (hash of
every file in the closure), (3) find an entry's message root elements.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from lxml import etree

from gateway.xoev.config import BundleConfig
from gateway.xoev.parsing import XmlRejected, hardened_parser_options

XSD_NS = "http://www.w3.org/2001/XMLSchema"
_REF_TAGS = {f"{{{XSD_NS}}}{t}": t for t in ("include", "import", "redefine", "override")}
_SAME_NAMESPACE_REFS = frozenset({"include", "redefine", "override"})
_REMOTE_SCHEMES = frozenset({"http", "https", "ftp", "ftps", "sftp"})


class ClosureError(Exception):
    """A bundle's closure cannot be used offline and sandboxed (remote, outside, unreadable)."""


@dataclass(frozen=True, slots=True)
class SchemaRef:
    kind: str  # include | import | redefine | override
    location: str  # as written
    namespace: str | None  # for imports


@dataclass(frozen=True, slots=True)
class SchemaDoc:
    path: Path
    target_namespace: str
    elements: tuple[str, ...]  # top-level xs:element names declared in this file
    refs: tuple[SchemaRef, ...]


@dataclass(slots=True)
class Closure:
    files: list[Path] = field(default_factory=list)  # every schema file loaded (sorted, unique)
    missing: list[Path] = field(default_factory=list)  # referenced local files that do not exist


class ClosureWalker:
    """Reads schema documents once (cached per instance) and walks their references."""

    def __init__(self, bundle: BundleConfig) -> None:
        self.bundle = bundle
        self._docs: dict[Path, SchemaDoc] = {}

    def read(self, path: Path) -> SchemaDoc:
        doc = self._docs.get(path)
        if doc is None:
            doc = self._docs[path] = read_schema_doc(path)
        return doc

    def resolve(self, location: str, base: Path) -> Path:
        """Resolve a schemaLocation like the loaders do: ``locations`` first, then relative to ``base``."""
        location = location.strip()
        mapped = self.bundle.locations.get(location)
        if mapped is not None:
            return mapped
        parts = urlsplit(location)
        if parts.scheme.lower() in _REMOTE_SCHEMES:
            raise ClosureError(
                f"{base.name}: import of remote {location!r} is not mapped; add it to the bundle's "
                "'locations' table (the gateway never fetches schemas)"
            )
        if parts.scheme.lower() == "file":
            path = Path(unquote(parts.path))
        elif parts.scheme and len(parts.scheme) > 1:
            raise ClosureError(f"{base.name}: unsupported schema location {location!r}")
        else:
            path = base.parent / unquote(location)
        path = path.resolve()
        if not path.is_relative_to(self.bundle.dir):
            raise ClosureError(f"{base.name}: schema location {location!r} leaves the bundle dir ({path})")
        return path

    def closure(self, entries: Iterable[str]) -> Closure:
        result = Closure()
        seen: set[Path] = set()
        missing: set[Path] = set()
        todo = [self.bundle.entry_path(e).resolve() for e in entries]
        while todo:
            path = todo.pop()
            if path in seen:
                continue
            if not path.is_file():
                missing.add(path)
                continue
            seen.add(path)
            doc = self.read(path)
            for ref in doc.refs:
                todo.append(self.resolve(ref.location, path))
        result.files = sorted(seen)
        result.missing = sorted(missing)
        return result

    def entry_roots(self, entry: str) -> tuple[str, tuple[str, ...]]:
        """(target namespace, message root elements) of an entry schema.

        The roots are the elements the entry file declares itself; an include-only entry (like
        ``xdomea.xsd``) contributes every element of the files it includes.
        """
        path = self.bundle.entry_path(entry).resolve()
        doc = self.read(path)
        if doc.elements:
            return doc.target_namespace, doc.elements
        names: list[str] = []
        seen: set[Path] = set()
        todo = [path]
        while todo:
            current = todo.pop(0)
            if current in seen or not current.is_file():
                continue
            seen.add(current)
            current_doc = self.read(current)
            names.extend(current_doc.elements)
            todo.extend(self.resolve(r.location, current) for r in current_doc.refs if r.kind in _SAME_NAMESPACE_REFS)
        return doc.target_namespace, tuple(sorted(set(names)))


def read_schema_doc(path: Path) -> SchemaDoc:
    parser = etree.XMLParser(**hardened_parser_options())
    try:
        root = etree.parse(str(path), parser).getroot()
    except (etree.XMLSyntaxError, XmlRejected, OSError) as exc:
        raise ClosureError(f"cannot read schema {path}: {exc}") from exc
    if root.tag != f"{{{XSD_NS}}}schema":
        raise ClosureError(f"{path} is not an XML Schema document (root {root.tag})")
    elements: list[str] = []
    refs: list[SchemaRef] = []
    for child in root:
        if not isinstance(child.tag, str):
            continue
        kind = _REF_TAGS.get(child.tag)
        if kind is not None:
            location = child.get("schemaLocation")
            if location:  # an import without a location uses the loader's built-in fallbacks
                refs.append(SchemaRef(kind, location, child.get("namespace")))
        elif child.tag == f"{{{XSD_NS}}}element" and child.get("name"):
            elements.append(str(child.get("name")))
    return SchemaDoc(path, root.get("targetNamespace", ""), tuple(elements), tuple(refs))


def file_digests(paths: Iterable[Path], memo: dict[Path, str] | None = None) -> list[tuple[str, str]]:
    """[(path, sha256 hex)] of the given files; ``memo`` shares digests between bundles."""
    out = []
    for path in paths:
        digest = memo.get(path) if memo is not None else None
        if digest is None:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if memo is not None:
                memo[path] = digest
        out.append((str(path), digest))
    return out
