"""parse_xoev_config: the [xoev] table, with precise errors for every mistake."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ConfigError
from gateway.xoev.config import parse_xoev_config


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    root = tmp_path / "bundles" / "demo"
    (root / "xsd").mkdir(parents=True)
    (root / "xsd" / "main.xsd").write_text('<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema"/>')
    (root / "xsd" / "xml.xsd").write_text('<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema"/>')
    return root


def parse(raw: dict[str, Any], base: Path) -> Any:
    return parse_xoev_config(raw, base_dir=base, file="gateway.toml")


def error(raw: dict[str, Any], base: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(raw, base)
    assert info.value.file == "gateway.toml"
    return info.value


def test_full_table_from_toml(tmp_path: Path, bundle_dir: Path) -> None:
    text = """
    [xoev]
    cache_dir = "var/xoev-cache"
    max_bytes = 1_000_000
    max_depth = 64
    max_elements = 10_000
    workers = 3
    validate_timeout = 2.5
    [[xoev.bundles]]
    name = "demo-1.0"
    dir = "bundles/demo"
    entries = ["xsd/main.xsd"]
    samples = ["samples/*.xml"]
    invalid_samples = ["bad/*.xml"]
    [xoev.bundles.locations]
    "http://www.w3.org/2001/xml.xsd" = "xsd/xml.xsd"
    """
    config = parse(tomllib.loads(text)["xoev"], tmp_path)
    assert config.cache_dir == tmp_path.resolve() / "var" / "xoev-cache"
    assert (config.max_bytes, config.max_depth, config.max_elements) == (1_000_000, 64, 10_000)
    assert config.limits.max_depth == 64
    assert (config.workers, config.validate_timeout) == (3, 2.5)
    (bundle,) = config.bundles
    assert bundle.name == "demo-1.0"
    assert bundle.dir == bundle_dir.resolve()
    assert bundle.entries == ("xsd/main.xsd",)
    assert bundle.samples == ("samples/*.xml",)
    assert bundle.invalid_samples == ("bad/*.xml",)
    assert bundle.locations == {"http://www.w3.org/2001/xml.xsd": bundle_dir.resolve() / "xsd" / "xml.xsd"}


def test_defaults(tmp_path: Path) -> None:
    config = parse({}, tmp_path)
    assert config.bundles == ()
    assert config.cache_dir == tmp_path.resolve() / "var" / "xoev-cache"
    assert (config.max_bytes, config.max_depth, config.max_elements) == (20_000_000, 256, 500_000)
    assert parse({"cache_dir": False}, tmp_path).cache_dir is None


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"cache": "x"}, "xoev.cache"),
        ({"max_depth": "10"}, "xoev.max_depth"),
        ({"max_depth": True}, "xoev.max_depth"),
        ({"max_elements": 0}, "xoev.max_elements"),
        ({"validate_timeout": -1}, "xoev.validate_timeout"),
        ({"cache_dir": 3}, "xoev.cache_dir"),
        ({"bundles": {"name": "x"}}, "xoev.bundles"),
        ({"bundles": ["x"]}, "xoev.bundles[0]"),
        ({"bundles": [{"name": "a b", "dir": "bundles/demo", "entries": ["xsd/main.xsd"]}]}, "xoev.bundles[0].name"),
        ({"bundles": [{"name": "a", "dir": "nope", "entries": ["xsd/main.xsd"]}]}, "xoev.bundles[0].dir"),
        ({"bundles": [{"name": "a", "dir": "bundles/demo", "entries": []}]}, "xoev.bundles[0].entries"),
        ({"bundles": [{"name": "a", "dir": "bundles/demo", "entries": "xsd/main.xsd"}]}, "xoev.bundles[0].entries"),
        ({"bundles": [{"name": "a", "dir": "bundles/demo", "entries": ["x.xsd"]}]}, "xoev.bundles[0].entries[0]"),
        (
            {"bundles": [{"name": "a", "dir": "bundles/demo", "entries": ["../../outside.xsd"]}]},
            "xoev.bundles[0].entries[0]",
        ),
        (
            {"bundles": [{"name": "a", "dir": "bundles/demo", "entries": ["xsd/main.xsd"], "sample": []}]},
            "xoev.bundles[0].sample",
        ),
        (
            {"bundles": [{"name": "a", "dir": "bundles/demo", "entries": ["xsd/main.xsd"], "samples": [1]}]},
            "xoev.bundles[0].samples[0]",
        ),
        (
            {"bundles": [{"name": "a", "dir": "bundles/demo", "entries": ["xsd/main.xsd"], "locations": {"u": 1}}]},
            'xoev.bundles[0].locations."u"',
        ),
        (
            {
                "bundles": [
                    {"name": "a", "dir": "bundles/demo", "entries": ["xsd/main.xsd"], "locations": {"u": "../x"}}
                ]
            },
            'xoev.bundles[0].locations."u"',
        ),
        (
            {
                "bundles": [
                    {"name": "a", "dir": "bundles/demo", "entries": ["xsd/main.xsd"]},
                    {"name": "a", "dir": "bundles/demo", "entries": ["xsd/main.xsd"]},
                ]
            },
            "xoev.bundles[1].name",
        ),
    ],
)
def test_errors_name_the_key(tmp_path: Path, bundle_dir: Path, raw: dict[str, Any], key: str) -> None:
    assert error(raw, tmp_path).key == key


def test_non_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_xoev_config(["x"], base_dir=tmp_path, file="g.toml")  # type: ignore[arg-type]
    assert info.value.key == "xoev"
