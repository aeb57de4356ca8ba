"""``gateway.toml`` → typed, frozen configuration.

Every problem is reported with file, key path and reason; all problems of a file are collected
before failing (an operator fixes them in one go). Plugin-specific tables (adapter and source
options) are validated by the plugin types at startup (see :mod:`gateway.runtime`).
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gateway.errors import ConfigError, ConfigErrors
from gateway.secrets import SecretRef, parse_secret_ref
from gateway.xoev.config import XoevConfig, parse_xoev_config

DEFAULT_CONFIG_NAME = "gateway.toml"
ROUTE_MATCH_KEYS = (
    "service",
    "region",
    "destination",
    "message_type",
    "namespace",
    "source",
    "sender",
    "test",
)


class _Reader:
    """Reads one TOML table, recording errors with their key path instead of raising at once."""

    def __init__(self, raw: Any, path: str, errors: list[ConfigError], *, table: bool = True) -> None:
        self.path = path
        self.errors = errors
        self.used: set[str] = set()
        if table and not isinstance(raw, Mapping):
            self.error("", "expected a table")
            raw = {}
        self.raw: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, reason: str) -> None:
        self.errors.append(ConfigError(reason, key=self.key(name) if name else self.path))

    def get(
        self,
        name: str,
        kind: type | tuple[type, ...],
        default: Any,
        *,
        check: Callable[[Any], str | None] | None = None,
    ) -> Any:
        self.used.add(name)
        if name not in self.raw:
            return default
        value = self.raw[name]
        # bool is an int in Python; TOML keeps them apart, so do we.
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds:
            kinds = (*kinds, int)  # TOML writes 30 for 30.0
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if not ok:
            names = " or ".join(k.__name__ for k in kinds if k is not int or float not in kinds)
            self.error(name, f"expected {names}, got {type(value).__name__}")
            return default
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if check is not None:
            problem = check(value)
            if problem:
                self.error(name, problem)
                return default
        return value

    def required(self, name: str, kind: type) -> Any:
        if name not in self.raw:
            self.used.add(name)
            self.error(name, "is required")
            return None
        return self.get(name, kind, None)

    def table(self, name: str) -> _Reader:
        self.used.add(name)
        return _Reader(self.raw.get(name, {}), self.key(name), self.errors)

    def secret(self, name: str, base_dir: Path, *, required: bool = False) -> SecretRef | None:
        self.used.add(name)
        if name not in self.raw:
            if required:
                self.error(name, "is required")
            return None
        try:
            return parse_secret_ref(self.raw[name], key=self.key(name), base_dir=base_dir)
        except ConfigError as exc:
            self.errors.append(exc)
            return None

    def finish(self, allowed_extra: bool = False) -> None:
        if allowed_extra:
            return
        for unknown in sorted(set(self.raw) - self.used):
            self.error(unknown, "unknown key")


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _file(reader: _Reader, name: str, base_dir: Path) -> Path | None:
    """An existing file, relative to the config file's directory."""
    raw = reader.get(name, str, None, check=lambda v: None if v else "must be a non-empty path")
    if raw is None:
        return None
    path = Path(raw) if Path(raw).is_absolute() else base_dir / raw
    if not path.is_file():
        reader.error(name, f"file {path} does not exist")
        return None
    return path


def _has_error(errors: list[ConfigError], key_prefix: str) -> bool:
    return any(e.key.startswith(key_prefix) for e in errors)


def _strings(value: list[Any]) -> str | None:
    return None if all(isinstance(item, str) for item in value) else "expected a list of strings"


@dataclass(frozen=True, slots=True)
class GatewaySection:
    mode: Literal["test", "production"] = "test"
    data_dir: Path = Path("var")
    instance_id: str | None = None


@dataclass(frozen=True, slots=True)
class StoreSection:
    backend: Literal["sqlite", "postgresql"] = "sqlite"
    path: Path = Path("var/gateway.db")
    dsn: SecretRef | None = None
    blob_dir: Path = Path("var/blobs")


