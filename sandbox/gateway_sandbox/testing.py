"""Test helpers for FIT-Connect integrations: a real local Zustelldienst on a loopback port.

For vendors' and our own tests; nothing here is meant for production. Two ways to use it:

**pytest** (fixtures; needs ``pytest-asyncio``)::

    # conftest.py (top level)
    pytest_plugins = ["gateway_sandbox.testing"]

    # test_my_onlinedienst.py
    async def test_submit(fitconnect_sandbox):
        sb = fitconnect_sandbox
        token = await sb.token(sb.sender)                     # OAuth client credentials
        ...  # talk to sb.base_url + "/v1/..." like to the real Zustelldienst
        assert [e.event_name for e in sb.events(case_id)] == ["create-submission", "submit-submission"]
        sb.advance(14 * 86400)                                # automatic rejection after 14 days

**without pytest**::

    async with running_sandbox(tmp_path=Path("/tmp/x")) as sb:
        print(sb.base_url, sb.token_url, sb.sender.client_id, sb.sender.client_secret)

The way back (FIT-Connect replies): :meth:`RunningSandbox.online_service` gives a test online service
(:class:`~gateway_sandbox.online_service.replies.OnlineService`) that submits with its own reply key,
receives replies, decrypts and checks them and answers accept-reply or reject-reply;
:meth:`RunningSandbox.replies` shows each reply of a case with what the applicant received::

    async def test_reply(fitconnect_sandbox, fitconnect_applicant_key):
        async with fitconnect_sandbox.online_service(fitconnect_applicant_key) as applicant:
            sent = await applicant.submit(destination_id=..., service_identifier=..., data=..., data_schema_uri=...)
            ...  # the system under test answers in sent.case_id
            (received,) = await applicant.poll()
            assert received.accepted

The default configuration has one active destination (:data:`TEST_DESTINATION_ID`) with the two demo
services (Gewerbeanmeldung JSON, Bauantrag XML) in region ``DE09162000``, offering fitConnect replies
in :data:`REPLY_PROCESS_STANDARDS`, a subscriber client and a
sender client (``send:region:DE``), fast callback retries and ``http://`` callbacks allowed (test
receivers listen on loopback). Its key material (:class:`SandboxKeys`, RSA-4096, self-signed, TEST
ONLY) is generated once per pytest session: the private JWKs are there for the subscriber side of a
test (decrypting, signing accept/reject SETs).

PYTEST_DONT_REWRITE: this module raises plain ``AssertionError``s itself; the marker also lets a test
module name it in ``pytest_plugins`` after something else already imported it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway.fitconnect.jose import parse_jws
from gateway.fitconnect.keys import generate_key_set
from gateway.fitconnect.sets import EVENT_PREFIX
from gateway_sandbox.online_service.replies import ApplicantKey, OnlineService, ReplyBreakage
from gateway_sandbox.zustelldienst.app import create_sandbox_app
from gateway_sandbox.zustelldienst.appkeys import SANDBOX
from gateway_sandbox.zustelldienst.clock import SandboxClock
from gateway_sandbox.zustelldienst.config import (
    CallbackConfig,
    CallbackPolicy,
    ClientConfig,
    DestinationConfig,
    SandboxConfig,
    ServiceConfig,
    SubmissionSchema,
)
from gateway_sandbox.zustelldienst.reply_inspection import reply_view
from gateway_sandbox.zustelldienst.service import Sandbox
from gateway_sandbox.zustelldienst.state import CallbackFaults
from gateway_sandbox.zustelldienst.zsd_key import ZsdSigningKey, generate_private_key, load_or_create, write_private_key

TEST_DESTINATION_ID = "7e4c1f2a-8d3b-4e5f-9a6b-0c1d2e3f4a5b"
GEWERBE_SERVICE = "urn:de:fim:leika:leistung:99050012104000"
GEWERBE_SCHEMA = "https://schema.example.org/demo/gewerbeanmeldung/1.0.0/gewerbeanmeldung.schema.json"
BAU_SERVICE = "urn:de:fim:leika:leistung:99010003001006"
BAU_SCHEMA = "urn:example:demo:bauantrag:1.0"
TEST_REGION = "DE09162000"
SUBSCRIBER_CLIENT_ID = "subscriber-test"
SENDER_CLIENT_ID = "sender-test"
# What the default destination answers in over FIT-Connect (replyChannels.fitConnect.processStandards).
REPLY_PROCESS_STANDARDS = ("urn:xoev-de:bmk:standard:xbau_2.4", "urn:example:demo:antwort:1.0")


@dataclass(frozen=True)
class ClientCredentials:
    client_id: str
    client_secret: str = dataclasses.field(repr=False)
    scopes: tuple[str, ...] = ()


@dataclass(frozen=True)
class SandboxKeys:
    """TEST ONLY key material of the default destination plus the sandbox's own signing key."""

    directory: Path
    encryption_public: Path
    encryption_private: Path
    signing_public: Path
    signing_private: Path
    encryption_kid: str
    signing_kid: str
    zsd_key_file: Path  # PEM (PKCS#8) of the Zustelldienst's PS512 key

    def public_jwk(self, purpose: str) -> dict[str, Any]:
        path = self.encryption_public if purpose == "encryption" else self.signing_public
        value: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return value


