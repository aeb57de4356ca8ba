"""``[sources.NAME]`` options of ``type = "fitconnect"``, declared for the gateway's option reader:
every option checked, every key loaded (once per file, by the FIT-Connect subsystem) at startup.

Errors name the option below ``sources.NAME``. Production mode (``[gateway] mode``) adds the rules of
digest §6.4/§9.26: https only, no TEST key material, trust anchors required, no self-signed
certificates.
"""

from __future__ import annotations

import re
import typing
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from cryptography import x509

from gateway.errors import ConfigError
from gateway.fitconnect.keys import KeyValidationError, PrivateJWK, Purpose, is_test_key
from gateway.options import At, ReadContext, Reader, option, options
from gateway.options.checks import between, is_dir, non_blank, non_empty, positive
from gateway.secrets import SecretRef
from gateway.sources.base import SourceContext
from gateway.sources.fitconnect.profile import PROFILES, ApiProfile
from gateway.sources.fitconnect.schemas import SchemaIndex, metadata_version_of, referenced_unknown
from gateway.sources.fitconnect.subsystem import FitConnectSubsystem
from gateway.trust.crl import CrlDirectory

MIB = 1 << 20
DEFAULT_POLL_INTERVAL = 60.0
DEFAULT_MAX_ATTACHMENT = 500 * MIB  # FIT-Connect's limit per attachment
DEFAULT_MAX_DATA = 64 * MIB
DEFAULT_PAGE_SIZE = 100
DEFAULT_PARALLEL = 4
DEFAULT_REQUEST_TIMEOUT = 60.0  # one Submission API call (an attachment download: per read, see client)
MAX_PAGE_SIZE = 500
_SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)")
_CALLBACK_PATH = re.compile(r"/[A-Za-z0-9._~/-]*")


@dataclass(frozen=True)
class SubscriberOptions:
    name: str
    profile: ApiProfile
    submission_api_url: str  # without a trailing slash and without the /v1 (/v2) prefix
    token_url: str
    client_id: str
    client_secret: str
    destination_id: str  # lowercase UUID
    decryption_keys: tuple[PrivateJWK, ...]
    signing_key: PrivateJWK
    callback_secret: str | None
    callback_path: str
    poll_interval: float
    accept_policy: str
    schemas: SchemaIndex
    metadata_versions: Mapping[str, str]  # supported version -> metadata schema $id
    trust_anchors: tuple[x509.Certificate, ...]
    allow_self_signed: bool
    max_attachment_bytes: int
    max_inflated_bytes: int
    max_data_bytes: int
    allow_missing_metadata_schema: bool
    require_data_schemas: bool
    page_size: int
    max_parallel: int
    request_timeout: float
    production: bool
    zustelldienst_issuer: str  # the exact iss of Zustelldienst SETs
    crl_dir: Path | None  # CRL files (PEM/DER) checked for every x5c chain
    ocsp: str  # "off" | "fail-open" | "fail-closed" (see gateway.trust.ocsp)

    def __repr__(self) -> str:  # never show secrets or key material
        return f"SubscriberOptions(name={self.name!r}, destination_id={self.destination_id!r})"


def _url(raw: Any, at: At) -> str:
    if not isinstance(raw, str):
        raise ConfigError(f"expected str, got {type(raw).__name__}")
    value = raw.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError("must be an absolute http(s) URL")
    if parts.query or parts.fragment:
        raise ConfigError("must not have a query or fragment")
    if at.ctx.production and parts.scheme != "https":
        raise ConfigError("must use https in production mode")
    return value.rstrip("/")


def _api_url(raw: Any, at: At) -> str:
    value = _url(raw, at)
    if re.search(r"/v\d+$", value):
        raise ConfigError("must not end with the API version (/v1, /v2): api_profile selects it")
    return value


def _uuid(raw: Any, at: At) -> str:
    try:
        return str(uuid.UUID(str(raw)))
    except ValueError:
        raise ConfigError("must be a UUID") from None


def _callback_secret(ref: SecretRef | None) -> str | None:
    if ref is not None and len(ref.resolve()) < 32:
        return "must have at least 32 characters (FIT-Connect callback secrets: 32-512)"
    return None


