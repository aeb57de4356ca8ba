"""The ``[xoev]`` configuration table: schema bundles, cache, parser limits, validation workers.

:class:`XoevOptions` declares the table for the gateway's option reader (it is the XÖV subsystem's
table, read with the rest of gateway.toml); :func:`parse_xoev_config` reads it on its own (tools,
tests). Paths are resolved against the directory of gateway.toml; every problem is a
:class:`gateway.errors.ConfigError` naming the key, e.g. ``xoev.bundles[0].dir``.
"""

from __future__ import annotations

import os
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.errors import ConfigError
from gateway.options import At, ReadContext, Reader, failed, option, options
from gateway.options.checks import is_dir, non_empty, positive
from gateway.secrets import SecretRef
from gateway.xoev.parsing import ParseLimits

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


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
    signing: SigningConfig | None = None
    crl_dir: Path | None = None  # absolute; CRL files (PEM/DER) checked for every signing certificate's chain
    ocsp: str = "off"  # "off" | "fail-open" | "fail-closed" (see gateway.trust.ocsp)

    @property
    def limits(self) -> ParseLimits:
        return ParseLimits(
            max_bytes=self.max_bytes,
            max_depth=self.max_depth,
            max_elements=self.max_elements,
            max_attribute_chars=self.max_attribute_chars,
            max_text_chars=self.max_text_chars,
        )


