"""Message understanding: standard, version, type and header of every catalog sample; plugins teach more."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pluggy
import pytest
from lxml import etree

from gateway import hookspecs
from gateway.hookspecs import hookimpl
from gateway.xoev import hookspecs as xoev_hookspecs
from gateway.xoev import standards
from gateway.xoev.decode import validate_xml
from gateway.xoev.identity import MessageIdentity
from gateway.xoev.parsing import parse_xml
from gateway.xoev.registry import SchemaRegistry
from gateway.xoev.understanding import identify, parse_xs_datetime

from .conftest import catalog_at_collection

# Hand-written messages (XBau has no upstream samples); both are schema-valid, see test_xbau_*.
XBAU_0400 = b"""<?xml version="1.0" encoding="UTF-8"?>
<xbau:informationsempfaenger.benachrichtigung.0400 xmlns:xbau="http://www.xleitstelle.de/xbau/2/6"
    produkt="Fachverfahren Bau" produkthersteller="Musterhersteller" standard="XBau-Hochbau" version="2.6">
  <nachrichtenkopf.g2g>
    <identifikation.nachricht>
      <nachrichtenUUID>0c5a8f6e-2b1d-4c3e-9f8a-1b2c3d4e5f60</nachrichtenUUID>
      <nachrichtentyp listURI="urn:xoev-de:xbau:codeliste:xbau-nachrichten" listVersionID="4.0"><code>0400</code>
      </nachrichtentyp>
      <erstellungszeitpunkt>2025-04-02T08:00:00Z</erstellungszeitpunkt>
    </identifikation.nachricht>
    <leser>
      <verzeichnisdienst listURI="urn:xoev-de:kosit:codeliste:verzeichnisdienst" listVersionID="3"><code>DVDV</code>
      </verzeichnisdienst>
      <kennung>psw:01003110</kennung>
      <name>Empfaenger</name>
    </leser>
    <autor>
      <verzeichnisdienst listURI="urn:xoev-de:kosit:codeliste:verzeichnisdienst" listVersionID="3"><code>DVDV</code>
      </verzeichnisdienst>
      <kennung>bau:091620000000</kennung>
      <name>Bauaufsicht Musterstadt</name>
    </autor>
  </nachrichtenkopf.g2g>
  <xbau:bezug><vorgang>V-2025-0002</vorgang></xbau:bezug>
  <xbau:anlass listURI="urn:xoev-de:xbau:codeliste:benachrichtigunganlass" listVersionID="1.0"><code>01</code>
  </xbau:anlass>
</xbau:informationsempfaenger.benachrichtigung.0400>
"""

XBAU_KERNMODUL_1180 = b"""<?xml version="1.0" encoding="UTF-8"?>
<xbauk:prozessnachrichten.generischeQuittierungEingang.1180
    xmlns:xbauk="http://www.xleitstelle.de/xbau/kernmodul/1/3/0" produkt="Bauportal"
    produkthersteller="Musterhersteller" produktversion="1.0" standard="XBau-Kernmodul" version="1.3.0" test="ja">
  <nachrichtenkopf.g2g>
    <identifikation.nachricht>
      <nachrichtenUUID>6f1d2c3b-4a59-4e6f-9a8b-7c6d5e4f3a2b</nachrichtenUUID>
      <nachrichtentyp listURI="urn:xoev-de:xbau-kernmodul:codeliste:xbau-kernmodul-nachrichten" listVersionID="3.0">
        <code>1180</code></nachrichtentyp>
      <erstellungszeitpunkt>2025-03-01T10:15:30.123+01:00</erstellungszeitpunkt>
    </identifikation.nachricht>
    <leser>
      <verzeichnisdienst listURI="urn:xoev-de:kosit:codeliste:verzeichnisdienst" listVersionID="3"><code>DVDV</code>
      </verzeichnisdienst>
      <kennung>bau:091620000000</kennung>
      <name>Bauaufsicht Musterstadt</name>
    </leser>
    <autor>
      <verzeichnisdienst listURI="urn:xoev-de:kosit:codeliste:verzeichnisdienst" listVersionID="3"><code>DVDV</code>
      </verzeichnisdienst>
      <kennung>psw:01003110</kennung>
      <name>Bauportal Land</name>
    </autor>
  </nachrichtenkopf.g2g>
  <bezug><vorgang>V-2025-0001</vorgang></bezug>
  <nachrichtentyp listURI="urn:xoev-de:xbau:codeliste:nachricht-eingangsquittierung" listVersionID="1.0">
    <code>0200</code></nachrichtentyp>
