"""``sandbox.toml`` → :class:`SandboxConfig`.

All problems of a file are collected and reported together (file, key path, reason; never a secret
value). Paths (key files, secret files) are relative to the TOML file. The format is documented in
``docs/sandbox.md``; ``certs/example/sandbox.toml`` is a complete example.
"""

from __future__ import annotations

import json
import re
import typing
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gateway.config import read_toml
from gateway.errors import ConfigError, ConfigErrors
from gateway.fitconnect.keys import KeyValidationError, validate_public_jwk
from gateway.options import At, ReadContext, Reader, failed, option, options
from gateway.options.checks import positive
from gateway.secrets import SecretRef

URN_RE = re.compile(r"^urn:[a-z0-9][a-z0-9-]{0,31}:[a-z0-9()+,.:=@;$_!*'%/?#-]+$")
REGION_RE = re.compile(r"^DE[0-9]{0,12}$")
SEMVER_RE = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
DESTINATION_STATUSES = ("created", "active", "inactive", "decommissioned")
SCHEMA_MIME_TYPES = ("application/json", "application/xml")
MIN_CALLBACK_SECRET = 32
MAX_CALLBACK_SECRET = 512

MIB = 1024 * 1024


def normalize_uuid(value: str) -> str:
    """Canonical lowercase hyphenated form; raises ValueError for anything that is not a UUID."""
    if not isinstance(value, str) or not 32 <= len(value) <= 36:
        raise ValueError("not a UUID")
    return str(uuid.UUID(value))


@dataclass(frozen=True, slots=True)
class SubmissionSchema:
    schema_uri: str
    mime_type: str

    def as_api(self) -> dict[str, str]:
        return {"schemaUri": self.schema_uri, "mimeType": self.mime_type}


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    identifier: str
    regions: tuple[str, ...]
    submission_schemas: tuple[SubmissionSchema, ...]

    def as_api(self) -> dict[str, Any]:
        return {
            "identifier": self.identifier,
            "submissionSchemas": [s.as_api() for s in self.submission_schemas],
            "regions": list(self.regions),
        }


@dataclass(frozen=True, slots=True)
class CallbackConfig:
    url: str
    secret: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class DestinationConfig:
    id: str
    services: tuple[ServiceConfig, ...]
    encryption_keys: tuple[dict[str, Any], ...]  # public JWKs (wrapKey, RSA-OAEP-256)
    signing_keys: tuple[dict[str, Any], ...]  # public JWKs (verify, PS512)
    metadata_versions: tuple[str, ...] = ("1.0.0",)
    encryption_kid: str = ""  # default: kid of the first encryption key
    status: str = "active"
    callback: CallbackConfig | None = None
    contact_information: dict[str, str] = field(default_factory=dict)
    reply_channels: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ClientConfig:
    id: str
    secret: str = field(repr=False)
    scopes: tuple[str, ...]
    # Destinations the client is linked to; URI-style scopes (which carry no id) apply to these.
    destinations: tuple[str, ...] = ()


@options
class Limits:
    max_attachment_bytes: int = option(
        default=500 * MIB, doc="FIT-Connect: 500 MB per encrypted attachment.", check=positive
    )
    max_submit_bytes: int = option(
        default=64 * MIB, doc="PUT /v1/submissions/{id} (metadata + data JWEs).", check=positive
    )
    max_json_bytes: int = option(default=1 * MIB, doc="Other JSON requests.", check=positive)
    max_event_bytes: int = option(default=256 * 1024, doc="POST /v1/cases/{id}/events.", check=positive)
    max_attachments: int = option(default=100, doc="Attachments per submission.", check=positive)
    max_set_skew: int = option(default=300, doc="Seconds an incoming SET's iat may lie in the future.", check=positive)


@options
class Periods:
    incomplete_deletion: float = option(
        default=86400.0, doc="Incomplete submissions are deleted after this.", check=positive
    )
    auto_reject: float = option(
        default=14 * 86400.0, doc="Submitted but not accepted/rejected: rejected after.", check=positive
    )
    sweep_interval: float = option(default=1.0, doc="How often the timers look (real seconds).", check=positive)


