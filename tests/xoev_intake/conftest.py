"""A real gateway over real HTTPS on 127.0.0.1 for the XÖV HTTP intake tests.

One gateway (runtime + aiohttp app + TCPSite with TLS and client CA) serves the whole session: the
validator's worker processes are started once. Its schema bundles are a small test standard written
here (a g2g-headed "Antrag" whose root admits an enveloped ds:Signature and the XÖV ``test``
attribute) plus, when ../shared is present, every shared bundle that has valid samples.
Certificates (CA, server, clients, XML signers) are generated per session.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import secrets
import socket
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.cli import build_ssl_context
from gateway.config import load_config
from gateway.http.app import create_app
from gateway.model import MessageState
from gateway.runtime import Runtime, build_runtime
from gateway.store.base import StoredMessage

ANTRAG_NS = "urn:example:gateway:antrag:1"
ANTRAG_ROOT = "antrag.Einreichen.0100"
DONE = {MessageState.ACKNOWLEDGED, MessageState.DELIVERED, MessageState.REJECTED, MessageState.DEAD}

ANTRAG_XSD = f"""<?xml version="1.0" encoding="UTF-8"?>
<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:a="{ANTRAG_NS}"
           targetNamespace="{ANTRAG_NS}" elementFormDefault="unqualified">
  <xs:element name="{ANTRAG_ROOT}">
    <xs:complexType>
      <xs:sequence>
        <xs:element name="nachrichtenkopf.g2g" type="a:Kopf"/>
        <xs:element name="antragsteller" type="xs:string"/>
        <xs:element name="betrag" type="xs:decimal"/>
        <xs:element name="art" type="a:Art"/>
        <xs:element name="anlage" type="xs:string" minOccurs="0" maxOccurs="unbounded"/>
        <xs:any namespace="http://www.w3.org/2000/09/xmldsig#" processContents="skip" minOccurs="0"/>
      </xs:sequence>
      <xs:attribute name="standard" type="xs:string"/>
      <xs:attribute name="version" type="xs:string"/>
      <xs:attribute name="test" type="xs:boolean"/>
    </xs:complexType>
  </xs:element>
  <xs:simpleType name="Art">
    <xs:restriction base="xs:token">
      <xs:enumeration value="neu"/>
      <xs:enumeration value="aenderung"/>
    </xs:restriction>
  </xs:simpleType>
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
    <xs:sequence>
      <xs:element name="kennung" type="xs:token"/>
    </xs:sequence>
  </xs:complexType>
</xs:schema>
"""


def antrag(
    *,
    message_uuid: str | None = None,
    author: str = "amt:0001",
    reader: str = "amt:0002",
    test: bool = False,
    betrag: str = "12.50",
    antragsteller: str = "Erika Mustermann",
    art: str = "neu",
    anlagen: tuple[str, ...] = (),
    extra_root_attributes: str = "",
) -> bytes:
    """A schema-valid message of the test standard (identified by the generic g2g plugin)."""
    test_attr = ' test="true"' if test else ""
    anlage = "".join(f"\n  <anlage>{a}</anlage>" for a in anlagen)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<a:{ANTRAG_ROOT} xmlns:a="{ANTRAG_NS}" standard="Testantrag" version="1.0"{test_attr}{extra_root_attributes}>
  <nachrichtenkopf.g2g>
    <identifikation.nachricht>
      <nachrichtenUUID>{message_uuid or uuid.uuid4()}</nachrichtenUUID>
      <erstellungszeitpunkt>2024-05-02T10:15:00+02:00</erstellungszeitpunkt>
    </identifikation.nachricht>
    <leser><kennung>{reader}</kennung></leser>
    <autor><kennung>{author}</kennung></autor>
  </nachrichtenkopf.g2g>
  <antragsteller>{antragsteller}</antragsteller>
  <betrag>{betrag}</betrag>
  <art>{art}</art>{anlage}
</a:{ANTRAG_ROOT}>
""".encode()


# -- PKI -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    cert_file: Path
    key_file: Path

    @property
    def fingerprint(self) -> str:
        return "sha256:" + self.cert.fingerprint(hashes.SHA256()).hex()


