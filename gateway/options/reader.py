"""Reading TOML tables into options classes, collecting every error of a file in one pass.

Why hand-written and not pydantic/msgspec (both considered; pydantic 2 is installed as a test-time
dependency of openapi-core): the messages operators and tests rely on are ``expected int, got bool``,
``unknown key (known: a, b)``, ``is required (what it is for)`` and domain reasons from the option's
own check, each at its TOML key path (``routes[1].match.test``, ``senders.portal.token``). pydantic's
are ``Input should be a valid integer`` / ``Extra inputs are not permitted`` at a tuple location and
would need a translation table per error type; its strict mode refuses ``30`` for a float, its lax
mode accepts ``true`` for an int; secrets by reference, paths relative to the config file and
checks with side-effect-free file access would all be validators anyway. The engine is ~250 lines
over the dataclass machinery, and the same declaration documents itself
(:mod:`gateway.options.docs`).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from gateway.errors import ConfigError, ConfigErrors
from gateway.options.spec import Field, fields_of, is_options_class, optional_inner
from gateway.secrets import SecretRef, parse_secret_ref

T = TypeVar("T")

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_FAILED = object()
_TOML_TYPE: dict[type[Any], str] = {dict: "table", list: "list"}


def join(base: str, key: str | int) -> str:
    """``base.key`` / ``base[3]``, quoting keys TOML would quote (``locations."https://x"``)."""
    if isinstance(key, int):
        return f"{base}[{key}]"
    shown = key if _BARE_KEY.fullmatch(key) else '"' + key.replace('"', '\\"') + '"'
    return f"{base}.{shown}" if base else shown


def type_name(value: Any) -> str:
    return _TOML_TYPE.get(type(value), type(value).__name__) if not isinstance(value, Mapping) else "table"


@dataclass
class ReadContext:
    """What option checks may need besides the value: where the file is, the mode, shared resources.

    ``resources`` holds what the gateway offers to every reader by name, e.g. the subsystems
    (``"xoev"``) or the FIT-Connect key cache; :meth:`resource` reads one typed.
    """

    base_dir: Path
    file: str = ""
    production: bool = False
    name: str = ""  # the instance being read ("bauamt" for [sources.bauamt]); "" for core tables
    resources: Mapping[str, Any] = field(default_factory=dict)

    def resource(self, name: str, kind: type[T]) -> T | None:
        value = self.resources.get(name)
        return value if isinstance(value, kind) else None

    def path(self, raw: str) -> Path:
        path = Path(raw)
        return path if path.is_absolute() else self.base_dir / path

    def instance(self, name: str) -> ReadContext:
        return dataclasses.replace(self, name=name)


class Reader:
    """Collects the errors of one file; every option read through it reports here."""

    def __init__(self, ctx: ReadContext, errors: list[ConfigError] | None = None) -> None:
        self.ctx = ctx
        self.errors: list[ConfigError] = [] if errors is None else errors
        self.warnings: list[ConfigError] = []  # legal but almost certainly not meant (a shadowed route)

    def error(self, key: str, reason: str) -> None:
        self.errors.append(ConfigError(reason, key=key, file=self.ctx.file))

    def warn(self, key: str, reason: str) -> None:
        self.warnings.append(ConfigError(reason, key=key, file=self.ctx.file))

    def failed(self, key: str) -> bool:
        """Whether an error was recorded at ``key`` or below it."""
        return any(e.key == key or e.key.startswith((key + ".", key + "[")) for e in self.errors)

    def at(self, key: str, ctx: ReadContext | None = None) -> At:
        return At(self, key, ctx or self.ctx)

    def read(self, cls: type[T], raw: Any, key: str = "", ctx: ReadContext | None = None) -> T | None:
        """``raw`` read as ``cls`` (its ``finish`` result if it has one), or None when it has errors."""
        before = len(self.errors)
        value = self.at(key, ctx).convert(cls, raw)
        return None if len(self.errors) > before or value is _FAILED else typing.cast("T", value)

    def raise_errors(self) -> None:
        if self.errors:
            raise ConfigErrors(list(self.errors))


@dataclass(frozen=True, slots=True)
class At:
    """A position in the file: what a ``parse`` function, a check and ``finish`` report errors through."""

    reader: Reader
    key: str
    ctx: ReadContext

    def child(self, key: str | int) -> At:
        return At(self.reader, join(self.key, key), self.ctx)

    def error(self, reason: str, key: str | int = "") -> None:
        """Record ``reason`` here, or at ``key`` below here (a relative path such as ``match.source``)."""
        if isinstance(key, int):
            where = join(self.key, key)
        elif key:
            where = f"{self.key}.{key}" if self.key else key
        else:
            where = self.key
        self.reader.error(where, reason)

    def ok(self, *keys: str) -> bool:
        """No error recorded at any of these options (so ``finish`` may combine them)."""
        return not any(self.reader.failed(join(self.key, k)) for k in keys)

    def path(self, raw: str) -> Path:
        return self.ctx.path(raw)

    # -- conversion ------------------------------------------------------------------------------

    def convert(self, tp: Any, raw: Any) -> Any:
        """``raw`` as ``tp``; on failure the error is recorded and ``_FAILED`` returned."""
        try:
            return self._convert(tp, raw)
        except ConfigError as exc:  # from a parse function or a nested resolution
            self.error(exc.reason, exc.key)
            return _FAILED

    def _convert(self, tp: Any, raw: Any) -> Any:
        inner = optional_inner(tp)
        if inner is not None:
            return self._convert(inner, raw)
        origin = typing.get_origin(tp)
        if tp is Any:
            return raw
        if is_options_class(tp):
            return self._table(tp, raw)
        if origin is typing.Literal:
            allowed = typing.get_args(tp)
            if any(raw == a and type(raw) is type(a) for a in allowed):
                return raw
            return self._fail(f"must be {_alternatives(allowed)}")
        if origin in (list, tuple, frozenset):
            return self._sequence(origin, typing.get_args(tp)[0], raw)
        if origin in (dict, Mapping) or origin is typing.get_origin(Mapping[str, Any]):
            return self._mapping(typing.get_args(tp)[1], raw)
        if tp is SecretRef:
            return self._secret(raw)
        if tp is Path:
            if not isinstance(raw, str):
                return self._fail(f"expected str, got {type_name(raw)}")
            if not raw:
                return self._fail("must be a non-empty path")
            return self.ctx.path(raw)
        if tp is float:
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                return self._fail(f"expected float, got {type_name(raw)}")
            return float(raw)  # TOML writes 30 for 30.0
        if tp in (int, str, bool):
            # bool is an int in Python; TOML keeps them apart, so do we.
            if not isinstance(raw, tp) or (tp is int and isinstance(raw, bool)):
                return self._fail(f"expected {tp.__name__}, got {type_name(raw)}")
            return raw
        raise TypeError(f"options cannot be read as {tp!r}: give the field a parse function")

    def _fail(self, reason: str) -> Any:
        self.error(reason)
        return _FAILED

    def _sequence(self, origin: Any, item_type: Any, raw: Any) -> Any:
        if not isinstance(raw, list):
            return self._fail(f"expected list, got {type_name(raw)}")
        items = [self.child(i).convert(item_type, item) for i, item in enumerate(raw)]
        if any(item is _FAILED for item in items):
            return _FAILED
        return {list: list, tuple: tuple, frozenset: frozenset}[origin](items)

    def _mapping(self, value_type: Any, raw: Any) -> Any:
        if not isinstance(raw, Mapping):
            return self._fail(f"expected a table, got {type_name(raw)}")
        out = {str(k): self.child(str(k)).convert(value_type, v) for k, v in raw.items()}
        return _FAILED if any(v is _FAILED for v in out.values()) else out

    def _secret(self, raw: Any) -> Any:
        ref = parse_secret_ref(raw, key="", base_dir=self.ctx.base_dir)  # ConfigError keys relative to here
        try:
            ref.resolve()  # a missing file or an unset variable is a configuration error now, not at first use
        except ConfigError as exc:
            return self._fail(exc.reason)
        return dataclasses.replace(ref, key=self.key)

    def _table(self, cls: type, raw: Any) -> Any:
        if not isinstance(raw, Mapping):
            return self._fail(f"expected a table, got {type_name(raw)}")
        fields = fields_of(cls)
        values: dict[str, Any] = {}
        failed = False
        for f in fields:
            value = self._field(f, raw)
            failed |= value is _FAILED
            values[f.name] = f.default_value() if value is _FAILED else value
        known = {f.key for f in fields}
        for unknown in sorted(set(map(str, raw)) - known):
            self.child(unknown).error(f"unknown key (known: {', '.join(sorted(known))})")
            failed = True
        if failed:
            return _FAILED  # checks across options only see options that are fine each
        instance = cls(**values)
        finish: Callable[[At], Any] | None = getattr(instance, "finish", None)
        if finish is None:
            return instance
        before = len(self.reader.errors)
        try:
            result = finish(self)
        except ConfigError as exc:
            self.error(exc.reason, exc.key)
            return _FAILED
        return _FAILED if len(self.reader.errors) > before else result

    def _field(self, f: Field, raw: Mapping[str, Any]) -> Any:
        at = self.child(f.key)
        if f.key not in raw:
            if f.required:
                at.error("is required" + (f" ({f.spec.hint})" if f.spec.hint else ""))
                return _FAILED
            return f.default_value()
        value = raw[f.key]
        if f.spec.parse is not None:
            try:
                value = f.spec.parse(value, at)
            except ConfigError as exc:
                at.error(exc.reason, exc.key)
                return _FAILED
        else:
            value = at.convert(f.type, value)
        if value is _FAILED:
            return _FAILED
        if f.spec.check is not None:
            problem = f.spec.check(value)
            if problem:
                at.error(problem)
                return _FAILED
        return value


def _alternatives(values: Iterable[Any]) -> str:
    shown = [repr(v) for v in values]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"


def failed() -> Any:
    """What a ``parse`` function returns after it reported its errors through ``At.error``."""
    return _FAILED