@dataclass(frozen=True, slots=True)
class HttpSection:
    host: str = "127.0.0.1"
    port: int = 8480
    max_body_bytes: int = 20 * 1024 * 1024
    admin_token: SecretRef | None = None
    drain_seconds: float = 30.0
    header_timeout: float = 15.0  # seconds from connect (or the last response) until the request headers are in
    body_timeout: float = 120.0  # seconds to receive a request body, from the end of its headers
    tls_cert: Path | None = None  # absolute; PEM certificate chain: the server speaks HTTPS when set
    tls_key: Path | None = None  # absolute; PEM private key of tls_cert
    client_ca: Path | None = None  # absolute; PEM CA(s) for client certificates (optional, CERT_OPTIONAL)


@dataclass(frozen=True, slots=True)
class LoggingSection:
    format: Literal["json", "console"] = "json"
    level: str = "info"


@dataclass(frozen=True, slots=True)
class PluginsSection:
    allow: tuple[str, ...] = ()  # empty: every installed plugin
    block: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DeliverySection:
    lease_seconds: float = 120.0
    poll_interval: float = 0.5
    batch_size: int = 32
    shutdown_grace: float = 20.0
    ack_retry_initial: float = 5.0  # first retry of a failed upstream acknowledgement
    ack_retry_max: float = 3600.0  # slowest pace (also for acks upstream refused permanently)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    name: str
    max_attempts: int = 12
    initial_delay: float = 2.0
    max_delay: float = 900.0
    max_age: float = 3 * 86400.0  # a message older than this goes to the dead letters


@dataclass(frozen=True, slots=True)
class PluginInstance:
    """An adapter or source instance: its type and the type-specific options (validated by the type)."""

    name: str
    type: str
    options: Mapping[str, Any]
    concurrency: int = 4
    key: str = ""  # key path in the file, for error messages


@dataclass(frozen=True, slots=True)
class RouteMatch:
    service: str | None = None
    region: str | None = None
    destination: str | None = None
    message_type: str | None = None
    namespace: str | None = None
    source: str | None = None
    sender: str | None = None
    test: bool | None = None


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    adapter: str
    match: RouteMatch
    retry: str = "default"
    signature: Literal["required", "optional", "ignored"] = "ignored"


@dataclass(frozen=True, slots=True)
class RoutingSection:
    fallback: str | None = None  # a route name, or None: no match → reject ("no-route")
    test_route: str | None = None  # where test messages go (refused in production mode)


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
    # Tables owned by subsystems with their own parsers (e.g. "fitconnect"), kept raw here.
    extra: Mapping[str, Any] = field(default_factory=dict)
    xoev: XoevConfig | None = None  # [xoev], parsed by gateway.xoev.config.parse_xoev_config

    @property
    def production(self) -> bool:
        return self.gateway.mode == "production"

    def path(self, p: Path) -> Path:
        return p if p.is_absolute() else self.base_dir / p


# Top-level tables parsed by other subsystems; their parsers run in gateway.runtime.
SUBSYSTEM_TABLES = ("fitconnect",)


def _instances(reader: _Reader, section: str) -> dict[str, PluginInstance]:
    out: dict[str, PluginInstance] = {}
    table = reader.table(section)
    for name in table.raw:
        table.used.add(name)
        item = table.table(name)
        type_name = item.required("type", str)
        concurrency = item.get("concurrency", int, 4, check=_positive)
        options = {k: v for k, v in item.raw.items() if k not in ("type", "concurrency")}
        if type_name is not None:
            out[name] = PluginInstance(name, type_name, options, concurrency, key=f"{section}.{name}")
    return out


