"""Fixtures for the XÖV tests: the shared catalog as gateway configuration, a loopback HTTP server."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from gateway.xoev.config import XoevConfig, parse_xoev_config
from gateway.xoev.registry import SchemaRegistry


def catalog_at_collection() -> list[dict[str, Any]]:
    """The catalog for parametrising at collection time ([] when ../shared is absent)."""
    # same lookup as the shared_dir fixture in tests/conftest.py (not importable as a module)
    env = os.environ.get("GATEWAY_SHARED_DIR")
    shared = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared"
    path = shared / "xoev" / "catalog.json"
    if not path.is_file():
        return []
    entries: list[dict[str, Any]] = json.loads(path.read_text("utf-8"))
    return entries


@pytest.fixture(scope="session")
def catalog(xoev_shared: Path) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads((xoev_shared / "catalog.json").read_text("utf-8"))
    return entries


def bundles_from_catalog(xoev_shared: Path, catalog: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One [[xoev.bundles]] table per catalog set, with every entry and every sample."""
    bundles: dict[str, dict[str, Any]] = {}
    for item in catalog:
        name = item["set"]
        bundle = bundles.setdefault(
            name,
            {"name": name, "dir": str(xoev_shared / name), "entries": [], "samples": [], "invalid_samples": []},
        )
        bundle["entries"].append(item["entry_xsd"][len(name) + 1 :])
        for result in item["sample_results"]:
            key = "samples" if result["valid"] else "invalid_samples"
            bundle[key].append(result["path"][len(name) + 1 :])
    return list(bundles.values())


def toml_for(bundles: list[dict[str, Any]], cache_dir: Path, extra: str = "") -> str:
    def s(value: str) -> str:
        return json.dumps(value)  # a JSON string is a valid TOML basic string

    lines = ["[xoev]", f"cache_dir = {s(str(cache_dir))}", "workers = 1", extra]
    for bundle in bundles:
        lines += ["", "[[xoev.bundles]]", f"name = {s(bundle['name'])}", f"dir = {s(bundle['dir'])}"]
        for key in ("entries", "samples", "invalid_samples"):
            if bundle.get(key):
                lines.append(f"{key} = [{', '.join(s(v) for v in bundle[key])}]")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def shared_bundles(xoev_shared: Path, catalog: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return bundles_from_catalog(xoev_shared, catalog)


@pytest.fixture(scope="session")
def xoev_config(shared_bundles: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> XoevConfig:
    cache = tmp_path_factory.mktemp("xoev-cache")
    raw = {"cache_dir": str(cache), "workers": 1, "bundles": shared_bundles}
    return parse_xoev_config(raw, base_dir=cache, file="test.toml")


@pytest.fixture(scope="session")
def registry(xoev_config: XoevConfig) -> SchemaRegistry:
    return SchemaRegistry.open(xoev_config)


@pytest.fixture(scope="session")
def valid_samples(xoev_shared: Path, catalog: list[dict[str, Any]]) -> list[tuple[str, bytes]]:
    return [
        (r["path"], (xoev_shared / r["path"]).read_bytes())
        for item in catalog
        for r in item["sample_results"]
        if r["valid"]
    ]
