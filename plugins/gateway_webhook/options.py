"""``[adapters.NAME]`` options of ``type = "webhook"``, declared for the gateway's option reader."""

from __future__ import annotations

import ipaddress
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from yarl import URL

from gateway.errors import ConfigError
from gateway.options import At, failed, option, options
from gateway.options.checks import between
from gateway.secrets import SecretRef

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


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url(raw: Any, at: At) -> URL:
    if not isinstance(raw, str):
        raise ConfigError("must be a string")
    try:
        url = URL(raw)
    except ValueError:
        raise ConfigError("not a valid URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError("must be an absolute http:// or https:// URL")
    if url.user is not None or url.password is not None:
        raise ConfigError("must not contain credentials; use auth_token")
    if url.fragment:
        raise ConfigError("must not contain a fragment")
    if at.ctx.production and url.scheme == "http" and not _is_loopback(url.host):
        raise ConfigError("plain http is refused in production (except to loopback); use https")
    return url


def _headers(raw: Any, at: At) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError("must be a table of header names to string values")
    headers: dict[str, str] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            at.error("not a valid HTTP header name", str(name))
        elif name.lower() in RESERVED_HEADERS:
            at.error("set by the adapter (secrets go into auth_token); cannot be configured", name)
        elif not isinstance(value, str) or not _HEADER_VALUE.fullmatch(value):
            at.error("must be a string without control characters", name)
        else:
            headers[name] = value
    return failed() if at.reader.failed(at.key) else headers


def _bearer(ref: SecretRef | None) -> str | None:
    if ref is not None and not _BEARER.fullmatch(ref.resolve()):
        # Never echo the value: say only what is wrong with it.
        return "the secret is empty or not a valid bearer token (RFC 6750 characters)"
    return None


def _exists(path: Path | None) -> str | None:
    return None if path is None or path.is_file() else f"file not found: {path}"


def _seconds(value: float) -> str | None:
    return None if 0 < value <= 3600 else "must be a number of seconds, greater than 0 and at most 3600"


@options
class WebhookAdapterOptions:
    url: URL = option(
        doc="The Fachverfahren's endpoint (`https://`; `http://` only to loopback in production).",
        hint="the Fachverfahren's endpoint",
        parse=_url,
        type_doc="URL",
    )
    format: Literal["json", "multipart"] = option(
        default="json", doc="Body: one JSON document, or multipart/form-data."
    )
    max_inline_bytes: int = option(
        default=DEFAULT_MAX_INLINE_BYTES,
        doc='Largest message for `format = "json"` (parts are inlined as base64).',
        check=between(1, 1 << 30, what="an integer"),
    )
    timeout: float = option(default=DEFAULT_TIMEOUT, doc="Seconds for the whole request.", check=_seconds)
    connect_timeout: float | None = option(
        default=None,
        doc="Seconds to connect.",
        check=lambda v: _seconds(v) if v is not None else None,
        default_doc=f"min({DEFAULT_CONNECT_TIMEOUT:g}, timeout)",
    )
    headers: dict[str, str] = option(
        doc="Static request headers (no secrets: those go into `auth_token`).",
        default_factory=dict,
        parse=_headers,
        type_doc="table of string",
    )
    auth_token: SecretRef | None = option(default=None, doc="Bearer token sent as `Authorization`.", check=_bearer)
    ca_file: Path | None = option(
        default=None, doc="Trust only this CA (PEM) for the endpoint's certificate.", check=_exists
    )
    client_cert: Path | None = option(default=None, doc="Client certificate (PEM) for mutual TLS.", check=_exists)
    client_key: Path | None = option(default=None, doc="Key of `client_cert` (PEM).", check=_exists)
    max_connections: int = option(
        default=DEFAULT_MAX_CONNECTIONS,
        doc="Open connections to the endpoint at most.",
        check=between(1, 1000, what="an integer"),
    )

    def finish(self, at: At) -> WebhookOptions:
        connect_timeout = (
            self.connect_timeout if self.connect_timeout is not None else min(DEFAULT_CONNECT_TIMEOUT, self.timeout)
        )
        if connect_timeout > self.timeout:
            at.error("must not be larger than timeout", "connect_timeout")
        token = self.auth_token.resolve().strip() if self.auth_token is not None else None
        return WebhookOptions(
            url=self.url,
            format=self.format,
            max_inline_bytes=self.max_inline_bytes,
            timeout=self.timeout,
            connect_timeout=connect_timeout,
            headers=self.headers,
            auth_token=token,
            ssl_context=self._ssl_context(at),
            max_connections=self.max_connections,
        )

    def _ssl_context(self, at: At) -> ssl.SSLContext | None:
        ca_file, client_cert, client_key = self.ca_file, self.client_cert, self.client_key
        if ca_file is None and client_cert is None and client_key is None:
            return None
        if self.url.scheme != "https":
            at.error(
                "TLS options need an https:// url",
                "ca_file" if ca_file else "client_cert" if client_cert else "client_key",
            )
            return None
        if client_key is not None and client_cert is None:
            at.error("client_key needs client_cert", "client_key")
            return None
        try:
            # With ca_file only that CA is trusted (a private PKI), not the system store.
            context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        except (OSError, ssl.SSLError) as exc:
            at.error(f"cannot load CA certificates: {exc.__class__.__name__}", "ca_file")
            return None
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if client_cert is not None:
            try:
                context.load_cert_chain(str(client_cert), str(client_key) if client_key else None)
            except (OSError, ssl.SSLError) as exc:
                # The message of SSLError never contains key material, but keep it to the class name.
                at.error(f"cannot load client certificate/key: {exc.__class__.__name__}", "client_cert")
                return None
        return context
