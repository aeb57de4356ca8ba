"""``[sources.NAME]`` options of ``type = "fitconnect"``: every option checked, every key loaded at startup.

Unknown keys, wrong types and unusable values are :class:`~gateway.errors.ConfigError` with the option
name as key (the runtime prefixes ``sources.NAME``). Production mode (``[gateway] mode``) adds the
rules of digest §6.4/§9.26: https only, no TEST key material, trust anchors required, no self-signed
certificates.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509

from gateway.errors import ConfigError
from gateway.fitconnect.keys import KeyValidationError, PrivateJWK, is_test_key, load_private_jwk, validate_public_jwk
from gateway.sources.base import SourceContext
from gateway.sources.fitconnect.profile import PROFILES, ApiProfile
from gateway.sources.fitconnect.schemas import (
    SchemaIndex,
    load_schema_index,
    metadata_version_of,
    referenced_unknown,
)
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

KNOWN_OPTIONS = frozenset(
    {
        "api_profile",
        "submission_api_url",
        "token_url",
        "client_id",
        "client_secret",
        "destination_id",
        "decryption_keys",
        "signing_key",
        "callback_secret",
        "callback_path",
        "poll_interval",
        "accept_policy",
        "metadata_schema_dirs",
        "data_schema_dirs",
        "trust_anchors",
        "allow_self_signed",
        "metadata_versions",
        "max_attachment_bytes",
        "max_inflated_bytes",
        "max_data_bytes",
        "allow_missing_metadata_schema",
        "require_data_schemas",
        "page_size",
        "max_parallel",
        "request_timeout",
        "zustelldienst_issuer",
        "crl_dir",
        "ocsp",
    }
)
OCSP_MODES = ("off", "fail-open", "fail-closed")


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
    zustelldienst_issuer: str = ""  # the exact iss of Zustelldienst SETs (default: submission_api_url)
    crl_dir: Path | None = None  # CRL files (PEM/DER) checked for every x5c chain
    ocsp: str = "off"  # "off" | "fail-open" | "fail-closed" (see gateway.trust.ocsp)

    def __repr__(self) -> str:  # never show secrets or key material
        return f"SubscriberOptions(name={self.name!r}, destination_id={self.destination_id!r})"


class _Options:
    def __init__(self, ctx: SourceContext, raw: Mapping[str, Any]) -> None:
        self.ctx = ctx
        self.raw = raw

    def get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        if key not in self.raw:
            return default
        value = self.raw[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds:
            kinds = (*kinds, int)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join(k.__name__ for k in kinds if not (k is int and float in kinds))
            raise ConfigError(f"expected {names}, got {type(value).__name__}", key=key)
        if float in kinds and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        return value

    def required(self, key: str, kind: type) -> Any:
        if key not in self.raw:
            raise ConfigError("is required", key=key)
        return self.get(key, kind, None)

    def string(self, key: str, default: str | None = None, *, required: bool = False) -> str:
        value = self.required(key, str) if required else self.get(key, str, default)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError("must be a non-empty string", key=key)
        return value.strip()

    def str_list(self, key: str, *, required: bool = False) -> list[str]:
        value = self.required(key, list) if required else self.get(key, list, [])
        if not all(isinstance(item, str) and item.strip() for item in value):
            raise ConfigError("must be a list of non-empty strings", key=key)
        if required and not value:
            raise ConfigError("must not be empty", key=key)
        return [item.strip() for item in value]

    def positive_int(self, key: str, default: int, *, maximum: int | None = None) -> int:
        value = self.get(key, int, default)
        if value <= 0 or (maximum is not None and value > maximum):
            raise ConfigError(f"must be between 1 and {maximum}" if maximum else "must be > 0", key=key)
        return int(value)

    def path(self, raw: str) -> Path:
        path = Path(raw)
        return path if path.is_absolute() else self.ctx.base_dir / path

    def secret(self, key: str, *, required: bool) -> str | None:
        if key not in self.raw:
            if required:
                raise ConfigError('is required (a secret reference: { file = "..." } or { env = "..." })', key=key)
            return None
        try:
            return self.ctx.resolve_secret(self.raw, key)
        except ConfigError as exc:
            raise ConfigError(exc.reason, key=exc.key or key) from None


def _url(opts: _Options, key: str, production: bool) -> str:
    value = opts.string(key, required=True)
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError("must be an absolute http(s) URL", key=key)
    if parts.query or parts.fragment:
        raise ConfigError("must not have a query or fragment", key=key)
    if production and parts.scheme != "https":
        raise ConfigError("must use https in production mode", key=key)
    return value.rstrip("/")


def _private_key(opts: _Options, raw: str, key: str, *, purpose: str) -> PrivateJWK:
    path = opts.path(raw)
    try:
        jwk = load_private_jwk(path)
    except KeyValidationError as exc:
        raise ConfigError(f"{path}: {exc.message}", key=key) from None
    if purpose == "encryption" and not jwk.can_decrypt:
        raise ConfigError(f"{path}: not a decryption key (alg RSA-OAEP-256, key_ops [unwrapKey])", key=key)
    if purpose == "signing" and not jwk.can_sign:
        raise ConfigError(f"{path}: not a signing key (alg PS512, key_ops [sign])", key=key)
    return jwk


def _trust_anchors(opts: _Options, paths: Sequence[str]) -> tuple[x509.Certificate, ...]:
    anchors: list[x509.Certificate] = []
    for raw in paths:
        path = opts.path(raw)
        try:
            anchors.extend(x509.load_pem_x509_certificates(path.read_bytes()))
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}", key="trust_anchors") from None
        except ValueError:
            raise ConfigError(f"{path} holds no PEM certificate", key="trust_anchors") from None
    return tuple(anchors)


def _dirs(opts: _Options, key: str) -> list[tuple[Path, str]]:
    out = []
    for raw in opts.str_list(key):
        path = opts.path(raw)
        if not path.is_dir():
            raise ConfigError(f"{path} is not a directory", key=key)
        out.append((path, key))
    return out


def _request_timeout(opts: Any) -> float:
    value = float(opts.get("request_timeout", (int, float), DEFAULT_REQUEST_TIMEOUT))
    if value <= 0:
        raise ConfigError("must be > 0 (seconds)", key="request_timeout")
    return value


def parse_options(ctx: SourceContext, raw: Mapping[str, Any]) -> SubscriberOptions:
    unknown = sorted(set(raw) - KNOWN_OPTIONS)
    if unknown:
        raise ConfigError(f"unknown option (known: {', '.join(sorted(KNOWN_OPTIONS))})", key=unknown[0])
    opts = _Options(ctx, raw)
    production = ctx.production

    profile_name = opts.string("api_profile", "v1")
    if profile_name not in PROFILES:
        raise ConfigError(f"must be one of {', '.join(sorted(PROFILES))}", key="api_profile")
    profile = PROFILES[profile_name]

    api_url = _url(opts, "submission_api_url", production)
    if re.search(r"/v\d+$", api_url):
        raise ConfigError(
            "must not end with the API version (/v1, /v2): api_profile selects it", key="submission_api_url"
        )
    token_url = _url(opts, "token_url", production)
    client_id = opts.string("client_id", required=True)
    client_secret = opts.secret("client_secret", required=True)
    assert client_secret is not None

    raw_dest = opts.string("destination_id", required=True)
    try:
        destination_id = str(uuid.UUID(raw_dest))
    except ValueError:
        raise ConfigError("must be a UUID", key="destination_id") from None

    decryption_keys = tuple(
        _private_key(opts, p, "decryption_keys", purpose="encryption")
        for p in opts.str_list("decryption_keys", required=True)
    )
    kids = [k.kid for k in decryption_keys]
    if len(set(kids)) != len(kids):
        raise ConfigError("two decryption keys share a kid", key="decryption_keys")
    signing_key = _private_key(opts, opts.string("signing_key", required=True), "signing_key", purpose="signing")

    callback_secret = opts.secret("callback_secret", required=False)
    if callback_secret is not None and len(callback_secret) < 32:
        raise ConfigError(
            "must have at least 32 characters (FIT-Connect callback secrets: 32-512)", key="callback_secret"
        )
    callback_path = opts.string("callback_path", f"/callbacks/fitconnect/{ctx.name}")
    if _CALLBACK_PATH.fullmatch(callback_path) is None or "//" in callback_path or "/../" in f"{callback_path}/":
        raise ConfigError("must be an absolute URL path such as /callbacks/fitconnect/bauamt", key="callback_path")

    poll_interval = opts.get("poll_interval", float, DEFAULT_POLL_INTERVAL)
    if poll_interval <= 0:
        raise ConfigError("must be > 0", key="poll_interval")
    accept_policy = opts.string("accept_policy", "delivered")
    if accept_policy not in ("delivered", "stored"):
        raise ConfigError("must be 'delivered' or 'stored'", key="accept_policy")

    trust_anchors = _trust_anchors(opts, opts.str_list("trust_anchors"))
    allow_self_signed = opts.get("allow_self_signed", bool, False)
    if production and allow_self_signed:
        raise ConfigError("self-signed certificates are refused in production mode", key="allow_self_signed")
    if production and not trust_anchors:
        raise ConfigError("is required in production mode (the Verwaltungs-PKI root certificates)", key="trust_anchors")
    if not trust_anchors and not allow_self_signed:
        raise ConfigError(
            "no trust anchors and allow_self_signed = false: no Zustelldienst key could ever be validated",
            key="trust_anchors",
        )

    crl_dir = opts.path(opts.string("crl_dir")) if "crl_dir" in raw else None
    if crl_dir is not None and not crl_dir.is_dir():
        raise ConfigError(f"{crl_dir} is not a directory", key="crl_dir")
    crls = CrlDirectory(crl_dir) if crl_dir is not None else None  # own keys revoked: refused at start-up
    for jwk, key in [(k, "decryption_keys") for k in decryption_keys] + [(signing_key, "signing_key")]:
        if production and is_test_key(jwk.public_jwk):
            raise ConfigError(f"key {jwk.kid} is TEST key material (refused in production mode)", key=key)
        try:
            validate_public_jwk(
                jwk.public_jwk,
                purpose="encryption" if key == "decryption_keys" else "signing",
                trust_anchors=trust_anchors,
                allow_self_signed=allow_self_signed,
                crls=crls,
            )
        except KeyValidationError as exc:
            raise ConfigError(f"key {jwk.kid} fails validation: {exc.code}: {exc.message}", key=key) from None

    metadata_dirs = _dirs(opts, "metadata_schema_dirs")
    data_dirs = _dirs(opts, "data_schema_dirs")
    schemas = load_schema_index(json_dirs=metadata_dirs + data_dirs, xsd_dirs=data_dirs)
    dangling = referenced_unknown(schemas)
    if dangling:
        schema_id, ref = next(iter(dangling.items()))
        raise ConfigError(
            f"schema {schema_id} references {ref}, which is not in the schema dirs", key="data_schema_dirs"
        )
    available = schemas.metadata_versions()
    wanted = opts.str_list("metadata_versions") if "metadata_versions" in raw else sorted(available)
    for version in wanted:
        if _SEMVER.fullmatch(version) is None:
            raise ConfigError(f"{version!r} is not MAJOR.MINOR.PATCH", key="metadata_versions")
        if version not in available:
            raise ConfigError(
                f"no metadata schema for version {version} in metadata_schema_dirs "
                f"(expected $id https://schema.fitko.de/fit-connect/metadata/{version}/metadata.schema.json)",
                key="metadata_versions",
            )
        if int(version.split(".")[0]) not in (1, 2):
            raise ConfigError(
                f"metadata major version of {version} is not supported (1.x, 2.x)", key="metadata_versions"
            )
    if not wanted:
        raise ConfigError(
            "no metadata schema found: point metadata_schema_dirs at the FIT-Connect metadata schemas",
            key="metadata_schema_dirs",
        )
    metadata_versions = {v: available[v] for v in wanted}
    assert all(metadata_version_of(i) == v for v, i in metadata_versions.items())
    allow_missing = opts.get("allow_missing_metadata_schema", bool, "1.0.0" in metadata_versions)
    if allow_missing and "1.0.0" not in metadata_versions:
        raise ConfigError(
            "treats a missing $schema as 1.0.0, but metadata version 1.0.0 is not supported",
            key="allow_missing_metadata_schema",
        )

    max_attachment = opts.positive_int("max_attachment_bytes", DEFAULT_MAX_ATTACHMENT)
    issuer = opts.string("zustelldienst_issuer", api_url)
    if urlsplit(issuer).scheme not in ("http", "https") or (production and not issuer.startswith("https://")):
        raise ConfigError("must be the Zustelldienst's https URL as it appears in iss", key="zustelldienst_issuer")
    ocsp = opts.string("ocsp", "off")
    if ocsp not in OCSP_MODES:
        raise ConfigError(f"must be one of {', '.join(OCSP_MODES)}", key="ocsp")
    return SubscriberOptions(
        name=ctx.name,
        profile=profile,
        submission_api_url=api_url,
        token_url=token_url,
        client_id=client_id,
        client_secret=client_secret,
        destination_id=destination_id,
        decryption_keys=decryption_keys,
        signing_key=signing_key,
        callback_secret=callback_secret,
        callback_path=callback_path,
        poll_interval=float(poll_interval),
        accept_policy=accept_policy,
        schemas=schemas,
        metadata_versions=metadata_versions,
        trust_anchors=trust_anchors,
        allow_self_signed=bool(allow_self_signed),
        max_attachment_bytes=max_attachment,
        max_inflated_bytes=opts.positive_int("max_inflated_bytes", max_attachment),
        max_data_bytes=opts.positive_int("max_data_bytes", DEFAULT_MAX_DATA),
        allow_missing_metadata_schema=bool(allow_missing),
        require_data_schemas=bool(opts.get("require_data_schemas", bool, True)),
        page_size=opts.positive_int("page_size", DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE),
        max_parallel=opts.positive_int("max_parallel", DEFAULT_PARALLEL, maximum=64),
        request_timeout=_request_timeout(opts),
        production=production,
        zustelldienst_issuer=issuer,
        crl_dir=crl_dir,
        ocsp=ocsp,
    )