@dataclass(frozen=True)
class Pki:
    ca: Identity
    server: Identity
    clients: Mapping[str, Identity]  # CA-issued client certificates
    rogue: Identity  # a client certificate NOT issued by the CA
    signer: Identity  # trusted for XML signatures ([xoev] trusted_certs)
    stranger: Identity  # an XML signer nobody trusts

    def client_context(self, client: str | None = None, *, rogue: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca.cert_file))
        identity = self.rogue if rogue else (self.clients[client] if client else None)
        if identity is not None:
            context.load_cert_chain(identity.cert_file, identity.key_file)
        return context


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Gateway Tests"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _issue(
    directory: Path,
    label: str,
    cn: str,
    *,
    issuer: Identity | None = None,
    ca: bool = False,
    usage: x509.ObjectIdentifier | None = None,
    san: bool = False,
) -> Identity:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer.cert.subject if issuer else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    cert_file = directory / f"{label}.cert.pem"
    key_file = directory / f"{label}.key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return Identity(key, cert, cert_file, key_file)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = _issue(directory, "ca", "Gateway Test CA", ca=True)
    client_auth = ExtendedKeyUsageOID.CLIENT_AUTH
    return Pki(
        ca=ca,
        server=_issue(directory, "server", "localhost", issuer=ca, usage=ExtendedKeyUsageOID.SERVER_AUTH, san=True),
        clients={
            name: _issue(directory, name, name, issuer=ca, usage=client_auth)
            for name in ("portal-mtls", "portal-both", "intruder")
        },
        rogue=_issue(directory, "rogue", "portal-mtls", usage=client_auth),
        signer=_issue(directory, "signer", "Gemeinde Musterstadt Signatur"),
        stranger=_issue(directory, "stranger", "Unbekannt"),
    )


# -- bundles ----------------------------------------------------------------------------------------


