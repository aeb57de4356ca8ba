"""Understanding an XÖV message: header extraction helpers and the ``identify`` entry point.

Identification itself goes through the pluggy hook ``gateway_xoev_identify`` (firstresult), so
plugins can teach new standards; the built-in standards live in :mod:`gateway.xoev.standards`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lxml import etree

from gateway.xoev.identity import MessageIdentity

G2G_NAMESPACES = {
    "http://xoev.de/schemata/basisnachricht/g2g/1_0": "1.0",
    "http://xoev.de/schemata/basisnachricht/g2g/1_1": "1.1",
    "": "unqualified",  # xoev-basisnachricht-unqualified-g2g: the header is not namespace-qualified
}
_FRACTION = re.compile(r"(\.\d{1,6})\d*")


def identify(hook: Any, root: etree._Element) -> MessageIdentity | None:
    """Ask the plugins (``hook`` is a pluggy ``PluginManager.hook``) who understands this message."""
    qname = etree.QName(root)
    result: MessageIdentity | None = hook.gateway_xoev_identify(
        namespace=qname.namespace or "", local_name=qname.localname, root=root
    )
    return result


def local(elem: etree._Element) -> str:
    return etree.QName(elem).localname


def children(elem: etree._Element, name: str) -> Iterator[etree._Element]:
    """Child elements by local name, whatever their namespace (headers come qualified and not)."""
    for child in elem:
        if isinstance(child.tag, str) and etree.QName(child).localname == name:
            yield child


def child(elem: etree._Element | None, *path: str) -> etree._Element | None:
    for name in path:
        if elem is None:
            return None
        elem = next(children(elem, name), None)
    return elem


def text(elem: etree._Element | None, *path: str) -> str | None:
    found = child(elem, *path)
    if found is None or found.text is None:
        return None
    value = found.text.strip()
    return value or None


def parse_xs_datetime(value: str | None) -> datetime | None:
    """xs:dateTime -> datetime (naive when the message has no offset); None if unparsable."""
    if not value:
        return None
    normalised = _FRACTION.sub(lambda m: m.group(1), value.strip())
    if normalised.endswith("Z"):
        normalised = normalised[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(normalised)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class G2GHeader:
    """The XÖV ``nachrichtenkopf.g2g`` (xoev-basisnachricht-g2g 1.0/1.1, qualified or not)."""

    header_version: str  # "1.0" | "1.1" | "unqualified"
    message_id: str | None  # nachrichtenUUID
    message_code: str | None  # nachrichtentyp/code
    message_name: str | None  # nachrichtentyp/name
    message_list_uri: str | None  # nachrichtentyp/@listURI
    created_at: datetime | None  # erstellungszeitpunkt
    author_id: str | None  # autor/kennung
    reader_id: str | None  # leser/kennung


def find_g2g_header(root: etree._Element) -> G2GHeader | None:
    for candidate in children(root, "nachrichtenkopf.g2g"):
        version = G2G_NAMESPACES.get(etree.QName(candidate).namespace or "")
        if version is None:
            continue
        ident = child(candidate, "identifikation.nachricht")
        message_type = child(ident, "nachrichtentyp")
        return G2GHeader(
            header_version=version,
            message_id=text(ident, "nachrichtenUUID"),
            message_code=text(message_type, "code"),
            message_name=text(message_type, "name"),
            message_list_uri=message_type.get("listURI") if message_type is not None else None,
            created_at=parse_xs_datetime(text(ident, "erstellungszeitpunkt")),
            author_id=text(candidate, "autor", "kennung"),
            reader_id=text(candidate, "leser", "kennung"),
        )
    return None


def product_attributes(root: etree._Element) -> dict[str, str]:
    """The XÖV root attributes (produkt, produkthersteller, produktversion, standard, version, test)."""
    names = ("produkt", "produkthersteller", "produktversion", "standard", "version", "test")
    return {name: str(root.get(name)) for name in names if root.get(name) is not None}


def g2g_identity(
    root: etree._Element, header: G2GHeader, *, standard: str, version: str, namespace: str
) -> MessageIdentity:
    attrs = product_attributes(root)
    extra = {f"root.{k}": v for k, v in attrs.items() if k != "test"}
    extra["header"] = f"nachrichtenkopf.g2g {header.header_version}"
    if header.message_code:
        extra["message_code"] = header.message_code
    if header.message_name:
        extra["message_name"] = header.message_name
    if header.message_list_uri:
        extra["message_list_uri"] = header.message_list_uri
    return MessageIdentity(
        standard=standard,
        version=version,
        message_type=local(root),  # XÖV: the root name is <prozess>.<aktion>.<code>
        namespace=namespace,
        message_id=header.message_id,
        created_at=header.created_at,
        author_id=header.author_id,
        reader_id=header.reader_id,
        # "Ist dieses Attribut vorhanden, handelt es sich ... um eine Testnachricht" (any value).
        test="test" in attrs,
        extra=extra,
    )
