"""End-to-end harness for the FIT-Connect subscriber: a real sandbox Zustelldienst, a real gateway.

The gateway is built with :func:`gateway.runtime.build_runtime` from a ``gateway.toml`` written into
the test's tmp dir (SQLite store, filesystem adapter) and served with :func:`gateway.http.app.create_app`
on a loopback port (callbacks need it). Senders are :class:`gateway_sandbox.online_service.sender.Sender`.

RSA-4096 keys are generated once per test process (module-level caches), not per test.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import json
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import aiohttp
from aiohttp import web

from gateway.config import load_config
from gateway.fitconnect.jose import auth_tag, encrypt_jwe
from gateway.fitconnect.keys import KeySetPaths, PrivateJWK, generate_key_set, load_public_jwk
from gateway.fitconnect.sets import EVENT_PREFIX
from gateway.http.app import create_app
from gateway.model import MessageState
from gateway.runtime import Runtime, build_runtime
from gateway.sources.fitconnect import subsystem as options_module  # where key files are loaded
from gateway.store.base import StoredMessage
from gateway_sandbox.online_service.sender import (
    Breakage,
    OutgoingAttachment,
    Sender,
    SenderQuirks,
    SentSubmission,
    prepare_submission,
)
from gateway_sandbox.testing import (
    BAU_SCHEMA,
    BAU_SERVICE,
    GEWERBE_SCHEMA,
    GEWERBE_SERVICE,
    DecodedEvent,
    RunningSandbox,
    SandboxKeys,
    generate_sandbox_keys,
    running_sandbox,
)

REPO = Path(__file__).resolve().parents[2]
DEMO_SCHEMAS = REPO / "schemas" / "demo"
GEWERBE_DATA = (DEMO_SCHEMAS / "examples" / "gewerbeanmeldung.json").read_bytes()
BAU_DATA = (DEMO_SCHEMAS / "examples" / "bauantrag.xml").read_bytes()
PDF = b"%PDF-1.4\n% demo attachment\n" + bytes(range(256)) * 8 + b"\n%%EOF\n"
ACCEPT = EVENT_PREFIX + "accept-submission"
REJECT = EVENT_PREFIX + "reject-submission"
PROBLEM = "https://schema.fitko.de/fit-connect/events/problems/"

__all__ = [
    "ACCEPT",
    "BAU_DATA",
    "BAU_SCHEMA",
    "BAU_SERVICE",
    "GEWERBE_DATA",
    "GEWERBE_SCHEMA",
    "GEWERBE_SERVICE",
    "PDF",
    "PROBLEM",
    "REJECT",
    "Breakage",
    "Gateway",
    "OutgoingAttachment",
    "SenderQuirks",
    "e2e",
]


def _tempdir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, True)
    return path


@functools.lru_cache(maxsize=1)
def sandbox_keys() -> SandboxKeys:
    """The sandbox destination's keys (+ the Zustelldienst's), generated once per test process."""
    return generate_sandbox_keys(_tempdir("fc-sandbox-keys-"))


@functools.lru_cache(maxsize=1)
def rollover_keys() -> KeySetPaths:
    """A second encryption (and signing) key pair for the destination: key rollover tests."""
    return generate_key_set("rollover", _tempdir("fc-rollover-keys-"))


async def eventually(predicate: Callable[[], Any], *, within: float = 20.0, what: str = "condition") -> None:
    """Wait until ``predicate()`` (sync or async) is truthy."""
    deadline = time.monotonic() + within
    for _ in range(1_000_000):
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


_LOADED_KEYS: dict[str, PrivateJWK] = {}


@contextmanager
def cached_key_loading() -> Iterator[None]:
    """Each JWK file is loaded (and its RSA-4096 key checked, ~0.3 s) once per test process."""
    real = options_module.load_private_jwk

    def load(path: Any) -> PrivateJWK:
        if str(path) not in _LOADED_KEYS:
            _LOADED_KEYS[str(path)] = real(path)
        return _LOADED_KEYS[str(path)]

    with mock.patch.object(options_module, "load_private_jwk", load):
        yield


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(type(value))


@dataclass
class Gateway:
    """A gateway configuration in ``tmp`` talking to ``sandbox``; start/stop as often as needed."""

    sandbox: RunningSandbox
    tmp: Path
    metadata_dir: Path
    options: dict[str, Any] = field(default_factory=dict)
    routes: str = '[[routes]]\nname = "all"\nadapter = "fs"\n'
    runtime: Runtime | None = None
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def name(self) -> str:
        return "fc"

    def source_options(self) -> dict[str, Any]:
        keys = self.sandbox.keys
        assert keys is not None
        secret = self.tmp / "client.secret"
        secret.write_text(self.sandbox.subscriber.client_secret)
        opts: dict[str, Any] = {
            "type": "fitconnect",
            "submission_api_url": self.sandbox.base_url,
            "token_url": self.sandbox.token_url,
            "client_id": self.sandbox.subscriber.client_id,
            "client_secret": {"file": str(secret)},
            "destination_id": self.sandbox.destination_id,
            "decryption_keys": [str(keys.encryption_private)],
            "signing_key": str(keys.signing_private),
            "allow_self_signed": True,
            "metadata_schema_dirs": [str(self.metadata_dir)],
            "data_schema_dirs": [str(DEMO_SCHEMAS)],
            "poll_interval": 0.1,
        }
        opts.update(self.options)
        return {k: v for k, v in opts.items() if v is not None}

    def write_config(self) -> Path:
        (self.tmp / "out").mkdir(exist_ok=True)
        lines = [
            "[gateway]",
            'mode = "test"',
            "[store]",
            'path = "var/gateway.db"',
            'blob_dir = "var/blobs"',
            "[http]",
            'host = "127.0.0.1"',
            f"port = {self.port}",
            "[delivery]",
            "poll_interval = 0.05",
            "lease_seconds = 30",
            "shutdown_grace = 2",
            "[adapters.fs]",
            'type = "filesystem"',
            'directory = "out"',
            f"[sources.{self.name}]",
        ]
        lines += [f"{k} = {_toml_value(v)}" for k, v in self.source_options().items()]
        path = self.tmp / "gateway.toml"
        path.write_text("\n".join(lines) + "\n" + self.routes)
        return path

    async def start(self, *, before_start: Callable[[Runtime], None] | None = None) -> Runtime:
        assert self.runtime is None
        if not self.port:
            self.port = free_port()
        with cached_key_loading():
            runtime = build_runtime(load_config(self.write_config()))
        if before_start is not None:
            before_start(runtime)
        app = create_app(runtime)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self.runtime = runtime
        return runtime

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = None
        self.runtime = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def source(self) -> Any:
        assert self.runtime is not None
        return self.runtime.sources[self.name]

    async def stored(self, submission_id: str) -> StoredMessage | None:
        assert self.runtime is not None
        return await self.runtime.store.find_by_source(self.name, submission_id)

    async def wait_stored(
        self, submission_id: str, states: Sequence[MessageState] | None = None, within: float = 20.0
    ) -> StoredMessage:
        deadline = time.monotonic() + within
        while True:
            found = await self.stored(submission_id)
            if found is not None and (states is None or found.envelope.state in states):
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"submission not stored in {states}: {found and found.envelope.state}")
            await asyncio.sleep(0.02)

    # -- sending ---------------------------------------------------------------------------------------

    def sender(self) -> Sender:
        creds = self.sandbox.sender
        return Sender(self.sandbox.base_url, self.sandbox.token_url, creds.client_id, creds.client_secret)

    async def send(
        self,
        *,
        service: str = GEWERBE_SERVICE,
        data: bytes | None = GEWERBE_DATA,
        schema: str | None = None,
        mime: str | None = None,
        attachments: Sequence[OutgoingAttachment] = (),
        version: str = "1.0.0",
        quirks: SenderQuirks | None = None,
        breakage: Breakage | None = None,
    ) -> SentSubmission:
        if schema is None:
            schema = BAU_SCHEMA if service == BAU_SERVICE else GEWERBE_SCHEMA
        if mime is None:
            mime = "application/xml" if service == BAU_SERVICE else "application/json"
        async with self.sender() as sender:
            return await sender.send(
                destination_id=self.sandbox.destination_id,
                service_identifier=service,
                service_name="Demo",
                data=data,
                data_schema_uri=schema if data is not None else None,
                data_mime_type=mime if data is not None else None,
                attachments=attachments,
                metadata_version=version,
                quirks=quirks or SenderQuirks(),
                breakage=breakage,
            )

    async def send_custom(
        self,
        edit_metadata: Callable[[dict[str, Any]], None],
        *,
        service: str = GEWERBE_SERVICE,
        data: bytes | None = GEWERBE_DATA,
        attachments: Sequence[OutgoingAttachment] = (),
        version: str = "1.0.0",
    ) -> SentSubmission:
        """Like :meth:`send`, with the metadata edited before encryption (cases no Breakage covers)."""
        async with self.sender() as sender:
            _destination, jwk = await sender.destination_key(self.sandbox.destination_id)
        recipient = load_public_jwk(jwk)
        schema = BAU_SCHEMA if service == BAU_SERVICE else GEWERBE_SCHEMA
        mime = "application/xml" if service == BAU_SERVICE else "application/json"
        prepared = prepare_submission(
            recipient=recipient,
            kid=jwk["kid"],
            service_identifier=service,
            service_name="Demo",
            data=data,
            data_schema_uri=schema if data is not None else None,
            data_mime_type=mime if data is not None else None,
            attachments=attachments,
            metadata_version=version,
        )
        edit_metadata(prepared.metadata)
        encrypted_metadata = encrypt_jwe(
            json.dumps(prepared.metadata).encode(), recipient, kid=jwk["kid"], cty="application/json"
        )
        base = self.sandbox.base_url + "/v1"
        headers = {"Authorization": f"Bearer {await self.sandbox.token(self.sandbox.sender)}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            create = {
                "destinationId": self.sandbox.destination_id,
                "announcedAttachments": prepared.announced_attachments,
                "serviceType": {"name": "Demo", "identifier": service},
            }
            async with http.post(f"{base}/submissions", json=create) as resp:
                assert resp.status == 201, await resp.text()
                created = await resp.json()
            sid, case_id = created["submissionId"], created["caseId"]
            for att in prepared.attachments:
                assert att.jwe is not None
                async with http.put(
                    f"{base}/submissions/{sid}/attachments/{att.attachment_id}",
                    data=att.jwe.encode(),
                    headers={"Content-Type": "application/jose"},
                ) as resp:
                    assert resp.status == 204, await resp.text()
            submit = {"encryptedMetadata": encrypted_metadata}
            if prepared.encrypted_data is not None:
                submit["encryptedData"] = prepared.encrypted_data
            async with http.put(f"{base}/submissions/{sid}", json=submit) as resp:
                assert resp.status == 202, await resp.text()
        prepared.cleanup()
        tags = dict(prepared.auth_tags, metadata=auth_tag(encrypted_metadata))
        return SentSubmission(sid, case_id, self.sandbox.destination_id, tags, prepared.metadata)

    # -- outcomes --------------------------------------------------------------------------------------

    async def outcome(self, sent: SentSubmission, within: float = 30.0) -> DecodedEvent:
        """The one accept-/reject-submission SET the sandbox recorded for ``sent`` (waits for it)."""
        deadline = time.monotonic() + within
        while True:
            found = [
                e
                for e in self.sandbox.events(sent.case_id)
                if e.event in (ACCEPT, REJECT) and e.claims["sub"] == f"submission:{sent.submission_id}"
            ]
            if found:
                assert len(found) == 1, [e.event_name for e in found]
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no outcome for {sent.submission_id}: {self.sandbox.events(sent.case_id)}")
            await asyncio.sleep(0.02)

    async def rejected_with(self, sent: SentSubmission) -> list[tuple[str, str | None]]:
        event = await self.outcome(sent)
        assert event.event == REJECT, f"expected a reject, got {event.event_name}"
        return [(p["type"].removeprefix(PROBLEM), p.get("instance")) for p in event.payload["problems"]]


@asynccontextmanager
async def e2e(tmp_path: Path, metadata_dir: Path, *, start: bool = True, **options: Any) -> AsyncIterator[Gateway]:
    """A sandbox plus a gateway whose ``fitconnect`` source has ``options`` (None removes one).

    With ``start=False`` the test sends (and tampers) first and calls ``gateway.start()`` itself, so
    the gateway cannot pick a submission up before the sandbox broke it.
    """
    async with running_sandbox(keys=sandbox_keys()) as sandbox:
        gateway = Gateway(sandbox, tmp_path, metadata_dir, dict(options))
        if start:
            await gateway.start()
        try:
            yield gateway
        finally:
            await gateway.stop()


# -- the memory-ceiling child process ----------------------------------------------------------------


def current_rss() -> int:
    import psutil

    rss: int = psutil.Process().memory_info().rss
    return rss


def peak_rss() -> int:
    # VmHWM: the high-water mark of this process's own address space. Not getrusage's ru_maxrss:
    # Linux folds the pre-exec image's high-water mark into it, so a child exec'ed from a large
    # parent (pytest after a thousand tests) would report the parent's size as its own peak.
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status")


async def _memory_child(config_path: Path, submission_id: str) -> dict[str, Any]:
    import gc

    runtime = build_runtime(load_config(config_path))
    gc.collect()
    baseline = current_rss()
    started = time.monotonic()
    await runtime.start()
    try:
        while True:
            stored = await runtime.store.find_by_source("fc", submission_id)
            if stored is not None and stored.envelope.state in (MessageState.ACKNOWLEDGED, MessageState.REJECTED):
                break
            if time.monotonic() - started > 300:
                raise AssertionError("the submission was not processed within 300 s")
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - started
    finally:
        await runtime.stop()
    sizes = [b.size for b in stored.envelope.attachments]
    return {
        "state": stored.envelope.state.value,
        "attachment_bytes": sizes,
        "baseline_rss": baseline,
        "peak_rss": peak_rss(),
        "seconds": elapsed,
    }


def memory_child_main() -> None:
    """``python -c 'from tests.fitconnect.subscriber_helpers import memory_child_main; memory_child_main()'
    CONFIG SUBMISSION_ID``: run a gateway until the submission is done, print RSS figures as JSON."""
    import sys

    result = asyncio.run(_memory_child(Path(sys.argv[1]), sys.argv[2]))
    print("RESULT " + json.dumps(result), flush=True)


async def run_memory_child(config_path: Path, submission_id: str) -> dict[str, Any]:
    import os
    import sys

    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "plugins"), os.environ.get("PYTHONPATH", "")])
    )
    code = "from tests.fitconnect.subscriber_helpers import memory_child_main; memory_child_main()"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        str(config_path),
        submission_id,
        cwd=str(REPO),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    text = out.decode("utf-8", "replace")
    lines = [line for line in text.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise AssertionError(f"memory child failed ({proc.returncode}):\n{text[-4000:]}")
    value: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))
    return value


def write_random_file(path: Path, size: int, chunk: int = 8 << 20) -> str:
    """``size`` bytes of random data (incompressible); returns the SHA-512 hex."""
    import hashlib
    import os

    digest = hashlib.sha512()
    with path.open("wb") as fh:
        left = size
        while left:
            block = os.urandom(min(chunk, left))
            digest.update(block)
            fh.write(block)
            left -= len(block)
    return digest.hexdigest()
