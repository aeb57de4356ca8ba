"""Secrets are referenced, never written inline: ``{ file = "path" }`` or ``{ env = "NAME" }``.

The resolved value is never logged, printed or put into an exception message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError


@dataclass(frozen=True, slots=True)
class SecretRef:
    file: Path | None = None
    env: str | None = None
    key: str = field(default="", compare=False)  # where it is configured ("http.admin_token"): named in errors

    def __repr__(self) -> str:  # never shows a value, only where it comes from
        return f"SecretRef(file={self.file!s})" if self.file else f"SecretRef(env={self.env})"

    def describe(self) -> str:
        return f"file {self.file}" if self.file else f"environment variable {self.env}"

    def resolve(self) -> str:
        """The value (whitespace stripped); a ConfigError at :attr:`key` when it cannot be read or is empty."""
        if self.file is not None:
            try:
                value = self.file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"cannot read secret file {self.file}: {exc.strerror}", key=self.key) from None
        else:
            assert self.env is not None
            env_value = os.environ.get(self.env)
            if env_value is None:
                raise ConfigError(f"environment variable {self.env} is not set", key=self.key)
            value = env_value.strip()
        if not value:
            raise ConfigError(f"secret from {self.describe()} is empty", key=self.key)
        return value


def parse_secret_ref(raw: Any, *, key: str, base_dir: Path) -> SecretRef:
    """The reference written at ``key`` (errors name ``key``, or ``key.file``/``key.env``; with
    ``key=""`` they are relative: ``""``, ``file``, ``env``)."""
    sub = (lambda name: f"{key}.{name}") if key else (lambda name: name)
    if isinstance(raw, str):
        raise ConfigError('secrets must not be written inline; use { file = "..." } or { env = "..." }', key=key)
    if not isinstance(raw, Mapping) or set(raw) not in ({"file"}, {"env"}):
        raise ConfigError("expected a table with exactly one of 'file' or 'env'", key=key)
    if "file" in raw:
        if not isinstance(raw["file"], str) or not raw["file"]:
            raise ConfigError("'file' must be a non-empty string", key=sub("file"))
        path = Path(raw["file"])
        return SecretRef(file=path if path.is_absolute() else base_dir / path, key=key)
    if not isinstance(raw["env"], str) or not raw["env"]:
        raise ConfigError("'env' must be a non-empty string", key=sub("env"))
    return SecretRef(env=raw["env"], key=key)


def secret_resolver(base_dir: Path) -> Any:
    """A ``(options, key) -> str | None`` callable for plugins (adapters, sources)."""

    def resolve(options: Mapping[str, Any], key: str) -> str | None:
        if key not in options:
            return None
        try:
            return parse_secret_ref(options[key], key=key, base_dir=base_dir).resolve()
        except ConfigError as exc:  # resolution errors carry no key: name the option
            raise exc if exc.key else ConfigError(exc.reason, key=key) from None

    return resolve
