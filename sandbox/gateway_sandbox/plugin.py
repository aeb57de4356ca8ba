"""Registers the sandbox's sub-commands (``gateway sandbox [send]``, ``gateway demo``) through the public hook."""

from __future__ import annotations

import argparse

from gateway.hookspecs import hookimpl


@hookimpl
def gateway_add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from gateway_sandbox import demo
    from gateway_sandbox.zustelldienst import cli

    cli.register(subparsers)
    demo.register(subparsers)
