"""Path validation with ``cryptography.x509.verification`` (RFC 5280 chain building by pyca, not ours).

What the library checks: signatures along the path, validity periods (anchors included), basic
constraints (``cA`` on every issuer, path length), name constraints (DNS, IP, e-mail; a critical
directoryName constraint is refused as unsupported: fail closed), chain depth, weak keys and
algorithms. What the policies below add, as the library's extension validators:

* CA certificates: ``basicConstraints`` present; a ``keyUsage``, when present, includes keyCertSign;
* end-entity certificates: not a CA; ``keyUsage`` (when present) allows the purpose, e.g.
  keyEncipherment for a FIT-Connect encryption key, digitalSignature / nonRepudiation for a signature.

Extended key usage is not restricted (FIT-Connect and XÖV define none). Revocation is
:mod:`gateway.trust.crl` / :mod:`gateway.trust.ocsp`, checked on the path this module returns.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

MAX_CHAIN_DEPTH = 8

# A key-usage rule: None when the leaf's KeyUsage (None: extension absent) allows the purpose, else why not.
UsageRule = Callable[[x509.KeyUsage | None], str | None]


class TrustError(Exception):
    """A certificate was refused. ``code``: untrusted, cert-expired, cert-not-yet-valid, cert-key-usage,
    revoked, revocation-unknown (docs/hostile-input.md lists them)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def encryption_usage(ku: x509.KeyUsage | None) -> str | None:
    if ku is not None and not ku.key_encipherment:
        return "leaf certificate does not allow keyEncipherment"
    return None


def signature_usage(ku: x509.KeyUsage | None) -> str | None:
    if ku is not None and not (ku.digital_signature or ku.content_commitment):
        return "leaf certificate does not allow digitalSignature"
    return None


@dataclass(frozen=True)
class VerifiedPath:
    chain: tuple[x509.Certificate, ...]  # leaf first, the trust anchor last

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]


def _ca_key_usage(policy: Any, cert: x509.Certificate, ku: x509.KeyUsage | None) -> None:
    if ku is not None and not ku.key_cert_sign:
        raise ValueError("issuer certificate's keyUsage does not include keyCertSign")


def _ee_basic_constraints(policy: Any, cert: x509.Certificate, bc: x509.BasicConstraints | None) -> None:
    if bc is not None and bc.ca:
        raise ValueError("the end-entity certificate is a CA certificate")


_CA_POLICY = (
    ExtensionPolicy.permit_all()
    .require_present(x509.BasicConstraints, Criticality.AGNOSTIC, None)
    .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, _ca_key_usage)
)


def verify_path(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    *,
    usage: UsageRule | None = None,
    now: dt.datetime | None = None,
) -> VerifiedPath:
    """The validated path from ``leaf`` (with untrusted ``intermediates``) to one of ``anchors``."""
    when = now or dt.datetime.now(dt.UTC)
    if not anchors:
        raise TrustError("untrusted", "no trust anchor is configured")
    usage_failure: list[str] = []

    def ee_key_usage(policy: Any, cert: x509.Certificate, ku: x509.KeyUsage | None) -> None:
        reason = usage(ku) if usage is not None else None
        if reason is not None:
            usage_failure.append(reason)
            raise ValueError(reason)

    ee_policy = (
        ExtensionPolicy.permit_all()
        .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, ee_key_usage)
        .may_be_present(x509.BasicConstraints, Criticality.AGNOSTIC, _ee_basic_constraints)
    )
    verifier = (
        PolicyBuilder()
        .store(Store(list(anchors)))
        .time(when)
        .max_chain_depth(MAX_CHAIN_DEPTH)
        .extension_policies(ca_policy=_CA_POLICY, ee_policy=ee_policy)
        .build_client_verifier()
    )
    try:
        verified = verifier.verify(leaf, list(intermediates))
    except VerificationError as exc:
        raise _classify(exc, leaf, intermediates, usage_failure, when) from None
    return VerifiedPath(tuple(verified.chain))


def _classify(
    exc: VerificationError,
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    usage_failure: list[str],
    now: dt.datetime,
) -> TrustError:
    """A precise code for the usual causes; the library's own words for the rest."""
    if usage_failure:
        return TrustError("cert-key-usage", usage_failure[0])
    for position, cert in (("leaf", leaf), *((f"x5c[{i + 1}]", c) for i, c in enumerate(intermediates))):
        if now > cert.not_valid_after_utc:
            return TrustError("cert-expired", f"{position} certificate expired at {cert.not_valid_after_utc}")
        if now < cert.not_valid_before_utc:
            return TrustError(
                "cert-not-yet-valid", f"{position} certificate is not valid before {cert.not_valid_before_utc}"
            )
    reason = str(exc).split(" (encountered processing", 1)[0]
    return TrustError("untrusted", f"no valid path to a trust anchor: {reason}"[:300])


def is_self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
