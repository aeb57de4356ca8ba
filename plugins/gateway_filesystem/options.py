"""``[adapters.NAME]`` options of ``type = "filesystem"``, declared for the gateway's option reader."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from gateway.options import At, option, options
from gateway_filesystem.layout import Layout

DEFAULT_LAYOUT = "{id}"


def _mode(owner_bits: int) -> Any:
    def parse(raw: Any, at: At) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            raise ConfigError('must be an octal string such as "0750" or an integer such as 0o750')
        if isinstance(raw, str):
            digits = raw.removeprefix("0o")
            if not digits or any(c not in "01234567" for c in digits):
                raise ConfigError(f"not an octal mode: {raw!r}")
            raw = int(digits, 8)
        if not 0 <= raw <= 0o777:
            raise ConfigError("must be between 0 and 0o777 (no setuid/setgid/sticky bits)")
        if raw & owner_bits != owner_bits:
            raise ConfigError(f"must grant the owner at least {owner_bits:o} (the gateway has to manage it)")
        return int(raw)

    return parse


def _layout(raw: Any, at: At) -> Layout:
    if not isinstance(raw, str):
        raise ConfigError('must be a string such as "{received_date}/{id}"')
    try:
        return Layout.parse(raw)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def can_create(directory: Path) -> str | None:
    """Whether ``directory`` exists writable or could be created (looks only: check-config changes nothing)."""
    path = directory
    while not path.exists():
        if path.parent == path:
            break
        path = path.parent
    if not path.is_dir():
        return f"cannot create {directory}: {path} is not a directory"
    if not os.access(path, os.W_OK | os.X_OK):
        what = "directory is not writable" if path == directory else f"cannot create it: {path} is not writable"
        return f"{directory}: {what}"
    return None


@options
class FilesystemOptions:
    directory: Path = option(
        doc="The folder the Fachverfahren reads from (relative to gateway.toml; created at start if missing).",
        hint="the folder the Fachverfahren reads from",
        check=can_create,
    )
    layout: Layout = option(
        default=Layout.parse(DEFAULT_LAYOUT),
        doc="Where in `directory` a message goes, e.g. `{received_date}/{id}` (the last segment must be `{id}`).",
        parse=_layout,
        type_doc="string",
        default_doc=f'"{DEFAULT_LAYOUT}"',
    )
    fsync: bool = option(default=True, doc="fsync files and directories before a delivery counts as done.")
    dir_mode: int | None = option(
        default=None,
        doc="Mode of created directories (octal string or integer); default: the umask's.",
        parse=_mode(0o700),
        type_doc="octal mode",
    )
    file_mode: int | None = option(
        default=None, doc="Mode of written files; default: the umask's.", parse=_mode(0o400), type_doc="octal mode"
    )


def probe_writable(directory: Path) -> str | None:
    """``None`` if a file can be created in ``directory``, else a short reason."""
    if not directory.is_dir():
        return "directory does not exist"
    try:
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return f"directory is not writable ({exc.strerror})"
    return None


def prepare_directory(options: FilesystemOptions) -> Path:
    """At start (not while checking): create the folder and prove it is writable; its absolute path."""
    directory = options.directory
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {directory}: {exc.strerror}", key="directory") from None
    problem = probe_writable(directory)
    if problem is not None:
        raise ConfigError(f"{directory}: {problem}", key="directory")
    return directory.resolve()
