"""Jepsen-style harness for the FIT-Connect path: sandbox Zustelldienst, gateway processes, checker.

* The **sandbox** runs in this process (:func:`gateway_sandbox.testing.running_sandbox`) with the example
  configuration ``certs/example/sandbox.toml`` (the example destination, its TEST keys and clients),
  in memory.
* Each **gateway** is a real subprocess, ``python -m gateway run -c <config>``, with a configuration
  written into the run's work directory: SQLite (or PostgreSQL) store, the ``fitconnect`` source
  pointing at the sandbox (or at a fault proxy in front of it), an adapter, short leases and polls.
* The **checker** reads what the outside world saw (the sandbox's event logs, the adapter's
  directory or a webhook receiver's records) and the gateway's store, and names every violation.

Used by ``test_crash.py`` / ``crash.py`` (kill -9 nemesis) and by the benchmarks in ``bench/``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import functools
import importlib.util
import json
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp

from gateway.model import MessageState
from gateway.store.base import Store, StoredMessage
from gateway_sandbox.online_service.sender import OutgoingAttachment, Sender, SentSubmission
from gateway_sandbox.testing import RunningSandbox
from gateway_sandbox.zustelldienst.config import CallbackPolicy, SandboxConfig
from gateway_sandbox.zustelldienst.config import load_config as load_sandbox_config
from gateway_sandbox.zustelldienst.zsd_key import generate_private_key, write_private_key

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "certs" / "example"
DEMO_SCHEMAS = REPO / "schemas" / "demo"
SOURCE = "fc"  # name of the fitconnect source in the generated configs
ADAPTER = "fv"  # name of the adapter instance
SENDER_CLIENT = "onlinedienst-example"
SUBSCRIBER_CLIENT = "gateway-example"
GEWERBE_SERVICE = "urn:de:fim:leika:leistung:99050012104000"
GEWERBE_SCHEMA = "https://schema.example.org/demo/gewerbeanmeldung/1.0.0/gewerbeanmeldung.schema.json"
BAU_SERVICE = "urn:de:fim:leika:leistung:99010003001006"
BAU_SCHEMA = "urn:example:demo:bauantrag:1.0"
ACCEPT = "accept-submission"
REJECT = "reject-submission"


# -- environment --------------------------------------------------------------------------------------


def find_metadata_schemas() -> Path | None:
    """The official FIT-Connect metadata schemas (``../shared/fitconnect``), or None when absent."""
    env = os.environ.get("GATEWAY_SHARED_DIR")
    for base in ([Path(env)] if env else []) + [REPO.parent / "shared"]:
        candidate = base / "fitconnect"
        if candidate.is_dir() and any(candidate.glob("metadata*.json")):
            return candidate
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def secret(name: str) -> str:
    return (EXAMPLE / name).read_text(encoding="utf-8").strip()


@functools.lru_cache(maxsize=1)
def zsd_key_file() -> Path:
    """The sandbox's own RSA-4096 signing key, generated once per process (gateway_sandbox.testing caches it)."""
    directory = Path(tempfile.mkdtemp(prefix="gw-rel-zsd-"))
    atexit.register(shutil.rmtree, directory, True)  # one per process: removed when it exits
    path = directory / "zsd-signing.key.pem"
    write_private_key(generate_private_key(), path)
    return path


def example_sandbox_config(**overrides: Any) -> SandboxConfig:
    """``certs/example/sandbox.toml`` in memory, with fast callback retries."""
    config = load_sandbox_config(EXAMPLE / "sandbox.toml")
    fields: dict[str, Any] = {
        "state_dir": None,
        "signing_key_file": zsd_key_file(),
        "allow_insecure_callbacks": True,
        "callbacks": CallbackPolicy(max_attempts=3, initial_delay=0.2, max_delay=1.0, timeout=2.0),
    }
    fields.update(overrides)
    return dataclasses.replace(config, **fields)


