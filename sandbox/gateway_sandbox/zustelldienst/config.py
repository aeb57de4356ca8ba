"""``sandbox.toml`` → :class:`SandboxConfig`.

All problems of a file are collected and reported together (file, key path, reason; never a secret
value). Paths (key files, secret files) are relative to the TOML file. The format is documented in
``docs/sandbox.md``; ``certs/example/sandbox.toml`` is a complete example.
"""

from __future__ import annotations

import json
import re
import tomllib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gateway.errors import ConfigError, ConfigErrors
from gateway.fitconnect.keys import KeyValidationError, validate_public_jwk
from gateway.secrets import parse_secret_ref

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


@dataclass(frozen=True, slots=True)
class Limits:
    max_attachment_bytes: int = 500 * MIB  # FIT-Connect: 500 MB per encrypted attachment
    max_submit_bytes: int = 64 * MIB  # PUT /v1/submissions/{id} (metadata + data JWEs)
    max_json_bytes: int = 1 * MIB  # other JSON requests
    max_event_bytes: int = 256 * 1024  # POST /v1/cases/{id}/events
    max_attachments: int = 100
    max_set_skew: int = 300  # seconds an incoming SET's iat may lie in the future


@dataclass(frozen=True, slots=True)
class Periods:
    incomplete_deletion: float = 86400.0  # incomplete submissions are deleted after 1 day
    auto_reject: float = 14 * 86400.0  # submitted but not accepted/rejected after 14 days
    sweep_interval: float = 1.0  # how often the timers look (real seconds)


@dataclass(frozen=True, slots=True)
class CallbackPolicy:
    max_attempts: int = 5
    initial_delay: float = 1.0  # real seconds; doubled per attempt
    max_delay: float = 60.0
    timeout: float = 10.0


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
    limits: Limits = Limits()
    periods: Periods = Periods()
    callbacks: CallbackPolicy = CallbackPolicy()
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
# Reading


class _Errors:
    def __init__(self, file: str) -> None:
        self.file = file
        self.items: list[ConfigError] = []

    def add(self, key: str, reason: str) -> None:
        self.items.append(ConfigError(reason, key=key, file=self.file))


