"""decode_to_dict: JSON-safe, schema-typed data for adapters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.xoev.decode import DecodeError, decode_to_dict
from gateway.xoev.parsing import XmlRejected
from gateway.xoev.registry import SchemaRegistry


def test_every_valid_sample_decodes_to_json(
    registry: SchemaRegistry, xoev_shared: Path, catalog: list[dict[str, Any]]
) -> None:
    results = [r for item in catalog for r in item["sample_results"] if r["valid"]]
    assert results
    for result in results:
        decoded = decode_to_dict(registry, (xoev_shared / result["path"]).read_bytes())
        assert list(decoded) == [result["root"]]
        assert json.loads(json.dumps(decoded)) == decoded  # JSON-safe: survives a round trip unchanged


def test_xbeteiligung_header_is_reachable(registry: SchemaRegistry, xoev_shared: Path) -> None:
    data = (xoev_shared / "xbeteiligung-1.2/samples/xmlv14/xbeteiligung-test-kommunal.Initiieren.0401.xml").read_bytes()
    decoded = decode_to_dict(registry, data)
    message = decoded["kommunal.Initiieren.0401"]
    assert message["@standard"] == "XBeteiligung"
    header = message["nachrichtenkopf.g2g"]
    assert header["identifikation.nachricht"]["nachrichtenUUID"] == "60f6667b-fa45-4bd7-b717-f4d6c65e5edb"
    assert header["autor"]["kennung"] == "xyz:0001"


def test_values_are_typed_by_the_schema(registry: SchemaRegistry, xoev_shared: Path) -> None:
    data = (xoev_shared / "xdomea-3.0.0/samples/xx_Aussonderung.Anbieteverzeichnis.0501.xml").read_bytes()
    kopf = decode_to_dict(registry, data)["Aussonderung.Anbieteverzeichnis.0501"]["Kopf"]
    assert isinstance(kopf["Empfangsbestaetigung"], bool)  # xs:boolean
    assert kopf["Erstellungszeitpunkt"] == "2020-07-24T17:21:25"  # dates stay strings (JSON-safe)
    assert kopf["Nachrichtentyp"]["code"] == "0501"


def test_namespaced_keys_on_request(registry: SchemaRegistry, xoev_shared: Path) -> None:
    data = (xoev_shared / "xdomea-3.0.0/samples/xx_Aussonderung.Aussonderung.0503.xml").read_bytes()
    decoded = decode_to_dict(registry, data, strip_namespaces=False)
    assert "xdomea:Aussonderung.Aussonderung.0503" in decoded


def test_invalid_document_is_a_decode_error(registry: SchemaRegistry, xoev_shared: Path) -> None:
    data = (xoev_shared / "xdatenfelder/samples/2.0/bewohnerparken/C05000073_genericode.xml").read_bytes()
    with pytest.raises(DecodeError, match=r"not valid against xdatenfelder/xdatenfelder/2\.0/genericode\.xsd"):
        decode_to_dict(registry, data)


def test_unknown_root_is_a_decode_error(registry: SchemaRegistry) -> None:
    with pytest.raises(DecodeError, match="no schema is registered"):
        decode_to_dict(registry, b"<unbekannt/>")


def test_hostile_input_is_rejected_before_decoding(registry: SchemaRegistry) -> None:
    with pytest.raises(XmlRejected) as info:
        decode_to_dict(registry, b'<!DOCTYPE r [<!ENTITY a "b">]><r>&a;</r>')
    assert info.value.code == "doctype"
