"""The FIT-Connect subsystem: what every ``fitconnect`` source of a gateway shares.

* key files: each private JWK is loaded and its certificate chain validated once, however many
  sources (destinations) name it (a 4096-bit RSA check costs ~0.3 s; 500 sources sharing two key
  files would otherwise spend minutes on the same work);
* schema sets: the metadata and data schemas of a set of directories are loaded and compiled once;
* OAuth tokens: sources (destinations) that share a subscriber client share one cached token,
  instead of each fetching its own;
* the channel's metrics (polls, ignored callbacks), registered in the gateway's registry.

The caches are keyed by the file's identity and modification time, so an edited key file is read again.
It has no table of its own yet (``[fitconnect]`` is refused as unknown until it has options).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from prometheus_client import Counter

from gateway.errors import ConfigError
from gateway.fitconnect.keys import KeyValidationError, PrivateJWK, Purpose, load_private_jwk, validate_public_jwk
from gateway.hookspecs import hookimpl
from gateway.sources.fitconnect.client import TokenProvider
from gateway.sources.fitconnect.schemas import SchemaIndex, load_schema_index
from gateway.subsystems import SubsystemContext, SubsystemType
from gateway.trust.crl import CrlDirectory

NAME = "fitconnect"


class FitConnectMetrics:
    def __init__(self, registry: Any) -> None:
        self.callbacks_invalid = Counter(
            "gateway_callbacks_invalid",
            "Ignored callbacks (bad HMAC, stale, malformed)",
            ["source", "reason"],
            registry=registry,
        )
        self.polls = Counter(
            "gateway_source_polls", "Upstream polls by result", ["source", "result"], registry=registry
        )


def _identity(path: Path) -> tuple[str, int, int, int]:
    st = os.stat(path)
    return str(path.resolve()), st.st_ino, st.st_mtime_ns, st.st_size


class FitConnectSubsystem:
    def __init__(self, ctx: SubsystemContext | None = None) -> None:
        from prometheus_client import CollectorRegistry

        self.metrics = FitConnectMetrics(ctx.registry if ctx is not None else CollectorRegistry())
        self._keys: dict[tuple[str, int, int, int], PrivateJWK | KeyValidationError] = {}
        self._valid: dict[tuple[Any, ...], KeyValidationError | None] = {}
        self._schemas: dict[tuple[Any, ...], SchemaIndex | ConfigError] = {}
        self._tokens: dict[tuple[str, str, str], TokenProvider] = {}
        self.loads = 0  # key files and schema sets actually loaded (the caches' misses), for tests and the bench

    async def start(self) -> None:
        """Nothing to start: everything was loaded and checked while the options were read."""

    async def stop(self) -> None:
        self._tokens.clear()
        self._keys.clear()
        self._valid.clear()
        self._schemas.clear()

    def token_provider(
        self, token_url: str, client_id: str, client_secret: str, session: Callable[[], aiohttp.ClientSession]
    ) -> TokenProvider:
        """The token cache of this client (one per token URL, client id and secret); the first source's
        session factory fetches for all of them (it reopens a closed session)."""
        key = (token_url, client_id, hashlib.sha256(client_secret.encode("utf-8")).hexdigest())
        provider = self._tokens.get(key)
        if provider is None:
            provider = self._tokens[key] = TokenProvider(session, token_url, client_id, client_secret)
        return provider

    def private_key(self, path: Path) -> PrivateJWK:
        """The JWK in ``path``; raises KeyValidationError (OSError when it cannot be read)."""
        try:
            ident = _identity(path)
        except OSError:
            return load_private_jwk(path)  # raises the loader's own "cannot read" error
        found = self._keys.get(ident)
        if found is None:
            self.loads += 1
            try:
                found = load_private_jwk(path)
            except KeyValidationError as exc:
                found = exc
            self._keys[ident] = found
        if isinstance(found, KeyValidationError):
            raise found
        return found

    def validate(
        self,
        jwk: PrivateJWK,
        purpose: Purpose,
        trust_anchors: Sequence[x509.Certificate],
        allow_self_signed: bool,
        *,
        crls: CrlDirectory | None = None,
    ) -> None:
        """:func:`validate_public_jwk` of the key's public part, once per key, trust setting and CRL directory."""
        anchors = tuple(c.fingerprint(hashes.SHA256()) for c in trust_anchors)
        key = (jwk.kid, jwk.public_jwk.get("n"), purpose, anchors, allow_self_signed, crls.directory if crls else None)
        if key not in self._valid:
            try:
                validate_public_jwk(
                    jwk.public_jwk,
                    purpose=purpose,
                    trust_anchors=trust_anchors,
                    allow_self_signed=allow_self_signed,
                    crls=crls,
                )
                self._valid[key] = None
            except KeyValidationError as exc:
                self._valid[key] = exc
        problem = self._valid[key]
        if problem is not None:
            raise problem

    def schemas(self, json_dirs: list[tuple[Path, str]], xsd_dirs: list[tuple[Path, str]]) -> SchemaIndex:
        """The schema index of these directories, loaded once (raises ConfigError)."""
        key = (tuple((str(p), k) for p, k in json_dirs), tuple((str(p), k) for p, k in xsd_dirs))
        found = self._schemas.get(key)
        if found is None:
            self.loads += 1
            try:
                found = load_schema_index(json_dirs=json_dirs, xsd_dirs=xsd_dirs)
            except ConfigError as exc:
                found = exc
            self._schemas[key] = found
        if isinstance(found, ConfigError):
            raise ConfigError(found.reason, key=found.key)
        return found


def create(ctx: SubsystemContext, options: Any) -> FitConnectSubsystem:
    return FitConnectSubsystem(ctx)


@hookimpl
def gateway_subsystem_types() -> list[SubsystemType]:
    return [
        SubsystemType(
            name=NAME,
            create=create,
            description="FIT-Connect: key files and schema sets loaded once for all destinations, channel metrics",
            always=True,
        )
    ]