def load_pg_helper() -> ModuleType:
    """``tests/store/pg.py`` (the throwaway-cluster helper), loaded by path: it has no package imports."""
    path = REPO / "tests" / "store" / "pg.py"
    spec = importlib.util.spec_from_file_location("_reliability_pg_helper", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# -- gateway configuration ----------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(type(value))


def toml_table(name: str, values: Mapping[str, Any]) -> str:
    return f"[{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())


@dataclass
class GatewaySettings:
    """One gateway instance's configuration; :meth:`write` renders ``gateway.toml``."""

    directory: Path  # config and logs of this instance
    api_url: str  # Submission API base (the sandbox, or a proxy in front of it)
    metadata_dir: Path
    port: int = 0
    instance_id: str = "gw"
    store: dict[str, Any] = field(default_factory=dict)  # [store] table (default: SQLite in shared/)
    shared: Path | None = None  # store + blobs + adapter output shared by all instances of a run
    adapter: dict[str, Any] = field(default_factory=dict)  # [adapters.fv] (default: filesystem)
    delivery: dict[str, Any] = field(default_factory=dict)
    retry: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] | None = field(default_factory=dict)  # extra fitconnect options; None: no source
    log_level: str = "info"
    extra: str = ""  # more TOML, appended as is (e.g. an [xoev] table and an xoev-http source)

    def __post_init__(self) -> None:
        if not self.port:
            self.port = free_port()
        if self.shared is None:
            self.shared = self.directory

    @property
    def config_path(self) -> Path:
        return self.directory / "gateway.toml"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_token(self) -> str:
        return "reliability-admin-token-0123456789abcdef"

    @property
    def out_dir(self) -> Path:
        assert self.shared is not None
        return self.shared / "fachverfahren"

    def write(self) -> Path:
        assert self.shared is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        self.shared.mkdir(parents=True, exist_ok=True)
        token_file = self.directory / "admin-token.txt"
        token_file.write_text(self.admin_token)
        store = self.store or {"backend": "sqlite", "path": str(self.shared / "gateway.db")}
        store = {**store, "blob_dir": str(self.shared / "blobs")}
        adapter = self.adapter or {"type": "filesystem", "directory": str(self.out_dir)}
        source: dict[str, Any] = {
            "type": "fitconnect",
            "submission_api_url": self.api_url,
            "token_url": self.api_url + "/token",
            "client_id": SUBSCRIBER_CLIENT,
            "client_secret": {"file": str(EXAMPLE / f"{SUBSCRIBER_CLIENT}.secret.txt")},
            "destination_id": load_sandbox_config(EXAMPLE / "sandbox.toml").destinations[0].id,
            "decryption_keys": [str(EXAMPLE / "encryption.private.jwk.json")],
            "signing_key": str(EXAMPLE / "signing.private.jwk.json"),
            "callback_secret": {"file": str(EXAMPLE / "destination-callback.secret.txt")},
            "callback_path": "/fitconnect/callback",
            "poll_interval": 0.5,
            "allow_self_signed": True,
            "metadata_schema_dirs": [str(self.metadata_dir)],
            "data_schema_dirs": [str(DEMO_SCHEMAS)],
        }
        source.update(self.source or {})
        parts = [
            toml_table("gateway", {"mode": "test", "data_dir": str(self.directory), "instance_id": self.instance_id}),
            toml_table("store", store),
            toml_table("http", {"host": "127.0.0.1", "port": self.port, "admin_token": {"file": str(token_file)}}),
            toml_table("logging", {"format": "json", "level": self.log_level}),
            toml_table(
                "delivery", {"lease_seconds": 2.0, "poll_interval": 0.1, "shutdown_grace": 2.0, **self.delivery}
            ),
            toml_table(
                "retry.default",
                {"max_attempts": 40, "initial_delay": 0.2, "max_delay": 1.0, "max_age": 3600.0, **self.retry},
            ),
            toml_table(f"adapters.{ADAPTER}", adapter),
            toml_table(f"sources.{SOURCE}", source) if self.source is not None else "",
            toml_table("routing", {"fallback": "all"}),
            '[[routes]]\nname = "all"\nadapter = "' + ADAPTER + '"\n',
            self.extra,
        ]
        self.config_path.write_text("\n".join(parts), encoding="utf-8")
        return self.config_path


