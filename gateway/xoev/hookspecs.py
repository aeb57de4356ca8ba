"""The XÖV channel's own hook (added to the plugin host by :mod:`gateway.xoev.subsystem`'s ``HOOKSPECS``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.hookspecs import hookspec

if TYPE_CHECKING:
    from lxml import etree

    from gateway.xoev.identity import MessageIdentity


@hookspec(firstresult=True)
def gateway_xoev_identify(namespace: str, local_name: str, root: etree._Element) -> MessageIdentity | None:
    """Identify an XML message: standard, version, message type and header fields.

    Called with the parsed (already hardened and schema-valid) document's root. Return ``None`` if
    the standard is not yours; the first plugin that returns an identity wins. This is how plugins
    teach the gateway new XÖV standards.
    """