def generate_sandbox_keys(directory: Path, destination_id: str = TEST_DESTINATION_ID) -> SandboxKeys:
    """Three RSA-4096 keys (destination encryption + signing, sandbox signing): a few seconds."""
    paths = generate_key_set(destination_id, directory, common_name="Sandbox test destination")
    zsd_key_file = directory / "zsd-signing.key.pem"
    write_private_key(generate_private_key(), zsd_key_file)
    return SandboxKeys(
        directory=directory,
        encryption_public=paths.encryption_public,
        encryption_private=paths.encryption_private,
        signing_public=paths.signing_public,
        signing_private=paths.signing_private,
        encryption_kid=paths.encryption_kid,
        signing_kid=paths.signing_kid,
        zsd_key_file=zsd_key_file,
    )


def default_config(
    keys: SandboxKeys,
    *,
    destination_callback: tuple[str, str] | None = None,
    **overrides: Any,
) -> SandboxConfig:
    """The default test configuration; ``overrides`` are :class:`SandboxConfig` fields."""
    destination = DestinationConfig(
        id=TEST_DESTINATION_ID,
        services=(
            ServiceConfig(GEWERBE_SERVICE, (TEST_REGION,), (SubmissionSchema(GEWERBE_SCHEMA, "application/json"),)),
            ServiceConfig(BAU_SERVICE, (TEST_REGION,), (SubmissionSchema(BAU_SCHEMA, "application/xml"),)),
        ),
        encryption_keys=(keys.public_jwk("encryption"),),
        signing_keys=(keys.public_jwk("signing"),),
        metadata_versions=("1.0.0", "2.1.0"),
        encryption_kid=keys.encryption_kid,
        callback=CallbackConfig(*destination_callback) if destination_callback else None,
        reply_channels={"fitConnect": {"processStandards": list(REPLY_PROCESS_STANDARDS)}},
        contact_information={
            "legalName": "Sandbox-Teststadt",
            "address": "Teststraße 1, 80331 München",
            "phone": "+49 89 0000000",
            "email": "sandbox@teststadt.example",
        },
    )
    fields: dict[str, Any] = {
        "destinations": (destination,),
        "clients": (
            ClientConfig(
                SUBSCRIBER_CLIENT_ID, "subscriber-test-secret", (f"subscribe:destination:{TEST_DESTINATION_ID}",)
            ),
            ClientConfig(SENDER_CLIENT_ID, "sender-test-secret", ("send:region:DE",)),
        ),
        "signing_key_file": keys.zsd_key_file,
        "allow_insecure_callbacks": True,
        "callbacks": CallbackPolicy(max_attempts=5, initial_delay=0.05, max_delay=1.0, timeout=5.0),
    }
    fields.update(overrides)
    return SandboxConfig(**fields)


@dataclass(frozen=True)
class DecodedEvent:
    header: dict[str, Any]
    claims: dict[str, Any]
    token: str

    @property
    def event(self) -> str:
        """The event URI (``https://schema.fitko.de/fit-connect/events/...``)."""
        event: str = next(iter(self.claims["events"]))
        return event

    @property
    def event_name(self) -> str:
        """The short name, e.g. ``submit-submission``."""
        return self.event.removeprefix(EVENT_PREFIX)

    @property
    def payload(self) -> dict[str, Any]:
        value: dict[str, Any] = self.claims["events"][self.event]
        return value


