"""Routing rules: each match key's semantics, first match wins, fallback, rejection, test messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.support import write_config
from gateway.cli import main
from gateway.config import load_config
from gateway.model import RoutingKeys
from gateway.routing import NO_ROUTE, TEST_IN_PRODUCTION, Router

SERVICE = "urn:de:fim:leika:leistung:99050012104000"
DEST = "5B0D8A16-2E5F-4D0C-9D6C-9F1B7A3C2E01"

RULES = f"""
[adapters.a]
type = "filesystem"
directory = "a"

[sources.fit-bau]
type = "fake"

[[routes]]
name = "exact-service"
adapter = "a"
[routes.match]
service = "{SERVICE}"
region = "09162"

[[routes]]
name = "glob-service"
adapter = "a"
[routes.match]
service = "urn:de:fim:leika:leistung:99010003001*"

[[routes]]
name = "region-with-de"
adapter = "a"
[routes.match]
region = "DE05315"

[[routes]]
name = "destination"
adapter = "a"
[routes.match]
destination = "{DEST}"

[[routes]]
name = "xoev-bau"
adapter = "a"
[routes.match]
message_type = "baugenehmigung.*.02?0"
namespace = "http://www.xleitstelle.de/xbau/2/[0-9]"

[[routes]]
name = "by-source"
adapter = "a"
[routes.match]
source = "fit-bau"

[[routes]]
name = "by-sender"
adapter = "a"
[routes.match]
sender = "behoerde:09*"