def _table(raw: Any, key: str, errs: _Errors, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        errs.add(key, "expected a table")
        return {}
    for unknown in sorted(set(raw) - allowed):
        errs.add(f"{key}.{unknown}" if key else unknown, "unknown key")
    return raw


def _get(t: Mapping[str, Any], name: str, kind: type | tuple[type, ...], default: Any, key: str, errs: _Errors) -> Any:
    if name not in t:
        return default
    value = t[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds:
        kinds = (*kinds, int)  # TOML writes 86400 for 86400.0
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        errs.add(f"{key}.{name}" if key else name, f"expected {' or '.join(k.__name__ for k in kinds)}")
        return default
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _str_list(t: Mapping[str, Any], name: str, key: str, errs: _Errors) -> list[str]:
    value = t.get(name, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        errs.add(f"{key}.{name}", "expected a list of strings")
        return []
    return list(value)


def _secret(raw: Any, key: str, base_dir: Path, errs: _Errors) -> str:
    # Inline secrets are fine here: everything the sandbox knows is test material.
    if isinstance(raw, str):
        if not raw:
            errs.add(key, "must not be empty")
        return raw
    try:
        return parse_secret_ref(raw, key=key, base_dir=base_dir).resolve()
    except ConfigError as exc:
        errs.add(exc.key or key, exc.reason)
        return ""


def _load_jwk(
    path_str: str, key: str, base_dir: Path, errs: _Errors, purpose: Literal["encryption", "signing"]
) -> dict[str, Any] | None:
    path = Path(path_str)
    path = path if path.is_absolute() else base_dir / path
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        errs.add(key, f"cannot read key file {path}: {exc.strerror}")
        return None
    except json.JSONDecodeError as exc:
        errs.add(key, f"key file {path} is not JSON: {exc.msg}")
        return None
    if not isinstance(value, dict) or not isinstance(value.get("kid"), str):
        errs.add(key, f"key file {path} is not a JWK with a kid")
        return None
    if any(name in value for name in ("d", "p", "q", "dp", "dq", "qi")):
        errs.add(key, f"key file {path} holds a private key; give the public JWK")
        return None
    try:
        # The sandbox plays the TEST environment: self-signed certificates are fine, the rest is checked.
        validate_public_jwk(value, purpose=purpose, allow_self_signed=True)
    except KeyValidationError as exc:
        errs.add(key, f"key file {path} is not a valid {purpose} key ({exc.code}): {exc.message}")
        return None
    return value


def _service(raw: Any, key: str, errs: _Errors) -> ServiceConfig | None:
    t = _table(raw, key, errs, {"identifier", "regions", "submission_schemas"})
    identifier = _get(t, "identifier", str, "", key, errs)
    if not URN_RE.match(identifier) or not 7 <= len(identifier) <= 255:
        errs.add(f"{key}.identifier", "must be a service URN (urn:de:fim:leika:leistung:…)")
    regions = _str_list(t, "regions", key, errs)
    if not regions:
        errs.add(f"{key}.regions", "at least one region is required")
    for r in regions:
        if not REGION_RE.match(r):
            errs.add(f"{key}.regions", f"{r!r} is not DE followed by up to 12 digits")
    schemas: list[SubmissionSchema] = []
    raw_schemas = t.get("submission_schemas", [])
    if not isinstance(raw_schemas, list) or not raw_schemas:
        errs.add(f"{key}.submission_schemas", "at least one submission schema is required")
        raw_schemas = []
    for j, s in enumerate(raw_schemas):
        skey = f"{key}.submission_schemas[{j}]"
        st = _table(s, skey, errs, {"schema_uri", "mime_type"})
        uri = _get(st, "schema_uri", str, "", skey, errs)
        mime = _get(st, "mime_type", str, "", skey, errs)
        if not uri or ":" not in uri:
            errs.add(f"{skey}.schema_uri", "must be a URI")
        if mime not in SCHEMA_MIME_TYPES:
            errs.add(f"{skey}.mime_type", f"must be one of {', '.join(SCHEMA_MIME_TYPES)}")
        schemas.append(SubmissionSchema(uri, mime))
    return ServiceConfig(identifier, tuple(regions), tuple(schemas))


_CONTACT_KEYS = {"legal_name": "legalName", "address": "address", "phone": "phone", "email": "email", "unit": "unit"}


def _destination(raw: Any, key: str, base_dir: Path, errs: _Errors) -> DestinationConfig | None:
    allowed = {
        "id",
        "status",
        "services",
        "metadata_versions",
        "encryption_keys",
        "encryption_kid",
        "signing_keys",
        "callback",
        "contact_information",
        "reply_channels",
    }
    t = _table(raw, key, errs, allowed)
    try:
        dest_id = normalize_uuid(_get(t, "id", str, "", key, errs))
    except ValueError:
        errs.add(f"{key}.id", "must be a UUID")
        dest_id = ""
    status = _get(t, "status", str, "active", key, errs)
    if status not in DESTINATION_STATUSES:
        errs.add(f"{key}.status", f"must be one of {', '.join(DESTINATION_STATUSES)}")
    raw_services = t.get("services", [])
    if not isinstance(raw_services, list) or not raw_services:
        errs.add(f"{key}.services", "at least one service is required")
        raw_services = []
    services = [svc for i, raw_s in enumerate(raw_services) if (svc := _service(raw_s, f"{key}.services[{i}]", errs))]
    versions = _str_list(t, "metadata_versions", key, errs) or ["1.0.0"]
    for v in versions:
        if not SEMVER_RE.match(v):
            errs.add(f"{key}.metadata_versions", f"{v!r} is not MAJOR.MINOR.PATCH")
    if len(set(versions)) != len(versions):
        errs.add(f"{key}.metadata_versions", "versions must be unique")
    enc_keys = [
        k
        for i, p in enumerate(_str_list(t, "encryption_keys", key, errs))
        if (k := _load_jwk(p, f"{key}.encryption_keys[{i}]", base_dir, errs, "encryption"))
    ]
    sig_keys = [
        k
        for i, p in enumerate(_str_list(t, "signing_keys", key, errs))
        if (k := _load_jwk(p, f"{key}.signing_keys[{i}]", base_dir, errs, "signing"))
    ]
    if not t.get("encryption_keys"):
        errs.add(f"{key}.encryption_keys", "at least one public encryption JWK file is required")
    if not t.get("signing_keys"):
        errs.add(f"{key}.signing_keys", "at least one public signing JWK file is required")
    encryption_kid = _get(t, "encryption_kid", str, "", key, errs) or (enc_keys[0]["kid"] if enc_keys else "")
    if enc_keys and encryption_kid not in {k["kid"] for k in enc_keys}:
        errs.add(f"{key}.encryption_kid", "must be the kid of one of the encryption_keys")
    callback = None
    if "callback" in t:
        ckey = f"{key}.callback"
        ct = _table(t["callback"], ckey, errs, {"url", "secret"})
        url = _get(ct, "url", str, "", ckey, errs)
        if "secret" not in ct:
            errs.add(f"{ckey}.secret", "is required")
        secret = _secret(ct.get("secret", ""), f"{ckey}.secret", base_dir, errs) if "secret" in ct else ""
        if secret and not MIN_CALLBACK_SECRET <= len(secret) <= MAX_CALLBACK_SECRET:
            errs.add(f"{ckey}.secret", f"must have {MIN_CALLBACK_SECRET}–{MAX_CALLBACK_SECRET} characters")
        callback = CallbackConfig(url, secret)
    contact: dict[str, str] = {}
    if "contact_information" in t:
        ckey = f"{key}.contact_information"
        ct = _table(t["contact_information"], ckey, errs, set(_CONTACT_KEYS))
        for toml_name, api_name in _CONTACT_KEYS.items():
            value = _get(ct, toml_name, str, None, ckey, errs)
            if value is not None:
                contact[api_name] = value
            elif toml_name != "unit":
                errs.add(f"{ckey}.{toml_name}", "is required")
    else:
        errs.add(f"{key}.contact_information", "is required (legal_name, address, phone, email)")
    reply_channels = _get(t, "reply_channels", dict, None, key, errs)
    return DestinationConfig(
        id=dest_id,
        status=status,
        services=tuple(services),
        metadata_versions=tuple(versions),
        encryption_keys=tuple(enc_keys),
        encryption_kid=encryption_kid,
        signing_keys=tuple(sig_keys),
        callback=callback,
        contact_information=contact,
        reply_channels=reply_channels,
    )


def _client(raw: Any, key: str, base_dir: Path, errs: _Errors) -> ClientConfig:
    t = _table(raw, key, errs, {"id", "secret", "scopes", "destinations"})
    client_id = _get(t, "id", str, "", key, errs)
    if not client_id:
        errs.add(f"{key}.id", "is required")
    if "secret" not in t:
        errs.add(f"{key}.secret", "is required")
    secret = _secret(t.get("secret", ""), f"{key}.secret", base_dir, errs) if "secret" in t else ""
    scopes = _str_list(t, "scopes", key, errs)
    from gateway_sandbox.zustelldienst.scopes import scope_problem  # local: scopes imports this module

    for s in scopes:
        problem = scope_problem(s)
        if problem:
            errs.add(f"{key}.scopes", problem)
    links = []
    for d in _str_list(t, "destinations", key, errs):
        try:
            links.append(normalize_uuid(d))
        except ValueError:
            errs.add(f"{key}.destinations", f"{d!r} is not a UUID")
    return ClientConfig(client_id, secret, tuple(scopes), tuple(links))


def _api_versions(t: Mapping[str, Any], errs: _Errors) -> tuple[str, ...]:
    versions = _str_list(t, "api_versions", "sandbox", errs) if "api_versions" in t else ["v1", "v2"]
    if not versions or any(v not in ("v1", "v2") for v in versions) or len(set(versions)) != len(versions):
        errs.add("sandbox.api_versions", 'must be a non-empty list of "v1" and/or "v2"')
        return ("v1", "v2")
    return tuple(versions)


def parse_config(raw: Mapping[str, Any], *, file: Path) -> SandboxConfig:
    errs = _Errors(str(file))
    base_dir = file.parent
    top = _table(raw, "", errs, {"sandbox", "destinations", "clients"})
    s = _table(
        top.get("sandbox", {}),
        "sandbox",
        errs,
        {
            "base_url",
            "state_dir",
            "signing_key_file",
            "token_lifetime",
            "allow_insecure_callbacks",
            "inspection_api",
            "verify_accept_tags",
            "check_jwe_profile",
            "api_versions",
            "limits",
            "periods",
            "callbacks",
        },
    )

    def positive(t: Mapping[str, Any], name: str, default: Any, key: str, kind: type) -> Any:
        value = _get(t, name, kind, default, key, errs)
        if value <= 0:
            errs.add(f"{key}.{name}", "must be > 0")
            return default
        return value

    lt = _table(s.get("limits", {}), "sandbox.limits", errs, set(Limits.__dataclass_fields__))
    limits = Limits(**{n: positive(lt, n, getattr(Limits(), n), "sandbox.limits", int) for n in lt})
    pt = _table(s.get("periods", {}), "sandbox.periods", errs, set(Periods.__dataclass_fields__))
    periods = Periods(**{n: positive(pt, n, getattr(Periods(), n), "sandbox.periods", float) for n in pt})
    cbt = _table(s.get("callbacks", {}), "sandbox.callbacks", errs, set(CallbackPolicy.__dataclass_fields__))
    policy = CallbackPolicy(
        **{
            n: positive(
                cbt, n, getattr(CallbackPolicy(), n), "sandbox.callbacks", int if n == "max_attempts" else float
            )
            for n in cbt
        }
    )

    def path(name: str) -> Path | None:
        value = _get(s, name, str, None, "sandbox", errs)
        if value is None:
            return None
        p = Path(value)
        return p if p.is_absolute() else base_dir / p

    raw_dests = top.get("destinations", [])
    if not isinstance(raw_dests, list):
        errs.add("destinations", "expected an array of tables ([[destinations]])")
        raw_dests = []
    raw_clients = top.get("clients", [])
    if not isinstance(raw_clients, list):
        errs.add("clients", "expected an array of tables ([[clients]])")
        raw_clients = []
    dests = [d for i, r in enumerate(raw_dests) if (d := _destination(r, f"destinations[{i}]", base_dir, errs))]
    clients = [_client(r, f"clients[{i}]", base_dir, errs) for i, r in enumerate(raw_clients)]
    base_url = _get(s, "base_url", str, None, "sandbox", errs)
    if base_url is not None and not re.match(r"^https?://[^/]+", base_url):
        errs.add("sandbox.base_url", "must be an http(s) URL")
    config = SandboxConfig(
        destinations=tuple(dests),
        clients=tuple(clients),
        base_url=base_url.rstrip("/") if base_url else None,
        state_dir=path("state_dir"),
        signing_key_file=path("signing_key_file"),
        token_lifetime=positive(s, "token_lifetime", 1800, "sandbox", int),
        allow_insecure_callbacks=_get(s, "allow_insecure_callbacks", bool, False, "sandbox", errs),
        inspection_api=_get(s, "inspection_api", bool, True, "sandbox", errs),
        verify_accept_tags=_get(s, "verify_accept_tags", bool, True, "sandbox", errs),
        check_jwe_profile=_get(s, "check_jwe_profile", bool, False, "sandbox", errs),
        api_versions=_api_versions(s, errs),
        limits=limits,
        periods=periods,
        callbacks=policy,
        source=str(file),
    )
    if errs.items:
        raise ConfigErrors(errs.items)
    return config


def load_config(path: Path | str) -> SandboxConfig:
    """Read and check a ``sandbox.toml``; raises :class:`ConfigErrors` listing every problem."""
    file = Path(path)
    try:
        with file.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigErrors([ConfigError("file not found", file=str(file))]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigErrors([ConfigError(f"invalid TOML: {exc}", file=str(file))]) from None
    return parse_config(raw, file=file)