def shared_catalog() -> tuple[Path, list[dict[str, Any]]] | None:
    env = os.environ.get("GATEWAY_SHARED_DIR")
    shared = (Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared") / "xoev"
    catalog = shared / "catalog.json"
    if not catalog.is_file():
        return None
    entries: list[dict[str, Any]] = json.loads(catalog.read_text("utf-8"))
    return shared, entries


def shared_bundles() -> list[dict[str, Any]]:
    """[[xoev.bundles]] for every shared set with valid samples (xdomea, XBeteiligung, XDatenfelder)."""
    found = shared_catalog()
    if found is None:
        return []
    shared, catalog = found
    bundles: dict[str, dict[str, Any]] = {}
    for item in catalog:
        if not any(r["valid"] for r in item["sample_results"]):
            continue
        name = item["set"]
        bundle = bundles.setdefault(name, {"name": name, "dir": str(shared / name), "entries": []})
        bundle["entries"].append(item["entry_xsd"][len(name) + 1 :])
    # an entry without samples of a kept set stays too: its roots are part of the standard
    for item in catalog:
        if item["set"] in bundles and item["entry_xsd"][len(item["set"]) + 1 :] not in bundles[item["set"]]["entries"]:
            bundles[item["set"]]["entries"].append(item["entry_xsd"][len(item["set"]) + 1 :])
    return list(bundles.values())


def valid_samples() -> list[str]:
    found = shared_catalog()
    if found is None:
        return []
    return [r["path"] for item in found[1] for r in item["sample_results"] if r["valid"]]


@pytest.fixture(scope="session")
def xoev_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("xoev-cache")


@pytest.fixture(scope="session")
def antrag_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("antrag-bundle")
    (directory / "antrag.xsd").write_text(ANTRAG_XSD, encoding="utf-8")
    return directory


# -- the gateway -----------------------------------------------------------------------------------


def toml_str(value: str | Path) -> str:
    return json.dumps(str(value))  # a JSON string is a TOML basic string


@dataclass
class Gateway:
    base_url: str
    runtime: Runtime
    tokens: dict[str, str]
    pki: Pki
    out_dir: Path
    sessions: dict[str, aiohttp.ClientSession] = field(default_factory=dict)

    def session(self, client: str | None = None, *, rogue: bool = False) -> aiohttp.ClientSession:
        key = "rogue" if rogue else (client or "")
        if key not in self.sessions:
            connector = aiohttp.TCPConnector(ssl=self.pki.client_context(client, rogue=rogue), force_close=True)
            self.sessions[key] = aiohttp.ClientSession(connector=connector)
        return self.sessions[key]

    def auth(self, sender: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[sender]}"} if sender else {}

    async def post(
        self,
        path: str,
        body: Any,
        *,
        sender: str | None = None,
        content_type: str | None = "application/xml",
        client: str | None = None,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> tuple[int, dict[str, Any], Mapping[str, str]]:
        all_headers = {**self.auth(sender), **(headers or {})}
        if content_type is not None:
            all_headers["Content-Type"] = content_type
        async with self.session(client).post(self.base_url + path, data=body, headers=all_headers, **kwargs) as resp:
            payload = await resp.read()
            return resp.status, json.loads(payload) if payload else {}, resp.headers

    async def get(
        self, path: str, *, sender: str | None = None, client: str | None = None
    ) -> tuple[int, dict[str, Any], Mapping[str, str]]:
        async with self.session(client).get(self.base_url + path, headers=self.auth(sender)) as resp:
            payload = await resp.read()
            return resp.status, json.loads(payload) if payload else {}, resp.headers

    async def settled(self, message_id: str, patience: float = 60.0) -> StoredMessage:
        """The message once it reached a resting state (delivered/acknowledged/rejected/dead)."""
        deadline = time.monotonic() + patience
        while True:
            stored = await self.runtime.store.get(message_id)
            assert stored is not None
            if stored.envelope.state in DONE or time.monotonic() > deadline:
                return stored
            await asyncio.sleep(0.05)

    def delivered(self, adapter: str, message_id: str) -> tuple[dict[str, Any], Path]:
        directory = self.out_dir / adapter / message_id
        manifest: dict[str, Any] = json.loads((directory / "manifest.json").read_text("utf-8"))
        return manifest, directory


SENDERS = """
[sources.portal.senders.portal-a]
token = {{ file = {a} }}
[sources.portal.senders.portal-b]
token = {{ file = {b} }}
[sources.portal.senders.strict]
token = {{ file = {strict} }}
authors = ["amt:0001"]
[sources.portal.senders.portal-mtls]
client_certificates = [{mtls}]
[sources.portal.senders.portal-both]
token = {{ file = {both} }}
client_certificates = [{both_cert}]
[sources.portal.senders.req]
token = {{ file = {req} }}
[sources.portal.senders.opt]
token = {{ file = {opt} }}
[sources.portal.senders.ign]
token = {{ file = {ign} }}
"""


def gateway_toml(
    work: Path,
    pki: Pki,
    bundles: list[dict[str, Any]],
    cache: Path,
    token_files: Mapping[str, Path],
    *,
    mode: str = "test",
    catalog_senders: int = 0,
    http_extra: tuple[str, ...] = (),
    portal_extra: tuple[str, ...] = (),
) -> str:
    lines = [
        "[gateway]",
        f'mode = "{mode}"',
        f"data_dir = {toml_str(work / 'var')}",
        "[http]",
        "max_body_bytes = 4_000_000",
        f"tls_cert = {toml_str(pki.server.cert_file)}",
        f"tls_key = {toml_str(pki.server.key_file)}",
        f"client_ca = {toml_str(pki.ca.cert_file)}",
        *http_extra,
        "[delivery]",
        "poll_interval = 0.05",
        "shutdown_grace = 5",
        "[xoev]",
        f"cache_dir = {toml_str(cache)}",
        "workers = 1",
        "max_depth = 64",
        "max_attribute_chars = 4096",
        f"trusted_certs = [{toml_str(pki.signer.cert_file)}]",
    ]
    for bundle in bundles:
        lines += ["[[xoev.bundles]]", f"name = {toml_str(bundle['name'])}", f"dir = {toml_str(bundle['dir'])}"]
        lines.append("entries = [" + ", ".join(toml_str(e) for e in bundle["entries"]) + "]")
    lines += [
        "[sources.portal]",
        'type = "xoev-http"',
        "max_body_bytes = 1_000_000",
        "max_attachments = 3",
        *portal_extra,
    ]
    lines.append(
        SENDERS.format(
            a=toml_str(token_files["portal-a"]),
            b=toml_str(token_files["portal-b"]),
            strict=toml_str(token_files["strict"]),
            mtls=toml_str(pki.clients["portal-mtls"].fingerprint),
            both=toml_str(token_files["portal-both"]),
            both_cert=toml_str(pki.clients["portal-both"].fingerprint),
            req=toml_str(token_files["req"]),
            opt=toml_str(token_files["opt"]),
            ign=toml_str(token_files["ign"]),
        )
    )
    for index in range(catalog_senders):
        lines += [
            f"[sources.portal.senders.catalog-{index}]",
            f"token = {{ file = {toml_str(token_files[f'catalog-{index}'])} }}",
        ]
    lines += [
        "[sources.behoerden]",
        'type = "xoev-http"',
        'path = "/xoev/behoerden"',
        "accept_test_messages = false",
        "[sources.behoerden.senders.amt-x]",
        f"token = {{ file = {toml_str(token_files['amt-x'])} }}",
    ]
    for adapter in ("inbox", "signed", "tests"):
        lines += [
            f"[adapters.{adapter}]",
            'type = "filesystem"',
            f"directory = {toml_str(work / 'out' / adapter)}",
            "fsync = false",
        ]
    for name, sender, policy in (
        ("sig-required", "req", "required"),
        ("sig-optional", "opt", "optional"),
        ("sig-ignored", "ign", "ignored"),
    ):
        lines += [
            "[[routes]]",
            f'name = "{name}"',
            'adapter = "signed"',
            f'signature = "{policy}"',
            "[routes.match]",
            f'sender = "{sender}"',
        ]
    lines += ["[[routes]]", 'name = "tests"', 'adapter = "tests"', "[routes.match]", "test = true"]
    lines += ["[[routes]]", 'name = "inbox"', 'adapter = "inbox"']
    lines += ["[routing]", 'test_route = "tests"']
    return "\n".join(lines) + "\n"


TOKEN_NAMES = ("portal-a", "portal-b", "strict", "portal-both", "req", "opt", "ign", "amt-x")


def write_config(
    work: Path,
    pki: Pki,
    bundles: list[dict[str, Any]],
    cache: Path,
    *,
    mode: str,
    catalog_senders: int,
    **extra: tuple[str, ...],
) -> tuple[Path, dict[str, str]]:
    """gateway.toml and one token file per sender; returns (config file, sender -> token)."""
    (work / "tokens").mkdir(parents=True, exist_ok=True)
    tokens: dict[str, str] = {}
    files: dict[str, Path] = {}
    for name in (*TOKEN_NAMES, *(f"catalog-{i}" for i in range(catalog_senders))):
        tokens[name] = secrets.token_urlsafe(24)
        files[name] = work / "tokens" / f"{name}.txt"
        files[name].write_text(tokens[name] + "\n", encoding="utf-8")
    config_file = work / "gateway.toml"
    text = gateway_toml(work, pki, bundles, cache, files, mode=mode, catalog_senders=catalog_senders, **extra)
    config_file.write_text(text, encoding="utf-8")
    return config_file, tokens


@asynccontextmanager
async def start_gateway(
    work: Path,
    pki: Pki,
    bundles: list[dict[str, Any]],
    cache: Path,
    *,
    mode: str = "test",
    catalog_senders: int = 0,
    **extra: tuple[str, ...],
) -> AsyncIterator[Gateway]:
    """A gateway on 127.0.0.1; ``http_extra``/``portal_extra``: more lines for [http] / [sources.portal]."""
    config_file, tokens = write_config(work, pki, bundles, cache, mode=mode, catalog_senders=catalog_senders, **extra)
    config = load_config(config_file)
    runtime = build_runtime(config)
    runner = web.AppRunner(create_app(runtime), access_log=None, shutdown_timeout=5)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound here: the port is known, nothing can take it meanwhile
    port = sock.getsockname()[1]
    site = web.SockSite(runner, sock, ssl_context=build_ssl_context(config))
    await site.start()
    gateway = Gateway(f"https://127.0.0.1:{port}", runtime, tokens, pki, work / "out")
    try:
        yield gateway
    finally:
        for session in gateway.sessions.values():
            await session.close()
        await runner.cleanup()


def all_bundles(antrag_bundle: Path) -> list[dict[str, Any]]:
    return [{"name": "antrag", "dir": str(antrag_bundle), "entries": ["antrag.xsd"]}, *shared_bundles()]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def gateway(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, antrag_bundle: Path, xoev_cache: Path
) -> AsyncIterator[Gateway]:
    work = tmp_path_factory.mktemp("gateway")
    async with start_gateway(
        work, pki, all_bundles(antrag_bundle), xoev_cache, catalog_senders=len(valid_samples())
    ) as gw:
        yield gw


# -- a loopback server that must never be contacted -------------------------------------------------