def _callback_path(value: str | None) -> str | None:
    if value is None:
        return None
    if _CALLBACK_PATH.fullmatch(value) is None or "//" in value or "/../" in f"{value}/":
        return "must be an absolute URL path such as /callbacks/fitconnect/bauamt"
    return None


def _dirs(paths: tuple[Path, ...]) -> str | None:
    return next((f"{p} is not a directory" for p in paths if not p.is_dir()), None)


def _profile(value: str) -> str | None:
    return None if value in PROFILES else f"must be one of {', '.join(sorted(PROFILES))}"


def _semver(values: tuple[str, ...] | None) -> str | None:
    bad = next((v for v in values or () if _SEMVER.fullmatch(v) is None), None)
    return f"{bad!r} is not MAJOR.MINOR.PATCH" if bad is not None else None


@options
class FitConnectSourceOptions:
    """``[sources.NAME]`` of ``type = "fitconnect"``: one destination."""

    api_profile: str = option(default="v1", doc="Submission API version: `v1` (OpenAPI 1.1.x) or `v2`.", check=_profile)
    submission_api_url: str = option(
        doc="The Zustelldienst's Submission API base URL (without /v1).", parse=_api_url, type_doc="URL"
    )
    token_url: str = option(doc="OAuth token endpoint.", parse=_url, type_doc="URL")
    client_id: str = option(doc="OAuth client id of the subscriber client.", check=non_blank)
    client_secret: SecretRef = option(
        doc="OAuth client secret.", hint='a secret reference: { file = "..." } or { env = "..." }'
    )
    destination_id: str = option(doc="The destination (UUID) this source receives for.", parse=_uuid, type_doc="UUID")
    decryption_keys: tuple[Path, ...] = option(
        doc="Private JWK files (RSA-OAEP-256, key_ops [unwrapKey]); several during a key rotation.",
        check=non_empty,
    )
    signing_key: Path = option(doc="Private JWK file for SETs (PS512, key_ops [sign]).")
    callback_secret: SecretRef | None = option(
        default=None,
        doc="HMAC secret of callbacks (32-512 characters); without it no callback route.",
        check=_callback_secret,
    )
    callback_path: str | None = option(
        default=None,
        doc="URL path of the callback route.",
        check=_callback_path,
        default_doc="/callbacks/fitconnect/<name>",
    )
    poll_interval: float = option(
        default=DEFAULT_POLL_INTERVAL, doc="Seconds between polls (±20 % jitter).", check=positive
    )
    accept_policy: Literal["delivered", "stored"] = option(
        default="delivered", doc="When to accept upstream: after delivery (safest) or once stored."
    )
    metadata_schema_dirs: tuple[Path, ...] = option(
        default=(), doc="Local copies of the FIT-Connect metadata schemas.", check=_dirs
    )
    data_schema_dirs: tuple[Path, ...] = option(
        default=(), doc="Local JSON schemas / XSDs of the services' data.", check=_dirs
    )
    trust_anchors: tuple[Path, ...] = option(default=(), doc="PEM root certificates of the Verwaltungs-PKI.")
    allow_self_signed: bool = option(default=False, doc="Accept self-signed key certificates (test only).")
    metadata_versions: tuple[str, ...] | None = option(
        default=None, doc="Metadata versions accepted.", check=_semver, default_doc="every version found"
    )
    max_attachment_bytes: int = option(default=DEFAULT_MAX_ATTACHMENT, doc="Largest attachment.", check=positive)
    max_inflated_bytes: int | None = option(
        default=None,
        doc="Largest attachment after decompression.",
        check=lambda v: positive(v) if v is not None else None,
        default_doc="max_attachment_bytes",
    )
    max_data_bytes: int = option(default=DEFAULT_MAX_DATA, doc="Largest data part.", check=positive)
    allow_missing_metadata_schema: bool | None = option(
        default=None, doc="Treat metadata without $schema as 1.0.0.", default_doc="true when 1.0.0 is accepted"
    )
    require_data_schemas: bool = option(default=True, doc="Reject data whose schema is not in data_schema_dirs.")
    page_size: int = option(
        default=DEFAULT_PAGE_SIZE, doc="Submissions per listing page.", check=between(1, MAX_PAGE_SIZE)
    )
    max_parallel: int = option(
        default=DEFAULT_PARALLEL, doc="Submissions received at the same time.", check=between(1, 64)
    )
    request_timeout: float = option(
        default=DEFAULT_REQUEST_TIMEOUT,
        doc="Seconds per Submission API call.",
        check=lambda v: None if v > 0 else "must be > 0 (seconds)",
    )

    zustelldienst_issuer: str | None = option(
        default=None,
        doc="The exact `iss` of the Zustelldienst's SETs; anything else is refused (a destination's UUID "
        "issuer aside). Set it behind a proxy or where the API URL is not the issuer.",
        parse=_url,
        type_doc="URL",
        default_doc="submission_api_url",
    )
    crl_dir: Path | None = option(
        default=None,
        doc="Directory of CRL files (PEM/DER) checked for every x5c chain, re-read when it changes; "
        "an own key found revoked refuses the start.",
        check=is_dir,
    )
    ocsp: Literal["off", "fail-open", "fail-closed"] = option(
        default="off",
        doc="OCSP for x5c chains at the responder each certificate names: `fail-open` accepts when no "
        "answer comes, `fail-closed` retries the submission at the next poll.",
    )

    def finish(self, at: At) -> SubscriberOptions | None:
        from gateway.http.paths import HttpPaths

        cache = at.ctx.resource("fitconnect", FitConnectSubsystem) or FitConnectSubsystem()
        production = at.ctx.production
        name = at.ctx.name
        callback_path = self.callback_path or f"/callbacks/fitconnect/{name}"
        paths = at.ctx.resource(HttpPaths.RESOURCE, HttpPaths)
        if paths is not None and self.callback_secret is not None:
            paths.claim(callback_path, name, at.child("callback_path"))
        decryption_keys = [_private_key(cache, p, at, "decryption_keys", "encryption") for p in self.decryption_keys]
        signing_key = _private_key(cache, self.signing_key, at, "signing_key", "signing")
        trust_anchors = _trust_anchors(self.trust_anchors, at)
        crls = CrlDirectory(self.crl_dir) if self.crl_dir is not None else None  # own keys revoked: refused
        schemas = _schemas(cache, self, at)
        if production and self.allow_self_signed:
            at.error("self-signed certificates are refused in production mode", "allow_self_signed")
        elif production and not self.trust_anchors:
            at.error("is required in production mode (the Verwaltungs-PKI root certificates)", "trust_anchors")
        elif not self.trust_anchors and not self.allow_self_signed:
            at.error(
                "no trust anchors and allow_self_signed = false: no Zustelldienst key could ever be validated",
                "trust_anchors",
            )
        elif trust_anchors is not None and signing_key is not None and None not in decryption_keys:
            keys = [(k, "decryption_keys") for k in decryption_keys if k is not None] + [(signing_key, "signing_key")]
            kids = [k.kid for k in decryption_keys if k is not None]
            if len(set(kids)) != len(kids):
                at.error("two decryption keys share a kid", "decryption_keys")
            for jwk, key in keys:
                if production and is_test_key(jwk.public_jwk):
                    at.error(f"key {jwk.kid} is TEST key material (refused in production mode)", key)
                    continue
                try:
                    cache.validate(
                        jwk,
                        "encryption" if key == "decryption_keys" else "signing",
                        trust_anchors,
                        self.allow_self_signed,
                        crls=crls,
                    )
                except KeyValidationError as exc:
                    at.error(f"key {jwk.kid} fails validation: {exc.code}: {exc.message}", key)
        if schemas is None or signing_key is None or trust_anchors is None or None in decryption_keys:
            return None
        metadata_versions = _metadata_versions(self, schemas, at)
        if metadata_versions is None:
            return None
        allow_missing = self.allow_missing_metadata_schema
        if allow_missing is None:
            allow_missing = "1.0.0" in metadata_versions
        if allow_missing and "1.0.0" not in metadata_versions:
            at.error(
                "treats a missing $schema as 1.0.0, but metadata version 1.0.0 is not supported",
                "allow_missing_metadata_schema",
            )
        return SubscriberOptions(
            name=name,
            profile=PROFILES[self.api_profile],
            submission_api_url=self.submission_api_url,
            token_url=self.token_url,
            client_id=self.client_id.strip(),
            client_secret=self.client_secret.resolve(),
            destination_id=self.destination_id,
            decryption_keys=tuple(k for k in decryption_keys if k is not None),
            signing_key=signing_key,
            callback_secret=self.callback_secret.resolve() if self.callback_secret is not None else None,
            callback_path=callback_path,
            poll_interval=self.poll_interval,
            accept_policy=self.accept_policy,
            schemas=schemas,
            metadata_versions=metadata_versions,
            trust_anchors=trust_anchors,
            allow_self_signed=self.allow_self_signed,
            max_attachment_bytes=self.max_attachment_bytes,
            max_inflated_bytes=self.max_inflated_bytes or self.max_attachment_bytes,
            max_data_bytes=self.max_data_bytes,
            allow_missing_metadata_schema=allow_missing,
            require_data_schemas=self.require_data_schemas,
            page_size=self.page_size,
            max_parallel=self.max_parallel,
            request_timeout=self.request_timeout,
            production=production,
            zustelldienst_issuer=self.zustelldienst_issuer or self.submission_api_url,
            crl_dir=self.crl_dir,
            ocsp=self.ocsp,
        )


