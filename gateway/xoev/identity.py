"""What the gateway understood about an XML message (returned by ``gateway_xoev_identify``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class MessageIdentity:
    standard: str  # e.g. "xdomea", "xbau", "xbeteiligung"
    version: str  # e.g. "3.0.0", "2.6"
    message_type: str  # e.g. "Aussonderung.Anbieteverzeichnis.0501", "baugenehmigung.antrag.0200"
    namespace: str
    message_id: str | None = None  # nachrichtenUUID / xdomea ProzessID
    created_at: datetime | None = None
    author_id: str | None = None  # authority id (kennung) of the author
    reader_id: str | None = None  # authority id (kennung) of the reader
    test: bool = False
    extra: dict[str, str] = field(default_factory=dict)
