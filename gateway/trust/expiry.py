"""Expiry information for a metric: the not-after of each trusted or used certificate."""

from __future__ import annotations

import datetime as dt
import weakref
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from prometheus_client import CollectorRegistry, Gauge


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


_GAUGES: weakref.WeakKeyDictionary[CollectorRegistry, Gauge] = weakref.WeakKeyDictionary()


def expiry_gauge(registry: CollectorRegistry) -> Gauge:
    """``gateway_certificate_expiry_timestamp_seconds{channel, role, subject}``: the not-after of each
    trusted or used certificate (alert on ``(metric - time()) / 86400 < 30`` for days to expiry)."""
    gauge = _GAUGES.get(registry)
    if gauge is None:
        gauge = Gauge(
            "gateway_certificate_expiry_timestamp_seconds",
            "Not-after of trusted and used certificates (Unix time)",
            ["channel", "role", "subject"],
            registry=registry,
        )
        _GAUGES[registry] = gauge
    return gauge


def report_expiry(gauge: Gauge, channel: str, role: str, certs: Iterable[x509.Certificate]) -> None:
    for entry in expiry_of(certs):
        gauge.labels(channel, role, entry.subject[:200]).set(entry.not_after.timestamp())