@options
class CallbackPolicy:
    max_attempts: int = option(default=5, doc="Delivery attempts per callback.", check=positive)
    initial_delay: float = option(default=1.0, doc="Real seconds; doubled per attempt.", check=positive)
    max_delay: float = option(default=60.0, doc="Largest wait between attempts.", check=positive)
    timeout: float = option(default=10.0, doc="Seconds per attempt.", check=positive)


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    destinations: tuple[DestinationConfig, ...] = ()
    clients: tuple[ClientConfig, ...] = ()
    base_url: str | None = None  # iss of ZSD-issued SETs; default http://<host>:<port>
    state_dir: Path | None = None  # None: everything in memory (blobs in a temporary directory)
    signing_key_file: Path | None = None  # PEM; default: generated into the state dir
    token_lifetime: int = 1800
    allow_insecure_callbacks: bool = False
    inspection_api: bool = True
    # Whether accept-submission must carry exactly the authenticationTags the ZSD recorded.
    verify_accept_tags: bool = True
    # Whether uploaded JWEs must follow the FIT-Connect profile (RSA-OAEP-256/A256GCM, 12-byte iv,
    # 16-byte tag). Off by default: the real v1 ZSD stores JWEs opaquely, and gateway tests need to
    # send off-profile JWEs through the sandbox.
    check_jwe_profile: bool = False
    # "v1" is OpenAPI 1.1.3; "v2" the profile of digest §2.10 (third-party evidence), see profiles.py.
    api_versions: tuple[str, ...] = ("v1", "v2")
    limits: Limits = field(default_factory=Limits)
    periods: Periods = field(default_factory=Periods)
    callbacks: CallbackPolicy = field(default_factory=CallbackPolicy)
    source: str = "<code>"

    def validate(self) -> None:
        """Checks that depend on settings a command line may override; raises ConfigErrors."""
        errors: list[ConfigError] = []
        for i, dest in enumerate(self.destinations):
            if dest.callback is not None:
                problem = callback_url_problem(dest.callback.url, self.allow_insecure_callbacks)
                if problem:
                    errors.append(ConfigError(problem, key=f"destinations[{i}].callback.url", file=self.source))
        if not self.api_versions or not set(self.api_versions) <= {"v1", "v2"}:
            errors.append(ConfigError('must be "v1" and/or "v2"', key="sandbox.api_versions", file=self.source))
        ids = [d.id for d in self.destinations]
        for dup in sorted({i for i in ids if ids.count(i) > 1}):
            errors.append(ConfigError(f"destination {dup} is defined twice", key="destinations", file=self.source))
        cids = [c.id for c in self.clients]
        for dup in sorted({i for i in cids if cids.count(i) > 1}):
            errors.append(ConfigError(f"client {dup} is defined twice", key="clients", file=self.source))
        if errors:
            raise ConfigErrors(errors)


def callback_url_problem(url: str, allow_insecure: bool) -> str | None:
    if url.startswith("https://") and len(url) > len("https://"):
        return None
    if url.startswith("http://") and len(url) > len("http://"):
        return None if allow_insecure else "http:// callback URLs need allow_insecure_callbacks"
    return "callback url must start with https://"


# --------------------------------------------------------------------------------------------------
# Reading: declared for the gateway's option reader (gateway.options), every problem of the file at once


def _secret(raw: Any, at: At) -> str:
    # Inline secrets are fine here: everything the sandbox knows is test material.
    if isinstance(raw, str):
        if not raw:
            raise ConfigError("must not be empty")
        return raw
    ref = at.convert(SecretRef, raw)
    return ref.resolve() if isinstance(ref, SecretRef) else failed()


def _one_of(values: tuple[str, ...]) -> Any:
    return lambda v: None if v in values else f"must be one of {', '.join(values)}"


def _jwk_files(purpose: Literal["encryption", "signing"]) -> Any:
    def parse(raw: Any, at: At) -> Any:
        paths = at.convert(tuple[Path, ...], [raw] if isinstance(raw, str) else raw)
        if not isinstance(paths, tuple):
            return failed()
        if not paths:
            raise ConfigError(f"at least one public {purpose} JWK file is required")
        keys = [_load_jwk(path, at.child(i), purpose) for i, path in enumerate(paths)]
        return failed() if any(k is None for k in keys) else tuple(keys)

    return parse


def _load_jwk(path: Path, at: At, purpose: Literal["encryption", "signing"]) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        at.error(f"cannot read key file {path}: {exc.strerror}")
        return None
    except json.JSONDecodeError as exc:
        at.error(f"key file {path} is not JSON: {exc.msg}")
        return None
    if not isinstance(value, dict) or not isinstance(value.get("kid"), str):
        at.error(f"key file {path} is not a JWK with a kid")
        return None
    if any(name in value for name in ("d", "p", "q", "dp", "dq", "qi")):
        at.error(f"key file {path} holds a private key; give the public JWK")
        return None
    try:
        # The sandbox plays the TEST environment: self-signed certificates are fine, the rest is checked.
        validate_public_jwk(value, purpose=purpose, allow_self_signed=True)
    except KeyValidationError as exc:
        at.error(f"key file {path} is not a valid {purpose} key ({exc.code}): {exc.message}")
        return None
    return value


def _strings(raw: Any, at: At) -> Any:
    """A string or a list of strings (the sandbox has always taken both)."""
    return at.convert(tuple[str, ...], [raw] if isinstance(raw, str) else raw)


