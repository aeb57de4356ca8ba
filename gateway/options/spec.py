"""Declaring options: a frozen dataclass whose fields carry type, default, description and checks.

The annotation is the type the option is read as (``int``, ``float``, ``bool``, ``str``, ``Path``,
``SecretRef``, ``Literal[...]``, ``list[X]``/``tuple[X, ...]``, ``dict[str, X]``, another options
class for a nested table, ``X | None``); :mod:`gateway.options.reader` reads a TOML table into it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar, dataclass_transform, overload

T = TypeVar("T")
C = TypeVar("C", bound=type)

_SPEC = "gateway.option"


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """What :func:`option` records for one field, besides its default."""

    doc: str
    check: Callable[[Any], str | None] | None = None  # the converted value -> reason it is refused, or None
    parse: Callable[[Any, Any], Any] | None = None  # (raw TOML value, Read) -> value: replaces the type's reading
    key: str | None = None  # the TOML key, when it is not the field name (e.g. "type" is fine, "from" is not)
    hint: str = ""  # said after "is required" (what the option is for)
    default_doc: str | None = None  # how the default is shown when it is computed (e.g. "<data_dir>/gateway.db")
    type_doc: str | None = None  # how the type is shown when ``parse`` reads something else than the annotation


@overload
def option(
    *,
    default: T,
    doc: str,
    check: Callable[[Any], str | None] | None = ...,
    parse: Callable[[Any, Any], Any] | None = ...,
    key: str | None = ...,
    default_doc: str | None = ...,
    type_doc: str | None = ...,
) -> T: ...


@overload
def option(
    *,
    doc: str,
    check: Callable[[Any], str | None] | None = ...,
    parse: Callable[[Any, Any], Any] | None = ...,
    key: str | None = ...,
    hint: str = ...,
    default_factory: Callable[[], Any] | None = ...,
    default_doc: str | None = ...,
    type_doc: str | None = ...,
) -> Any: ...


def option(
    *,
    default: Any = dataclasses.MISSING,
    doc: str,
    check: Callable[[Any], str | None] | None = None,
    parse: Callable[[Any, Any], Any] | None = None,
    key: str | None = None,
    hint: str = "",
    default_factory: Callable[[], Any] | None = None,
    default_doc: str | None = None,
    type_doc: str | None = None,
) -> Any:
    """One option. Without ``default`` (or ``default_factory``) it is required."""
    spec = OptionSpec(doc, check, parse, key, hint, default_doc, type_doc)
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata={_SPEC: spec})
    return dataclasses.field(default=default, metadata={_SPEC: spec})


@overload
def options(cls: C, /) -> C: ...


@overload
def options(*, kw_only: bool = True) -> Callable[[C], C]: ...


@dataclass_transform(frozen_default=True, kw_only_default=True, field_specifiers=(option,))
def options(cls: Any = None, /, *, kw_only: bool = True) -> Any:
    """Make ``cls`` an options class: a frozen, keyword-only dataclass read by :meth:`gateway.options.Reader.read`
    (``@options(kw_only=False)`` for classes built positionally, e.g. in tests).

    Fields without :func:`option` are not read from TOML (e.g. a name taken from the table's key);
    they need a default."""

    def wrap(cls: C) -> C:
        return typing.cast("C", dataclass(frozen=True, kw_only=kw_only)(cls))

    return wrap if cls is None else wrap(cls)


@dataclass(frozen=True, slots=True)
class Field:
    """One option of an options class, resolved for reading and documenting."""

    name: str  # attribute
    key: str  # TOML key
    type: Any  # the resolved annotation
    spec: OptionSpec
    default: Any  # dataclasses.MISSING when required
    default_factory: Any

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING and self.default_factory is dataclasses.MISSING

    def default_value(self) -> Any:
        if self.default_factory is not dataclasses.MISSING:
            return self.default_factory()
        return None if self.default is dataclasses.MISSING else self.default


def is_options_class(tp: Any) -> bool:
    return (
        isinstance(tp, type)
        and dataclasses.is_dataclass(tp)
        and any(_SPEC in f.metadata for f in dataclasses.fields(tp))
    )


@cache
def fields_of(cls: type) -> tuple[Field, ...]:
    """The options of ``cls`` in declaration order (annotations resolved once per class)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not an options class (decorate it with @options)")
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(_SPEC)
        if spec is None:
            continue  # a plain dataclass field: not read from TOML
        out.append(Field(f.name, spec.key or f.name, hints[f.name], spec, f.default, f.default_factory))
    return tuple(out)


def optional_inner(tp: Any) -> Any | None:
    """``X`` for ``X | None`` (else None)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def describe_type(tp: Any) -> str:
    """How a type is shown to operators (``gateway plugins --options``, docs/configuration.md)."""
    from pathlib import Path

    from gateway.secrets import SecretRef

    inner = optional_inner(tp)
    if inner is not None:
        return describe_type(inner)
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " | ".join(repr(a).replace("'", '"') for a in typing.get_args(tp))
    if origin in (list, tuple, frozenset, set):
        return f"list of {describe_type(typing.get_args(tp)[0])}"
    if origin in (dict, Mapping) or origin is typing.get_origin(Mapping[str, Any]):
        return f"table of {describe_type(typing.get_args(tp)[1])}"
    if tp is SecretRef:
        return "secret"
    if tp is Path:
        return "path"
    if is_options_class(tp):
        return "table"
    return {str: "string", int: "int", float: "float", bool: "bool"}.get(tp, getattr(tp, "__name__", str(tp)))
