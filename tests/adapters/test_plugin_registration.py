"""Both bundled adapters are plain plugins: found through the hook, named in the entry points."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pluggy

from gateway import hookspecs
from gateway.adapters.base import AdapterType

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_entry_points_name_the_plugin_modules() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    entry_points = project["project"]["entry-points"]["gateway"]
    assert entry_points["filesystem"] == "gateway_filesystem"
    assert entry_points["webhook"] == "gateway_webhook"


def test_hook_contributes_adapter_types() -> None:
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    for module in ("gateway_filesystem", "gateway_webhook"):
        manager.register(importlib.import_module(module), name=module)
    manager.check_pending()
    types = [t for contributed in manager.hook.gateway_adapter_types() for t in contributed]
    assert all(isinstance(t, AdapterType) for t in types)
    assert sorted(t.name for t in types) == ["filesystem", "webhook"]
    assert all(t.description and callable(t.create) for t in types)
