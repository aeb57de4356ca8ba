"""OAuth scopes of the Submission API and what a token with them may do.

Classic scopes (OpenAPI 1.1.3): ``subscribe:destination:<id>``, ``manage:destination:<id>``,
``send:region:DE<ars>`` and ``send:region:DE<ars>+send:service:<urn>``. The newer URI scopes carry no
destination id; like the Self-Service-Portal, the sandbox links a client to destinations in its
configuration (``destinations = [...]``) and the URI scopes apply to those. ``send-submissions``
sends everywhere (``send:region:DE``).

A region scope covers a destination service when the two regions overlap in the ARS hierarchy (one
is a prefix of the other): ``DE`` covers everything, ``DE09`` covers ``DE09162000`` and a sender for
``DE09162000`` may reach a Bavaria-wide (``DE09``) destination. FITKO does not document this rule;
the sandbox documents its choice in ``docs/sandbox.md``.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from gateway_sandbox.zustelldienst.config import REGION_RE, URN_RE, DestinationConfig, ServiceConfig

URI_SCOPE_PREFIX = "https://schema.fitko.de/fit-connect/oauth/scopes/"
URI_SUBSCRIBE = URI_SCOPE_PREFIX + "subscribe-destinations"
URI_MANAGE = URI_SCOPE_PREFIX + "manage-destinations"
URI_SEND = URI_SCOPE_PREFIX + "send-submissions"

_DEST_SCOPE_RE = re.compile(r"^(subscribe|manage):destination:([0-9a-fA-F-]{32,36})$")
_SEND_RE = re.compile(r"^send:region:(DE[0-9]{0,12})(?:\+send:service:(.+))?$")


def scope_problem(scope: str) -> str | None:
    """Why ``scope`` is not a scope the sandbox understands (None when it is fine)."""
    if scope in (URI_SUBSCRIBE, URI_MANAGE, URI_SEND, "create:destination"):
        return None
    m = _DEST_SCOPE_RE.match(scope)
    if m:
        try:
            uuid.UUID(m.group(2))
        except ValueError:
            return f"scope {scope!r}: destination id is not a UUID"
        return None
    m = _SEND_RE.match(scope)
    if m:
        if m.group(2) is not None and not URN_RE.match(m.group(2)):
            return f"scope {scope!r}: service is not a URN"
        return None
    return f"unknown scope {scope!r}"


def regions_overlap(a: str, b: str) -> bool:
    return a.startswith(b) or b.startswith(a)


@dataclass(frozen=True, slots=True)
class SendScope:
    region: str
    service: str | None = None

    def covers(self, service: ServiceConfig, identifier: str | None = None) -> bool:
        if identifier is not None and service.identifier != identifier:
            return False
        if self.service is not None and self.service != service.identifier:
            return False
        return any(regions_overlap(self.region, r) for r in service.regions)


@dataclass(frozen=True, slots=True)
class Grant:
    """What one access token allows: the client, its granted scopes and its destination links."""

    client_id: str
    scopes: tuple[str, ...]
    links: tuple[str, ...] = ()

    def _destinations(self, verb: str, uri_scope: str) -> set[str]:
        out = set()
        for scope in self.scopes:
            m = _DEST_SCOPE_RE.match(scope)
            if m and m.group(1) == verb:
                out.add(str(uuid.UUID(m.group(2))))
        if uri_scope in self.scopes:
            out.update(self.links)
        return out

    @property
    def subscribed(self) -> set[str]:
        return self._destinations("subscribe", URI_SUBSCRIBE)

    @property
    def managed(self) -> set[str]:
        return self._destinations("manage", URI_MANAGE)

    def can_subscribe(self, destination_id: str) -> bool:
        return destination_id in self.subscribed

    def can_manage(self, destination_id: str) -> bool:
        return destination_id in self.managed

    @property
    def send_scopes(self) -> list[SendScope]:
        out = []
        for scope in self.scopes:
            if scope == URI_SEND:
                out.append(SendScope("DE"))
                continue
            m = _SEND_RE.match(scope)
            if m and REGION_RE.match(m.group(1)):
                out.append(SendScope(m.group(1), m.group(2)))
        return out

    def can_send_to(self, destination: DestinationConfig, service_identifier: str | None = None) -> bool:
        """Some send scope covers one of the destination's services (optionally: this service)."""
        return any(
            scope.covers(service, service_identifier) for scope in self.send_scopes for service in destination.services
        )