class RunningSandbox:
    """A started sandbox: URLs, credentials, clock control and direct views of its state."""

    def __init__(self, app: web.Application, base_url: str, keys: SandboxKeys | None) -> None:
        self.app = app
        self.base_url = base_url
        self.token_url = base_url + "/token"
        self.jwks_url = base_url + "/.well-known/jwks.json"
        self.keys = keys

    @property
    def sandbox(self) -> Sandbox:
        return self.app[SANDBOX]

    @property
    def config(self) -> SandboxConfig:
        return self.sandbox.config

    @property
    def clock(self) -> SandboxClock:
        return self.sandbox.clock

    @property
    def destination_id(self) -> str:
        """The first configured destination (the default config has exactly one)."""
        return next(iter(self.sandbox.state.destinations))

    def client(self, client_id: str) -> ClientCredentials:
        c = self.sandbox.state.clients[client_id]
        return ClientCredentials(c.id, c.secret, c.scopes)

    @property
    def subscriber(self) -> ClientCredentials:
        return self.client(SUBSCRIBER_CLIENT_ID)

    @property
    def sender(self) -> ClientCredentials:
        return self.client(SENDER_CLIENT_ID)

    def add_client(
        self, client_id: str, secret: str, scopes: tuple[str, ...] | list[str], destinations: tuple[str, ...] = ()
    ) -> ClientCredentials:
        self.sandbox.state.clients[client_id] = ClientConfig(client_id, secret, tuple(scopes), tuple(destinations))
        self.sandbox.save()
        return self.client(client_id)

    async def token(self, client: ClientCredentials | str, *, scope: str | None = None) -> str:
        """An access token from the real token endpoint (client_secret_post)."""
        creds = self.client(client) if isinstance(client, str) else client
        form = {"grant_type": "client_credentials", "client_id": creds.client_id, "client_secret": creds.client_secret}
        if scope is not None:
            form["scope"] = scope
        async with aiohttp.ClientSession() as http, http.post(self.token_url, data=form) as resp:
            body = await resp.json()
            if resp.status != 200:
                raise AssertionError(f"token request failed: {resp.status} {body}")
        token: str = body["access_token"]
        return token

    def advance(self, seconds: float) -> None:
        """Fast-forward the sandbox clock and run the timers that became due (auto-reject, deletion)."""
        self.sandbox.advance(seconds)

    def events(self, case_id: str) -> list[DecodedEvent]:
        """The case's event log, decoded (signatures are not checked here)."""
        out = []
        for record in self.sandbox.case(case_id).events:
            jws = parse_jws(record.token)
            out.append(DecodedEvent(jws.header, jws.payload, record.token))
        return out

    def submission_status(self, submission_id: str) -> str:
        return self.sandbox.submission(submission_id).status

    def set_destination_callback(self, url: str | None, secret: str = "") -> None:
        callback = CallbackConfig(url, secret) if url else None
        self.sandbox.update_destination(self.destination_id, callback=callback)

    def set_callback_faults(
        self, *, wrong_hmac: bool = False, stale_timestamp: bool = False, duplicate: bool = False
    ) -> None:
        self.sandbox.state.faults = CallbackFaults(wrong_hmac, stale_timestamp, duplicate)

    def tamper(self, case_id: str, submission_id: str, mode: str, part: str | None = None) -> None:
        """Fault injection, as ``POST /_sandbox/cases/{caseId}/tamper``."""
        self.sandbox.tamper(case_id, submission_id, mode, part)

    # -- the way back -----------------------------------------------------------------------------

    def online_service(
        self,
        key: ApplicantKey,
        *,
        process_standards: tuple[str, ...] = REPLY_PROCESS_STANDARDS,
        breakage: ReplyBreakage | None = None,
    ) -> OnlineService:
        """A test online service with the sender client's credentials (``async with`` it)."""
        creds = self.sender
        return OnlineService(
            self.base_url,
            self.token_url,
            creds.client_id,
            creds.client_secret,
            key=key,
            process_standards=process_standards,
            breakage=breakage,
        )

    def replies(self, case_id: str) -> list[dict[str, Any]]:
        """Every reply of the case: the Zustelldienst's record, its decoded events and, under
        ``received``, what the applicant received (as ``GET /_sandbox/cases/{caseId}/replies``)."""
        case = self.sandbox.case(case_id)
        found = sorted(
            (r for r in self.sandbox.state.replies.values() if r.case_id == case.id), key=lambda r: r.created_at
        )
        return [reply_view(self.sandbox, r) for r in found]

    def reply_status(self, reply_id: str) -> str:
        return self.sandbox.replies.reply(reply_id).status

    def tamper_reply(self, reply_id: str, mode: str, part: str | None = None) -> None:
        """Fault injection, as ``POST /_sandbox/replies/{replyId}/tamper``."""
        self.sandbox.replies.tamper(reply_id, mode, part)

    def offer_fitconnect_replies(self, process_standards: tuple[str, ...] | None = REPLY_PROCESS_STANDARDS) -> None:
        """Set what the destination offers: fitConnect replies in ``process_standards``, or (None) no
        reply channel at all."""
        channels = {"fitConnect": {"processStandards": list(process_standards)}} if process_standards else None
        self.sandbox.update_destination(self.destination_id, reply_channels=channels)

    def deliveries(self) -> list[dict[str, Any]]:
        """The callback delivery log (as ``GET /_sandbox/callbacks`` shows it)."""
        return self.sandbox.dispatcher.public_log()

    async def wait_for_deliveries(
        self, count: int, *, state: str | None = None, within: float = 15.0
    ) -> list[dict[str, Any]]:
        """Wait until at least ``count`` deliveries (optionally in ``state``) are logged."""
        deadline = time.monotonic() + within
        while True:
            found = [d for d in self.deliveries() if state is None or d["state"] == state]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} callback deliveries, have {self.deliveries()}")
            await asyncio.sleep(0.02)