def _identifier(value: str) -> str | None:
    if not URN_RE.match(value) or not 7 <= len(value) <= 255:
        return "must be a service URN (urn:de:fim:leika:leistung:…)"
    return None


def _regions(values: tuple[str, ...]) -> str | None:
    if not values:
        return "at least one region is required"
    bad = next((r for r in values if not REGION_RE.match(r)), None)
    return f"{bad!r} is not DE followed by up to 12 digits" if bad is not None else None


def _uuid(raw: Any, at: At) -> str:
    try:
        return normalize_uuid(raw)
    except ValueError:
        raise ConfigError("must be a UUID") from None


def _versions(values: tuple[str, ...]) -> str | None:
    bad = next((v for v in values if not SEMVER_RE.match(v)), None)
    if bad is not None:
        return f"{bad!r} is not MAJOR.MINOR.PATCH"
    return "versions must be unique" if len(set(values)) != len(values) else None


@options
class SchemaOptions:
    schema_uri: str = option(doc="The data schema's URI.", check=lambda v: None if ":" in v else "must be a URI")
    mime_type: str = option(doc="`application/json` or `application/xml`.", check=_one_of(SCHEMA_MIME_TYPES))

    def finish(self, at: At) -> SubmissionSchema:
        return SubmissionSchema(self.schema_uri, self.mime_type)


@options
class ServiceOptions:
    identifier: str = option(doc="Service URN (LeiKa).", check=_identifier)
    regions: tuple[str, ...] = option(
        doc="ARS/AGS of the regions (`DE` + up to 12 digits).", parse=_strings, check=_regions
    )
    submission_schemas: tuple[SchemaOptions, ...] = option(
        doc="Data schemas of the service.", check=lambda v: None if v else "at least one submission schema is required"
    )

    def finish(self, at: At) -> ServiceConfig:
        schemas = typing.cast("tuple[SubmissionSchema, ...]", self.submission_schemas)
        return ServiceConfig(self.identifier, self.regions, schemas)


@options
class CallbackOptions:
    url: str = option(doc="Where the ZSD posts callbacks.")
    secret: str = option(
        doc="HMAC secret (inline allowed: test material).",
        parse=_secret,
        check=lambda v: (
            None
            if MIN_CALLBACK_SECRET <= len(v) <= MAX_CALLBACK_SECRET
            else f"must have {MIN_CALLBACK_SECRET}–{MAX_CALLBACK_SECRET} characters"
        ),
    )

    def finish(self, at: At) -> CallbackConfig:
        return CallbackConfig(self.url, self.secret)


@options
class ContactOptions:
    legal_name: str = option(doc="Legal name of the authority.")
    address: str = option(doc="Postal address.")
    phone: str = option(doc="Phone.")
    email: str = option(doc="E-mail.")
    unit: str | None = option(default=None, doc="Unit.")

    def finish(self, at: At) -> dict[str, str]:
        contact = {"legalName": self.legal_name, "address": self.address, "phone": self.phone, "email": self.email}
        return contact | ({"unit": self.unit} if self.unit is not None else {})


@options
class DestinationOptions:
    id: str = option(doc="Destination id (UUID).", parse=_uuid)
    status: str = option(default="active", doc="Destination status.", check=_one_of(DESTINATION_STATUSES))
    services: tuple[ServiceOptions, ...] = option(
        doc="Services.", check=lambda v: None if v else "at least one service is required"
    )
    metadata_versions: tuple[str, ...] = option(
        default=("1.0.0",), doc="Metadata versions.", parse=_strings, check=_versions
    )
    encryption_keys: tuple[dict[str, Any], ...] = option(
        doc="Public encryption JWK files.",
        parse=_jwk_files("encryption"),
        hint="at least one public encryption JWK file",
    )
    encryption_kid: str = option(default="", doc="kid of the key senders encrypt to (default: the first).")
    signing_keys: tuple[dict[str, Any], ...] = option(
        doc="Public signing JWK files.", parse=_jwk_files("signing"), hint="at least one public signing JWK file"
    )
    callback: CallbackOptions | None = option(default=None, doc="Callback URL and secret.")
    contact_information: ContactOptions = option(
        doc="legal_name, address, phone, email (and unit).", hint="legal_name, address, phone, email"
    )
    reply_channels: dict[str, Any] | None = option(default=None, doc="The destination's replyChannels (as in the API).")

    def finish(self, at: At) -> DestinationConfig:
        kid = self.encryption_kid or self.encryption_keys[0]["kid"]
        if kid not in {k["kid"] for k in self.encryption_keys}:
            at.error("must be the kid of one of the encryption_keys", "encryption_kid")
        return DestinationConfig(
            id=self.id,
            status=self.status,
            services=typing.cast("tuple[ServiceConfig, ...]", self.services),
            metadata_versions=self.metadata_versions,
            encryption_keys=self.encryption_keys,
            encryption_kid=kid,
            signing_keys=self.signing_keys,
            callback=typing.cast("CallbackConfig | None", self.callback),
            contact_information=typing.cast("dict[str, str]", self.contact_information),
            reply_channels=self.reply_channels,
        )


