"""Offline schema registry: (namespace, root element) -> entry schema, compiled once, cached on disk.

Per bundle, all entry schemas are compiled together into ONE ``xmlschema.XMLSchema10`` (the entries
of a bundle share most of their closure: the 23 XBau entries all include the same 1 MB baukasten, so
one object costs 15 MB instead of 23 x 13 MB). Message routing still goes by entry: only the root
elements an entry declares are accepted as message roots. The fast path uses libxml2
(``lxml.etree.XMLSchema``), compiled per (bundle, namespace) from the same files in ~10 ms.

Offline and sandboxed: xmlschema runs with ``allow='local'``, ``defuse='always'`` and the bundle's
``locations`` as URI mapper; lxml runs with a resolver that maps ``locations`` and refuses any
file outside the bundle dir and any remote URL. The closure walker refuses such bundles up front.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import structlog
import xmlschema
from lxml import etree

from gateway.errors import GatewayError
from gateway.xoev.cache import BundleCache, CachedIndex, bundle_fingerprint, cache_key
from gateway.xoev.closure import XSD_NS, ClosureError, ClosureWalker, file_digests
from gateway.xoev.config import BundleConfig, XoevConfig
from gateway.xoev.parsing import hardened_parser_options

log = structlog.get_logger(__name__)


class RegistryError(GatewayError):
    """One or more bundles cannot be loaded (the messages name bundle, entry and cause)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True, slots=True)
class EntryInfo:
    bundle: str
    entry: str  # path relative to the bundle dir
    namespace: str
    roots: tuple[str, ...]


@dataclass(slots=True)
class LoadedBundle:
    config: BundleConfig
    entries: tuple[EntryInfo, ...]
    source: str  # "cache" (warm) | "built" (compiled now) | "uncached" (no cache dir)
    index: CachedIndex | None = None
    schema: Any = None  # xmlschema.XMLSchema10, loaded lazily from the cache
    lxml: dict[str, etree.XMLSchema | None] = field(default_factory=dict)  # namespace -> schema
    lxml_errors: dict[str, str] = field(default_factory=dict)

    @property
    def namespaces(self) -> list[str]:
        return sorted({e.namespace for e in self.entries})


class SchemaRegistry:
    """Use :meth:`open`; thread-compatible for lookups, materialisation is not locked."""

    def __init__(self, config: XoevConfig) -> None:
        self.config = config
        self.cache = BundleCache(config.cache_dir) if config.cache_dir is not None else None
        self.bundles: dict[str, LoadedBundle] = {}
        self.errors: list[str] = []
        self._roots: dict[tuple[str, str], EntryInfo] = {}

    @classmethod
    def open(cls, config: XoevConfig, *, strict: bool = True) -> SchemaRegistry:
        """Load every bundle (from the cache when it is still valid, else compile and cache it).

        With ``strict`` any bundle problem raises :class:`RegistryError`; otherwise the problems are
        collected in :attr:`errors` and the usable bundles stay available.
        """
        registry = cls(config)
        memo: dict[Path, str] = {}
        for bundle in config.bundles:
            try:
                registry._add(registry._load_bundle(bundle, memo))
            except RegistryError as exc:
                registry.errors.extend(exc.problems)
        if strict and registry.errors:
            raise RegistryError(registry.errors)
        return registry

    # -- lookups -------------------------------------------------------------------------------

    def lookup(self, namespace: str, local_name: str) -> EntryInfo | None:
        return self._roots.get((namespace, local_name))

    def entries(self) -> Iterator[EntryInfo]:
        for bundle in self.bundles.values():
            yield from bundle.entries

    def xmlschema(self, bundle_name: str) -> Any:
        """The bundle's compiled xmlschema object (unpickled on first use)."""
        bundle = self.bundles[bundle_name]
        if bundle.schema is None:
            schema = None
            if self.cache is not None and bundle.index is not None:
                schema = self.cache.load_schema(bundle.index)
            if schema is None:  # corrupt or vanished pickle: rebuild silently
                log.info("xoev_cache_rebuild", bundle=bundle_name)
                rebuilt = self._build_bundle(bundle.config, {})
                bundle.index, schema = rebuilt.index, rebuilt.schema
            bundle.schema = schema
        return bundle.schema

    def lxml_schema(self, bundle_name: str, namespace: str) -> etree.XMLSchema | None:
        """libxml2 schema for the bundle's entries of ``namespace``; None if libxml2 cannot load it."""
        bundle = self.bundles[bundle_name]
        if namespace not in bundle.lxml:
            paths = [bundle.config.entry_path(e.entry) for e in bundle.entries if e.namespace == namespace]
            try:
                bundle.lxml[namespace] = compile_lxml(bundle.config, namespace, paths)
            except (etree.XMLSchemaParseError, etree.XMLSyntaxError, ClosureError, OSError) as exc:
                bundle.lxml[namespace] = None
                bundle.lxml_errors[namespace] = str(exc)
                log.info("xoev_lxml_unavailable", bundle=bundle_name, namespace=namespace)
        return bundle.lxml[namespace]

    def warm(self) -> None:
        """Materialise every schema now (workers call this once at start-up)."""
        for name, bundle in self.bundles.items():
            self.xmlschema(name)
            for namespace in bundle.namespaces:
                self.lxml_schema(name, namespace)

    # -- loading -------------------------------------------------------------------------------

    def _add(self, bundle: LoadedBundle) -> None:
        problems = []
        for entry in bundle.entries:
            for root in entry.roots:
                other = self._roots.get((entry.namespace, root))
                if other is not None and other != entry:
                    problems.append(
                        f"bundle {entry.bundle}: root element {{{entry.namespace}}}{root} of {entry.entry} "
                        f"is already declared by bundle {other.bundle} ({other.entry})"
                    )
        if problems:
            raise RegistryError(problems)
        for entry in bundle.entries:
            for root in entry.roots:
                self._roots[(entry.namespace, root)] = entry
        self.bundles[bundle.config.name] = bundle

    def _load_bundle(self, bundle: BundleConfig, memo: dict[Path, str]) -> LoadedBundle:
        if self.cache is not None:
            index = self.cache.lookup(bundle, memo)
            if index is not None:
                entries = tuple(
                    EntryInfo(bundle.name, e["entry"], e["namespace"], tuple(e["roots"])) for e in index.entries
                )
                return LoadedBundle(bundle, entries, "cache", index)
        return self._build_bundle(bundle, memo)

    def _build_bundle(self, bundle: BundleConfig, memo: dict[Path, str]) -> LoadedBundle:
        started = time.perf_counter()
        walker = ClosureWalker(bundle)
        try:
            closure = walker.closure(bundle.entries)
            roots = [walker.entry_roots(e) for e in bundle.entries]
        except ClosureError as exc:
            raise RegistryError([f"bundle {bundle.name}: {exc}"]) from exc
        problems = [
            f"bundle {bundle.name}: entry {entry} declares no global element"
            for entry, (_, r) in zip(bundle.entries, roots, strict=True)
            if not r
        ]
        if problems:
            raise RegistryError(problems)
        schema = compile_xmlschema(bundle)
        entries = tuple(
            EntryInfo(bundle.name, entry, ns, names) for entry, (ns, names) in zip(bundle.entries, roots, strict=True)
        )
        index = None
        source = "uncached"
        if self.cache is not None:
            digests = file_digests(closure.files, memo)
            missing = [str(m) for m in closure.missing]
            key = cache_key(bundle_fingerprint(bundle), digests, missing)
            raw_entries = [{"entry": e.entry, "namespace": e.namespace, "roots": list(e.roots)} for e in entries]
            try:
                index = self.cache.store(
                    bundle, key=key, digests=digests, missing=missing, entries=raw_entries, schema=schema
                )
                source = "built"
            except OSError as exc:  # a read-only cache must not stop the gateway
                log.warning("xoev_cache_unwritable", bundle=bundle.name, error=str(exc))
        log.info("xoev_bundle_compiled", bundle=bundle.name, seconds=round(time.perf_counter() - started, 3))
        return LoadedBundle(bundle, entries, source, index, schema)