# -- an XÖV HTTP intake (xoev-http source) with a small test standard ------------------------------------

XOEV_NS = "urn:example:reliability:antrag:1"
XOEV_ROOT = "antrag.Einreichen.0100"
XOEV_PATH = "/xoev/messages"
XOEV_TOKEN = "reliability-xoev-token-" + "0123456789abcdef" * 2
XOEV_XSD = f"""<?xml version="1.0" encoding="UTF-8"?>
<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:a="{XOEV_NS}" targetNamespace="{XOEV_NS}"
           elementFormDefault="unqualified">
  <xs:element name="{XOEV_ROOT}">
    <xs:complexType>
      <xs:sequence>
        <xs:element name="nachrichtenkopf.g2g" type="a:Kopf"/>
        <xs:element name="antragsteller" type="xs:string"/>
        <xs:element name="betrag" type="xs:decimal"/>
        <xs:element name="begruendung" type="xs:string"/>
      </xs:sequence>
      <xs:attribute name="standard" type="xs:string"/>
      <xs:attribute name="version" type="xs:string"/>
      <xs:attribute name="test" type="xs:boolean"/>
    </xs:complexType>
  </xs:element>
  <xs:complexType name="Kopf">
    <xs:sequence>
      <xs:element name="identifikation.nachricht">
        <xs:complexType>
          <xs:sequence>
            <xs:element name="nachrichtenUUID" type="xs:string"/>
            <xs:element name="erstellungszeitpunkt" type="xs:dateTime"/>
          </xs:sequence>
        </xs:complexType>
      </xs:element>
      <xs:element name="leser" type="a:Behoerde"/>
      <xs:element name="autor" type="a:Behoerde"/>
    </xs:sequence>
  </xs:complexType>
  <xs:complexType name="Behoerde">
    <xs:sequence><xs:element name="kennung" type="xs:token"/></xs:sequence>
  </xs:complexType>
</xs:schema>
"""


def xoev_message(message_uuid: str) -> bytes:
    """A schema-valid ~1.2 KB message of the test standard (g2g header: identified generically)."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<a:{XOEV_ROOT} xmlns:a="{XOEV_NS}" standard="Testantrag" version="1.0">
  <nachrichtenkopf.g2g>
    <identifikation.nachricht>
      <nachrichtenUUID>{message_uuid}</nachrichtenUUID>
      <erstellungszeitpunkt>2026-11-24T10:15:00+01:00</erstellungszeitpunkt>
    </identifikation.nachricht>
    <leser><kennung>amt:0002</kennung></leser>
    <autor><kennung>amt:0001</kennung></autor>
  </nachrichtenkopf.g2g>
  <antragsteller>Erika Mustermann</antragsteller>
  <betrag>12.50</betrag>
  <begruendung>{"Lorem ipsum dolor sit amet. " * 20}</begruendung>
</a:{XOEV_ROOT}>
""".encode()


def xoev_intake_toml(directory: Path, *, source: str = "portal") -> str:
    """``[xoev]`` with the test standard's bundle, and an ``xoev-http`` source at :data:`XOEV_PATH`."""
    bundle = directory / "xoev-bundle"
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "antrag.xsd").write_text(XOEV_XSD, encoding="utf-8")
    token_file = directory / "xoev-token.txt"
    token_file.write_text(XOEV_TOKEN)
    bundle_table = {"name": "reliability", "dir": str(bundle), "entries": ["antrag.xsd"]}
    return "\n".join(
        [
            toml_table("xoev", {"cache_dir": str(directory / "xoev-cache"), "workers": 1}),
            "[[xoev.bundles]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in bundle_table.items()),
            toml_table(f"sources.{source}", {"type": "xoev-http", "path": XOEV_PATH}),
            toml_table(f"sources.{source}.senders.portal", {"token": {"file": str(token_file)}}),
        ]
    )


# -- gateway process ----------------------------------------------------------------------------------


def gateway_env() -> dict[str, str]:
    paths = [str(REPO), str(REPO / "plugins"), os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))


