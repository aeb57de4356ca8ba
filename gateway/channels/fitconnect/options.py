"""``[reply_channels.NAME]`` options of ``type = "fitconnect"``.

``source`` names the ``fitconnect`` source the applications came in by: the channel reuses its
client (OAuth credentials, token cache), its Zustelldienst key resolver and its destination.
``process_standards`` are the data exchange standards this destination answers in (URIs, e.g.
``urn:xoev-de:bmk:standard:xbau_2.4``), in preference order. Errors are
:class:`~gateway.errors.ConfigError` with the option name as key (the host prefixes
``reply_channels.NAME``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.errors import ConfigError
from gateway.fitconnect.reply_key import ReplyKeyError, validate_process_standards

KNOWN_OPTIONS = frozenset({"source", "process_standards", "confirm_interval"})
DEFAULT_CONFIRM_INTERVAL = 300.0  # seconds between confirmation polls; a callback makes it sooner


@dataclass(frozen=True)
class ChannelOptions:
    source: str
    process_standards: tuple[str, ...]
    confirm_interval: float


def parse_options(raw: Mapping[str, Any]) -> ChannelOptions:
    unknown = sorted(set(raw) - KNOWN_OPTIONS)
    if unknown:
        raise ConfigError(f"unknown option (known: {', '.join(sorted(KNOWN_OPTIONS))})", key=unknown[0])
    source = raw.get("source")
    if not isinstance(source, str) or not source.strip():
        raise ConfigError('is required: the name of the fitconnect source (e.g. source = "bauamt")', key="source")
    try:
        standards = validate_process_standards(raw.get("process_standards"))
    except ReplyKeyError:
        raise ConfigError(
            "is required: a non-empty list of process standard URIs (e.g. urn:xoev-de:bmk:standard:xbau_2.4)",
            key="process_standards",
        ) from None
    interval = raw.get("confirm_interval", DEFAULT_CONFIRM_INTERVAL)
    if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
        raise ConfigError("must be a number of seconds > 0", key="confirm_interval")
    return ChannelOptions(source=source.strip(), process_standards=standards, confirm_interval=float(interval))
