"""Routing: ordered rules from gateway.toml; the first match wins.

A rule matches when every key it names matches the message:

* ``service``, ``message_type``, ``namespace``, ``source``, ``sender``: exact, or a glob (``*``, ``?``, ``[..]``);
* ``region``: prefix of the message's ARS/AGS (``09162`` matches ``091620000000``; a leading ``DE`` is ignored);
* ``destination``: exact (case-insensitive: FIT-Connect ids are UUIDs);
* ``test``: the message's test flag.

No match → the ``[routing] fallback`` route if configured, else the message is rejected with the
documented reason ``no-route``. Test messages go to ``[routing] test_route`` when set and are refused
in production mode (``test-message-in-production``).

After a route is chosen, its ``signature`` policy is enforced (:func:`signature_refusal`) against the
signature verdict the channel recorded in the message metadata: ``signature-required`` /
``signature-invalid``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from gateway.config import ROUTE_MATCH_KEYS, GatewayConfig, Route, RouteMatch
from gateway.model import RoutingKeys
from gateway.problems import Problem

PROBLEM_BASE = "https://ozg-gateway.example/problems/"
NO_ROUTE = PROBLEM_BASE + "no-route"
TEST_IN_PRODUCTION = PROBLEM_BASE + "test-message-in-production"
SIGNATURE_REQUIRED = PROBLEM_BASE + "signature-required"  # route "required", the message carries no signature
SIGNATURE_INVALID = PROBLEM_BASE + "signature-invalid"  # route "required"/"optional", the signature is not valid
# Where channels record their signature verdict: a generic top-level "signature", else the channel's own
# table (XÖV: metadata["xoev"]["signature"]). Each is {"status": "valid"|"absent"|"invalid", "code": ...}.
SIGNATURE_METADATA_TABLES = ("xoev",)
_CODE = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")


def signature_verdict(metadata: Mapping[str, Any]) -> tuple[str, str | None]:
    """``(status, code)`` of the signature verdict a channel recorded; ``("absent", None)`` when none
    was recorded (a channel that does not check signatures has, for the route, no valid signature)."""
    found = metadata.get("signature")
    if not isinstance(found, Mapping):
        for table in SIGNATURE_METADATA_TABLES:
            inner = metadata.get(table)
            if isinstance(inner, Mapping) and isinstance(inner.get("signature"), Mapping):
                found = inner["signature"]
                break
    if not isinstance(found, Mapping):
        return "absent", None
    status = found.get("status")
    code = found.get("code")
    # only a short token goes into problem details (they are logged and shown to the sender)
    code = code if isinstance(code, str) and _CODE.fullmatch(code) else None
    if status in ("valid", "invalid"):
        return str(status), code
    return "absent", code  # "absent", "ignored" (not checked) or anything unknown: not a valid signature


def signature_refusal(route: Route, metadata: Mapping[str, Any]) -> Problem | None:
    """The problem that refuses the message under ``route.signature``, or None when the policy is met."""
    if route.signature == "ignored":
        return None
    status, code = signature_verdict(metadata)
    if status == "valid":
        return None
    if status == "invalid":
        detail = "the route accepts only valid signatures; the signature is invalid"
        return Problem(
            SIGNATURE_INVALID, "Signature is not valid", detail + (f" ({code})" if code else ""), "signature"
        )
    if route.signature == "required":
        detail = "the route requires a valid signature; the message has none"
        return Problem(SIGNATURE_REQUIRED, "Signature required", detail, "signature")
    return None


@dataclass(frozen=True, slots=True)
class RuleVerdict:
    route: Route
    matched: bool
    reasons: tuple[str, ...]  # why it did not match (empty when matched)


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    route: Route | None
    reason: str  # human-readable, no personal data
    rejection: str | None  # problem type URI when rejected
    verdicts: tuple[RuleVerdict, ...] = ()


def _strip_de(value: str) -> str:
    return value[2:] if value[:2].upper() == "DE" else value


def _glob(pattern: str, value: str) -> bool:
    return fnmatchcase(value, pattern)


def match_rule(match: RouteMatch, keys: RoutingKeys, source: str | None) -> tuple[str, ...]:
    """Return why the rule does not match (empty tuple: it matches)."""
    reasons: list[str] = []
    values = {
        "service": keys.service,
        "message_type": keys.message_type,
        "namespace": keys.namespace,
        "source": source,
        "sender": keys.sender,
    }
    for key in ROUTE_MATCH_KEYS:
        wanted = getattr(match, key)
        if wanted is None:
            continue
        if key == "test":
            if keys.test != wanted:
                reasons.append(f"test: message test={keys.test}, rule wants {wanted}")
        elif key == "region":
            have = _strip_de(keys.region) if keys.region else None
            if have is None or not have.startswith(_strip_de(wanted)):
                reasons.append(f"region: {have!r} does not start with {_strip_de(wanted)!r}")
        elif key == "destination":
            if keys.destination is None or keys.destination.lower() != wanted.lower():
                reasons.append(f"destination: {keys.destination!r} != {wanted!r}")
        else:
            have_value = values[key]
            if have_value is None or not _glob(wanted, have_value):
                reasons.append(f"{key}: {have_value!r} does not match {wanted!r}")
    return tuple(reasons)


class Router:
    def __init__(self, routes: tuple[Route, ...], *, fallback: str | None, test_route: str | None, production: bool):
        self.routes = routes
        self.by_name = {r.name: r for r in routes}
        self.fallback = self.by_name[fallback] if fallback else None
        self.test_route = self.by_name[test_route] if test_route else None
        self.production = production

    @classmethod
    def from_config(cls, config: GatewayConfig) -> Router:
        return cls(
            config.routes,
            fallback=config.routing.fallback,
            test_route=config.routing.test_route,
            production=config.production,
        )

    def decide(self, keys: RoutingKeys, source: str | None) -> RoutingDecision:
        if keys.test:
            if self.production:
                return RoutingDecision(None, "test messages are refused in production mode", TEST_IN_PRODUCTION)
            if self.test_route is not None:
                return RoutingDecision(self.test_route, f"test message → test route {self.test_route.name!r}", None)
        verdicts: list[RuleVerdict] = []
        for route in self.routes:
            reasons = match_rule(route.match, keys, source)
            verdicts.append(RuleVerdict(route, not reasons, reasons))
            if not reasons:
                return RoutingDecision(route, f"rule {route.name!r} matches", None, tuple(verdicts))
        if self.fallback is not None:
            return RoutingDecision(
                self.fallback, f"no rule matches → fallback {self.fallback.name!r}", None, tuple(verdicts)
            )
        return RoutingDecision(None, "no rule matches and no fallback is configured", NO_ROUTE, tuple(verdicts))

    def explain(self, keys: RoutingKeys, source: str | None) -> list[str]:
        decision = self.decide(keys, source)
        lines = []
        for index, verdict in enumerate(decision.verdicts, start=1):
            if verdict.matched:
                lines.append(f"{index}. {verdict.route.name}: MATCH → adapter {verdict.route.adapter}")
            else:
                lines.append(f"{index}. {verdict.route.name}: no match ({'; '.join(verdict.reasons)})")
        if decision.route is not None:
            lines.append(f"=> route {decision.route.name!r} → adapter {decision.route.adapter!r} ({decision.reason})")
        else:
            lines.append(f"=> rejected: {decision.reason} [{decision.rejection}]")
        return lines
