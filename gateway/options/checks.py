"""Reusable checks for :func:`gateway.options.option` (``check=``): value -> reason it is refused, or None.

They only look (``is_file``/``is_dir`` stat the path): reading options never creates or changes
anything, so ``gateway check-config`` has no side effects.
"""

from __future__ import annotations

from collections.abc import Callable, Sized
from pathlib import Path
from typing import Any


def documented(doc: str) -> Callable[[Callable[[Any], str | None]], Callable[[Any], str | None]]:
    """Attach how a check reads in the option docs (``> 0``, ``1–500``): shown after the type."""

    def mark(check: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
        check.doc = doc  # type: ignore[attr-defined]
        return check

    return mark


@documented("> 0")
def positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


@documented("≥ 0")
def non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be >= 0"


def between(low: float, high: float, *, what: str = "") -> Callable[[float], str | None]:
    """``low <= value <= high`` (what: e.g. "an integer" / "a number of seconds", for the message)."""
    shown = f"must be {what + ' ' if what else ''}between {_number(low)} and {_number(high)}"
    return documented(f"{_number(low)}–{_number(high)}")(lambda value: None if low <= value <= high else shown)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def non_empty(value: Sized) -> str | None:
    return None if len(value) else "must not be empty"


def non_blank(value: str) -> str | None:
    return None if value.strip() else "must be a non-empty string"


def non_blank_items(value: Any) -> str | None:
    return None if all(isinstance(v, str) and v.strip() for v in value) else "must be a list of non-empty strings"


def is_file(path: Path | None) -> str | None:
    return None if path is None or path.is_file() else f"file {path} does not exist"


def is_dir(path: Path | None) -> str | None:
    return None if path is None or path.is_dir() else f"{path} is not a directory"


def all_of(*checks: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        for one in checks:
            problem = one(value)
            if problem:
                return problem
        return None

    return check