def _private_key(cache: FitConnectSubsystem, path: Path, at: At, key: str, purpose: Purpose) -> PrivateJWK | None:
    try:
        jwk = cache.private_key(path)
    except KeyValidationError as exc:
        at.error(f"{path}: {exc.message}", key)
        return None
    if purpose == "encryption" and not jwk.can_decrypt:
        at.error(f"{path}: not a decryption key (alg RSA-OAEP-256, key_ops [unwrapKey])", key)
        return None
    if purpose == "signing" and not jwk.can_sign:
        at.error(f"{path}: not a signing key (alg PS512, key_ops [sign])", key)
        return None
    return jwk


def _trust_anchors(paths: tuple[Path, ...], at: At) -> tuple[x509.Certificate, ...] | None:
    anchors: list[x509.Certificate] = []
    for path in paths:
        try:
            anchors.extend(x509.load_pem_x509_certificates(path.read_bytes()))
        except OSError as exc:
            at.error(f"cannot read {path}: {exc.strerror}", "trust_anchors")
            return None
        except ValueError:
            at.error(f"{path} holds no PEM certificate", "trust_anchors")
            return None
    return tuple(anchors)


def _schemas(cache: FitConnectSubsystem, options: FitConnectSourceOptions, at: At) -> SchemaIndex | None:
    metadata_dirs = [(p, "metadata_schema_dirs") for p in options.metadata_schema_dirs]
    data_dirs = [(p, "data_schema_dirs") for p in options.data_schema_dirs]
    try:
        schemas = cache.schemas(metadata_dirs + data_dirs, data_dirs)
    except ConfigError as exc:
        at.error(exc.reason, exc.key)
        return None
    dangling = referenced_unknown(schemas)
    if dangling:
        schema_id, ref = next(iter(dangling.items()))
        at.error(f"schema {schema_id} references {ref}, which is not in the schema dirs", "data_schema_dirs")
        return None
    return schemas


