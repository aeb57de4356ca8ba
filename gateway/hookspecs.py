"""Every hook a gateway plugin can implement. This module is the plugin API: keep it stable.

Conventions (see docs/hooks.md, which a test keeps in step with this module):

* all hooks are prefixed ``gateway_``; a channel package may add hooks of its own (a module of
  ``@hookspec`` functions named by its plugin module's ``HOOKSPECS``, e.g. the XÖV channel's
  ``gateway_xoev_identify``); pluggy validates implementations against these specs, and
  :meth:`gateway.plugins.PluginHost.check_pending` refuses unknown ``gateway_*`` hooks at startup;
* hooks marked *firstresult* answer "who handles this": the first non-``None`` result wins;
* **async convention**: a hook implementation may return an awaitable instead of a value; the host
  awaits it (see :func:`gateway.plugins.resolve`). Hooks are called from the event loop, so never
  block in them: offload CPU or disk work with ``asyncio.to_thread``.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from gateway.adapters.base import AdapterType
    from gateway.channels.base import ReplyChannelType
    from gateway.model import Envelope
    from gateway.problems import Problem
    from gateway.sources.base import SourceType
    from gateway.subsystems import SubsystemType

PROJECT_NAME = "gateway"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def gateway_adapter_types() -> Sequence[AdapterType]:
    """Return the adapter types this plugin provides (e.g. ``filesystem``, ``webhook``).

    Adapter type names must be unique across all plugins; a clash fails startup.
    """


@hookspec
def gateway_source_types() -> Sequence[SourceType]:
    """Return the source (inbound channel) types this plugin provides (e.g. ``fitconnect``)."""


@hookspec
def gateway_reply_channel_types() -> Sequence[ReplyChannelType]:
    """Return the reply channel types this plugin provides (e.g. ``fitconnect``): the way back.

    :param: none.
    :returns: the :class:`~gateway.channels.base.ReplyChannelType` objects; the operator declares
        instances in ``[reply_channels.NAME] type = "..."``. Names must be unique across all
        plugins; a clash fails startup.
    """


@hookspec
def gateway_subsystem_types() -> Sequence[SubsystemType]:
    """Return the subsystem types this plugin provides: resources shared by channels, each with its own
    top-level config table (its ``name``), metrics and lifecycle (e.g. ``xoev``, ``fitconnect``).

    Subsystem type names must be unique across all plugins and must not be a core table's name.
    """


@hookspec
def gateway_validate_message(
    envelope: Envelope, config: Mapping[str, Any]
) -> Sequence[Problem] | Awaitable[Sequence[Problem]]:
    """Run an additional check on a received message before routing.

    Return the problems found (empty when fine). Any problem rejects the message with the
    problems listed (upstream too, e.g. as a FIT-Connect reject-submission). May be async.
    """


@hookspec
def gateway_message_transition(envelope: Envelope, previous: str, reason: str) -> Awaitable[None] | None:
    """Observe a persisted state transition (``envelope.state`` is the new state).

    Called after the store committed the transition: use it for notifications or metrics. It must
    not raise; an exception is logged and otherwise ignored. May be async.
    """


@hookspec
def gateway_add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add sub-commands to the ``gateway`` CLI. Set ``func(args) -> int`` as the parser default."""
