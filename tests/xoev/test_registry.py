"""Schema registry: lookup by (namespace, root), offline sandbox, on-disk cache (warm, stale, corrupt)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from loopback_server import Loopback
from lxml import etree

from gateway.xoev import cache as cache_module
from gateway.xoev.config import XoevConfig, parse_xoev_config
from gateway.xoev.decode import validate_xml
from gateway.xoev.registry import RegistryError, SchemaRegistry, compile_lxml

XS = "http://www.w3.org/2001/XMLSchema"
GENERICODE = "http://docs.oasis-open.org/codelist/ns/genericode/1.0/"

MAIN_XSD = f"""<xs:schema xmlns:xs="{XS}" xmlns:d="urn:demo" targetNamespace="urn:demo"
  elementFormDefault="qualified">
  <xs:include schemaLocation="types/types.xsd"/>
  <xs:element name="demo.nachricht.0001">
    <xs:complexType><xs:sequence><xs:element name="anzahl" type="d:Anzahl"/></xs:sequence></xs:complexType>
  </xs:element>
</xs:schema>"""
TYPES_XSD = f"""<xs:schema xmlns:xs="{XS}" targetNamespace="urn:demo">
  <xs:simpleType name="Anzahl"><xs:restriction base="xs:{{base}}"/></xs:simpleType>
