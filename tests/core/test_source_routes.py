"""Two sources claiming the same HTTP route would shadow each other: refused at startup."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.config import parse_config
from gateway.errors import ConfigErrors
from gateway.hookspecs import hookimpl
from gateway.plugins import PluginHost
from gateway.runtime import build_runtime
from gateway.sources.base import SourceContext, SourceType


class _RouteSource:
    needs_ack = False
    accept_policy = "delivered"

    def __init__(self, ctx: SourceContext, options: Mapping[str, Any]) -> None:
        self.name = ctx.name

        async def handler(request: web.Request) -> web.Response:
            return web.Response(text=self.name)

        ctx.add_routes([web.post(str(options["path"]), handler)])


class RoutePlugin:
    @hookimpl
    def gateway_source_types(self) -> list[SourceType]:
        return [SourceType("route-test", lambda ctx, options: _RouteSource(ctx, options))]  # type: ignore[arg-type,return-value]


def _config(tmp_path: Path, path_a: str, path_b: str) -> Any:
    return parse_config(
        {
            "store": {"path": str(tmp_path / "db"), "blob_dir": str(tmp_path / "blobs")},
            "sources": {"a": {"type": "route-test", "path": path_a}, "b": {"type": "route-test", "path": path_b}},
        },
        file=tmp_path / "gateway.toml",
    )


def test_two_sources_on_one_path_are_refused(tmp_path: Path) -> None:
    host = PluginHost.load(extra=[RoutePlugin()], entry_points_enabled=False)
    with pytest.raises(ConfigErrors) as info:
        build_runtime(_config(tmp_path, "/in", "/in"), plugins=host)
    assert "sources.b: HTTP route POST /in is already used by source 'a'" in str(info.value)


def test_sources_on_distinct_paths_are_fine(tmp_path: Path) -> None:
    host = PluginHost.load(extra=[RoutePlugin()], entry_points_enabled=False)
    runtime = build_runtime(_config(tmp_path, "/in/a", "/in/b"), plugins=host)
    assert sorted(r.path for r in runtime.routes if isinstance(r, web.RouteDef)) == ["/in/a", "/in/b"]