def _scopes(values: tuple[str, ...]) -> str | None:
    from gateway_sandbox.zustelldienst.scopes import scope_problem  # local: scopes imports this module

    return next((p for p in map(scope_problem, values) if p), None)


def _links(raw: Any, at: At) -> Any:
    values = _strings(raw, at)
    if not isinstance(values, tuple):
        return failed()
    links = []
    for d in values:
        try:
            links.append(normalize_uuid(d))
        except ValueError:
            at.error(f"{d!r} is not a UUID")
    return failed() if at.reader.failed(at.key) else tuple(links)


@options
class ClientOptions:
    id: str = option(doc="OAuth client id.", check=lambda v: None if v else "is required")
    secret: str = option(doc="OAuth client secret (inline allowed: test material).", parse=_secret)
    scopes: tuple[str, ...] = option(default=(), doc="Scopes of the client.", parse=_strings, check=_scopes)
    destinations: tuple[str, ...] = option(default=(), doc="Destinations URI-style scopes apply to.", parse=_links)

    def finish(self, at: At) -> ClientConfig:
        return ClientConfig(self.id, self.secret, self.scopes, self.destinations)


def _api_versions(raw: Any, at: At) -> Any:
    versions = _strings(raw, at)
    if not isinstance(versions, tuple):
        return failed()
    if not versions or any(v not in ("v1", "v2") for v in versions) or len(set(versions)) != len(versions):
        raise ConfigError('must be a non-empty list of "v1" and/or "v2"')
    return versions


def _base_url(value: str | None) -> str | None:
    return None if value is None or re.match(r"^https?://[^/]+", value) else "must be an http(s) URL"


@options
class SandboxOptions:
    base_url: str | None = option(
        default=None, doc="iss of ZSD-issued SETs (default http://<host>:<port>).", check=_base_url
    )
    state_dir: Path | None = option(default=None, doc="Persist the state here (default: in memory).")
    signing_key_file: Path | None = option(default=None, doc="PEM signing key of the ZSD (default: generated).")
    token_lifetime: int = option(default=1800, doc="Seconds an access token lives.", check=positive)
    allow_insecure_callbacks: bool = option(default=False, doc="Allow http:// callback URLs.")
    inspection_api: bool = option(default=True, doc="Serve the inspection API.")
    verify_accept_tags: bool = option(default=True, doc="accept-submission must carry the recorded authenticationTags.")
    check_jwe_profile: bool = option(default=False, doc="Refuse JWEs outside the FIT-Connect profile.")
    api_versions: tuple[str, ...] = option(
        default=("v1", "v2"), doc="Submission API versions served.", parse=_api_versions
    )
    limits: Limits = option(doc="Request and upload limits.", default_factory=Limits)
    periods: Periods = option(doc="Deletion and auto-reject periods.", default_factory=Periods)
    callbacks: CallbackPolicy = option(doc="Callback delivery policy.", default_factory=CallbackPolicy)


@options
class SandboxFile:
    sandbox: SandboxOptions = option(doc="The sandbox itself.", default_factory=SandboxOptions)
    destinations: tuple[DestinationOptions, ...] = option(default=(), doc="`[[destinations]]`.")
    clients: tuple[ClientOptions, ...] = option(default=(), doc="`[[clients]]`.")


def parse_config(raw: Mapping[str, Any], *, file: Path) -> SandboxConfig:
    reader = Reader(ReadContext(base_dir=file.parent, file=str(file)))
    parsed = reader.read(SandboxFile, raw)
    reader.raise_errors()
    assert parsed is not None
    s = parsed.sandbox
    return SandboxConfig(
        destinations=typing.cast("tuple[DestinationConfig, ...]", parsed.destinations),
        clients=typing.cast("tuple[ClientConfig, ...]", parsed.clients),
        base_url=s.base_url.rstrip("/") if s.base_url else None,
        state_dir=s.state_dir,
        signing_key_file=s.signing_key_file,
        token_lifetime=s.token_lifetime,
        allow_insecure_callbacks=s.allow_insecure_callbacks,
        inspection_api=s.inspection_api,
        verify_accept_tags=s.verify_accept_tags,
        check_jwe_profile=s.check_jwe_profile,
        api_versions=s.api_versions,
        limits=s.limits,
        periods=s.periods,
        callbacks=s.callbacks,
        source=str(file),
    )


def load_config(path: Path | str) -> SandboxConfig:
    """Read and check a ``sandbox.toml``; raises :class:`ConfigErrors` listing every problem."""
    file = Path(path)
    return parse_config(read_toml(file), file=file)