[[routes]]
name = "test-only"
adapter = "a"
[routes.match]
test = true
service = "urn:test:*"
"""


def router(tmp_path: Path, extra: str = "", *, production: bool = False) -> Router:
    text = RULES + extra
    if production:
        text = '[gateway]\nmode = "production"\n' + text
    return Router.from_config(load_config(write_config(tmp_path, text)))


def route_of(r: Router, source: str | None = None, **keys: object) -> str | None:
    decision = r.decide(RoutingKeys.from_dict(keys), source)
    return decision.route.name if decision.route else None


@pytest.mark.parametrize(
    ("keys", "source", "expected"),
    [
        ({"service": SERVICE, "region": "091620000000"}, None, "exact-service"),
        ({"service": SERVICE, "region": "DE091620000000"}, None, "exact-service"),  # "DE" stripped on input
        ({"service": SERVICE, "region": "de09162"}, None, "exact-service"),
        ({"service": SERVICE + "1", "region": "09162"}, None, None),  # exact means exact
        ({"service": SERVICE, "region": "0916"}, None, None),  # message region shorter than the prefix
        ({"service": SERVICE, "region": "19162"}, None, None),
        ({"service": SERVICE}, None, None),  # rule needs a region the message lacks
        ({"service": "urn:de:fim:leika:leistung:99010003001123"}, None, "glob-service"),
        ({"service": "urn:de:fim:leika:leistung:9901000300"}, None, None),
        ({"region": "053150000000"}, None, "region-with-de"),  # rule "DE05315" matches without DE
        ({"region": "DE053150000000"}, None, "region-with-de"),
        ({"destination": DEST.lower()}, None, "destination"),  # case-insensitive
        ({"destination": DEST}, None, "destination"),
        ({"destination": DEST[:-1]}, None, None),
        (
            {"message_type": "baugenehmigung.antrag.0200", "namespace": "http://www.xleitstelle.de/xbau/2/3"},
            None,
            "xoev-bau",
        ),
        (
            {"message_type": "baugenehmigung.antrag.0200", "namespace": "http://www.xleitstelle.de/xbau/3/0"},
            None,
            None,
        ),
        ({"message_type": "Baugenehmigung.antrag.0200", "namespace": "http://www.xleitstelle.de/xbau/2/3"}, None, None),
        ({}, "fit-bau", "by-source"),
        ({}, "fit-bauamt", None),
        ({"sender": "behoerde:09162"}, None, "by-sender"),
        ({"sender": "behoerde:05315"}, None, None),
        ({"service": "urn:test:1", "test": True}, None, "test-only"),
        ({"service": "urn:test:1", "test": False}, None, None),
    ],
)
def test_match_semantics(tmp_path: Path, keys: dict[str, object], source: str | None, expected: str | None) -> None:
    assert route_of(router(tmp_path), source, **keys) == expected


def test_first_match_wins(tmp_path: Path) -> None:
    # Matches "exact-service", "region-with-de"-style rules later, and "by-source": the first one wins.
    r = router(tmp_path, '\n[[routes]]\nname = "catch-all"\nadapter = "a"\n')
    keys = {"service": SERVICE, "region": "09162", "destination": DEST}
    assert route_of(r, "fit-bau", **keys) == "exact-service"
    assert route_of(r, "fit-bau", destination=DEST) == "destination"
    assert route_of(r, "fit-bau") == "by-source"
    assert route_of(r, "other") == "catch-all"


def test_no_match_rejects_with_no_route(tmp_path: Path) -> None:
    decision = router(tmp_path).decide(RoutingKeys(service="urn:unknown"), "other")
    assert decision.route is None
    assert decision.rejection == NO_ROUTE
    assert NO_ROUTE.endswith("/no-route")
    assert decision.reason == "no rule matches and no fallback is configured"
    assert len(decision.verdicts) == 8
    assert not any(v.matched for v in decision.verdicts)


def test_fallback(tmp_path: Path) -> None:
    r = router(
        tmp_path,
        '\n[[routes]]\nname = "post"\nadapter = "a"\n[routes.match]\nservice = "never"\n[routing]\nfallback = "post"\n',
    )
    decision = r.decide(RoutingKeys(service="urn:unknown"), None)
    assert decision.route is not None
    assert decision.route.name == "post"
    assert decision.rejection is None
    assert "fallback 'post'" in decision.reason
    assert route_of(r, None, service=SERVICE, region="09162") == "exact-service"  # rules still come first


def test_test_route_in_test_mode(tmp_path: Path) -> None:
    extra = '\n[[routes]]\nname = "sandbox"\nadapter = "a"\n[routes.match]\nservice = "never"\n'
    r = router(tmp_path, extra + '[routing]\ntest_route = "sandbox"\n')
    # A test message goes to the test route even when a production rule matches it.
    assert route_of(r, None, service=SERVICE, region="09162", test=True) == "sandbox"
    assert route_of(r, None, service=SERVICE, region="09162", test=False) == "exact-service"


def test_without_test_route_test_messages_use_the_rules(tmp_path: Path) -> None:
    assert route_of(router(tmp_path), None, service=SERVICE, region="09162", test=True) == "exact-service"


def test_production_refuses_test_messages(tmp_path: Path) -> None:
    extra = '\n[[routes]]\nname = "sandbox"\nadapter = "a"\n[routing]\ntest_route = "sandbox"\n'
    r = router(tmp_path, extra, production=True)
    decision = r.decide(RoutingKeys(service=SERVICE, region="09162", test=True), None)
    assert decision.route is None
    assert decision.rejection == TEST_IN_PRODUCTION
    assert TEST_IN_PRODUCTION.endswith("/test-message-in-production")
    assert route_of(r, None, service=SERVICE, region="09162") == "exact-service"


def test_explain_names_match_and_earlier_misses(tmp_path: Path) -> None:
    lines = router(tmp_path).explain(RoutingKeys(service=SERVICE, region="05315000"), None)
    assert lines[0] == ("1. exact-service: no match (region: '05315000' does not start with '09162')")
    assert lines[1] == (
        f"2. glob-service: no match (service: '{SERVICE}' does not match 'urn:de:fim:leika:leistung:99010003001*')"
    )
    assert lines[2] == "3. region-with-de: MATCH → adapter a"
    assert lines[-1] == "=> route 'region-with-de' → adapter 'a' (rule 'region-with-de' matches)"
    assert len(lines) == 4  # rules after the match are not evaluated


def cli_config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path,
        RULES.replace('[sources.fit-bau]\ntype = "fake"\n', "").replace(
            '[[routes]]\nname = "by-source"\nadapter = "a"\n[routes.match]\nsource = "fit-bau"\n', ""
        ),
    )


def test_cli_route_explain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = cli_config(tmp_path)
    rc = main(["route", "--config", str(path), "--explain", f"destination={DEST.lower()}", "region=DE01001"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert out[0].startswith("1. exact-service: no match (service: None does not match")
    assert "region: '01001' does not start with '09162'" in out[0]
    assert out[2] == "3. region-with-de: no match (region: '01001' does not start with '05315')"
    assert out[3] == "4. destination: MATCH → adapter a"
    assert out[4] == "=> route 'destination' → adapter 'a' (rule 'destination' matches)"


def test_cli_route_rejection_and_bad_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = cli_config(tmp_path)
    assert main(["route", "--config", str(path), "service=urn:none"]) == 1
    assert capsys.readouterr().out.strip() == "rejected: no rule matches and no fallback is configured"
    assert main(["route", "--config", str(path), "--explain", "service=urn:none"]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"=> rejected: no rule matches and no fallback is configured [{NO_ROUTE}]"
    )
    assert main(["route", "--config", str(path), "service=urn:test:x", "test=yes"]) == 0
    assert capsys.readouterr().out.strip() == "test-only"
    assert main(["route", "--config", str(path), "colour=blue"]) == 2
    assert "unknown routing key 'colour'" in capsys.readouterr().err
    assert main(["route", "--config", str(path), "service"]) == 2
    assert "expected key=value" in capsys.readouterr().err
