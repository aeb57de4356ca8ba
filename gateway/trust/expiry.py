"""Expiry information for a metric: the not-after of each trusted or used certificate."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes


@dataclass(frozen=True)
class CertificateExpiry:
    subject: str  # RFC 4514
    fingerprint: str  # SHA-256, hex
    not_after: dt.datetime

    def days_left(self, now: dt.datetime | None = None) -> float:
        return (self.not_after - (now or dt.datetime.now(dt.UTC))).total_seconds() / 86400


def expiry_of(certs: Iterable[x509.Certificate]) -> list[CertificateExpiry]:
    """One entry per distinct certificate, soonest expiry first."""
    seen: dict[str, CertificateExpiry] = {}
    for cert in certs:
        fingerprint = cert.fingerprint(hashes.SHA256()).hex()
        seen.setdefault(
            fingerprint, CertificateExpiry(cert.subject.rfc4514_string(), fingerprint, cert.not_valid_after_utc)
        )
    return sorted(seen.values(), key=lambda e: e.not_after)
