"""`gateway schemas list` / `gateway schemas check` against a gateway.toml with every shared bundle."""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main as gateway_main
from gateway.xoev import cli
from gateway.xoev.config import XoevConfig
from gateway.xoev.registry import SchemaRegistry

from .conftest import toml_for


def run(argv: list[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="gateway")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    out = io.StringIO()
    code = args.func(args, out)
    return code, out.getvalue()


@pytest.fixture
def gateway_toml(
    tmp_path: Path, shared_bundles: list[dict[str, Any]], xoev_config: XoevConfig, registry: SchemaRegistry
) -> Path:
    assert xoev_config.cache_dir is not None  # the session's cache, made warm by the registry fixture
    path = tmp_path / "gateway.toml"
    path.write_text(toml_for(shared_bundles, xoev_config.cache_dir))
    return path


def test_list(gateway_toml: Path) -> None:
    code, out = run(["schemas", "list", "--config", str(gateway_toml), "--roots"])
    assert code == 0
    for name in ("xdomea-3.0.0", "xbau-2.6", "xbeteiligung-1.2", "xta2", "xdatenfelder"):
        assert f"{name}  (cache)" in out
    assert "xsd_dev/xbau-nachrichten-baugenehmigung.xsd" in out
    assert "    baugenehmigung.antrag.0200" in out
    assert "genericode.xsd  {http://docs.oasis-open.org/codelist/ns/genericode/1.0/}  3 root(s), xmlschema only" in out


def test_check_passes_on_the_catalog(gateway_toml: Path, catalog: list[dict[str, Any]]) -> None:
    code, out = run(["schemas", "check", "-c", str(gateway_toml)])
    samples = sum(len(item["sample_results"]) for item in catalog)
    assert f"{samples} sample(s) checked, 0 problem(s)" in out, out
    assert code == 0
    assert "ok   xdatenfelder/samples/2.0/bewohnerparken/C05000073_genericode.xml" in out


def test_check_fails_on_a_bad_sample(
    tmp_path: Path, shared_bundles: list[dict[str, Any]], xoev_config: XoevConfig
) -> None:
    assert xoev_config.cache_dir is not None
    bundles = [dict(b) for b in shared_bundles if b["name"] == "xdatenfelder"]
    bundles[0]["samples"] = [*bundles[0]["samples"], "samples/2.0/bewohnerparken/C05000073_genericode.xml"]
    bundles[0]["invalid_samples"] = ["samples/nothing-here/*.xml"]
    path = tmp_path / "gateway.toml"
    path.write_text(toml_for(bundles, xoev_config.cache_dir))
    code, out = run(["schemas", "check", "--config", str(path)])
    assert code == 1
    assert "FAIL xdatenfelder/samples/2.0/bewohnerparken/C05000073_genericode.xml" in out
    assert "invalid: Unexpected child with tag" in out
    assert "sample pattern 'samples/nothing-here/*.xml' matches no file" in out


def test_config_errors_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[xoev]\nmax_depth = "deep"\n')
    code, out = run(["schemas", "check", "--config", str(path)])
    assert code == 2
    assert "xoev.max_depth" in out
    path.write_text('[gateway]\nmode = "test"\n')
    code, out = run(["schemas", "list", "--config", str(path)])
    assert (code, "no [[xoev.bundles]] configured" in out) == (2, True)


def test_through_the_gateway_cli(gateway_toml: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert gateway_main(["schemas", "check", "--config", str(gateway_toml)]) == 0
    assert "0 problem(s)" in capsys.readouterr().out