def _load_certificates(path: Path) -> list[x509.Certificate]:
    """Every certificate of a PEM file (one or more), or the one of a DER file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise ConfigError(f"{path} holds no readable X.509 certificate (PEM or DER)") from None


def _der(certs: list[x509.Certificate]) -> list[bytes]:
    return [c.public_bytes(serialization.Encoding.DER) for c in certs]


def _trusted_certs(raw: Any, at: At) -> Any:
    paths = at.convert(tuple[Path, ...], raw)
    if not isinstance(paths, tuple):
        return failed()
    out: list[bytes] = []
    for index, path in enumerate(paths):
        try:
            out.extend(_der(_load_certificates(path)))
        except ConfigError as exc:
            at.error(exc.reason, index)
    return tuple(out) if not at.reader.failed(at.key) else failed()


def _cache_dir(raw: Any, at: At) -> Path | None:
    if raw is False:
        return None
    if isinstance(raw, str) and raw:
        return at.path(raw).resolve()
    raise ConfigError("must be a non-empty path or false")


def _name(value: str) -> str | None:
    return None if _NAME.match(value) else "must be a name of letters, digits, '.', '_' or '-' (at most 64)"


def _existing_dir(value: Path) -> str | None:
    return None if value.is_dir() else f"directory {value.resolve()} does not exist"


def _inside(bundle_dir: Path, relative: str) -> Path:
    """Resolve a bundle-relative path and refuse anything outside the bundle (the sandbox)."""
    if os.path.isabs(relative):
        raise ConfigError("must be relative to the bundle dir")
    path = (bundle_dir / relative).resolve()
    if not path.is_relative_to(bundle_dir):
        raise ConfigError(f"{relative!r} points outside the bundle dir")
    return path


def _locations(raw: Any, at: At) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError("must be a table of URL = file")
    for url, target in raw.items():
        if not isinstance(target, str) or not target:
            at.error("must be a file path relative to the bundle dir", f'"{url}"')
    return failed() if at.reader.failed(at.key) else {str(k): v for k, v in raw.items()}


@options
class BundleOptions:
    name: str = option(doc="The bundle's name (letters, digits, `.`, `_`, `-`; at most 64).", check=_name)
    dir: Path = option(doc="Directory of the XSDs (kept byte-identical to upstream).", check=_existing_dir)
    entries: tuple[str, ...] = option(doc="Entry schemas, relative to `dir`.", check=non_empty)
    samples: tuple[str, ...] = option(
        default=(), doc="Glob patterns (relative to `dir`) of documents that must validate."
    )
    invalid_samples: tuple[str, ...] = option(default=(), doc="Glob patterns of documents that must NOT validate.")
    locations: dict[str, str] = option(
        doc="`schemaLocation` as written in an XSD (usually a remote URL) = local file relative to `dir`.",
        default_factory=dict,
        parse=lambda raw, at: _locations(raw, at),
        type_doc="table of path",
    )

    def finish(self, at: At) -> BundleConfig:
        bundle_dir = self.dir.resolve()
        locations: dict[str, Path] = {}
        if at.ok("dir"):
            for i, entry in enumerate(self.entries):
                try:
                    path = _inside(bundle_dir, entry)
                except ConfigError as exc:
                    at.child("entries").error(exc.reason, i)
                    continue
                if not path.is_file():
                    at.child("entries").error(f"entry schema {path} does not exist", i)
            for url, target in self.locations.items():
                where = f'locations."{url}"'
                try:
                    path = _inside(bundle_dir, target)
                except ConfigError as exc:
                    at.error(exc.reason, where)
                    continue
                if not path.is_file():
                    at.error(f"file {path} does not exist", where)
                locations[url] = path
        return BundleConfig(
            name=self.name,
            dir=bundle_dir,
            entries=tuple(Path(e).as_posix() for e in self.entries),
            samples=self.samples,
            invalid_samples=self.invalid_samples,
            locations=locations,
        )


@options
class SigningOptions:
    key: SecretRef = option(
        doc="PEM private key (RSA or EC), a secret reference.", hint='a secret: { file = "..." } or { env = "..." }'
    )
    cert: Path = option(doc="The matching certificate (PEM or DER); goes into KeyInfo.")

    def finish(self, at: At) -> SigningConfig | None:
        if not at.ok("cert"):
            return None
        try:
            cert = _der(_load_certificates(self.cert))[0]
        except ConfigError as exc:
            at.error(exc.reason, "cert")
            return None
        return SigningConfig(key=self.key, cert=cert)


@options
class XoevOptions:
    cache_dir: Path | None = option(
        default=Path("var/xoev-cache"),
        doc="On-disk cache of compiled schema indexes; `false` disables it.",
        parse=_cache_dir,
        type_doc="path or false",
    )
    max_bytes: int = option(default=20_000_000, doc="Largest XML document (bytes).", check=positive)
    max_depth: int = option(default=256, doc="Deepest element nesting.", check=positive)
    max_elements: int = option(default=500_000, doc="Most elements in one document.", check=positive)
    max_attribute_chars: int = option(default=65_536, doc="Longest attribute value.", check=positive)
    max_text_chars: int = option(default=10_000_000, doc="Longest text node.", check=positive)
    max_issues: int = option(default=50, doc="Validation issues reported per document.", check=positive)
    workers: int = option(default=2, doc="Validation worker processes.", check=positive)
    validate_timeout: float = option(
        default=30.0, doc="Seconds per document, then the worker is killed and replaced.", check=positive
    )
    bundles: tuple[BundleOptions, ...] = option(default=(), doc="Schema bundles (`[[xoev.bundles]]`).")
    trusted_certs: tuple[bytes, ...] = option(
        default=(),
        doc="Certificates (PEM or DER files) whose XML signatures are trusted (pinned by SHA-256 fingerprint).",
        parse=_trusted_certs,
        type_doc="list of path",
    )
    signing: SigningOptions | None = option(default=None, doc="Outbound signing: `key` (secret) and `cert`.")
    crl_dir: Path | None = option(
        default=None,
        doc="Directory of CRL files (PEM/DER) checked for every signing certificate's chain, re-read when it changes.",
        check=is_dir,
    )
    ocsp: Literal["off", "fail-open", "fail-closed"] = option(
        default="off",
        doc="OCSP for signing certificates: `fail-open` accepts when no answer comes, `fail-closed` answers "
        "503 `revocation-unavailable` (the sender retries).",
    )

    def finish(self, at: At) -> XoevConfig:
        bundles = typing.cast("tuple[BundleConfig, ...]", self.bundles)
        seen: set[str] = set()
        for index, bundle in enumerate(bundles):
            if bundle.name in seen:
                at.child("bundles").child(index).error(f"duplicate bundle name {bundle.name!r}", "name")
            seen.add(bundle.name)
        cache_dir = self.cache_dir
        if cache_dir is not None and not cache_dir.is_absolute():  # the default, relative to the config file
            cache_dir = at.path(str(cache_dir)).resolve()
        return XoevConfig(
            bundles=bundles,
            cache_dir=cache_dir,
            max_bytes=self.max_bytes,
            max_depth=self.max_depth,
            max_elements=self.max_elements,
            max_attribute_chars=self.max_attribute_chars,
            max_text_chars=self.max_text_chars,
            max_issues=self.max_issues,
            workers=self.workers,
            validate_timeout=self.validate_timeout,
            trusted_certs=self.trusted_certs,
            signing=typing.cast("SigningConfig | None", self.signing),
            crl_dir=self.crl_dir.resolve() if self.crl_dir is not None else None,
            ocsp=self.ocsp,
        )


def parse_xoev_config(raw: Mapping[str, Any], *, base_dir: Path, file: str) -> XoevConfig:
    """The ``[xoev]`` table on its own; raises the first error (the gateway's loader reports all)."""
    reader = Reader(ReadContext(base_dir=base_dir.resolve(), file=file))
    config = reader.read(XoevOptions, raw, "xoev")
    if config is None:
        raise reader.errors[0]
    return typing.cast("XoevConfig", config)