</xs:schema>"""
DEMO_DOC = b'<d:demo.nachricht.0001 xmlns:d="urn:demo"><d:anzahl>abc</d:anzahl></d:demo.nachricht.0001>'


def demo_bundle(root: Path, base_type: str = "string") -> Path:
    (root / "types").mkdir(parents=True, exist_ok=True)
    (root / "main.xsd").write_text(MAIN_XSD)
    (root / "types" / "types.xsd").write_text(TYPES_XSD.replace("{base}", base_type))
    return root


def demo_config(tmp_path: Path, bundles: list[dict[str, Any]], cache: bool = True) -> XoevConfig:
    raw: dict[str, Any] = {"cache_dir": str(tmp_path / "cache") if cache else False, "bundles": bundles}
    return parse_xoev_config(raw, base_dir=tmp_path, file="test.toml")


def demo(tmp_path: Path, **extra: Any) -> XoevConfig:
    demo_bundle(tmp_path / "demo")
    return demo_config(tmp_path, [{"name": "demo", "dir": "demo", "entries": ["main.xsd"], **extra}])


def test_every_catalog_entry_is_registered(registry: SchemaRegistry, catalog: list[dict[str, Any]]) -> None:
    for item in catalog:
        entry_rel = item["entry_xsd"][len(item["set"]) + 1 :]
        for root in item["root_elements"]:
            found = registry.lookup(item["namespace"], root)
            assert found is not None, (item["namespace"], root)
            assert (found.bundle, found.entry) == (item["set"], entry_rel)
        (entry,) = [e for e in registry.entries() if e.bundle == item["set"] and e.entry == entry_rel]
        assert sorted(entry.roots) == sorted(item["root_elements"])
        assert entry.namespace == item["namespace"]
    assert registry.lookup("urn:xoev-de:xdomea:schema:3.0.0", "Kopf") is None  # not a message root


def test_warm_start_uses_the_cache(xoev_config: XoevConfig, registry: SchemaRegistry) -> None:
    started = time.perf_counter()
    warm = SchemaRegistry.open(xoev_config)
    warm.warm()
    elapsed = time.perf_counter() - started
    assert {b.source for b in warm.bundles.values()} == {"cache"}
    assert sorted(warm.entries(), key=str) == sorted(registry.entries(), key=str)
    print(f"warm start with every catalog bundle, fully materialised: {elapsed:.3f} s")


def test_libxml2_loads_every_namespace_except_genericode(registry: SchemaRegistry) -> None:
    for name, bundle in registry.bundles.items():
        for namespace in bundle.namespaces:
            fast = registry.lxml_schema(name, namespace)
            assert (fast is None) == (namespace == GENERICODE), (name, namespace)
    assert "XML/1998/namespace}lang" in registry.bundles["xdatenfelder"].lxml_errors[GENERICODE]


def test_corrupt_pickle_is_rebuilt_silently(tmp_path: Path) -> None:
    config = demo(tmp_path)
    first = SchemaRegistry.open(config)
    assert first.bundles["demo"].source == "built"
    index = json.loads((tmp_path / "cache" / "demo.json").read_text())
    pickle_path = tmp_path / "cache" / index["pickle_file"]
    pickle_path.write_bytes(pickle_path.read_bytes()[:100])
    again = SchemaRegistry.open(config)
    assert again.bundles["demo"].source == "cache"  # the index still matches; the pickle is checked on use
    outcome = validate_xml(DEMO_DOC, registry=again)
    assert outcome.valid
    assert again.xmlschema("demo") is not None
    third = SchemaRegistry.open(config)
    assert third.cache is not None
    assert third.bundles["demo"].index is not None
    assert third.cache.load_schema(third.bundles["demo"].index) is not None  # the rebuild was stored


def test_corrupt_index_is_rebuilt(tmp_path: Path) -> None:
    config = demo(tmp_path)
    SchemaRegistry.open(config)
    (tmp_path / "cache" / "demo.json").write_text("{not json")
    assert SchemaRegistry.open(config).bundles["demo"].source == "built"
    assert SchemaRegistry.open(config).bundles["demo"].source == "cache"


def test_changed_schema_file_invalidates_the_cache(tmp_path: Path) -> None:
    config = demo(tmp_path)
    assert validate_xml(DEMO_DOC, registry=SchemaRegistry.open(config)).valid
    demo_bundle(tmp_path / "demo", base_type="int")  # the included file changes, the entry does not
    changed = SchemaRegistry.open(config)
    assert changed.bundles["demo"].source == "built"
    outcome = validate_xml(DEMO_DOC, registry=changed)
    assert not outcome.valid
    assert outcome.issues[0].path.endswith("anzahl")


def test_toolchain_change_invalidates_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = demo(tmp_path)
    SchemaRegistry.open(config)
    original = cache_module.toolchain
    monkeypatch.setattr(cache_module, "toolchain", lambda: {**original(), "xmlschema": "0.0.1"})
    assert SchemaRegistry.open(config).bundles["demo"].source == "built"


def test_without_cache_dir(tmp_path: Path) -> None:
    demo_bundle(tmp_path / "demo")
    config = demo_config(tmp_path, [{"name": "demo", "dir": "demo", "entries": ["main.xsd"]}], cache=False)
    registry = SchemaRegistry.open(config)
    assert registry.bundles["demo"].source == "uncached"
    assert not (tmp_path / "cache").exists()
    assert validate_xml(DEMO_DOC, registry=registry).valid


def remote_import_bundle(root: Path, url: str) -> None:
    demo_bundle(root)
    (root / "other.xsd").write_text(
        f'<xs:schema xmlns:xs="{XS}" targetNamespace="urn:other"><xs:element name="x" type="xs:int"/></xs:schema>'
    )
    (root / "main.xsd").write_text(
        MAIN_XSD.replace(
            '<xs:include schemaLocation="types/types.xsd"/>',
            f'<xs:include schemaLocation="types/types.xsd"/><xs:import namespace="urn:other" schemaLocation="{url}"/>',
        )
    )


def test_unmapped_remote_import_is_refused(tmp_path: Path, loopback: Loopback) -> None:
    url = f"{loopback.url}/other.xsd"
    remote_import_bundle(tmp_path / "demo", url)
    config = demo_config(tmp_path, [{"name": "demo", "dir": "demo", "entries": ["main.xsd"]}])
    with pytest.raises(RegistryError) as info:
        SchemaRegistry.open(config)
    assert "bundle demo" in str(info.value)
    assert url in str(info.value)
    assert "locations" in str(info.value)
    # libxml2 on its own (bypassing the closure check) is refused by the resolver as well
    with pytest.raises(etree.XMLSchemaParseError, match=r"Failed to parse"):
        compile_lxml(config.bundles[0], "urn:demo", [config.bundles[0].dir / "main.xsd"])
    assert loopback.hits == []


def test_mapped_remote_import_is_loaded_locally(tmp_path: Path, loopback: Loopback) -> None:
    url = f"{loopback.url}/other.xsd"
    remote_import_bundle(tmp_path / "demo", url)
    config = demo_config(
        tmp_path, [{"name": "demo", "dir": "demo", "entries": ["main.xsd"], "locations": {url: "other.xsd"}}]
    )
    registry = SchemaRegistry.open(config)
    assert registry.lxml_schema("demo", "urn:demo") is not None
    assert registry.xmlschema("demo").maps.elements.get("{urn:other}x") is not None
    assert loopback.hits == []


def test_include_outside_the_bundle_is_refused(tmp_path: Path) -> None:
    demo_bundle(tmp_path / "demo")
    (tmp_path / "elsewhere.xsd").write_text(f'<xs:schema xmlns:xs="{XS}" targetNamespace="urn:demo"/>')
    main = tmp_path / "demo" / "main.xsd"
    main.write_text(main.read_text().replace("types/types.xsd", "../elsewhere.xsd"))
    config = demo_config(tmp_path, [{"name": "demo", "dir": "demo", "entries": ["main.xsd"]}])
    with pytest.raises(RegistryError, match="leaves the bundle dir"):
        SchemaRegistry.open(config)


def test_root_claimed_by_two_bundles(tmp_path: Path) -> None:
    demo_bundle(tmp_path / "a")
    demo_bundle(tmp_path / "b")
    config = demo_config(
        tmp_path,
        [
            {"name": "a", "dir": "a", "entries": ["main.xsd"]},
            {"name": "b", "dir": "b", "entries": ["main.xsd"]},
        ],
    )
    with pytest.raises(RegistryError, match="already declared by bundle a"):
        SchemaRegistry.open(config)
    lenient = SchemaRegistry.open(config, strict=False)
    assert list(lenient.bundles) == ["a"]
    assert len(lenient.errors) == 1


def test_broken_schema_is_reported_with_the_bundle(tmp_path: Path) -> None:
    demo_bundle(tmp_path / "demo")
    (tmp_path / "demo" / "types" / "types.xsd").write_text(TYPES_XSD.replace("xs:{base}", "d:Missing"))
    config = demo_config(tmp_path, [{"name": "demo", "dir": "demo", "entries": ["main.xsd"]}])
    with pytest.raises(RegistryError, match="bundle demo: xmlschema cannot load it"):
        SchemaRegistry.open(config)
