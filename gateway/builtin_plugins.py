"""Built-in plugin: contributes the gateway's own sub-commands and types through the public hooks.

It is registered like any third-party plugin (see :data:`gateway.plugins.DEFAULT_PLUGINS`), so the
hooks it uses are exercised on every start.
"""

from __future__ import annotations

import argparse
import importlib

from gateway.hookspecs import hookimpl

# Sub-command modules, each with ``register(subparsers)``; imported lazily so a missing optional
# subsystem never breaks the core CLI.
_COMMAND_MODULES = (
    "gateway.fitconnect.keys_cli",
    "gateway.xoev.cli",
)


@hookimpl
def gateway_add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for module_name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # subsystem not present in this build
            raise
        module.register(subparsers)