def _retry_policies(reader: _Reader) -> dict[str, RetryPolicy]:
    policies = {"default": RetryPolicy("default")}
    table = reader.table("retry")
    for name in table.raw:
        table.used.add(name)
        item = table.table(name)
        policies[name] = RetryPolicy(
            name=name,
            max_attempts=item.get("max_attempts", int, 12, check=_positive),
            initial_delay=item.get("initial_delay", float, 2.0, check=_positive),
            max_delay=item.get("max_delay", float, 900.0, check=_positive),
            max_age=item.get("max_age", float, 3 * 86400.0, check=_positive),
        )
        item.finish()
    return policies


def _routes(reader: _Reader) -> tuple[Route, ...]:
    reader.used.add("routes")
    raw_routes = reader.raw.get("routes", [])
    if not isinstance(raw_routes, list):
        reader.error("routes", "expected an array of tables ([[routes]])")
        return ()
    routes: list[Route] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_routes):
        item = _Reader(raw, f"routes[{index}]", reader.errors)
        name = item.required("name", str)
        adapter = item.required("adapter", str)
        retry = item.get("retry", str, "default")
        signature = item.get(
            "signature",
            str,
            "ignored",
            check=lambda v: (
                None if v in ("required", "optional", "ignored") else "must be required, optional or ignored"
            ),
        )
        m = item.table("match")
        fields: dict[str, Any] = {k: m.get(k, bool if k == "test" else str, None) for k in ROUTE_MATCH_KEYS}
        match = RouteMatch(**fields)
        m.finish()
        item.finish()
        if name is None or adapter is None:
            continue
        if name in seen:
            item.error("name", f"duplicate route name {name!r}")
        seen.add(name)
        routes.append(Route(name, adapter, match, retry, signature))
    return tuple(routes)


