"""The XÖV subsystem: ``[xoev]`` (schema bundles, limits, trusted certificates) and what every channel
carrying XÖV shares: the schema registry and the validator's worker processes, started before the
sources and stopped after them; and the directory of the gateway's XÖV HTTP endpoints (a sender
known on another endpoint gets 403, not 401) with their refusal counter.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from gateway.hookspecs import hookimpl
from gateway.subsystems import SubsystemContext, SubsystemType
from gateway.xoev import hookspecs as HOOKSPECS  # the channel's own hook: gateway_xoev_identify
from gateway.xoev.config import XoevConfig, XoevOptions

if TYPE_CHECKING:
    from gateway.xoev.validator import XoevValidator

NAME = "xoev"
__all__ = ["HOOKSPECS", "XoevSubsystem", "gateway_add_commands", "gateway_subsystem_types"]


class XoevSubsystem:
    def __init__(self, ctx: SubsystemContext, config: XoevConfig) -> None:
        from gateway.xoev.validator import XoevValidator  # lxml/xmlschema only when [xoev] is configured

        self.config = config
        self.validator: XoevValidator = XoevValidator(config, hook=ctx.hook)
        self.endpoints: list[Any] = []  # the xoev-http sources of this gateway (gateway.sources.xoev_http)
        self.refused = Counter(
            "gateway_xoev_http_refused",
            "XÖV HTTP requests refused before intake, by problem type",
            ["source", "reason"],
            registry=ctx.registry,
        )

    async def start(self) -> None:
        try:
            await self.validator.start()  # compiles/verifies the schema cache, warms the workers
        except BaseException:
            await self.validator.close()
            raise

    async def stop(self) -> None:
        await self.validator.close()


def create(ctx: SubsystemContext, config: Any) -> XoevSubsystem:
    return XoevSubsystem(ctx, config)


@hookimpl
def gateway_subsystem_types() -> list[SubsystemType]:
    return [
        SubsystemType(
            name=NAME,
            create=create,
            options=XoevOptions,
            description="XÖV schema bundles, the validator's worker processes, trusted signature certificates",
        )
    ]


@hookimpl
def gateway_add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from gateway.xoev.cli import register

    register(subparsers)
