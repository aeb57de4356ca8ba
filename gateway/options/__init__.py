"""One declarative option reader for the core configuration, the subsystems and every plugin.

Declare a table's options as an options class, read a TOML table into it, get every error of the
file in one pass, each as ``file: key.path: reason``::

    from gateway.options import At, option, options
    from gateway.options.checks import positive

    @options
    class WebhookOptions:
        url: str = option(doc="the Fachverfahren's endpoint", hint="the Fachverfahren's endpoint")
        timeout: float = option(30.0, doc="seconds per request", check=positive)
        auth_token: SecretRef | None = option(None, doc="bearer token (a secret reference)")

        def finish(self, at: At) -> WebhookOptions:  # optional: checks across options
            ...
            return self

Types come from the annotations (``bool`` is never an ``int``; an ``int`` is fine for a ``float``);
secrets are references checked to resolve; paths are relative to the config file; unknown keys are
reported with the known ones. ``gateway plugins --options TYPE`` prints the declaration
(:mod:`gateway.options.docs`).
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from gateway.options.reader import At, ReadContext, Reader, failed, join
from gateway.options.spec import Field, fields_of, option, options

__all__ = [
    "At",
    "Field",
    "ReadContext",
    "Reader",
    "failed",
    "fields_of",
    "join",
    "option",
    "options",
    "read_options",
]

T = TypeVar("T")


def read_options(
    cls: type[T],
    raw: Mapping[str, Any],
    *,
    base_dir: Path,
    production: bool = False,
    name: str = "",
    resources: Mapping[str, Any] | None = None,
) -> T:
    """One table on its own (a plugin's unit tests, tools): the options, or ConfigErrors with every
    problem (keys relative to the table)."""
    reader = Reader(ReadContext(base_dir=base_dir, production=production, name=name, resources=resources or {}))
    value = reader.read(cls, raw)
    reader.raise_errors()
    assert value is not None
    return value
