"""Who is sending: bearer token (constant-time compare) and/or pinned TLS client certificate.

A sender configured with both must present both. The client certificate is the one the TLS layer
verified against ``[http] client_ca``; here it is pinned by the SHA-256 fingerprint of its DER form.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.sources.xoev_http.options import SenderConfig

# failure codes (documented in docs/xoev.md, "HTTP intake")
MISSING = "missing-credentials"
INVALID_TOKEN = "invalid-token"  # noqa: S105 (a failure code, not a secret)
CERTIFICATE_NOT_ALLOWED = "certificate-not-allowed"
CERTIFICATE_REQUIRED = "certificate-required"
TOKEN_REQUIRED = "token-required"  # noqa: S105 (a failure code, not a secret)


@dataclass(frozen=True, slots=True)
class AuthOutcome:
    sender: SenderConfig | None
    failure: str | None = None
    token_presented: bool = False


def bearer_token(authorization: str | None) -> str | None:
    """The token of ``Authorization: Bearer <token>``; "" for any other (unusable) Authorization header."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def peer_certificate_fingerprint(transport: Any) -> str | None:
    """Lowercase hex SHA-256 of the client certificate the TLS layer verified (None: none, or plain HTTP)."""
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return hashlib.sha256(der).hexdigest() if der else None


def _token_match(senders: Iterable[SenderConfig], token: str) -> SenderConfig | None:
    # Compare with every configured token (no early exit), digests of equal length (the time does not
    # depend on the tokens' lengths either), so timing tells nothing about which token was close.
    presented = hashlib.sha256(token.encode("utf-8")).digest()
    found: SenderConfig | None = None
    for sender in senders:
        if sender.token is None:
            continue
        if hmac.compare_digest(hashlib.sha256(sender.token.encode("utf-8")).digest(), presented):
            found = sender
    return found


def authenticate(
    senders: Mapping[str, SenderConfig], authorization: str | None, fingerprint: str | None
) -> AuthOutcome:
    token = bearer_token(authorization)
    if token is not None:
        sender = _token_match(senders.values(), token) if token else None
        if sender is None:
            return AuthOutcome(None, INVALID_TOKEN, True)
        if sender.client_certificates and fingerprint not in sender.client_certificates:
            return AuthOutcome(None, CERTIFICATE_REQUIRED, True)
        return AuthOutcome(sender, token_presented=True)
    if fingerprint is not None:
        for sender in senders.values():
            if fingerprint in sender.client_certificates:
                if sender.token is not None:
                    return AuthOutcome(None, TOKEN_REQUIRED)
                return AuthOutcome(sender)
        return AuthOutcome(None, CERTIFICATE_NOT_ALLOWED)
    return AuthOutcome(None, MISSING)
