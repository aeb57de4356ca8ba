"""Problem reports (RFC 9457 shape) used for rejections, HTTP errors and reject-submission SETs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Problem:
    type: str  # a URI from a documented catalogue
    title: str
    detail: str = ""  # technical, never personal data
    instance: str | None = None  # e.g. "metadata", "data", "attachment:<uuid>", an XPath

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "title": self.title}
        if self.detail:
            out["detail"] = self.detail
        if self.instance is not None:
            out["instance"] = self.instance
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Problem:
        return cls(
            type=str(raw["type"]),
            title=str(raw.get("title", "")),
            detail=str(raw.get("detail", "")),
            instance=raw.get("instance"),
        )