class GatewayProcess:
    """``python -m gateway run -c <config>`` as a subprocess: start, SIGKILL, SIGTERM, CPU time."""

    def __init__(self, settings: GatewaySettings, *, argv_prefix: Sequence[str] = ()) -> None:
        self.settings = settings
        self.argv_prefix = list(argv_prefix)  # e.g. ["taskset", "-c", "0"]
        self.proc: asyncio.subprocess.Process | None = None
        self.log_path = settings.directory / "gateway.log"
        self.starts = 0
        self.kills = 0
        self.cpu_of_dead = 0.0  # CPU seconds of earlier (killed) processes

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    async def start(self) -> None:
        assert not self.running
        self.settings.write()
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start {self.starts} =====\n".encode())
            log.flush()
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv_prefix,
                sys.executable,
                "-m",
                "gateway",
                "run",
                "-c",
                str(self.settings.config_path),
                cwd=str(self.settings.directory),
                env=gateway_env(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    async def wait_healthy(self, within: float = 60.0) -> float:
        """Seconds until ``/healthz`` answers 200 (the HTTP surface is up, the workers started)."""
        started = time.monotonic()
        deadline = started + within
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while time.monotonic() < deadline:
                if not self.running:
                    raise AssertionError(f"gateway exited with {self.returncode()}; log: {self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(self.settings.url + "/healthz") as resp:
                        if resp.status == 200:
                            return time.monotonic() - started
                await asyncio.sleep(0.05)
        raise AssertionError(f"gateway not healthy within {within} s; log: {self.log_tail()}")

    async def healthy(self) -> bool:
        """Does ``/healthz`` answer 200 right now?"""
        if not self.running:
            return False
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as http,
                http.get(self.settings.url + "/healthz") as resp,
            ):
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    def cpu_times(self) -> tuple[float, float]:
        """(user, system) CPU seconds of the running process and its threads (Linux /proc)."""
        pid = self.pid
        if pid is None:
            return 0.0, 0.0
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0, 0.0
        ticks = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / ticks, int(fields[12]) / ticks  # utime, stime

    def cpu_seconds(self) -> float:
        """user+system CPU seconds of the running process, plus those of earlier (killed) ones."""
        return self.cpu_of_dead + sum(self.cpu_times())

    async def kill(self) -> None:
        """SIGKILL: no cleanup, no lease release, no flush; exactly a crash."""
        assert self.proc is not None
        self.cpu_of_dead = self.cpu_seconds()
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        self.kills += 1

    def pause(self) -> bool:
        """SIGSTOP (a process pause: GC stall, VM steal, swapped out); True if it was running."""
        if self.proc is None or self.proc.returncode is not None:
            return False
        self.proc.send_signal(signal.SIGSTOP)
        return True

    def resume(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGCONT)

    async def stop(self, within: float = 30.0) -> int:
        """SIGTERM (graceful drain); SIGKILL if it does not end ``within`` seconds."""
        if self.proc is None or self.proc.returncode is not None:
            return self.returncode() or 0
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), within)
        except TimeoutError:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
        return self.proc.returncode or 0

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_events(self, name: str) -> int:
        """How many JSON log lines of this instance have ``event == name``."""
        count = 0
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return 0
        needle = f'"event": "{name}"'
        for line in text.splitlines():
            if needle in line or f'"event":"{name}"' in line:
                count += 1
        return count


