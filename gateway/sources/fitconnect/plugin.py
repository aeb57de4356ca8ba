"""Registers the ``fitconnect`` source type (a built-in plugin, listed in ``gateway.plugins.DEFAULT_PLUGINS``)."""

from __future__ import annotations

from gateway.hookspecs import hookimpl
from gateway.sources.base import SourceType
from gateway.sources.fitconnect.options import FitConnectSourceOptions
from gateway.sources.fitconnect.source import create
from gateway.sources.fitconnect.subsystem import gateway_subsystem_types

__all__ = ["gateway_source_types", "gateway_subsystem_types"]


@hookimpl
def gateway_source_types() -> list[SourceType]:
    return [
        SourceType(
            name="fitconnect",
            create=create,
            options=FitConnectSourceOptions,
            description="FIT-Connect subscriber: receives one destination's submissions, checks them, accepts/rejects",
        )
    ]
