"""Errors shared across the gateway."""

from __future__ import annotations


class GatewayError(Exception):
    """Base class for errors the gateway reports to operators."""


class ConfigError(GatewayError):
    """A configuration problem, reported with file, key path and reason (never a secret value)."""

    def __init__(self, reason: str, *, key: str = "", file: str = "") -> None:
        self.reason = reason
        self.key = key
        self.file = file
        super().__init__(self.render())

    def render(self) -> str:
        where = self.file or "<config>"
        if self.key:
            where += f": {self.key}"
        return f"{where}: {self.reason}"

    def at(self, *, key_prefix: str = "", file: str = "") -> ConfigError:
        """The same error, located inside a larger structure (``key_prefix.key``)."""
        key = f"{key_prefix}.{self.key}" if key_prefix and self.key else (key_prefix or self.key)
        return ConfigError(self.reason, key=key, file=file or self.file)


class ConfigErrors(GatewayError):
    """Several configuration problems at once (startup reports them all, not just the first)."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__("\n".join(e.render() for e in errors))
