"""``gateway.toml`` → typed, frozen configuration, read with :mod:`gateway.options`.

Every problem is reported with file, key path and reason; all problems of a file are collected
before failing (an operator fixes them in one go). This module reads the core tables; the tables of
subsystems (``[xoev]``, ``[fitconnect]``) and the options of adapter and source instances are read
by their plugin types with the same reader in the same pass (:mod:`gateway.assembly`), so
``gateway check-config`` lists the errors of the whole file together.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from gateway.errors import ConfigError, ConfigErrors
from gateway.options import At, ReadContext, Reader, failed, option, options
from gateway.options.checks import documented, is_file, non_negative, positive
from gateway.routing import ROUTE_MATCH_KEYS, Route, RouteMatch, read_routes
from gateway.secrets import SecretRef

__all__ = [
    "CORE_TABLES",
    "DEFAULT_CONFIG_NAME",
    "ROUTE_MATCH_KEYS",
    "DeliverySection",
    "GatewayConfig",
    "GatewaySection",
    "HttpSection",
    "LoggingSection",
    "PluginInstance",
    "PluginsSection",
    "RetryPolicy",
    "Route",
    "RouteMatch",
    "RoutingSection",
    "StoreSection",
    "load_config",
    "parse_config",
    "read_config",
]

DEFAULT_CONFIG_NAME = "gateway.toml"
_DEFAULT_DB = Path("var/gateway.db")  # identity marks "not configured": then it follows data_dir
_DEFAULT_BLOBS = Path("var/blobs")
LOG_LEVELS = ("debug", "info", "warning", "error")


@options
class GatewaySection:
    mode: Literal["test", "production"] = option(
        default="test",
        doc="Production refuses test messages (`test-message-in-production`), and plugins refuse test keys "
        "and self-signed certificates.",
    )
    data_dir: Path = option(default=Path("var"), doc="Base of the default store and blob paths.")
    instance_id: str | None = option(
        default=None,
        doc="Prefix of this instance's worker name in leases and the audit trail (`actor`); set it when several "
        "instances share one database.",
    )


@options
class StoreSection:
    backend: Literal["sqlite", "postgresql"] = option(
        default="sqlite",
        doc="SQLite: one file, WAL with group commit, for one instance. PostgreSQL: several instances on one database.",
    )
    path: Path = option(default=_DEFAULT_DB, doc="SQLite database file.", default_doc="<data_dir>/gateway.db")
    dsn: SecretRef | None = option(
        default=None,
        doc="PostgreSQL connection string (required for `postgresql`; it contains the password, so it is a secret).",
    )
    blob_dir: Path = option(
        default=_DEFAULT_BLOBS,
        doc="Payload parts (data, attachments) as content-addressed files.",
        default_doc="<data_dir>/blobs",
    )

    def finish(self, at: At) -> StoreSection:
        if self.backend == "postgresql" and self.dsn is None and at.ok("dsn"):
            at.error("is required for backend 'postgresql' (a secret: { file = ... } or { env = ... })", "dsn")
        return self


@documented("0–65535")
def _port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "must be a TCP port"


@options
class HttpSection:
    host: str = option(default="127.0.0.1", doc="Listen address. Use `0.0.0.0` in a container.")
    port: int = option(default=8480, doc="Listen port (`gateway run --port` overrides it).", check=_port)
    max_body_bytes: int = option(
        default=20 * 1024 * 1024, doc="Largest request body (413 `payload-too-large` above).", check=positive
    )
    admin_token: SecretRef | None = option(
        default=None, doc="Bearer token for `/admin/*`. Without it the admin API answers 403."
    )
    drain_seconds: float = option(
        default=30.0, doc="On shutdown, how long open HTTP requests may take to finish.", check=non_negative
    )
    header_timeout: float = option(
        default=15.0,
        doc="Seconds from connecting (or the last response) until a request's headers are in; then the "
        "connection is closed (a slowloris client cannot hold it).",
        check=positive,
    )
    body_timeout: float = option(
        default=120.0,
        doc="Seconds to receive a request body after its headers; then 408 `request-timeout`.",
        check=positive,
    )
    tls_cert: Path | None = option(
        default=None,
        doc="PEM certificate chain: with `tls_key` the server speaks **HTTPS** only (TLS ≥ 1.2).",
        check=is_file,
    )
    tls_key: Path | None = option(
        default=None, doc="PEM private key of `tls_cert` (a file readable by the gateway user only).", check=is_file
    )
    client_ca: Path | None = option(
        default=None,
        doc="PEM CA certificate(s) for **client certificates** (mutual TLS, `CERT_OPTIONAL`). Requires "
        "`tls_cert`/`tls_key`; what a certificate may do is decided by the channel.",
        check=is_file,
    )

    def finish(self, at: At) -> HttpSection:
        if (self.tls_cert is None) != (self.tls_key is None) and at.ok("tls_cert", "tls_key"):
            at.error("tls_cert and tls_key must be given together", "tls_key" if self.tls_key is None else "tls_cert")
        if self.client_ca is not None and self.tls_cert is None and at.ok("tls_cert"):
            at.error("client certificates need TLS: set tls_cert and tls_key too", "client_ca")
        return self


def _level(value: str) -> str | None:
    return None if value.lower() in LOG_LEVELS else "must be debug, info, warning or error"


@options
class LoggingSection:
    format: Literal["json", "console"] = option(
        default="json", doc="One JSON object per line (production), or human-readable."
    )
    level: str = option(default="info", doc="Minimum level: `debug`, `info`, `warning` or `error`.", check=_level)


@options
class PluginsSection:
    allow: tuple[str, ...] = option(
        default=(),
        doc="Load only these entry-point plugins (by entry-point name); empty: all. A name that is not installed "
        "stops startup.",
    )
    block: tuple[str, ...] = option(default=(), doc="Never load (never import) these entry-point plugins.")


@options
class DeliverySection:
    lease_seconds: float = option(
        default=120.0,
        doc="A worker's claim on a message, renewed every third of it; if the process dies the message is "
        "delivered again after it expires (at least once).",
        check=positive,
    )
    poll_interval: float = option(default=0.5, doc="How often an idle worker looks for due messages.", check=positive)
    batch_size: int = option(
        default=32, doc="Reserved (a worker claims up to each adapter's free `concurrency`).", check=positive
    )
    shutdown_grace: float = option(
        default=20.0,
        doc="On shutdown, how long in-flight deliveries may finish before their leases are released.",
        check=non_negative,
    )
    ack_retry_initial: float = option(
        default=5.0,
        doc="First retry of a failed upstream acknowledgement (accept/reject); doubles per attempt.",
        check=positive,
    )
    ack_retry_max: float = option(
        default=3600.0,
        doc="Slowest retry pace of acknowledgements (also when upstream refuses one permanently).",
        check=positive,
    )


@options(kw_only=False)
class RetryPolicy:
    name: str = ""  # the table's key
    max_attempts: int = option(default=12, doc="Attempts in total, the first included.", check=positive)
    initial_delay: float = option(default=2.0, doc="Backoff ceiling after the first failure (seconds).", check=positive)
    max_delay: float = option(default=900.0, doc="Largest wait between attempts (seconds).", check=positive)
    max_age: float = option(default=3 * 86400.0, doc="Give up (dead letter) after this long (seconds).", check=positive)


@dataclass(frozen=True, slots=True)
class PluginInstance:
    """An adapter or source instance: its type and the type-specific options (read by the type)."""

    name: str
    type: str
    options: Mapping[str, Any]
    concurrency: int = 4
    key: str = ""  # key path in the file ("adapters.bauamt"), for error messages


INSTANCE_KEYS = ("type", "concurrency")


def _instances(raw: Any, at: At) -> Any:
    """``[adapters.NAME]`` / ``[sources.NAME]``: ``type`` and ``concurrency`` here, the rest for the type."""
    if not isinstance(raw, Mapping):
        at.error(f"expected a table, got {type(raw).__name__}")
        return failed()
    out: dict[str, PluginInstance] = {}
    for name, item in raw.items():
        here = at.child(str(name))
        if not isinstance(item, Mapping):
            here.error("expected a table")
            continue
        type_name = here.child("type").convert(str, item["type"]) if "type" in item else None
        if "type" not in item:
            here.error("is required", "type")
        concurrency = here.child("concurrency").convert(int, item.get("concurrency", 4))
        if isinstance(concurrency, int) and concurrency <= 0:
            here.error("must be > 0", "concurrency")
        if isinstance(type_name, str) and isinstance(concurrency, int):
            options_ = {k: v for k, v in item.items() if k not in INSTANCE_KEYS}
            out[str(name)] = PluginInstance(str(name), type_name, options_, concurrency, key=here.key)
    return out


@options
class RoutingSection:
    fallback: str | None = option(
        default=None,
        doc="The route for messages that match no rule. Without it they are **rejected** (`no-route`; upstream "
        "is told).",
    )
    test_route: str | None = option(
        default=None,
        doc="Test messages go here, before any rule. In `production` mode test messages are rejected whatever "
        "is configured.",
    )


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    file: Path
    base_dir: Path
    gateway: GatewaySection
    store: StoreSection
    http: HttpSection
    logging: LoggingSection
    plugins: PluginsSection
    delivery: DeliverySection
    retry: Mapping[str, RetryPolicy]
    adapters: Mapping[str, PluginInstance]
    sources: Mapping[str, PluginInstance]
    routes: tuple[Route, ...]
    routing: RoutingSection
    # Top-level tables that are not core tables: each belongs to a subsystem type ([xoev], [fitconnect]),
    # which reads it (gateway.assembly); a table no subsystem claims is an unknown key there.
    tables: Mapping[str, Any] = field(default_factory=dict)

    @property
    def production(self) -> bool:
        return self.gateway.mode == "production"

    def path(self, p: Path) -> Path:
        return p if p.is_absolute() else self.base_dir / p

    def read_context(self) -> ReadContext:
        return ReadContext(base_dir=self.base_dir, file=str(self.file), production=self.production)


# The core tables, each read as its options class (docs/configuration.md is generated from these).
SECTIONS: dict[str, type] = {
    "gateway": GatewaySection,
    "store": StoreSection,
    "http": HttpSection,
    "logging": LoggingSection,
    "plugins": PluginsSection,
    "delivery": DeliverySection,
    "routing": RoutingSection,
}
CORE_TABLES = (*SECTIONS, "retry", "adapters", "sources", "routes")


def _retry(raw: Any, at: At) -> dict[str, RetryPolicy]:
    policies = {"default": RetryPolicy("default")}
    value = at.convert(dict[str, RetryPolicy], raw)
    if isinstance(value, dict):
        policies.update({name: replace(policy, name=name) for name, policy in value.items()})
    return policies


def parse_config(raw: Mapping[str, Any], *, file: Path, reader: Reader | None = None) -> GatewayConfig:
    """The core configuration; errors go to ``reader`` (raised as ConfigErrors when none is given)."""
    base_dir = file.resolve().parent
    own = reader is None
    reader = reader or Reader(ReadContext(base_dir=base_dir, file=str(file)))
    root = reader.at("")
    sections: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        value = root.child(name).convert(cls, raw.get(name, {}))
        sections[name] = value if isinstance(value, cls) else cls()
    gateway: GatewaySection = sections["gateway"]
    reader.ctx = replace(reader.ctx, production=gateway.mode == "production")
    store: StoreSection = sections["store"]
    data_dir = gateway.data_dir
    store = replace(
        store,
        path=data_dir / "gateway.db" if store.path is _DEFAULT_DB else store.path,
        blob_dir=data_dir / "blobs" if store.blob_dir is _DEFAULT_BLOBS else store.blob_dir,
    )
    retry = _retry(raw.get("retry", {}), root.child("retry"))
    instances = {}
    for section in ("adapters", "sources"):
        value = _instances(raw.get(section, {}), root.child(section))
        instances[section] = value if isinstance(value, dict) else {}
    routes = read_routes(
        raw.get("routes", []),
        root,
        adapters=instances["adapters"],
        sources=instances["sources"],
        retry=retry,
        routing=sections["routing"],
    )
    tables: dict[str, Any] = {}
    for key, value in raw.items():
        if key in CORE_TABLES:
            continue
        if isinstance(value, Mapping):
            tables[key] = value  # a subsystem's table: read (or refused as unknown) with the plugins
        else:
            root.child(key).error(f"unknown key (known: {', '.join(sorted(CORE_TABLES))} and subsystem tables)")
    config = GatewayConfig(
        file=file,
        base_dir=base_dir,
        gateway=gateway,
        store=store,
        http=sections["http"],
        logging=sections["logging"],
        plugins=sections["plugins"],
        delivery=sections["delivery"],
        retry=retry,
        adapters=instances["adapters"],
        sources=instances["sources"],
        routes=routes,
        routing=sections["routing"],
        tables=tables,
    )
    if own:
        reader.raise_errors()
    return config


def read_toml(file: Path) -> Mapping[str, Any]:
    try:
        with file.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigErrors([ConfigError("file not found", file=str(file))]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigErrors([ConfigError(f"invalid TOML: {exc}", file=str(file))]) from None


def read_config(path: Path | str, reader: Reader | None = None) -> tuple[GatewayConfig, Reader]:
    """The core configuration and the reader holding its errors (not raised: the plugins' tables are
    read into the same reader next, see :func:`gateway.assembly.check`)."""
    file = Path(path)
    raw = read_toml(file)
    reader = reader or Reader(ReadContext(base_dir=file.resolve().parent, file=str(file)))
    return parse_config(raw, file=file, reader=reader), reader


def load_config(path: Path | str) -> GatewayConfig:
    """The core configuration; raises :class:`ConfigErrors` listing every problem of the core tables."""
    config, reader = read_config(path)
    reader.raise_errors()
    return config
