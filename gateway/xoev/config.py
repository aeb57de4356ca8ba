"""The ``[xoev]`` configuration table: schema bundles, cache, parser limits, validation workers.

:func:`parse_xoev_config` is the single parser of that table (the gateway's config loader calls it).
Paths are resolved against ``base_dir`` (the directory of gateway.toml); every problem is a
:class:`gateway.errors.ConfigError` naming the key, e.g. ``xoev.bundles[0].dir``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.errors import ConfigError
from gateway.secrets import SecretRef, parse_secret_ref
from gateway.xoev.parsing import ParseLimits

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TOP_KEYS = frozenset(
    {
        "cache_dir",
        "max_bytes",
        "max_depth",
        "max_elements",
        "max_attribute_chars",
        "max_text_chars",
        "max_issues",
        "workers",
        "validate_timeout",
        "bundles",
        "trusted_certs",
        "crl_dir",
        "ocsp",
        "signing",
    }
)
OCSP_MODES = ("off", "fail-open", "fail-closed")
_BUNDLE_KEYS = frozenset({"name", "dir", "entries", "samples", "invalid_samples", "locations"})
_SIGNING_KEYS = frozenset({"key", "cert"})


@dataclass(frozen=True, slots=True)
class BundleConfig:
    """One schema bundle: a directory of XSDs (kept byte-identical to upstream) and its entry schemas."""

    name: str
    dir: Path  # absolute
    entries: tuple[str, ...]  # relative to dir (POSIX separators)
    samples: tuple[str, ...] = ()  # glob patterns relative to dir, must validate
    invalid_samples: tuple[str, ...] = ()  # glob patterns relative to dir, must NOT validate
    # schemaLocation as written in an XSD (usually a remote URL) -> absolute local file. Read-only by
    # convention: a plain dict keeps the config picklable for the validation worker processes.
    locations: Mapping[str, Path] = field(default_factory=dict)

    def entry_path(self, entry: str) -> Path:
        return self.dir / entry


@dataclass(frozen=True, slots=True)
class SigningConfig:
    """Outbound signing (``[xoev.signing]``): the private key is a secret reference, read when used."""

    key: SecretRef  # PEM private key (RSA or EC)
    cert: bytes  # DER of the matching certificate (goes into KeyInfo)

    def sign(self, document_bytes: bytes) -> bytes:
        """``document_bytes`` with an enveloped XMLDSig signature (see :func:`gateway.xoev.signatures.sign_xml`)."""
        from gateway.xoev.signatures import sign_xml  # signxml is imported only when signing

        return sign_xml(document_bytes, self.key.resolve().encode("utf-8"), self.cert)


@dataclass(frozen=True, slots=True)
class XoevConfig:
    bundles: tuple[BundleConfig, ...]
    cache_dir: Path | None  # absolute; None disables the on-disk cache
    max_bytes: int = 20_000_000
    max_depth: int = 256
    max_elements: int = 500_000
    max_attribute_chars: int = 65_536
    max_text_chars: int = 10_000_000
    max_issues: int = 50  # validation issues reported per document
    workers: int = 2  # validation worker processes
    validate_timeout: float = 30.0  # seconds per document, then the worker is killed
    # DER certificates whose XML signatures are trusted (pinned by SHA-256 fingerprint when verifying)
    trusted_certs: tuple[bytes, ...] = ()
    crl_dir: Path | None = None  # absolute; CRL files (PEM/DER) checked for every signing certificate's chain
    ocsp: str = "off"  # "off" | "fail-open" | "fail-closed" (see gateway.trust.ocsp)
    signing: SigningConfig | None = None

    @property
    def limits(self) -> ParseLimits:
        return ParseLimits(
            max_bytes=self.max_bytes,
            max_depth=self.max_depth,
            max_elements=self.max_elements,
            max_attribute_chars=self.max_attribute_chars,
            max_text_chars=self.max_text_chars,
        )


def parse_xoev_config(raw: Mapping[str, Any], *, base_dir: Path, file: str) -> XoevConfig:
    """Parse the ``[xoev]`` table (already decoded from TOML) into an :class:`XoevConfig`."""
    if not isinstance(raw, Mapping):
        raise ConfigError("must be a table", key="xoev", file=file)
    _reject_unknown(raw, _TOP_KEYS, "xoev", file)
    base_dir = base_dir.resolve()

    cache_raw = raw.get("cache_dir", "var/xoev-cache")
    if cache_raw is False:
        cache_dir: Path | None = None
    elif isinstance(cache_raw, str) and cache_raw:
        cache_dir = (base_dir / cache_raw).resolve()
    else:
        raise ConfigError("must be a non-empty path or false", key="xoev.cache_dir", file=file)

    ints = {
        key: _positive_int(raw, key, default, file)
        for key, default in (
            ("max_bytes", 20_000_000),
            ("max_depth", 256),
            ("max_elements", 500_000),
            ("max_attribute_chars", 65_536),
            ("max_text_chars", 10_000_000),
            ("max_issues", 50),
            ("workers", 2),
        )
    }
    timeout = raw.get("validate_timeout", 30.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ConfigError("must be a positive number of seconds", key="xoev.validate_timeout", file=file)

    bundles_raw = raw.get("bundles", [])
    if not isinstance(bundles_raw, list):
        raise ConfigError("must be an array of tables ([[xoev.bundles]])", key="xoev.bundles", file=file)
    bundles: list[BundleConfig] = []
    seen: set[str] = set()
    for index, item in enumerate(bundles_raw):
        key = f"xoev.bundles[{index}]"
        bundle = _parse_bundle(item, key, base_dir, file)
        if bundle.name in seen:
            raise ConfigError(f"duplicate bundle name {bundle.name!r}", key=f"{key}.name", file=file)
        seen.add(bundle.name)
        bundles.append(bundle)

    trusted = _trusted_certs(raw.get("trusted_certs", []), base_dir, file)
    signing = _signing(raw["signing"], base_dir, file) if "signing" in raw else None
    crl_raw = raw.get("crl_dir")
    if crl_raw is not None and (not isinstance(crl_raw, str) or not (base_dir / crl_raw).is_dir()):
        raise ConfigError("must be the path of a directory of CRL files", key="xoev.crl_dir", file=file)
    ocsp = raw.get("ocsp", "off")
    if ocsp not in OCSP_MODES:
        raise ConfigError(f"must be one of {', '.join(OCSP_MODES)}", key="xoev.ocsp", file=file)

    return XoevConfig(
        bundles=tuple(bundles),
        cache_dir=cache_dir,
        validate_timeout=float(timeout),
        trusted_certs=trusted,
        crl_dir=(base_dir / crl_raw).resolve() if isinstance(crl_raw, str) else None,
        ocsp=str(ocsp),
        signing=signing,
        **ints,
    )


def _load_certificates(path: Path, key: str, file: str) -> list[x509.Certificate]:
    """Every certificate of a PEM file (one or more), or the one of a DER file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", key=key, file=file) from None
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise ConfigError(f"{path} holds no readable X.509 certificate (PEM or DER)", key=key, file=file) from None


