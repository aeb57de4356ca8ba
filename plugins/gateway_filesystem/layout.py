"""Where inside the target directory a message's directory goes: ``{id}`` or e.g. ``{received_date}/{id}``.

Deliberately small: a few placeholders, plain literal characters, and the last path segment is
always exactly ``{id}`` (one directory per message, named by the gateway id).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.model import Envelope

FIELDS = frozenset({"id", "channel", "received_date", "received_year", "received_month"})
MAX_SEGMENTS = 5
_LITERAL = re.compile(r"[A-Za-z0-9._-]*")
# Values substituted into a path must be plain names: no separators, no leading dot, bounded.
_SAFE_VALUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class LayoutError(ValueError):
    """The envelope's values cannot be used in a path (the message cannot be written here)."""


Piece = tuple[str, str | None]  # (literal text, placeholder name or None)


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC) if moment.tzinfo is not None else moment


@dataclass(frozen=True, slots=True)
class Layout:
    text: str
    segments: tuple[tuple[Piece, ...], ...]

    @classmethod
    def parse(cls, text: str) -> Layout:
        """Parse and check a layout; ``ValueError`` with a reason when it is not acceptable."""
        if not text or text.startswith("/") or "\\" in text:
            raise ValueError("must be a relative path with '/' separators")
        raw_segments = text.split("/")
        if len(raw_segments) > MAX_SEGMENTS:
            raise ValueError(f"at most {MAX_SEGMENTS} path segments")
        if raw_segments[-1] != "{id}" or text.count("{id}") != 1:
            raise ValueError("the last path segment must be exactly '{id}' (and '{id}' appear only there)")
        segments: list[tuple[Piece, ...]] = []
        for raw in raw_segments:
            if not raw:
                raise ValueError("empty path segment")
            try:
                parsed = list(string.Formatter().parse(raw))
            except ValueError as exc:
                raise ValueError(f"bad placeholder syntax: {exc}") from None
            pieces: list[Piece] = []
            for literal, field, spec, conversion in parsed:
                if not _LITERAL.fullmatch(literal):
                    raise ValueError("literal text may only contain A-Z, a-z, 0-9, '.', '_' and '-'")
                if field is not None and (field not in FIELDS or spec or conversion):
                    raise ValueError(f"unknown placeholder {{{field}}}; known: {', '.join(sorted(FIELDS))}")
                pieces.append((literal, field))
            if pieces[0][0].startswith("."):
                raise ValueError("path segments must not start with '.'")
            segments.append(tuple(pieces))
        return cls(text, tuple(segments))

    def render(self, envelope: Envelope) -> tuple[str, ...]:
        """The relative path segments for ``envelope``; :class:`LayoutError` if a value is unsafe."""
        received = _utc(envelope.received_at)
        values = {
            "id": envelope.id,
            "channel": envelope.source.channel,
            "received_date": received.strftime("%Y-%m-%d"),
            "received_year": received.strftime("%Y"),
            "received_month": received.strftime("%m"),
        }
        for field in ("id", "channel"):
            if not _SAFE_VALUE.fullmatch(values[field]):
                raise LayoutError(f"the message's {field} is not usable as a path segment")
        return tuple(
            "".join(literal + (values[field] if field else "") for literal, field in pieces) for pieces in self.segments
        )