def compile_xmlschema(bundle: BundleConfig) -> Any:
    """All entries of a bundle as one xmlschema object; offline, defused, URL map applied."""
    sources: Any = [str(bundle.entry_path(e)) for e in bundle.entries]
    try:
        return xmlschema.XMLSchema10(
            sources if len(sources) > 1 else sources[0],
            allow="local",
            defuse="always",
            uri_mapper={url: str(path) for url, path in bundle.locations.items()},
            use_location_hints=False,
        )
    except Exception as exc:  # xmlschema raises many types (parse, resource, value errors)
        raise RegistryError([f"bundle {bundle.name}: xmlschema cannot load it: {exc}"]) from exc


class _BundleResolver(etree.Resolver):
    """Schema includes/imports for libxml2: mapped URLs, files inside the bundle, nothing else."""

    def __init__(self, bundle: BundleConfig) -> None:
        super().__init__()
        self.bundle = bundle

    def resolve(self, system_url: str, public_id: str, context: object) -> Any:  # type: ignore[override]
        mapped = self.bundle.locations.get(system_url)
        if mapped is not None:
            return self.resolve_filename(str(mapped), context)  # type: ignore[attr-defined]
        parts = urlsplit(system_url)
        if parts.scheme.lower() == "file":
            path = Path(unquote(parts.path)).resolve()
        elif parts.scheme and len(parts.scheme) > 1:
            raise ClosureError(f"refused schema location {system_url!r} (not mapped, not local)")
        else:
            path = Path(unquote(system_url)).resolve()
        if not path.is_relative_to(self.bundle.dir):
            raise ClosureError(f"refused schema location {system_url!r} outside the bundle dir")
        return self.resolve_filename(str(path), context)  # type: ignore[attr-defined]


def compile_lxml(bundle: BundleConfig, namespace: str, entry_paths: list[Path]) -> etree.XMLSchema:
    parser = etree.XMLParser(**hardened_parser_options())
    parser.resolvers.add(_BundleResolver(bundle))
    if len(entry_paths) == 1:
        doc = etree.parse(str(entry_paths[0]), parser)
    else:
        # A generated wrapper that includes the entries of one namespace; the upstream files stay untouched.
        includes = "".join(
            f'<xs:include schemaLocation="{quote(p.relative_to(bundle.dir).as_posix())}"/>' for p in entry_paths
        )
        tns = f' targetNamespace="{_xml_attr(namespace)}"' if namespace else ""
        wrapper = f'<xs:schema xmlns:xs="{XSD_NS}"{tns}>{includes}</xs:schema>'
        doc = etree.fromstring(
            wrapper.encode(), parser, base_url=str(bundle.dir / "__gateway_group__.xsd")
        ).getroottree()
    return etree.XMLSchema(doc)


def _xml_attr(value: str) -> str:
    return value.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
