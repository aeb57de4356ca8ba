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
from typing import TYPE_CHECKING, Any, Literal

from gateway.model import RoutingKeys
from gateway.options import At, option, options
from gateway.problems import Problem

if TYPE_CHECKING:
    from gateway.config import GatewayConfig, PluginInstance, RetryPolicy, RoutingSection

PROBLEM_BASE = "https://ozg-gateway.example/problems/"
NO_ROUTE = PROBLEM_BASE + "no-route"
TEST_IN_PRODUCTION = PROBLEM_BASE + "test-message-in-production"
SIGNATURE_REQUIRED = PROBLEM_BASE + "signature-required"  # route "required", the message carries no signature
SIGNATURE_INVALID = PROBLEM_BASE + "signature-invalid"  # route "required"/"optional", the signature is not valid
# Where every channel records its signature verdict: {"status": "valid"|"absent"|"invalid", "code": ...}.
SIGNATURE_METADATA_KEY = "signature"
_CODE = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
ROUTE_MATCH_KEYS = (
    "service",
    "region",
    "destination",
    "message_type",
    "namespace",
    "source",
    "sender",
    "test",
)
GLOB_KEYS = ("service", "message_type", "namespace", "source", "sender")
_GLOB_CHARS = "*?["


def _glob_problem(pattern: str) -> str | None:
    """Why ``pattern`` is no usable glob: fnmatch takes an unclosed ``[`` literally, so the rule would
    silently never match."""
    i, n = 0, len(pattern)
    while i < n:
        if pattern[i] == "[":
            j = i + 1
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1  # a leading "]" is a member of the set
            j = pattern.find("]", j)
            if j < 0:
                return f"invalid glob {pattern!r}: the '[' at position {i} is never closed (the rule would never match)"
            i = j
        i += 1
    return None


def _glob_check(value: str | None) -> str | None:
    return _glob_problem(value) if value else None


def _no_glob(what: str) -> Any:
    def check(value: str | None) -> str | None:
        if value and any(ch in value for ch in _GLOB_CHARS):
            return f"{what}, not a glob: {value!r} would never match"
        return None

    return check


@options(kw_only=False)
class RouteMatch:
    service: str | None = option(
        default=None, doc="The service id (LeiKa/FIM URN): exact or a glob.", check=_glob_check
    )
    region: str | None = option(
        default=None,
        doc="The ARS/AGS: **prefix** (`09162` matches `091620000000`; a leading `DE` is ignored).",
        check=_no_glob("region is a prefix of the ARS/AGS"),
    )
    destination: str | None = option(
        default=None,
        doc="FIT-Connect destination id / XÖV reader id: exact, case-insensitive.",
        check=_no_glob("destination is matched exactly"),
    )
    message_type: str | None = option(
        default=None, doc="e.g. `baugenehmigung.antrag.0200`: exact or a glob.", check=_glob_check
    )
    namespace: str | None = option(
        default=None, doc="XML namespace / JSON schema URI of the data: exact or a glob.", check=_glob_check
    )
    source: str | None = option(
        default=None, doc="The `[sources.NAME]` it came through: exact (must be declared) or a glob.", check=_glob_check
    )
    sender: str | None = option(
        default=None, doc="Authenticated sender / author authority id: exact or a glob.", check=_glob_check
    )
    test: bool | None = option(default=None, doc="The message's test flag.")

    @property
    def catch_all(self) -> bool:
        return all(getattr(self, key) is None for key in ROUTE_MATCH_KEYS)


@options(kw_only=False)
class Route:
    name: str = option(doc="Unique; appears in metrics, logs and the audit trail.")
    adapter: str = option(doc="An `[adapters.NAME]`.")
    match: RouteMatch = option(
        doc="Every key given must match (see below); without it the rule matches everything.",
        default_factory=RouteMatch,
    )
    retry: str = option(default="default", doc="A `[retry.NAME]` policy.")
    signature: Literal["required", "optional", "ignored"] = option(
        default="ignored",
        doc='What this route needs of the signature the channel recorded (`metadata["signature"]`): '
        "`required` → only a valid one, `optional` → absent or valid, `ignored` → no check.",
    )


def read_routes(
    raw: Any,
    root: At,
    *,
    adapters: Mapping[str, PluginInstance],
    sources: Mapping[str, PluginInstance],
    retry: Mapping[str, RetryPolicy],
    routing: RoutingSection,
) -> tuple[Route, ...]:
    """``[[routes]]`` read and cross-checked: names unique, references declared, shadowed rules warned about."""
    at = root.child("routes")
    if not isinstance(raw, list):
        at.error("expected an array of tables ([[routes]])")
        return ()
    routes: list[Route] = []
    indexed: list[tuple[int, Route]] = []
    seen: set[str] = set()
    for index, item in enumerate(raw):
        here = at.child(index)
        route = here.convert(Route, item)
        if not isinstance(route, Route):
            continue
        if route.name in seen:
            here.error(f"duplicate route name {route.name!r}", "name")
        seen.add(route.name)
        if route.adapter not in adapters and not root.reader.failed("adapters"):
            here.error(f"names adapter {route.adapter!r}, which is not declared in [adapters]", "adapter")
        if route.retry not in retry:
            here.error(f"names retry policy {route.retry!r}, which is not declared in [retry]", "retry")
        wanted = route.match.source
        if wanted is not None and not any(ch in wanted for ch in _GLOB_CHARS) and wanted not in sources:
            here.error(f"matches source {wanted!r}, which is not declared in [sources]", "match.source")
        routes.append(route)
        indexed.append((index, route))
    for index, route in indexed:
        earlier = next(((i, r) for i, r in indexed if i < index and r.match.catch_all), None)
        if earlier is not None:
            root.reader.warn(
                at.child(index).key,
                f"route {route.name!r} is never used: routes[{earlier[0]}] ({earlier[1].name!r}) before it "
                "matches every message",
            )
    names = {r.name for r in routes}
    for key, value in (("fallback", routing.fallback), ("test_route", routing.test_route)):
        if value is not None and value not in names:
            root.child("routing").error(f"names route {value!r}, which is not declared in [[routes]]", key)
    return tuple(routes)


def signature_verdict(metadata: Mapping[str, Any]) -> tuple[str, str | None]:
    """``(status, code)`` of the signature verdict a channel recorded; ``("absent", None)`` when none
    was recorded (a channel that does not check signatures has, for the route, no valid signature)."""
    found = metadata.get(SIGNATURE_METADATA_KEY)
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
