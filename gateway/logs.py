"""structlog configuration: configured once in ``main()``.

Personal data must never reach a log line. Instead of trying to recognise it (impossible), the
:func:`allow_list` processor passes only keys from :data:`ALLOWED_KEYS` and replaces every other
value with ``"<redacted>"``; event names are static strings by convention. Exceptions are rendered
as type + frames (file, line, function) only: exception *messages* can carry payload fragments
(e.g. a schema validator quoting the invalid value) and local variables are never shown.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

# Keys whose values are technical and safe by construction (ids, names from config, counts, enums).
ALLOWED_KEYS = frozenset(
    {
        "event",
        "level",
        "timestamp",
        "logger",
        "exception",
        "error_type",
        "frames",
        "message_id",
        "source",
        "source_type",
        "source_ref",
        "case_ref",
        "route",
        "adapter",
        "attempt",
        "outcome",
        "reason",
        "state",
        "previous",
        "ack",
        "count",
        "duration_ms",
        "delay_s",
        "status",
        "destination",
        "problem_types",
        "instances",
        "plugin",
        "host",
        "port",
        "path",
        "method",
        "mode",
        "backend",
        "version",
        "next_attempt_in_s",
        "limit",
        "offset",
        "total",
        "worker",
        "lease_owner",
        "size",
        "kid",
        "code",
        "url",
        "sources",
        "adapters",
        "routes",
        "schema",
        "submission_id",
        "case_id",
        "bundle",
        "namespace",
        "message_type",
        "standard",
        "elapsed_s",
        "remote",
        "sender",
        "channel",
        "policy",
        "released",
        "phase",
        "target",
    }
)
REDACTED = "<redacted>"


def allow_list(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        if key not in ALLOWED_KEYS:
            event_dict[key] = REDACTED
    return event_dict


def safe_exception(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    exc_info = event_dict.pop("exc_info", None)
    if exc_info:
        if exc_info is True:
            exc_info = sys.exc_info()
        elif isinstance(exc_info, BaseException):
            exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
        exc_type, _exc, tb = exc_info
        if exc_type is not None:
            event_dict["error_type"] = f"{exc_type.__module__}.{exc_type.__qualname__}"
            event_dict["frames"] = [f"{f.filename}:{f.lineno}:{f.name}" for f in traceback.extract_tb(tb)][-8:]
    return event_dict


def foreign_event(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Standard-library records (aiohttp, asyncio, ...): keep only the first line of the format string.

    Arguments, and whatever a library formatted into its message (asyncio appends the failed task's
    repr, exception message included), may carry payload data; the static first line does not.
    """
    record = event_dict.get("_record")
    if isinstance(record, logging.LogRecord):
        message = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
        event_dict["event"] = message.split("\n", 1)[0][:200]
        event_dict["logger"] = record.name
    return event_dict


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time of writing (not when logging was set up),
    so replacing stderr later (test capture, daemonising) never leaves a dangling closed stream."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class GatewayLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler installed by :func:`configure_logging` (replaced when it runs again)."""


def configure_logging(*, format: str = "json", level: str = "info", stream: TextIO | None = None) -> None:
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=True)
        if format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    # Libraries log through the standard library: route them into the same stream, through the
    # same filters (otherwise they would print plain text, exception messages included).
    out: Any = stream or _CurrentStderr()
    handler = GatewayLogHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                foreign_event,
                safe_exception,
                allow_list,
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, GatewayLogHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(logging.WARNING, getattr(logging, level.upper())))  # no third-party info chatter
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            safe_exception,
            allow_list,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # aiohttp's access log would print URLs with query strings: keep it off, we log requests ourselves.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
