"""Registers the ``fitconnect`` source type (a built-in plugin, listed in ``gateway.plugins.DEFAULT_PLUGINS``)."""

from __future__ import annotations

from gateway.hookspecs import hookimpl
from gateway.sources.base import SourceType
from gateway.sources.fitconnect.source import create


@hookimpl
def gateway_source_types() -> list[SourceType]:
    return [
        SourceType(
            name="fitconnect",
            create=create,
            description="FIT-Connect subscriber: receives one destination's submissions, checks them, accepts/rejects",
        )
    ]
