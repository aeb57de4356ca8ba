"""Built-in XÖV standards, as a plugin module for the ``gateway_xoev_identify`` hook.

Register the module itself: ``plugin_manager.register(gateway.xoev.standards)``. Its hook
implementation runs *last* (``trylast``), so any other plugin may teach or override a standard.

Known here: xdomea 3.x (own ``Kopf``), XBau and XBau-Kernmodul, XBeteiligung (``nachrichtenkopf.g2g``),
XDatenfelder 2/3 (own ``header``), genericode code lists, and any other message carrying an XÖV
``nachrichtenkopf.g2g`` (standard and version from the root attributes).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from lxml import etree

from gateway.hookspecs import hookimpl
from gateway.xoev.identity import MessageIdentity
from gateway.xoev.understanding import (
    child,
    find_g2g_header,
    g2g_identity,
    parse_xs_datetime,
    product_attributes,
    text,
)

_XDOMEA = re.compile(r"^urn:xoev-de:xdomea:schema:(\d+(?:\.\d+)*)$")
_XBAU = re.compile(r"^http://www\.xleitstelle\.de/xbau/(\d+)/(\d+)$")
_XBAU_KERNMODUL = re.compile(r"^http://www\.xleitstelle\.de/xbau/kernmodul/(\d+)/(\d+)/(\d+)$")
_XBETEILIGUNG = re.compile(r"^https?://www\.xleitstelle\.de/xbeteiligung/(\d)(\d+)$")
_XDATENFELDER = re.compile(r"^urn:xoev-de:fim:standard:xdatenfelder_(\d+(?:\.\d+)*)$")
GENERICODE_NS = "http://docs.oasis-open.org/codelist/ns/genericode/1.0/"

Identifier = Callable[[str, str, etree._Element], MessageIdentity | None]


@hookimpl(trylast=True)
def gateway_xoev_identify(namespace: str, local_name: str, root: etree._Element) -> MessageIdentity | None:
    for identifier in IDENTIFIERS:
        identity = identifier(namespace, local_name, root)
        if identity is not None:
            return identity
    return None


def identify_xdomea(namespace: str, local_name: str, root: etree._Element) -> MessageIdentity | None:
    match = _XDOMEA.match(namespace)
    kopf = child(root, "Kopf")
    if match is None or kopf is None:
        return None
    extra = {}
    code = text(kopf, "Nachrichtentyp", "code")
    if code:
        extra["message_code"] = code
    system = text(kopf, "SendendesSystem", "Produktname")
    if system:
        extra["sending_system"] = system
    return MessageIdentity(
        standard="xdomea",
        version=match.group(1),
        message_type=local_name,
        namespace=namespace,
        message_id=text(kopf, "ProzessID"),
        created_at=parse_xs_datetime(text(kopf, "Erstellungszeitpunkt")),
        author_id=_xdomea_authority(child(kopf, "Absender")),
        reader_id=_xdomea_authority(child(kopf, "Empfaenger")),
        test=False,  # xdomea 3 has no test marker in its Kopf
        extra=extra,
    )


def _xdomea_authority(contact: etree._Element | None) -> str | None:
    """Behoerdenkennung as DVDV-style ``praefix:schluessel`` (or whichever part is present)."""
    kennung = child(contact, "Behoerdenkennung")
    prefix = text(kennung, "Praefix", "code")
    key = text(kennung, "Behoerdenschluessel", "code")
    if prefix and key:
        return f"{prefix}:{key}"
    return key or prefix


def identify_xbau(namespace: str, local_name: str, root: etree._Element) -> MessageIdentity | None:
    if match := _XBAU.match(namespace):
        standard, version = "xbau", f"{match.group(1)}.{match.group(2)}"
    elif match := _XBAU_KERNMODUL.match(namespace):
        standard, version = "xbau-kernmodul", ".".join(match.groups())
    else:
        return None
    header = find_g2g_header(root)
    if header is None:
        return None
    return g2g_identity(root, header, standard=standard, version=version, namespace=namespace)


def identify_xbeteiligung(namespace: str, local_name: str, root: etree._Element) -> MessageIdentity | None:
    match = _XBETEILIGUNG.match(namespace)
    header = find_g2g_header(root) if match else None
    if match is None or header is None:
        return None
    version = root.get("version") or f"{match.group(1)}.{match.group(2)}"
    return g2g_identity(root, header, standard="xbeteiligung", version=version, namespace=namespace)


def identify_xdatenfelder(namespace: str, local_name: str, root: etree._Element) -> MessageIdentity | None:
    match = _XDATENFELDER.match(namespace)
    header = child(root, "header")
    if match is None or header is None:
        return None
    quality = text(header, "datenqualitaet", "code") or text(header, "datenqualitaet")
    extra = {}
    if quality:
        extra["data_quality"] = quality
    reference = text(header, "referenzID")
    if reference:
        extra["reference_id"] = reference
    return MessageIdentity(
        standard="xdatenfelder",
        version=match.group(1),
        message_type=local_name,
        namespace=namespace,
        message_id=text(header, "nachrichtID"),
        created_at=parse_xs_datetime(text(header, "erstellungszeitpunkt")),
        test=quality == "TEST",  # XDatenfelder 3: Code.Datenqualitaet PROD | TEST
        extra=extra,
    )


def identify_genericode(namespace: str, local_name: str, root: etree._Element) -> MessageIdentity | None:
    if namespace != GENERICODE_NS:
        return None
    ident = child(root, "Identification")
    extra = {}
    canonical = text(ident, "CanonicalUri")
    if canonical:
        extra["canonical_uri"] = canonical
    return MessageIdentity(
        standard="genericode",
        version="1.0",
        message_type=local_name,
        namespace=namespace,
        message_id=text(ident, "CanonicalVersionUri"),
        extra=extra,
    )


def identify_generic_g2g(namespace: str, local_name: str, root: etree._Element) -> MessageIdentity | None:
    """Any XÖV message with a ``nachrichtenkopf.g2g``: standard and version from the root attributes."""
    header = find_g2g_header(root)
    if header is None:
        return None
    attrs = product_attributes(root)
    standard = attrs.get("standard", "").strip().lower() or "unknown"
    return g2g_identity(root, header, standard=standard, version=attrs.get("version", ""), namespace=namespace)


IDENTIFIERS: tuple[Identifier, ...] = (
    identify_xdomea,
    identify_xbau,
    identify_xbeteiligung,
    identify_xdatenfelder,
    identify_genericode,
    identify_generic_g2g,  # keep last: the fallback
)
