"""Registers the ``fitconnect`` source type, its subsystem and ``gateway keys``.

A built-in plugin: entry-point group ``gateway.builtin`` (pyproject.toml).
"""

from __future__ import annotations

import argparse

from gateway.hookspecs import hookimpl
from gateway.sources.base import SourceType
from gateway.sources.fitconnect.options import FitConnectSourceOptions
from gateway.sources.fitconnect.source import create
from gateway.sources.fitconnect.subsystem import gateway_subsystem_types

__all__ = ["gateway_add_commands", "gateway_source_types", "gateway_subsystem_types"]


@hookimpl
def gateway_add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from gateway.fitconnect.keys_cli import register  # `gateway keys`

    register(subparsers)


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
