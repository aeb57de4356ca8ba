"""Options documented from their declaration: ``gateway plugins --options TYPE`` and docs/configuration.md."""

from __future__ import annotations

import dataclasses
import importlib
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.options.spec import describe_type, fields_of, is_options_class, optional_inner


@dataclasses.dataclass(frozen=True, slots=True)
class OptionDoc:
    key: str  # relative to the table (nested tables: "senders.<name>.token")
    type: str
    default: str  # "required" when there is none
    doc: str


def _default(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, Path):
        return f'"{value}"'
    if isinstance(value, tuple | list | frozenset):
        return "[" + ", ".join(_default(v) for v in value) + "]"
    if isinstance(value, dict) and not value:
        return "{}"
    return str(value)


def describe(cls: type, prefix: str = "") -> list[OptionDoc]:
    """Every option of ``cls``, nested tables flattened (``senders.<name>.token``)."""
    out: list[OptionDoc] = []
    for f in fields_of(cls):
        key = f"{prefix}{f.key}"
        if f.spec.default_doc is not None:
            default = f.spec.default_doc
        elif f.required:
            default = "required"
        else:
            value = f.default_value()
            default = "none" if value is None else _default(value)
        shown = f.spec.type_doc or describe_type(f.type)
        constraint = getattr(f.spec.check, "doc", None)
        out.append(OptionDoc(key, f"{shown} {constraint}" if constraint else shown, default, f.spec.doc))
        nested = _nested(f.type)
        if nested is not None:
            cls_, pattern = nested
            out.extend(describe(cls_, f"{key}{pattern}."))
    return out


def _nested(tp: Any) -> tuple[type, str] | None:
    """The options class inside a field's type and how its keys are shown (``[]``, ``.<name>``)."""
    tp = optional_inner(tp) or tp
    if is_options_class(tp):
        return tp, ""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (list, tuple) and args and is_options_class(args[0]):
        return args[0], "[]"
    mapping = origin in (dict, Mapping) or origin is typing.get_origin(Mapping[str, Any])
    if mapping and args and is_options_class(args[-1]):
        return args[-1], ".<name>"
    return None


def _cell(value: str) -> str:
    return value.replace("|", "\\|")


def markdown_table(cls: type) -> str:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for d in describe(cls):
        default = d.default if d.default in ("required", "none") else f"`{d.default}`"
        rows.append(f"| `{d.key}` | {_cell(d.type)} | {_cell(default)} | {_cell(d.doc)} |")
    return "\n".join(rows)


_BLOCK = re.compile(r"(<!-- options: (?P<target>[\w.]+) -->\n)(?P<body>.*?)(<!-- /options -->)", re.DOTALL)


def update_markdown(text: str) -> str:
    """Every ``<!-- options: module.Class -->`` ... ``<!-- /options -->`` block regenerated from the class."""

    def render(match: re.Match[str]) -> str:
        module, _, name = match.group("target").rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        return f"{match.group(1)}{markdown_table(cls)}\n{match.group(4)}"

    return _BLOCK.sub(render, text)


def main(argv: list[str] | None = None) -> int:
    """``python -m gateway.options.docs FILE...``: regenerate the option tables in place."""
    import sys

    for name in argv if argv is not None else sys.argv[1:]:
        path = Path(name)
        path.write_text(update_markdown(path.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


def text(cls: type) -> str:
    """For the terminal: one block per option."""
    lines = []
    for d in describe(cls):
        lines.append(f"{d.key}  ({d.type}; {'required' if d.default == 'required' else 'default ' + d.default})")
        lines.append(f"    {d.doc}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
