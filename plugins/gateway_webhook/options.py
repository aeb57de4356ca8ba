"""Validation of ``[adapters.NAME]`` options for ``type = "webhook"``."""

from __future__ import annotations

import ipaddress
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from yarl import URL

from gateway.adapters.base import AdapterContext
from gateway.errors import ConfigError

KNOWN_OPTIONS = frozenset(
    {
        "url",
        "format",
        "max_inline_bytes",
        "timeout",
        "connect_timeout",
        "headers",
        "auth_token",
        "ca_file",
        "client_cert",
        "client_key",
        "max_connections",
    }
)
DEFAULT_MAX_INLINE_BYTES = 10 * 1024 * 1024
DEFAULT_TIMEOUT = 30.0
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 10
# Set by the adapter itself, or hop-by-hop/framing headers a static value would break.
RESERVED_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "idempotency-key",
        "x-gateway-message-id",
        "x-gateway-attempt",
        "content-type",
        "content-length",
        "content-encoding",
        "transfer-encoding",
        "host",
        "connection",
        "expect",
        "te",
        "upgrade",
        "keep-alive",
    }
)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 field-name
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e\x80-\uffff]*")  # no CR, LF, NUL or other controls
_BEARER = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750 b64token


@dataclass(frozen=True, slots=True)
class WebhookOptions:
    url: URL
    format: Literal["json", "multipart"] = "json"
    max_inline_bytes: int = DEFAULT_MAX_INLINE_BYTES
    timeout: float = DEFAULT_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    headers: Mapping[str, str] = field(default_factory=dict)
    auth_token: str | None = field(default=None, repr=False)  # never shown
    ssl_context: ssl.SSLContext | None = None  # None: the system default (https) or no TLS (http)
    max_connections: int = DEFAULT_MAX_CONNECTIONS


def _number(options: Mapping[str, Any], key: str, default: float, maximum: float) -> float:
    raw = options.get(key, default)
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 < raw <= maximum:
        raise ConfigError(f"must be a number of seconds, greater than 0 and at most {maximum:g}", key=key)
    return float(raw)


def _integer(options: Mapping[str, Any], key: str, default: int, maximum: int) -> int:
    raw = options.get(key, default)
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= maximum:
        raise ConfigError(f"must be an integer between 1 and {maximum}", key=key)
    return raw


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url(ctx: AdapterContext, options: Mapping[str, Any]) -> URL:
    raw = options.get("url")
    if raw is None:
        raise ConfigError("required (the Fachverfahren's endpoint)", key="url")
    if not isinstance(raw, str):
        raise ConfigError("must be a string", key="url")
    try:
        url = URL(raw)
    except ValueError:
        raise ConfigError("not a valid URL", key="url") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError("must be an absolute http:// or https:// URL", key="url")
    if url.user is not None or url.password is not None:
        raise ConfigError("must not contain credentials; use auth_token", key="url")
    if url.fragment:
        raise ConfigError("must not contain a fragment", key="url")
    if ctx.production and url.scheme == "http" and not _is_loopback(url.host):
        raise ConfigError("plain http is refused in production (except to loopback); use https", key="url")
    return url


def _headers(options: Mapping[str, Any]) -> dict[str, str]:
    raw = options.get("headers", {})
    if not isinstance(raw, Mapping):
        raise ConfigError("must be a table of header names to string values", key="headers")
    headers: dict[str, str] = {}
    for name, value in raw.items():
        key = f"headers.{name}"
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise ConfigError("not a valid HTTP header name", key=key)
        if name.lower() in RESERVED_HEADERS:
            raise ConfigError("set by the adapter (secrets go into auth_token); cannot be configured", key=key)
        if not isinstance(value, str) or not _HEADER_VALUE.fullmatch(value):
            raise ConfigError("must be a string without control characters", key=key)
        headers[name] = value
    return headers


def _auth_token(ctx: AdapterContext, options: Mapping[str, Any]) -> str | None:
    if "auth_token" not in options:
        return None
    if not isinstance(options["auth_token"], Mapping):
        raise ConfigError('must be { file = "..." } or { env = "..." }; never the secret itself', key="auth_token")
    try:
        token = ctx.resolve_secret(options, "auth_token")
    except ConfigError as exc:
        raise exc if exc.key else ConfigError(exc.reason, key="auth_token") from None
    if token is None:
        return None
    token = token.strip()
    if not _BEARER.fullmatch(token):
        # Never echo the value: say only what is wrong with it.
        raise ConfigError("the secret is empty or not a valid bearer token (RFC 6750 characters)", key="auth_token")
    return token


def _path(ctx: AdapterContext, options: Mapping[str, Any], key: str) -> Path | None:
    raw = options.get(key)
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw:
        raise ConfigError("must be a non-empty path string", key=key)
    path = Path(raw)
    path = path if path.is_absolute() else ctx.base_dir / path
    if not path.is_file():
        raise ConfigError(f"file not found: {path}", key=key)
    return path


def _ssl_context(ctx: AdapterContext, options: Mapping[str, Any], url: URL) -> ssl.SSLContext | None:
    ca_file = _path(ctx, options, "ca_file")
    client_cert = _path(ctx, options, "client_cert")
    client_key = _path(ctx, options, "client_key")
    if ca_file is None and client_cert is None and client_key is None:
        return None
    if url.scheme != "https":
        key = "ca_file" if ca_file else "client_cert" if client_cert else "client_key"
        raise ConfigError("TLS options need an https:// url", key=key)
    if client_key is not None and client_cert is None:
        raise ConfigError("client_key needs client_cert", key="client_key")
    try:
        # With ca_file only that CA is trusted (a private PKI), not the system store.
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load CA certificates: {exc.__class__.__name__}", key="ca_file") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if client_cert is not None:
        try:
            context.load_cert_chain(str(client_cert), str(client_key) if client_key else None)
        except (OSError, ssl.SSLError) as exc:
            # The message of SSLError never contains key material, but keep it to the class name.
            raise ConfigError(
                f"cannot load client certificate/key: {exc.__class__.__name__}", key="client_cert"
            ) from None
    return context


def parse_options(ctx: AdapterContext, options: Mapping[str, Any]) -> WebhookOptions:
    unknown = sorted(set(options) - KNOWN_OPTIONS)
    if unknown:
        raise ConfigError(f"unknown option; known: {', '.join(sorted(KNOWN_OPTIONS))}", key=unknown[0])
    url = _url(ctx, options)
    body_format = options.get("format", "json")
    if body_format not in ("json", "multipart"):
        raise ConfigError('must be "json" or "multipart"', key="format")
    max_inline = _integer(options, "max_inline_bytes", DEFAULT_MAX_INLINE_BYTES, 1 << 30)
    timeout = _number(options, "timeout", DEFAULT_TIMEOUT, 3600)
    connect_timeout = _number(options, "connect_timeout", min(DEFAULT_CONNECT_TIMEOUT, timeout), 3600)
    if connect_timeout > timeout:
        raise ConfigError("must not be larger than timeout", key="connect_timeout")
    return WebhookOptions(
        url=url,
        format=body_format,
        max_inline_bytes=max_inline,
        timeout=timeout,
        connect_timeout=connect_timeout,
        headers=_headers(options),
        auth_token=_auth_token(ctx, options),
        ssl_context=_ssl_context(ctx, options, url),
        max_connections=_integer(options, "max_connections", DEFAULT_MAX_CONNECTIONS, 1000),
    )