def _metadata_versions(options: FitConnectSourceOptions, schemas: SchemaIndex, at: At) -> dict[str, str] | None:
    available = schemas.metadata_versions()
    wanted = list(options.metadata_versions) if options.metadata_versions is not None else sorted(available)
    for version in wanted:
        if version not in available:
            at.error(
                f"no metadata schema for version {version} in metadata_schema_dirs "
                f"(expected $id https://schema.fitko.de/fit-connect/metadata/{version}/metadata.schema.json)",
                "metadata_versions",
            )
            return None
        if int(version.split(".")[0]) not in (1, 2):
            at.error(f"metadata major version of {version} is not supported (1.x, 2.x)", "metadata_versions")
            return None
    if not wanted:
        at.error(
            "no metadata schema found: point metadata_schema_dirs at the FIT-Connect metadata schemas",
            "metadata_schema_dirs",
        )
        return None
    versions = {v: available[v] for v in wanted}
    assert all(metadata_version_of(i) == v for v, i in versions.items())
    return versions


def parse_options(ctx: SourceContext, raw: Mapping[str, Any]) -> SubscriberOptions:
    """The options of one source on their own (tools, tests); raises the first error."""
    reader = Reader(
        ReadContext(base_dir=ctx.base_dir, production=ctx.production, name=ctx.name, resources=ctx.subsystems)
    )
    options_ = reader.read(FitConnectSourceOptions, raw)
    if options_ is None:
        raise reader.errors[0]
    return typing.cast("SubscriberOptions", options_)
