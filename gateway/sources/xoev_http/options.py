"""``[sources.NAME]`` options of ``type = "xoev-http"``, declared for the gateway's option reader.

Errors name the option below ``sources.NAME``, e.g. ``senders.bauportal.token: secret from file ...
is empty``; all of them are reported with the rest of the file.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.options import At, failed, option, options
from gateway.options.checks import positive
from gateway.secrets import SecretRef

DEFAULT_MAX_ATTACHMENTS = 100
MIN_TOKEN_CHARS = 16
_PATH = re.compile(r"/[A-Za-z0-9._~-]+(?:/[A-Za-z0-9._~-]+)*")
SENDER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
_FINGERPRINT = re.compile(r"sha256:((?:[0-9A-Fa-f]{2}:?){31}[0-9A-Fa-f]{2})")

DEFAULT_MAX_CONCURRENT_UPLOADS = 4  # requests of one sender in progress at once; more get 429


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
    max_body_bytes: int | None  # None: [http] max_body_bytes
    max_attachments: int = DEFAULT_MAX_ATTACHMENTS
    accept_test_messages: bool = True
    store_decoded: bool = True
    max_concurrent_uploads: int = DEFAULT_MAX_CONCURRENT_UPLOADS


def normalise_fingerprint(value: str) -> str | None:
    """``sha256:AB:CD...`` or ``sha256:abcd...`` -> 64 lowercase hex digits (None if malformed)."""
    match = _FINGERPRINT.fullmatch(value.strip())
    return match.group(1).replace(":", "").lower() if match else None


def _fingerprints(raw: Any, at: At) -> Any:
    items = at.convert(tuple[str, ...], raw)
    if not isinstance(items, tuple):
        return failed()
    out: set[str] = set()
    for index, item in enumerate(items):
        fingerprint = normalise_fingerprint(item)
        if fingerprint is None:
            at.error("expected 'sha256:<64 hex digits>' (the SHA-256 fingerprint of the DER certificate)", index)
        else:
            out.add(fingerprint)
    return frozenset(out) if not at.reader.failed(at.key) else failed()


def _token_length(ref: SecretRef | None) -> str | None:
    if ref is not None and len(ref.resolve()) < MIN_TOKEN_CHARS:
        return f"is shorter than {MIN_TOKEN_CHARS} characters; use a long random token"
    return None


@options
class SenderOptions:
    token: SecretRef | None = option(
        default=None,
        doc=f"Bearer token of this sender (a secret reference, at least {MIN_TOKEN_CHARS} characters).",
        check=_token_length,
    )
    client_certificates: frozenset[str] = option(
        default=frozenset(),
        doc="SHA-256 fingerprints (`sha256:AB:CD:…`) of the sender's client certificates (mutual TLS).",
        parse=_fingerprints,
        type_doc="list of string",
    )
    authors: frozenset[str] = option(
        default=frozenset(), doc="Author authority ids this sender may send for (empty: any)."
    )

    def finish(self, at: At) -> SenderConfig:
        if self.token is None and not self.client_certificates:
            at.error("needs a token and/or client_certificates")
        token = self.token.resolve() if self.token is not None else None
        return SenderConfig("", token, self.client_certificates, self.authors)


def _path(value: str) -> str | None:
    if not _PATH.fullmatch(value):
        return "must be an absolute URL path of letters, digits and . _ ~ - (no trailing /)"
    return None


@options
class XoevHttpSourceOptions:
    path: str | None = option(
        default=None,
        doc="The URL path senders POST to.",
        check=lambda v: _path(v) if v is not None else None,
        default_doc="/xoev/<source name>/messages",
    )
    senders: dict[str, SenderOptions] = option(
        doc="Who may send here: `[sources.NAME.senders.<sender id>]` with `token` and/or `client_certificates`.",
        hint='a table of sender id = { token = { file = "..." } ... }',
        check=lambda v: None if v else 'is required: a table of sender id = { token = { file = "..." } ... }',
    )
    max_body_bytes: int | None = option(
        default=None,
        doc="Largest request body.",
        check=lambda v: None if v is None or v >= 1 else "must be >= 1",
        default_doc="[http] max_body_bytes",
    )
    max_attachments: int = option(
        default=DEFAULT_MAX_ATTACHMENTS,
        doc="Most attachments in one multipart request.",
        check=lambda v: None if v >= 0 else "must be >= 0",
    )
    accept_test_messages: bool = option(default=True, doc="Accept messages marked as test messages.")
    store_decoded: bool = option(default=True, doc="Also store the decoded JSON of the message as a part.")
    max_concurrent_uploads: int = option(
        default=DEFAULT_MAX_CONCURRENT_UPLOADS,
        doc="Requests of one sender in progress at once; more are answered 429 `too-many-uploads` "
        "with Retry-After (a slow or stalled sender cannot hold the intake's connections).",
        check=positive,
    )

    def finish(self, at: At) -> XoevHttpOptions:
        from gateway.http.paths import HttpPaths

        if at.ctx.resources.get("xoev") is None:
            at.error("needs the [xoev] table (schema bundles) in gateway.toml", "type")
        path = self.path or f"/xoev/{at.ctx.name}/messages"
        paths = at.ctx.resource(HttpPaths.RESOURCE, HttpPaths)
        if paths is not None:
            paths.claim(path, at.ctx.name, at.child("path"))
        senders: dict[str, SenderConfig] = {}
        seen_tokens: dict[str, str] = {}
        seen_certs: dict[str, str] = {}
        for sender_id, raw in self.senders.items():
            where = at.child("senders").child(sender_id)
            if not SENDER_ID.fullmatch(sender_id):
                where.error("a sender id is 1-128 letters, digits and . _ : @ - (starting with a letter or digit)")
                continue
            sender = replace(typing.cast("SenderConfig", raw), id=sender_id)
            # a credential must name exactly one sender, or the sender id recorded with a message is a guess
            if sender.token is not None:
                if sender.token in seen_tokens:
                    where.error(f"the same token is configured for {seen_tokens[sender.token]!r}", "token")
                seen_tokens.setdefault(sender.token, sender_id)
            for fingerprint in sender.client_certificates:
                if fingerprint in seen_certs:
                    where.error(
                        f"the same client certificate is configured for {seen_certs[fingerprint]!r}",
                        "client_certificates",
                    )
                seen_certs.setdefault(fingerprint, sender_id)
            senders[sender_id] = sender
        return XoevHttpOptions(
            path=path,
            senders=senders,
            max_body_bytes=self.max_body_bytes,
            max_attachments=self.max_attachments,
            accept_test_messages=self.accept_test_messages,
            store_decoded=self.store_decoded,
            max_concurrent_uploads=self.max_concurrent_uploads,
        )