_ZSD_KEYS: dict[tuple[Path, int], ZsdSigningKey] = {}


def _cached_zsd_key(path: Path) -> ZsdSigningKey:
    # Loading an RSA-4096 PEM checks the key (~0.2 s); tests start many sandboxes with the same file.
    cache_key = (path.resolve(), path.stat().st_mtime_ns)
    if cache_key not in _ZSD_KEYS:
        _ZSD_KEYS[cache_key] = load_or_create(None, path)
    return _ZSD_KEYS[cache_key]


@asynccontextmanager
async def running_sandbox(
    config: SandboxConfig | None = None,
    tmp_path: Path | None = None,
    *,
    keys: SandboxKeys | None = None,
    **overrides: Any,
) -> AsyncIterator[RunningSandbox]:
    """Start a sandbox on ``127.0.0.1:<free port>``; stop it on exit.

    Without ``config`` the default test configuration is used, with ``keys`` (or keys generated into
    ``tmp_path/keys``); ``overrides`` go to :func:`default_config`. A ``config`` without ``base_url``
    gets the actual loopback URL.
    """
    if config is None:
        if keys is None:
            if tmp_path is None:
                raise ValueError("running_sandbox needs config, keys or tmp_path (for generating keys)")
            keys = generate_sandbox_keys(tmp_path / "keys")
        config = default_config(keys, **overrides)
    elif overrides:
        config = dataclasses.replace(config, **overrides)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    base_url = config.base_url or f"http://127.0.0.1:{port}"
    zsd_key = _cached_zsd_key(config.signing_key_file) if config.signing_key_file and config.state_dir is None else None
    app = create_sandbox_app(dataclasses.replace(config, base_url=base_url), zsd_key=zsd_key)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        yield RunningSandbox(app, base_url, keys)
    finally:
        await runner.cleanup()
        sock.close()


# --------------------------------------------------------------------------------------------------
# pytest fixtures (``pytest_plugins = ["gateway_sandbox.testing"]``)

try:
    import pytest
    import pytest_asyncio
except ImportError:  # pragma: no cover - the helpers above work without pytest
    pass
else:

    @pytest.fixture(scope="session")
    def fitconnect_sandbox_keys(tmp_path_factory: pytest.TempPathFactory) -> SandboxKeys:
        """Key material for the default sandbox destination, generated once per session."""
        return generate_sandbox_keys(tmp_path_factory.mktemp("fitconnect-sandbox-keys"))

    @pytest.fixture(scope="session")
    def fitconnect_applicant_key() -> ApplicantKey:
        """The test online service's RSA-4096 reply key, generated once per session."""
        return ApplicantKey.generate()

    @pytest_asyncio.fixture
    async def fitconnect_sandbox(fitconnect_sandbox_keys: SandboxKeys) -> AsyncIterator[RunningSandbox]:
        """A fresh, in-memory sandbox with the default test configuration, per test."""
        async with running_sandbox(keys=fitconnect_sandbox_keys) as sb:
            yield sb
