"""Validation of ``[adapters.NAME]`` options for ``type = "filesystem"``."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.adapters.base import AdapterContext
from gateway.errors import ConfigError
from gateway_filesystem.layout import Layout

KNOWN_OPTIONS = frozenset({"directory", "layout", "fsync", "dir_mode", "file_mode"})
DEFAULT_LAYOUT = "{id}"


@dataclass(frozen=True, slots=True)
class FilesystemOptions:
    directory: Path  # absolute
    layout: Layout
    fsync: bool = True
    dir_mode: int | None = None  # None: what the process umask gives
    file_mode: int | None = None


def _mode(options: Mapping[str, Any], key: str, owner_bits: int) -> int | None:
    raw = options.get(key)
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise ConfigError('must be an octal string such as "0750" or an integer such as 0o750', key=key)
    if isinstance(raw, str):
        digits = raw.removeprefix("0o")
        if not digits or any(c not in "01234567" for c in digits):
            raise ConfigError(f"not an octal mode: {raw!r}", key=key)
        raw = int(digits, 8)
    if not 0 <= raw <= 0o777:
        raise ConfigError("must be between 0 and 0o777 (no setuid/setgid/sticky bits)", key=key)
    if raw & owner_bits != owner_bits:
        raise ConfigError(f"must grant the owner at least {owner_bits:o} (the gateway has to manage it)", key=key)
    return raw


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


def parse_options(ctx: AdapterContext, options: Mapping[str, Any]) -> FilesystemOptions:
    unknown = sorted(set(options) - KNOWN_OPTIONS)
    if unknown:
        raise ConfigError(f"unknown option; known: {', '.join(sorted(KNOWN_OPTIONS))}", key=unknown[0])

    raw_dir = options.get("directory")
    if raw_dir is None:
        raise ConfigError("required (the folder the Fachverfahren reads from)", key="directory")
    if not isinstance(raw_dir, str) or not raw_dir.strip():
        raise ConfigError("must be a non-empty string", key="directory")
    directory = Path(raw_dir)
    if not directory.is_absolute():
        directory = ctx.base_dir / directory

    raw_layout = options.get("layout", DEFAULT_LAYOUT)
    if not isinstance(raw_layout, str):
        raise ConfigError('must be a string such as "{received_date}/{id}"', key="layout")
    try:
        layout = Layout.parse(raw_layout)
    except ValueError as exc:
        raise ConfigError(str(exc), key="layout") from None

    fsync = options.get("fsync", True)
    if not isinstance(fsync, bool):
        raise ConfigError("must be true or false", key="fsync")

    dir_mode = _mode(options, "dir_mode", 0o700)
    file_mode = _mode(options, "file_mode", 0o400)

    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {directory}: {exc.strerror}", key="directory") from None
    problem = probe_writable(directory)
    if problem is not None:
        raise ConfigError(f"{directory}: {problem}", key="directory")
    return FilesystemOptions(directory.resolve(), layout, fsync, dir_mode, file_mode)
