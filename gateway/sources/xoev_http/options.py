"""``[sources.NAME]`` options of ``type = "xoev-http"``: every option checked at startup.

Errors are :class:`~gateway.errors.ConfigError` with the option as key (the runtime prefixes
``sources.NAME``), e.g. ``senders.bauportal.token: secret from file ... is empty``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import ConfigError
from gateway.sources.base import SourceContext

KNOWN_OPTIONS = frozenset(
    {
        "path",
        "senders",
        "max_body_bytes",
        "max_attachments",
        "accept_test_messages",
        "store_decoded",
        "max_concurrent_uploads",
    }
)
SENDER_KEYS = frozenset({"token", "client_certificates", "authors"})
DEFAULT_MAX_ATTACHMENTS = 100
DEFAULT_MAX_CONCURRENT_UPLOADS = 4  # requests of one sender in progress at once; more get 429
MIN_TOKEN_CHARS = 16
_PATH = re.compile(r"/[A-Za-z0-9._~-]+(?:/[A-Za-z0-9._~-]+)*")
_RESERVED_PREFIXES = ("/admin", "/healthz", "/readyz", "/metrics")
SENDER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
_FINGERPRINT = re.compile(r"sha256:((?:[0-9A-Fa-f]{2}:?){31}[0-9A-Fa-f]{2})")


@dataclass(frozen=True, slots=True)
class SenderConfig:
    """One sender allowed on this endpoint and how it authenticates (token and/or client certificate)."""

    id: str
    token: str | None = field(default=None, repr=False)  # resolved secret: never logged or printed
    client_certificates: frozenset[str] = frozenset()  # lowercase hex SHA-256 of the DER certificate
    authors: frozenset[str] = frozenset()  # allowed author authority ids of the messages (empty: any)


@dataclass(frozen=True, slots=True)
class XoevHttpOptions:
    path: str
    senders: Mapping[str, SenderConfig]
    max_body_bytes: int
    max_attachments: int = DEFAULT_MAX_ATTACHMENTS
    accept_test_messages: bool = True
    store_decoded: bool = True
    max_concurrent_uploads: int = DEFAULT_MAX_CONCURRENT_UPLOADS


def normalise_fingerprint(value: str) -> str | None:
    """``sha256:AB:CD...`` or ``sha256:abcd...`` -> 64 lowercase hex digits (None if malformed)."""
    match = _FINGERPRINT.fullmatch(value.strip())
    return match.group(1).replace(":", "").lower() if match else None


def _bool(options: Mapping[str, Any], key: str, default: bool) -> bool:
    value = options.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"expected a boolean, got {type(value).__name__}", key=key)
    return value


def _int(options: Mapping[str, Any], key: str, default: int, minimum: int) -> int:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"expected an integer, got {type(value).__name__}", key=key)
    if value < minimum:
        raise ConfigError(f"must be >= {minimum}", key=key)
    return value


def _str_list(raw: Any, key: str) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(v, str) and v for v in raw):
        raise ConfigError("expected an array of non-empty strings", key=key)
    return list(raw)


def _sender(ctx: SourceContext, sender_id: str, raw: Any) -> SenderConfig:
    key = f"senders.{sender_id}"
    if not SENDER_ID.fullmatch(sender_id):
        raise ConfigError(
            "a sender id is 1-128 letters, digits and . _ : @ - (starting with a letter or digit)", key=key
        )
    if not isinstance(raw, Mapping):
        raise ConfigError('expected a table: { token = { file = "..." } } and/or client_certificates', key=key)
    unknown = sorted(set(raw) - SENDER_KEYS)
    if unknown:
        raise ConfigError(f"unknown option (known: {', '.join(sorted(SENDER_KEYS))})", key=f"{key}.{unknown[0]}")
    token: str | None = None
    if "token" in raw:
        try:
            token = ctx.resolve_secret(raw, "token")
        except ConfigError as exc:
            raise ConfigError(exc.reason, key=f"{key}.{exc.key or 'token'}") from None
        if token is not None and len(token) < MIN_TOKEN_CHARS:
            raise ConfigError(
                f"is shorter than {MIN_TOKEN_CHARS} characters; use a long random token", key=f"{key}.token"
            )
    fingerprints: set[str] = set()
    for index, item in enumerate(_str_list(raw.get("client_certificates", []), f"{key}.client_certificates")):
        fingerprint = normalise_fingerprint(item)
        if fingerprint is None:
            raise ConfigError(
                "expected 'sha256:<64 hex digits>' (the SHA-256 fingerprint of the DER certificate)",
                key=f"{key}.client_certificates[{index}]",
            )
        fingerprints.add(fingerprint)
    if token is None and not fingerprints:
        raise ConfigError("needs a token and/or client_certificates", key=key)
    authors = frozenset(_str_list(raw.get("authors", []), f"{key}.authors"))
    return SenderConfig(sender_id, token, frozenset(fingerprints), authors)


def parse_options(ctx: SourceContext, options: Mapping[str, Any]) -> XoevHttpOptions:
    unknown = sorted(set(options) - KNOWN_OPTIONS)
    if unknown:
        raise ConfigError(f"unknown option (known: {', '.join(sorted(KNOWN_OPTIONS))})", key=unknown[0])
    path = options.get("path", f"/xoev/{ctx.name}/messages")
    if not isinstance(path, str) or not _PATH.fullmatch(path):
        raise ConfigError("must be an absolute URL path of letters, digits and . _ ~ - (no trailing /)", key="path")
    if any(path == p or path.startswith(p + "/") for p in _RESERVED_PREFIXES):
        raise ConfigError(f"{path} collides with the gateway's own endpoints", key="path")

    raw_senders = options.get("senders")
    if not isinstance(raw_senders, Mapping) or not raw_senders:
        raise ConfigError('is required: a table of sender id = { token = { file = "..." } ... }', key="senders")
    senders = {sender_id: _sender(ctx, str(sender_id), raw) for sender_id, raw in raw_senders.items()}
    # a credential must name exactly one sender, or the sender id recorded with a message is a guess
    seen_tokens: dict[str, str] = {}
    seen_certs: dict[str, str] = {}
    for sender in senders.values():
        if sender.token is not None:
            if sender.token in seen_tokens:
                raise ConfigError(
                    f"the same token is configured for {seen_tokens[sender.token]!r}", key=f"senders.{sender.id}.token"
                )
            seen_tokens[sender.token] = sender.id
        for fingerprint in sender.client_certificates:
            if fingerprint in seen_certs:
                raise ConfigError(
                    f"the same client certificate is configured for {seen_certs[fingerprint]!r}",
                    key=f"senders.{sender.id}.client_certificates",
                )
            seen_certs[fingerprint] = sender.id

    return XoevHttpOptions(
        path=path,
        senders=senders,
        max_body_bytes=_int(options, "max_body_bytes", ctx.max_body_bytes, 1),
        max_attachments=_int(options, "max_attachments", DEFAULT_MAX_ATTACHMENTS, 0),
        accept_test_messages=_bool(options, "accept_test_messages", True),
        store_decoded=_bool(options, "store_decoded", True),
        max_concurrent_uploads=_int(options, "max_concurrent_uploads", DEFAULT_MAX_CONCURRENT_UPLOADS, 1),
    )