</xbauk:prozessnachrichten.generischeQuittierungEingang.1180>
"""


@pytest.fixture(scope="session")
def plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    pm.add_hookspecs(xoev_hookspecs)  # the XÖV channel's own hook
    pm.register(standards)
    return pm


def xpath_text(root: etree._Element, expr: str) -> str | None:
    value = root.xpath(f"string({expr})")
    assert isinstance(value, str)
    return value.strip() or None


def local(name: str) -> str:
    return f"*[local-name()='{name}']"


EXPECTED_STANDARD = {
    "xdomea-3.0.0": ("xdomea", "3.0.0"),
    "xbeteiligung-1.2": ("xbeteiligung", "1.2"),
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "any_sample_path" in metafunc.fixturenames:
        paths = [r["path"] for item in catalog_at_collection() for r in item["sample_results"]]
        metafunc.parametrize("any_sample_path", paths or ["<absent>"])


def test_every_catalog_sample_is_identified(
    plugin_manager: pluggy.PluginManager,
    xoev_shared: Path,
    catalog: list[dict[str, Any]],
    any_sample_path: str,
) -> None:
    if any_sample_path == "<absent>":
        pytest.skip("catalog absent")
    (result,) = [r for item in catalog for r in item["sample_results"] if r["path"] == any_sample_path]
    root = parse_xml((xoev_shared / any_sample_path).read_bytes()).getroot()
    identity = identify(plugin_manager.hook, root)
    assert identity is not None
    assert identity.namespace == result["root_namespace"]
    assert identity.message_type == result["root"]
    bundle = any_sample_path.split("/", 1)[0]
    if bundle in EXPECTED_STANDARD:
        assert (identity.standard, identity.version) == EXPECTED_STANDARD[bundle]
    kopf = f"/*/{local('Kopf')}"
    g2g = f"/*/{local('nachrichtenkopf.g2g')}"
    if identity.standard == "xdomea":
        assert identity.message_id == xpath_text(root, f"{kopf}/{local('ProzessID')}")
        prefix = xpath_text(root, f"{kopf}/{local('Absender')}//{local('Praefix')}/code")
        key = xpath_text(root, f"{kopf}/{local('Absender')}//{local('Behoerdenschluessel')}/code")
        assert identity.author_id == f"{prefix}:{key}"
        # header code as written (the upstream 0504 template carries 0501 there)
        assert identity.extra["message_code"] == xpath_text(root, f"{kopf}/{local('Nachrichtentyp')}/code")
    elif identity.standard == "xbeteiligung":
        assert identity.message_id == xpath_text(root, f"{g2g}//{local('nachrichtenUUID')}")
        assert identity.author_id == xpath_text(root, f"{g2g}/{local('autor')}/{local('kennung')}")
        assert identity.reader_id == xpath_text(root, f"{g2g}/{local('leser')}/{local('kennung')}")
        assert identity.test is False
    elif identity.standard == "xdatenfelder":
        assert identity.version == "2"
        assert identity.message_id == xpath_text(root, f"/*/{local('header')}/{local('nachrichtID')}")
    else:
        assert (identity.standard, identity.version) == ("genericode", "1.0")
        assert identity.message_id == xpath_text(root, f"//{local('CanonicalVersionUri')}")
        assert identity.message_id
        return
    stamp = parse_xs_datetime(
        xpath_text(root, f"//{local('erstellungszeitpunkt')} | //{local('Erstellungszeitpunkt')}")
    )
    assert identity.created_at == stamp
    assert identity.created_at is not None


def test_xbeteiligung_header_values(plugin_manager: pluggy.PluginManager, xoev_shared: Path) -> None:
    path = "xbeteiligung-1.2/samples/xmlv14/xbeteiligung-test-kommunal.Initiieren.0401.xml"
    identity = identify(plugin_manager.hook, parse_xml((xoev_shared / path).read_bytes()).getroot())
    assert identity == MessageIdentity(
        standard="xbeteiligung",
        version="1.2",
        message_type="kommunal.Initiieren.0401",
        namespace="https://www.xleitstelle.de/xbeteiligung/12",
        message_id="60f6667b-fa45-4bd7-b717-f4d6c65e5edb",
        created_at=datetime(2025, 2, 20, 16, 41, 19, 880000, tzinfo=UTC),
        author_id="xyz:0001",
        reader_id="xyz:0002",
        test=False,
        extra={
            "root.produkt": "DiPlan Cockpit",
            "root.produkthersteller": "]init[ AG",
            "root.standard": "XBeteiligung",
            "root.version": "1.2",
            "header": "nachrichtenkopf.g2g 1.1",
            "message_code": "0401",
            "message_name": "kommunal.Initiieren.0401",
            "message_list_uri": "urn:xoev-de:xleitstelle:codeliste:xbeteiligung-nachrichten",
        },
    )


def test_xdomea_kopf_values(plugin_manager: pluggy.PluginManager, xoev_shared: Path) -> None:
    path = "xdomea-3.0.0/samples/xx_Aussonderung.Anbieteverzeichnis.0501.xml"
    identity = identify(plugin_manager.hook, parse_xml((xoev_shared / path).read_bytes()).getroot())
    assert identity is not None
    assert identity.standard == "xdomea"
    assert identity.version == "3.0.0"
    assert identity.message_type == "Aussonderung.Anbieteverzeichnis.0501"
    assert identity.message_id == "242f44e8-bebf-4503-a086-db252c6a4277"
    assert identity.created_at == datetime(2020, 7, 24, 17, 21, 25)  # no offset in the message
    assert identity.author_id == "AbsBehoerdenkennungPraefixCode:LATh"
    assert identity.reader_id is not None
    assert identity.test is False


def test_test_attribute_marks_a_test_message(plugin_manager: pluggy.PluginManager, xoev_shared: Path) -> None:
    path = "xbeteiligung-1.2/samples/example402FromCockpit.xml"
    root = copy.deepcopy(parse_xml((xoev_shared / path).read_bytes()).getroot())
    root.set("test", "")  # any value: presence alone marks a test message
    identity = identify(plugin_manager.hook, root)
    assert identity is not None
    assert identity.test is True


def test_xbau_message(plugin_manager: pluggy.PluginManager, registry: SchemaRegistry) -> None:
    outcome = validate_xml(XBAU_0400, registry=registry, hook=plugin_manager.hook)
    assert outcome.valid, outcome.issues
    assert outcome.entry == "xsd_dev/xbau-nachrichten-informationsempfaenger.xsd"
    identity = outcome.identity
    assert identity is not None
    assert (identity.standard, identity.version) == ("xbau", "2.6")
    assert identity.message_type == "informationsempfaenger.benachrichtigung.0400"
    assert identity.message_id == "0c5a8f6e-2b1d-4c3e-9f8a-1b2c3d4e5f60"
    assert identity.created_at == datetime(2025, 4, 2, 8, 0, tzinfo=UTC)
    assert (identity.author_id, identity.reader_id) == ("bau:091620000000", "psw:01003110")
    assert identity.extra["header"] == "nachrichtenkopf.g2g unqualified"
    assert identity.test is False


def test_xbau_kernmodul_test_message(plugin_manager: pluggy.PluginManager, registry: SchemaRegistry) -> None:
    outcome = validate_xml(XBAU_KERNMODUL_1180, registry=registry, hook=plugin_manager.hook)
    assert outcome.valid, outcome.issues
    identity = outcome.identity
    assert identity is not None
    assert (identity.standard, identity.version) == ("xbau-kernmodul", "1.3.0")
    assert identity.message_type == "prozessnachrichten.generischeQuittierungEingang.1180"
    assert identity.created_at == datetime(2025, 3, 1, 10, 15, 30, 123000, tzinfo=timezone(timedelta(hours=1)))
    assert identity.extra["message_code"] == "1180"
    assert identity.test is True


def test_invalid_messages_are_not_identified(plugin_manager: pluggy.PluginManager, registry: SchemaRegistry) -> None:
    broken = XBAU_0400.replace(b"<kennung>psw:01003110</kennung>", b"")
    outcome = validate_xml(broken, registry=registry, hook=plugin_manager.hook)
    assert not outcome.valid
    assert outcome.identity is None


def test_xdatenfelder_3_data_quality_test(plugin_manager: pluggy.PluginManager) -> None:
    doc = b"""<xdf:xdatenfelder.datenfeld.0104 xmlns:xdf="urn:xoev-de:fim:standard:xdatenfelder_3.0.0">
      <xdf:header><xdf:nachrichtID>N-1</xdf:nachrichtID>
      <xdf:erstellungszeitpunkt>2024-01-01T00:00:00.1234567Z</xdf:erstellungszeitpunkt>
      <xdf:datenqualitaet><code>TEST</code></xdf:datenqualitaet></xdf:header></xdf:xdatenfelder.datenfeld.0104>"""
    identity = identify(plugin_manager.hook, parse_xml(doc).getroot())
    assert identity is not None
    assert (identity.standard, identity.version, identity.test) == ("xdatenfelder", "3.0.0", True)
    assert identity.created_at == datetime(2024, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)


G2G_11 = "http://xoev.de/schemata/basisnachricht/g2g/1_1"
UNKNOWN_STANDARD = f"""<x:vorgang.transportieren.2010 xmlns:x="urn:example:xwasser" xmlns:g="{G2G_11}"
    standard="XWasser" version="0.9.1" produkt="p" produkthersteller="h">
  <g:nachrichtenkopf.g2g><g:identifikation.nachricht><g:nachrichtenUUID>u-1</g:nachrichtenUUID>
  <g:nachrichtentyp><code>2010</code></g:nachrichtentyp>
  <g:erstellungszeitpunkt>2024-05-01T12:00:00+02:00</g:erstellungszeitpunkt></g:identifikation.nachricht>
  <g:leser><b:kennung xmlns:b="urn:b">l:1</b:kennung></g:leser>
  <g:autor><b:kennung xmlns:b="urn:b">a:2</b:kennung></g:autor>
  </g:nachrichtenkopf.g2g></x:vorgang.transportieren.2010>""".encode()


def test_generic_g2g_fallback(plugin_manager: pluggy.PluginManager) -> None:
    identity = identify(plugin_manager.hook, parse_xml(UNKNOWN_STANDARD).getroot())
    assert identity is not None
    assert (identity.standard, identity.version) == ("xwasser", "0.9.1")
    assert (identity.message_id, identity.author_id, identity.reader_id) == ("u-1", "a:2", "l:1")
    assert identity.extra["header"] == "nachrichtenkopf.g2g 1.1"


def test_unknown_message_without_header(plugin_manager: pluggy.PluginManager) -> None:
    assert identify(plugin_manager.hook, parse_xml(b'<r xmlns="urn:nothing"/>').getroot()) is None


class XWasserPlugin:
    """What a vendor plugin looks like: it teaches the gateway a standard the core does not know."""

    @hookimpl
    def gateway_xoev_identify(self, namespace: str, local_name: str, root: etree._Element) -> MessageIdentity | None:
        if namespace != "urn:example:xwasser":
            return None
        uuid = root.xpath("string(//*[local-name()='nachrichtenUUID'])")
        return MessageIdentity(
            standard="xwasser",
            version="0.9.1",
            message_type=local_name,
            namespace=namespace,
            message_id=str(uuid),
            extra={"taught_by": "plugin"},
        )


class OverrideXdomea:
    @hookimpl
    def gateway_xoev_identify(self, namespace: str, local_name: str, root: etree._Element) -> MessageIdentity | None:
        if namespace.startswith("urn:xoev-de:xdomea:"):
            return MessageIdentity(standard="xdomea-custom", version="3", message_type=local_name, namespace=namespace)
        return None


def test_a_plugin_teaches_a_new_standard(xoev_shared: Path) -> None:
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    pm.add_hookspecs(xoev_hookspecs)  # the XÖV channel's own hook
    pm.register(XWasserPlugin())  # registered BEFORE the built-ins: trylast keeps them behind it
    pm.register(standards)
    root = parse_xml(UNKNOWN_STANDARD).getroot()
    identity = identify(pm.hook, root)
    assert identity is not None
    assert identity.extra == {"taught_by": "plugin"}
    assert identity.message_id == "u-1"
    # the built-ins still answer for everything else
    xdomea = parse_xml((xoev_shared / "xdomea-3.0.0/samples/xx_Aussonderung.Aussonderung.0503.xml").read_bytes())
    found = identify(pm.hook, xdomea.getroot())
    assert found is not None
    assert found.standard == "xdomea"
    pm.register(OverrideXdomea())
    overridden = identify(pm.hook, xdomea.getroot())
    assert overridden is not None
    assert overridden.standard == "xdomea-custom"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T12:00:00Z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01T12:00:00.5+02:00", datetime(2024, 5, 1, 12, 0, 0, 500000, tzinfo=timezone(timedelta(hours=2)))),
        ("2024-05-01T12:00:00", datetime(2024, 5, 1, 12)),
        ("gestern", None),
        (None, None),
    ],
)
def test_parse_xs_datetime(text: str | None, expected: datetime | None) -> None:
    assert parse_xs_datetime(text) == expected
