"""The plugin host: a typed facade over pluggy's hook relay.

Built-in plugins (entry-point group :data:`BUILTIN_GROUP`) are registered through the same hooks as
third-party ones. Third-party plugins are discovered through the ``gateway`` entry-point group;
``[plugins] allow/block`` in gateway.toml filter them by entry-point name. After loading,
:meth:`PluginHost.check_pending` refuses implementations of hooks that do not exist (a typo in a
vendor's hook name must fail at startup, not silently never run).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar, cast

import pluggy

from gateway import hookspecs
from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.adapters.base import AdapterType
    from gateway.channels.base import ReplyChannelType
    from gateway.model import Envelope
    from gateway.problems import Problem
    from gateway.sources.base import SourceType
    from gateway.subsystems import SubsystemType

T = TypeVar("T")

ENTRY_POINT_GROUP = "gateway"

# The gateway's own channels and subsystems, registered on every start through the same hooks as
# third-party plugins. They are named in packaging metadata (pyproject.toml), not here: the core
# knows no channel. [plugins] allow/block do not apply to them.
BUILTIN_GROUP = "gateway.builtin"


class GatewayPluginManager(pluggy.PluginManager):
    """Treats every ``gateway_*`` function of a plugin as a hook implementation, marked or not.

    Like pytest with ``pytest_*``: a misspelt hook name then reaches :meth:`check_pending` and fails
    startup, instead of being an ordinary function that silently never runs.
    """

    def parse_hookimpl_opts(self, plugin: object, name: str) -> Any:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("gateway_") and inspect.isroutine(getattr(plugin, name, None)):
            return {}
        return opts


async def resolve(value: T | Awaitable[T]) -> T:
    """The async convention: a hook implementation may return a value or an awaitable."""
    if inspect.isawaitable(value):
        return await value
    return value


@dataclass(frozen=True, slots=True)
class PluginInfo:
    name: str  # entry-point name, or the module name for built-ins
    module: str
    distribution: str | None
    version: str | None
    builtin: bool
    adapter_types: tuple[str, ...] = ()
    source_types: tuple[str, ...] = ()
    reply_channel_types: tuple[str, ...] = ()


@dataclass
class PluginHost:
    pm: pluggy.PluginManager
    infos: list[PluginInfo] = field(default_factory=list)
    adapter_types: dict[str, AdapterType] = field(default_factory=dict)
    source_types: dict[str, SourceType] = field(default_factory=dict)
    subsystem_types: dict[str, SubsystemType] = field(default_factory=dict)
    reply_channel_types: dict[str, ReplyChannelType] = field(default_factory=dict)

    @classmethod
    def load(
        cls,
        *,
        allow: Sequence[str] = (),
        block: Sequence[str] = (),
        extra: Iterable[ModuleType | object] = (),
        entry_points_enabled: bool = True,
    ) -> PluginHost:
        pm = GatewayPluginManager(hookspecs.PROJECT_NAME)
        pm.add_hookspecs(hookspecs)
        host = cls(pm)
        for ep in sorted(entry_points(group=BUILTIN_GROUP), key=lambda e: e.name):
            module = importlib.import_module(ep.value)
            pm.register(module, name=ep.value)
            host.infos.append(PluginInfo(ep.value, ep.value, "ozg-gateway", _own_version(), True))
        if entry_points_enabled:
            for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
                if ep.name in block or (allow and ep.name not in allow):
                    continue
                try:
                    plugin = ep.load()
                except Exception as exc:  # a broken vendor package must fail startup with its name
                    raise ConfigError(
                        f"plugin {ep.name!r} ({ep.value}) failed to import: {type(exc).__name__}: {exc}"
                    ) from exc
                if pm.is_registered(plugin):
                    continue
                pm.register(plugin, name=ep.name)
                dist = ep.dist
                host.infos.append(
                    PluginInfo(ep.name, ep.value, dist.name if dist else None, dist.version if dist else None, False)
                )
            unknown = [name for name in allow if name not in {i.name for i in host.infos}]
            if unknown:
                raise ConfigError(f"allow-listed plugins are not installed: {', '.join(unknown)}", key="plugins.allow")
        for obj in extra:
            name = getattr(obj, "__name__", None) or type(obj).__name__
            if pm.has_plugin(name):
                raise ConfigError(f"two plugins are named {name!r}")
            pm.register(obj, name=name)
            host.infos.append(PluginInfo(name, name, None, None, False))
        for _name, plugin in pm.list_name_plugin():
            specs = getattr(plugin, "HOOKSPECS", None)  # a channel's own hooks (e.g. gateway_xoev_identify)
            if specs is not None:
                pm.add_hookspecs(specs)
        host.check_pending()
        host._collect_types()
        return host

    def check_pending(self) -> None:
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise ConfigError(f"plugin implements an unknown hook: {exc}") from exc

    def _collect_types(self) -> None:
        # Through the hook relay's implementations (not getattr), so exactly the registered hooks count,
        # and each type is attributed to the plugin that provides it.
        provided: dict[str, dict[str, list[str]]] = {}
        for kind, hook, registry in (
            ("adapter", self.pm.hook.gateway_adapter_types, self.adapter_types),
            ("source", self.pm.hook.gateway_source_types, self.source_types),
            ("reply channel", self.pm.hook.gateway_reply_channel_types, self.reply_channel_types),
            ("subsystem", self.pm.hook.gateway_subsystem_types, self.subsystem_types),
        ):
            for impl in hook.get_hookimpls():
                for provided_type in cast("Sequence[Any]", impl.function()):
                    if provided_type.name in registry:
                        second = impl.plugin_name
                        raise ConfigError(
                            f"{kind} type {provided_type.name!r} is provided by two plugins (second: {second})"
                        )
                    registry[provided_type.name] = provided_type
                    provided.setdefault(impl.plugin_name, {}).setdefault(kind, []).append(provided_type.name)
        self.infos = [
            PluginInfo(
                i.name,
                i.module,
                i.distribution,
                i.version,
                i.builtin,
                tuple(sorted(provided.get(i.name, {}).get("adapter", []))),
                tuple(sorted(provided.get(i.name, {}).get("source", []))),
                tuple(sorted(provided.get(i.name, {}).get("reply channel", []))),
            )
            for i in self.infos
        ]

    # Typed facade over the hook relay -------------------------------------------------------

    async def validate_message(self, envelope: Envelope, config: dict[str, Any]) -> list[Problem]:
        problems: list[Problem] = []
        for result in self.pm.hook.gateway_validate_message(envelope=envelope, config=config):
            problems.extend(await resolve(result))
        return problems

    async def message_transition(self, envelope: Envelope, previous: str, reason: str) -> None:
        for impl in self.pm.hook.gateway_message_transition.get_hookimpls():
            try:
                await resolve(impl.function(envelope=envelope, previous=previous, reason=reason))
            except Exception:  # observers must never break the pipeline
                import structlog

                structlog.get_logger(__name__).exception("observer_failed", plugin=impl.plugin_name)

    def add_commands(self, subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        self.pm.hook.gateway_add_commands(subparsers=subparsers)


def _own_version() -> str:
    from gateway import __version__

    return __version__