def _trusted_certs(value: Any, base_dir: Path, file: str) -> tuple[bytes, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError("must be an array of certificate file paths", key="xoev.trusted_certs", file=file)
    out: list[bytes] = []
    for index, item in enumerate(value):
        certs = _load_certificates(base_dir / item, f"xoev.trusted_certs[{index}]", file)
        out.extend(c.public_bytes(serialization.Encoding.DER) for c in certs)
    return tuple(out)


def _signing(value: Any, base_dir: Path, file: str) -> SigningConfig:
    if not isinstance(value, Mapping):
        raise ConfigError("must be a table with key and cert", key="xoev.signing", file=file)
    _reject_unknown(value, _SIGNING_KEYS, "xoev.signing", file)
    if "key" not in value:
        raise ConfigError(
            'is required (a secret: { file = "..." } or { env = "..." })', key="xoev.signing.key", file=file
        )
    try:
        key = parse_secret_ref(value["key"], key="xoev.signing.key", base_dir=base_dir)
    except ConfigError as exc:
        raise ConfigError(exc.reason, key=exc.key, file=file) from None
    cert_raw = value.get("cert")
    if not isinstance(cert_raw, str) or not cert_raw:
        raise ConfigError("must be the path of the signing certificate", key="xoev.signing.cert", file=file)
    certs = _load_certificates(base_dir / cert_raw, "xoev.signing.cert", file)
    return SigningConfig(key=key, cert=certs[0].public_bytes(serialization.Encoding.DER))


def _parse_bundle(item: Any, key: str, base_dir: Path, file: str) -> BundleConfig:
    if not isinstance(item, Mapping):
        raise ConfigError("must be a table", key=key, file=file)
    _reject_unknown(item, _BUNDLE_KEYS, key, file)

    name = item.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            "must be a name of letters, digits, '.', '_' or '-' (at most 64)", key=f"{key}.name", file=file
        )
    dir_raw = item.get("dir")
    if not isinstance(dir_raw, str) or not dir_raw:
        raise ConfigError("must be a path (relative to the config file)", key=f"{key}.dir", file=file)
    bundle_dir = (base_dir / dir_raw).resolve()
    if not bundle_dir.is_dir():
        raise ConfigError(f"directory {bundle_dir} does not exist", key=f"{key}.dir", file=file)

    entries = _str_list(item, "entries", key, file, required=True)
    for i, entry in enumerate(entries):
        path = _inside(bundle_dir, entry, f"{key}.entries[{i}]", file)
        if not path.is_file():
            raise ConfigError(f"entry schema {path} does not exist", key=f"{key}.entries[{i}]", file=file)
    samples = _str_list(item, "samples", key, file)
    invalid = _str_list(item, "invalid_samples", key, file)

    locations_raw = item.get("locations", {})
    if not isinstance(locations_raw, Mapping):
        raise ConfigError("must be a table of URL = file", key=f"{key}.locations", file=file)
    locations: dict[str, Path] = {}
    for url, target in locations_raw.items():
        loc_key = f'{key}.locations."{url}"'
        if not isinstance(target, str) or not target:
            raise ConfigError("must be a file path relative to the bundle dir", key=loc_key, file=file)
        path = _inside(bundle_dir, target, loc_key, file)
        if not path.is_file():
            raise ConfigError(f"file {path} does not exist", key=loc_key, file=file)
        locations[str(url)] = path

    return BundleConfig(
        name=name,
        dir=bundle_dir,
        entries=tuple(Path(e).as_posix() for e in entries),
        samples=tuple(samples),
        invalid_samples=tuple(invalid),
        locations=locations,
    )


def _inside(bundle_dir: Path, relative: str, key: str, file: str) -> Path:
    """Resolve a bundle-relative path and refuse anything outside the bundle (the sandbox)."""
    if os.path.isabs(relative):
        raise ConfigError("must be relative to the bundle dir", key=key, file=file)
    path = (bundle_dir / relative).resolve()
    if not path.is_relative_to(bundle_dir):
        raise ConfigError(f"{relative!r} points outside the bundle dir", key=key, file=file)
    return path


def _str_list(item: Mapping[str, Any], name: str, key: str, file: str, *, required: bool = False) -> list[str]:
    value = item.get(name)
    if value is None and not required:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value) or (not value and required):
        what = "a non-empty array of strings" if required else "an array of strings"
        raise ConfigError(f"must be {what}", key=f"{key}.{name}", file=file)
    return list(value)


def _positive_int(raw: Mapping[str, Any], key: str, default: int, file: str) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError("must be a positive integer", key=f"xoev.{key}", file=file)
    return value


def _reject_unknown(raw: Mapping[str, Any], known: frozenset[str], key: str, file: str) -> None:
    for name in raw:
        if name not in known:
            raise ConfigError(f"unknown key (known: {', '.join(sorted(known))})", key=f"{key}.{name}", file=file)
