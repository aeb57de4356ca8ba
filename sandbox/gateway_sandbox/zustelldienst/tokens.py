"""OAuth 2.0 client credentials (RFC 6749 §4.4) and bearer-token checks.

Access tokens are PS512-signed JWTs (RFC 9068 ``typ=at+jwt``) from the sandbox's own key, with
``iss``, ``sub``/``client_id``, ``jti``, ``iat``, ``exp`` and a space-separated ``scope`` — like the
real authorisation server, whose tokens clients must treat as opaque anyway. Expiry follows the
sandbox clock, so fast-forwarding makes earlier tokens expire.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import uuid
from collections import OrderedDict
from dataclasses import dataclass

from gateway.fitconnect.jose import JoseError, parse_jws, sign_jws, verify_jws
from gateway_sandbox.zustelldienst.clock import SandboxClock
from gateway_sandbox.zustelldienst.scopes import Grant
from gateway_sandbox.zustelldienst.state import SandboxState
from gateway_sandbox.zustelldienst.zsd_key import ZsdSigningKey

TOKEN_TYP = "at+jwt"  # noqa: S105 - a JWT type, not a secret
_CACHE_SIZE = 256


class OAuthError(Exception):
    """An RFC 6749 §5.2 error answer: ``{"error": code, "error_description": ...}``."""

    def __init__(self, status: int, code: str, description: str) -> None:
        super().__init__(f"{code}: {description}")
        self.status = status
        self.code = code
        self.description = description


class InvalidToken(Exception):
    """The bearer token is missing, malformed, expired or revoked (→ 401)."""


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    expires_in: int
    scope: str


def parse_basic(header: str) -> tuple[str, str] | None:
    """``Authorization: Basic`` credentials (RFC 6749 §2.3.1: form-urlencoded id and secret)."""
    from urllib.parse import unquote_plus

    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise OAuthError(401, "invalid_client", "malformed Basic credentials") from None
    if ":" not in decoded:
        raise OAuthError(401, "invalid_client", "malformed Basic credentials")
    client_id, _, secret = decoded.partition(":")
    return unquote_plus(client_id), unquote_plus(secret)


class TokenService:
    def __init__(self, state: SandboxState, clock: SandboxClock, key: ZsdSigningKey, lifetime: int) -> None:
        self.state = state
        self.clock = clock
        self.key = key
        self.lifetime = lifetime
        self._verified: OrderedDict[str, tuple[str, tuple[str, ...], int, float]] = OrderedDict()

    def issue(
        self,
        *,
        form: dict[str, str],
        authorization: str | None,
        issuer: str,
    ) -> IssuedToken:
        basic = parse_basic(authorization) if authorization else None
        if basic and ("client_secret" in form):
            raise OAuthError(400, "invalid_request", "use either HTTP Basic or client_secret in the body, not both")
        grant_type = form.get("grant_type")
        if basic:
            client_id, secret = basic
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        if not client_id or not secret:
            raise OAuthError(401, "invalid_client", "client authentication is missing")
        client = self.state.clients.get(client_id)
        # Compare even for unknown clients so timing does not reveal which ids exist.
        expected = client.secret if client else "\x00" * 32
        if not hmac.compare_digest(secret.encode("utf-8"), expected.encode("utf-8")) or client is None:
            raise OAuthError(401, "invalid_client", "unknown client or wrong secret")
        if not grant_type:
            raise OAuthError(400, "invalid_request", "grant_type is missing")
        if grant_type != "client_credentials":
            raise OAuthError(400, "unsupported_grant_type", "only client_credentials is supported")
        if not client.scopes:
            raise OAuthError(400, "invalid_scope", "no scope is assigned to this client (no destination linked)")
        requested = form.get("scope", "").split()
        if requested:
            unknown = [s for s in requested if s not in client.scopes]
            if unknown:
                raise OAuthError(400, "invalid_scope", f"scope not granted to this client: {' '.join(unknown)}")
            granted = tuple(dict.fromkeys(requested))
        else:
            granted = client.scopes
        now = self.clock.now()
        claims = {
            "iss": issuer,
            "sub": client.id,
            "client_id": client.id,
            "jti": str(uuid.uuid4()),
            "iat": int(now),
            "exp": int(now) + self.lifetime,
            "scope": " ".join(granted),
            # sandbox-private: POST /_sandbox/tokens/revoke bumps the generation, voiding older tokens
            "sandbox_gen": self.state.token_generation,
        }
        token = sign_jws(claims, self.key.key, kid=self.key.kid, typ=TOKEN_TYP)
        return IssuedToken(token, self.lifetime, " ".join(granted))

    def grant(self, authorization: str | None) -> Grant:
        """The grant of a bearer token; raises :class:`InvalidToken`."""
        if not authorization:
            raise InvalidToken("no bearer token")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise InvalidToken("Authorization is not a Bearer token")
        cached = self._verified.get(token)
        if cached is None:
            try:
                parsed = parse_jws(token)
            except JoseError:
                raise InvalidToken("malformed token") from None
            if parsed.header.get("kid") != self.key.kid or parsed.header.get("typ") != TOKEN_TYP:
                raise InvalidToken("token was not issued by this sandbox")
            try:
                verify_jws(parsed, self.key.key.public_key())
            except JoseError:
                raise InvalidToken("token signature invalid") from None
            c = parsed.payload
            if not (
                isinstance(c.get("exp"), int)
                and isinstance(c.get("sandbox_gen"), int)
                and isinstance(c.get("sub"), str)
            ):
                raise InvalidToken("token claims incomplete")
            cached = (c["sub"], tuple(str(c.get("scope", "")).split()), c["sandbox_gen"], float(c["exp"]))
            self._verified[token] = cached
            if len(self._verified) > _CACHE_SIZE:
                self._verified.popitem(last=False)
        client_id, scopes, generation, exp = cached
        if self.clock.now() >= exp:
            raise InvalidToken("token expired")
        if generation < self.state.token_generation:
            raise InvalidToken("token revoked")
        client = self.state.clients.get(client_id)
        if client is None:
            raise InvalidToken("client no longer exists")
        return Grant(client_id=client_id, scopes=scopes, links=client.destinations)