async def run_cli(settings: GatewaySettings, *args: str, within: float = 60.0) -> tuple[int, str]:
    """``python -m gateway <args> -c <config>`` (e.g. ``audit verify``); returns (rc, output)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args[:1],
        "-c",
        str(settings.config_path),
        *args[1:],
        cwd=str(settings.directory),
        env=gateway_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), within)
    return proc.returncode or 0, out.decode("utf-8", "replace")


# -- sending ------------------------------------------------------------------------------------------


PDF = b"%PDF-1.4\n% reliability test attachment\n" + bytes(range(256)) * 16 + b"\n%%EOF\n"


@dataclass(frozen=True)
class Application:
    service: str
    schema: str
    mime: str
    data: bytes
    attachments: tuple[OutgoingAttachment, ...]


def applications(rng: random.Random, n: int, *, attachments: int | None = None) -> list[Application]:
    """``n`` valid applications, JSON and XML, with 0-2 attachments (or exactly ``attachments``)."""
    gewerbe = (DEMO_SCHEMAS / "examples" / "gewerbeanmeldung.json").read_bytes()
    bau = (DEMO_SCHEMAS / "examples" / "bauantrag.xml").read_bytes()
    out = []
    for i in range(n):
        count = rng.randint(0, 2) if attachments is None else attachments
        atts = tuple(
            OutgoingAttachment(mime_type="application/pdf", filename=f"Nachweis {i}-{k}.pdf", content=PDF)
            for k in range(count)
        )
        if rng.random() < 0.5:
            out.append(Application(GEWERBE_SERVICE, GEWERBE_SCHEMA, "application/json", gewerbe, atts))
        else:
            out.append(Application(BAU_SERVICE, BAU_SCHEMA, "application/xml", bau, atts))
    return out


def sender_for(sandbox: RunningSandbox) -> Sender:
    creds = sandbox.client(SENDER_CLIENT)
    return Sender(sandbox.base_url, sandbox.token_url, creds.client_id, creds.client_secret)


async def send_all(
    sandbox: RunningSandbox,
    apps: Sequence[Application],
    *,
    interval: float = 0.0,
    sent: list[SentSubmission] | None = None,
) -> list[SentSubmission]:
    """Submit ``apps`` one after the other (``interval`` seconds apart) like an Onlinedienst would."""
    out = sent if sent is not None else []
    async with sender_for(sandbox) as sender:
        for app in apps:
            out.append(
                await sender.send(
                    destination_id=sandbox.destination_id,
                    service_identifier=app.service,
                    service_name="Reliability",
                    data=app.data,
                    data_schema_uri=app.schema,
                    data_mime_type=app.mime,
                    attachments=app.attachments,
                )
            )
            if interval:
                await asyncio.sleep(interval)
    return out


# -- observing ----------------------------------------------------------------------------------------


def outcomes(sandbox: RunningSandbox, sent: SentSubmission) -> list[str]:
    """accept-/reject-submission events the Zustelldienst recorded for ``sent`` (in order)."""
    sub = f"submission:{sent.submission_id}"
    return [
        e.event_name
        for e in sandbox.events(sent.case_id)
        if e.event_name in (ACCEPT, REJECT) and e.claims.get("sub") == sub
    ]


def outcome_times(sandbox: RunningSandbox, sent: SentSubmission) -> list[float]:
    """When the Zustelldienst recorded each accept/reject of ``sent`` (sandbox clock = wall clock here)."""
    return [
        r.recorded_at
        for r in sandbox.sandbox.case(sent.case_id).events
        if r.submission_id == sent.submission_id and r.event.endswith((ACCEPT, REJECT))
    ]


async def wait_until(
    predicate: Callable[[], Any], *, within: float, interval: float = 0.1, what: str = "condition"
) -> float:
    """Wait until ``predicate()`` (sync or async) is truthy; returns the seconds waited."""
    started = time.monotonic()
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return time.monotonic() - started
        if time.monotonic() - started > within:
            raise TimeoutError(f"timed out after {within:.0f} s waiting for {what}")
        await asyncio.sleep(interval)


async def admin_messages(settings: GatewaySettings, state: MessageState) -> list[dict[str, Any]]:
    """Messages in ``state`` as the admin API lists them (all pages)."""
    headers = {"Authorization": f"Bearer {settings.admin_token}"}
    out: list[dict[str, Any]] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5), headers=headers) as http:
        while True:
            params = {"state": state.value, "limit": "1000", "offset": str(len(out))}
            async with http.get(settings.url + "/admin/messages", params=params) as resp:
                resp.raise_for_status()
                page = (await resp.json())["messages"]
            out.extend(page)
            if len(page) < 1000:
                return out


def adapter_deliveries(out_dir: Path) -> tuple[Counter[str], list[str]]:
    """(submission id -> number of complete message directories, leftover temporary entries)."""
    counts: Counter[str] = Counter()
    leftovers: list[str] = []
    if not out_dir.is_dir():
        return counts, leftovers
    for entry in out_dir.iterdir():
        if entry.name.startswith("."):
            leftovers.append(entry.name)
            continue
        manifest = json.loads((entry / "manifest.json").read_text(encoding="utf-8"))
        counts[str(manifest["source"]["reference"]).lower()] += 1
    return counts, leftovers


async def store_messages(store: Store) -> list[StoredMessage]:
    out: list[StoredMessage] = []
    while True:
        page = await store.list_messages(states=None, limit=500, offset=len(out))
        out.extend(page)
        if len(page) < 500:
            return out


@dataclass
class Verdict:
    """What the checker found: ``violations`` empty means every property held."""

    violations: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def fail(self, what: str) -> None:
        self.violations.append(what)

    @property
    def ok(self) -> bool:
        return not self.violations


async def check_exactly_once(
    *,
    sandbox: RunningSandbox,
    sent: Sequence[SentSubmission],
    store: Store,
    delivered: Counter[str],
    leftovers: Sequence[str] = (),
    expect_dead: Mapping[str, str] | None = None,
) -> Verdict:
    """The properties of a run, over what upstream, the back office and the store show.

    * every submission accepted upstream exactly once (none rejected), except ``expect_dead``
      (submission id -> text the dead letter's reason must contain): never accepted, never rejected;
    * every submission in the back office exactly once (``delivered``: id -> count), none unknown;
    * the store holds exactly one message per submission, all ACKNOWLEDGED (or DEAD as expected).
    """
    verdict = Verdict()
    expect_dead = {k.lower(): v for k, v in (expect_dead or {}).items()}
    ids = {s.submission_id.lower() for s in sent}
    for s in sent:
        sid = s.submission_id.lower()
        seen = outcomes(sandbox, s)
        if sid in expect_dead:
            if seen:
                verdict.fail(f"{sid}: dead letter expected, but upstream shows {seen}")
            if delivered.get(sid):
                verdict.fail(f"{sid}: dead letter expected, but delivered {delivered[sid]}x")
            continue
        if seen != [ACCEPT]:
            verdict.fail(f"{sid}: upstream outcome {seen}, expected exactly one {ACCEPT}")
        if delivered.get(sid, 0) != 1:
            verdict.fail(f"{sid}: delivered {delivered.get(sid, 0)}x to the back office, expected 1")
    for sid in sorted(set(delivered) - ids):
        verdict.fail(f"{sid}: delivered but never sent")
    for name in leftovers:
        verdict.fail(f"leftover temporary entry in the adapter directory: {name}")

    messages = await store_messages(store)
    per_submission = Counter(m.envelope.source.reference.lower() for m in messages)
    for sid, count in sorted(per_submission.items()):
        if count != 1:
            verdict.fail(f"{sid}: {count} messages in the store")
    for sid in sorted(ids - set(per_submission)):
        verdict.fail(f"{sid}: not in the store")
    attempts: Counter[int] = Counter()
    for m in messages:
        sid = m.envelope.source.reference.lower()
        state = m.envelope.state
        attempts[m.envelope.attempts] += 1
        if sid in expect_dead:
            if state is not MessageState.DEAD:
                verdict.fail(f"{sid}: state {state.value}, expected dead")
            elif expect_dead[sid] not in (m.last_error or ""):
                verdict.fail(f"{sid}: dead letter reason {m.last_error!r} lacks {expect_dead[sid]!r}")
        elif state is not MessageState.ACKNOWLEDGED:
            verdict.fail(f"{sid}: stuck in state {state.value} (ack {m.envelope.ack.value})")
    reasons: Counter[str] = Counter()
    for m in messages:
        for record in await store.audit_trail(m.envelope.id):
            text = record.reason
            if "already delivered" in text:
                reasons["redelivery recognised by the adapter"] += 1
            if "reconciled" in text:
                reasons["ack reconciled after 409"] += 1
    verdict.stats = {
        "messages": len(messages),
        "delivery_attempts_histogram": dict(sorted(attempts.items())),
        **dict(reasons),
    }
    return verdict


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
