"""Revocation from CRL files in a directory (offline), re-read whenever the directory changes.

Every file in the directory (PEM, one or more CRLs, or DER; any name) is loaded; an unreadable file is
skipped with a warning (``trust_crl_unreadable``), never a crash. The directory's listing (names,
sizes, mtimes) is compared on each use, so a CRL dropped in by cron counts from the next check on;
:attr:`CrlDirectory.generation` changes with it (callers that cache verdicts re-check then).

For a certificate, the CRLs that count are those whose issuer name is the certificate's issuer and
whose signature verifies with the issuer's key (a CRL signed by anyone else is ignored). Listed →
revoked; covered by such a CRL but not listed → good; no CRL of that issuer → unknown (no revocation
information; OCSP may still answer). A CRL past its nextUpdate still counts — a revocation stays a
revocation — but is logged (``trust_crl_stale``) so the operator refreshes it. Delta CRLs and
partitioned CRLs (issuingDistributionPoint) are not supported.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog
from cryptography import x509

log = structlog.get_logger(__name__)

Status = Literal["good", "revoked", "unknown"]


@dataclass(frozen=True)
class CrlVerdict:
    status: Status
    revoked_at: dt.datetime | None = None


class CrlDirectory:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.generation = 0
        self._signature: tuple[tuple[str, int, int], ...] | None = None
        self._crls: list[x509.CertificateRevocationList] = []
        self._lock = threading.Lock()  # XMLDSig checks run in worker threads

    def _listing(self) -> tuple[tuple[str, int, int], ...]:
        entries = []
        try:
            with os.scandir(self.directory) as it:
                for entry in it:
                    if entry.is_file():
                        stat = entry.stat()
                        entries.append((entry.name, stat.st_size, stat.st_mtime_ns))
        except OSError as exc:
            log.warning("trust_crl_dir_unreadable", path=str(self.directory), error=exc.strerror)
        return tuple(sorted(entries))

    def refresh(self) -> None:
        """Re-read the directory if its listing changed since the last look."""
        with self._lock:
            listing = self._listing()
            if listing == self._signature:
                return
            crls: list[x509.CertificateRevocationList] = []
            for name, _, _ in listing:
                path = self.directory / name
                try:
                    data = path.read_bytes()
                    if b"-----BEGIN" in data:
                        crls.extend(_load_pem_crls(data))
                    else:
                        crls.append(x509.load_der_x509_crl(data))
                except (OSError, ValueError) as exc:
                    log.warning("trust_crl_unreadable", path=str(path), error=type(exc).__name__)
            self._crls, self._signature = crls, listing
            self.generation += 1
            log.info("trust_crls_loaded", path=str(self.directory), count=len(crls), generation=self.generation)

    def status(self, cert: x509.Certificate, issuer: x509.Certificate, now: dt.datetime | None = None) -> CrlVerdict:
        self.refresh()
        when = now or dt.datetime.now(dt.UTC)
        covered = False
        for crl in self._crls:
            if crl.issuer != cert.issuer:
                continue
            try:
                if not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
                    continue
            except (TypeError, ValueError):
                continue
            covered = True
            if crl.next_update_utc is not None and crl.next_update_utc < when:
                log.warning("trust_crl_stale", issuer=crl.issuer.rfc4514_string(), next_update=str(crl.next_update_utc))
            entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
            if entry is not None:
                return CrlVerdict("revoked", entry.revocation_date_utc)
        return CrlVerdict("good" if covered else "unknown")


def _load_pem_crls(data: bytes) -> list[x509.CertificateRevocationList]:
    out = []
    marker = b"-----END X509 CRL-----"
    for block in data.split(marker)[:-1]:
        start = block.find(b"-----BEGIN X509 CRL-----")
        if start >= 0:
            out.append(x509.load_pem_x509_crl(block[start:] + marker + b"\n"))
    if not out:
        raise ValueError("no PEM CRL")
    return out


def check_path(chain: tuple[x509.Certificate, ...], crls: CrlDirectory, now: dt.datetime | None = None) -> None:
    """Raise TrustError("revoked") if a CRL lists the leaf or an intermediate of the validated ``chain``
    (leaf first, anchor last; the anchor itself is trusted by configuration, not by CRL)."""
    from gateway.trust.path import TrustError

    for index, cert in enumerate(chain[:-1]):
        verdict = crls.status(cert, chain[index + 1], now)
        if verdict.status == "revoked":
            position = "leaf" if index == 0 else "intermediate"
            raise TrustError(
                "revoked",
                f"the {position} certificate (serial {cert.serial_number:x}) is revoked by its CA's CRL "
                f"since {verdict.revoked_at}",
            )