def parse_config(raw: Mapping[str, Any], *, file: Path) -> GatewayConfig:
    errors: list[ConfigError] = []
    base_dir = file.resolve().parent
    root = _Reader(raw, "", errors)

    g = root.table("gateway")
    gateway = GatewaySection(
        mode=g.get(
            "mode",
            str,
            "test",
            check=lambda v: None if v in ("test", "production") else "must be 'test' or 'production'",
        ),
        data_dir=Path(g.get("data_dir", str, "var")),
        instance_id=g.get("instance_id", str, None),
    )
    g.finish()

    s = root.table("store")
    data_dir = gateway.data_dir
    store = StoreSection(
        backend=s.get(
            "backend",
            str,
            "sqlite",
            check=lambda v: None if v in ("sqlite", "postgresql") else "must be 'sqlite' or 'postgresql'",
        ),
        path=Path(s.get("path", str, str(data_dir / "gateway.db"))),
        dsn=s.secret("dsn", base_dir),
        blob_dir=Path(s.get("blob_dir", str, str(data_dir / "blobs"))),
    )
    if store.backend == "postgresql" and store.dsn is None:
        s.error("dsn", "is required for backend 'postgresql' (a secret: { file = ... } or { env = ... })")
    s.finish()

    h = root.table("http")
    http = HttpSection(
        host=h.get("host", str, "127.0.0.1"),
        port=h.get("port", int, 8480, check=lambda v: None if 0 <= v <= 65535 else "must be a TCP port"),
        max_body_bytes=h.get("max_body_bytes", int, 20 * 1024 * 1024, check=_positive),
        admin_token=h.secret("admin_token", base_dir),
        drain_seconds=h.get("drain_seconds", float, 30.0, check=_non_negative),
        header_timeout=h.get("header_timeout", float, 15.0, check=_positive),
        body_timeout=h.get("body_timeout", float, 120.0, check=_positive),
        tls_cert=_file(h, "tls_cert", base_dir),
        tls_key=_file(h, "tls_key", base_dir),
        client_ca=_file(h, "client_ca", base_dir),
    )
    if (http.tls_cert is None) != (http.tls_key is None) and not _has_error(errors, "http.tls_"):
        h.error("tls_key" if http.tls_key is None else "tls_cert", "tls_cert and tls_key must be given together")
    if http.client_ca is not None and http.tls_cert is None and "tls_cert" not in h.raw:
        h.error("client_ca", "client certificates need TLS: set tls_cert and tls_key too")
    h.finish()

    lg = root.table("logging")
    logging = LoggingSection(
        format=lg.get(
            "format",
            str,
            "json",
            check=lambda v: None if v in ("json", "console") else "must be 'json' or 'console'",
        ),
        level=lg.get(
            "level",
            str,
            "info",
            check=lambda v: (
                None if v.lower() in ("debug", "info", "warning", "error") else "must be debug, info, warning or error"
            ),
        ),
    )
    lg.finish()

    p = root.table("plugins")
    plugins = PluginsSection(
        allow=tuple(p.get("allow", list, [], check=_strings)),
        block=tuple(p.get("block", list, [], check=_strings)),
    )
    p.finish()

    d = root.table("delivery")
    delivery = DeliverySection(
        lease_seconds=d.get("lease_seconds", float, 120.0, check=_positive),
        poll_interval=d.get("poll_interval", float, 0.5, check=_positive),
        batch_size=d.get("batch_size", int, 32, check=_positive),
        shutdown_grace=d.get("shutdown_grace", float, 20.0, check=_non_negative),
        ack_retry_initial=d.get("ack_retry_initial", float, 5.0, check=_positive),
        ack_retry_max=d.get("ack_retry_max", float, 3600.0, check=_positive),
    )
    d.finish()

    retry = _retry_policies(root)
    adapters = _instances(root, "adapters")
    sources = _instances(root, "sources")
    routes = _routes(root)

    r = root.table("routing")
    routing = RoutingSection(fallback=r.get("fallback", str, None), test_route=r.get("test_route", str, None))
    r.finish()

    extra = {}
    for table_name in SUBSYSTEM_TABLES:
        if table_name in root.raw:
            root.used.add(table_name)
            extra[table_name] = root.raw[table_name]
    xoev: XoevConfig | None = None
    if "xoev" in root.raw:
        root.used.add("xoev")
        try:
            xoev = parse_xoev_config(root.raw["xoev"], base_dir=base_dir, file=str(file))
        except ConfigError as exc:
            errors.append(exc)
    root.finish()

    # Dangling references.
    route_names = {route.name for route in routes}
    for index, route in enumerate(routes):
        if route.adapter not in adapters:
            errors.append(
                ConfigError(
                    f"names adapter {route.adapter!r}, which is not declared in [adapters]",
                    key=f"routes[{index}].adapter",
                )
            )
        if route.retry not in retry:
            errors.append(
                ConfigError(
                    f"names retry policy {route.retry!r}, which is not declared in [retry]",
                    key=f"routes[{index}].retry",
                )
            )
        if (
            route.match.source is not None
            and not any(ch in route.match.source for ch in "*?[")
            and route.match.source not in sources
        ):
            errors.append(
                ConfigError(
                    f"matches source {route.match.source!r}, which is not declared in [sources]",
                    key=f"routes[{index}].match.source",
                )
            )
    for key, value in (("routing.fallback", routing.fallback), ("routing.test_route", routing.test_route)):
        if value is not None and value not in route_names:
            errors.append(ConfigError(f"names route {value!r}, which is not declared in [[routes]]", key=key))

    if errors:
        raise ConfigErrors([ConfigError(e.reason, key=e.key, file=str(file)) for e in errors])
    return GatewayConfig(
        file=file,
        base_dir=base_dir,
        gateway=gateway,
        store=store,
        http=http,
        logging=logging,
        plugins=plugins,
        delivery=delivery,
        retry=retry,
        adapters=adapters,
        sources=sources,
        routes=routes,
        routing=routing,
        extra=extra,
        xoev=xoev,
    )


def load_config(path: Path | str) -> GatewayConfig:
    file = Path(path)
    try:
        with file.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigErrors([ConfigError("file not found", file=str(file))]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigErrors([ConfigError(f"invalid TOML: {exc}", file=str(file))]) from None
    return parse_config(raw, file=file)
