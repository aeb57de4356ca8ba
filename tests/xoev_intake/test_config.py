"""Configuration of the XÖV intake, checked at startup with the option's key: source options, [http] TLS,
[xoev] trusted certificates and outbound signing; the route signature policy on its own."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest

from gateway.assembly import plan_file
from gateway.cli import build_ssl_context, main
from gateway.config import Route, RouteMatch, load_config
from gateway.errors import ConfigError, ConfigErrors
from gateway.plugins import PluginHost
from gateway.routing import SIGNATURE_INVALID, SIGNATURE_REQUIRED, signature_refusal
from gateway.xoev.signatures import verify_policy
from gateway.xoev.subsystem import XoevSubsystem

from .conftest import Pki, antrag, toml_str

TOKEN = "0123456789abcdef-token"


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "token.txt").write_text(TOKEN + "\n")
    (tmp_path / "token2.txt").write_text(TOKEN + "\n")
    (tmp_path / "short.txt").write_text("short\n")
    path = tmp_path / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    return path


def base(antrag_bundle: Path, tmp_path: Path, xoev_extra: str = "") -> str:
    return f"""
[gateway]
data_dir = {toml_str(tmp_path / "var")}
[xoev]
cache_dir = {toml_str(tmp_path / "cache")}
{xoev_extra}
[[xoev.bundles]]
name = "antrag"
dir = {toml_str(antrag_bundle)}
entries = ["antrag.xsd"]
[adapters.a]
type = "filesystem"
directory = {toml_str(tmp_path / "out")}
[[routes]]
name = "all"
adapter = "a"
"""


def errors_of(path: Path) -> list[ConfigError]:
    """Every error of the file, as check-config and run see them."""
    return plan_file(path).reader.errors


SOURCE = '[sources.x]\ntype = "xoev-http"\n'
SENDER = '[sources.x.senders.s1]\ntoken = { file = "token.txt" }\n'


@pytest.mark.parametrize(
    ("options", "key", "reason"),
    [
        (SOURCE + "bogus = 1\n" + SENDER, "sources.x.bogus", "unknown key (known: accept_test_messages, "),
        (SOURCE, "sources.x.senders", "is required"),
        (SOURCE + "[sources.x.senders.s1]\nauthors = []\n", "sources.x.senders.s1", "needs a token"),
        (
            SOURCE + '[sources.x.senders.s1]\ntokn = "x"\n',
            "sources.x.senders.s1.tokn",
            "unknown key (known: authors, client_certificates, token)",
        ),
        (
            SOURCE + '[sources.x.senders."bad id"]\ntoken = { file = "token.txt" }\n',
            'sources.x.senders."bad id"',
            "sender id",
        ),
        (
            SOURCE + '[sources.x.senders.s1]\ntoken = "inline"\n',
            "sources.x.senders.s1.token",
            "must not be written inline",
        ),
        (
            SOURCE + '[sources.x.senders.s1]\ntoken = { file = "short.txt" }\n',
            "sources.x.senders.s1.token",
            "shorter than 16",
        ),
        (
            SOURCE + '[sources.x.senders.s1]\ntoken = { file = "missing.txt" }\n',
            "sources.x.senders.s1.token",
            "cannot read",
        ),
        (
            SOURCE + SENDER + '[sources.x.senders.s2]\ntoken = { file = "token2.txt" }\n',
            "sources.x.senders.s2.token",
            "same token",
        ),
        (
            SOURCE + '[sources.x.senders.s1]\nclient_certificates = ["md5:abcd"]\n',
            "sources.x.senders.s1.client_certificates[0]",
            "sha256:",
        ),
        (SOURCE + 'path = "/admin/xoev"\n' + SENDER, "sources.x.path", "collides"),
        (SOURCE + 'path = "xoev/in"\n' + SENDER, "sources.x.path", "absolute URL path"),
        (SOURCE + 'max_body_bytes = "1"\n' + SENDER, "sources.x.max_body_bytes", "expected int, got str"),
        (
            SOURCE + 'accept_test_messages = "yes"\n' + SENDER,
            "sources.x.accept_test_messages",
            "expected bool, got str",
        ),
        (
            SOURCE + SENDER + '[sources.y]\ntype = "xoev-http"\npath = "/xoev/x/messages"\n'
            '[sources.y.senders.s9]\ntoken = { file = "token2.txt" }\n',
            "sources.y.path",
            "already the path of source 'x'",
        ),
    ],
)
def test_source_option_errors(antrag_bundle: Path, tmp_path: Path, options: str, key: str, reason: str) -> None:
    errors = errors_of(write(tmp_path, base(antrag_bundle, tmp_path) + options))
    assert [(e.key, reason in e.reason) for e in errors] == [(key, True)], [e.render() for e in errors]
    assert TOKEN not in "".join(e.render() for e in errors)


def test_source_needs_the_xoev_table(tmp_path: Path) -> None:
    text = (
        f"""
[adapters.a]
type = "filesystem"
directory = {toml_str(tmp_path / "out")}
[[routes]]
name = "all"
adapter = "a"
"""
        + SOURCE
        + SENDER
    )
    (error,) = errors_of(write(tmp_path, text))
    assert (error.key, error.reason) == ("sources.x.type", "needs the [xoev] table (schema bundles) in gateway.toml")


def test_source_type_is_a_builtin_plugin() -> None:
    host = PluginHost.load(entry_points_enabled=False)
    assert "xoev-http" in host.source_types
    assert any(
        "xoev-http" in info.source_types for info in host.infos if info.name == "gateway.sources.xoev_http.source"
    )


# -- [http] TLS -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("http", "key", "reason"),
    [
        ("tls_cert = {cert}", "http.tls_key", "must be given together"),
        ("tls_key = {key}", "http.tls_cert", "must be given together"),
        ("client_ca = {ca}", "http.client_ca", "need TLS"),
        ('tls_cert = "missing.pem"\ntls_key = {key}', "http.tls_cert", "does not exist"),
    ],
)
def test_tls_options(pki: Pki, tmp_path: Path, http: str, key: str, reason: str) -> None:
    text = "[http]\n" + http.format(
        cert=toml_str(pki.server.cert_file), key=toml_str(pki.server.key_file), ca=toml_str(pki.ca.cert_file)
    )
    with pytest.raises(ConfigErrors) as info:
        load_config(write(tmp_path, text + "\n"))
    assert [(e.key, reason in e.reason) for e in info.value.errors] == [(key, True)]


def test_ssl_context(pki: Pki, tmp_path: Path) -> None:
    plain = load_config(write(tmp_path, "[http]\nport = 1\n"))
    assert build_ssl_context(plain) is None
    text = f"[http]\ntls_cert = {toml_str(pki.server.cert_file)}\ntls_key = {toml_str(pki.server.key_file)}\n"
    server_only = build_ssl_context(load_config(write(tmp_path, text)))
    assert server_only is not None
    assert server_only.verify_mode is ssl.CERT_NONE
    mutual = build_ssl_context(load_config(write(tmp_path, text + f"client_ca = {toml_str(pki.ca.cert_file)}\n")))
    assert mutual is not None
    assert mutual.verify_mode is ssl.CERT_OPTIONAL  # bearer-only senders connect without a certificate
    assert mutual.minimum_version >= ssl.TLSVersion.TLSv1_2
    # only client_ca is trusted for client certificates
    assert [c["subject"] for c in mutual.get_ca_certs()] == [
        ((("organizationName", "Gateway Tests"),), (("commonName", "Gateway Test CA"),))
    ]


def test_check_config_loads_the_tls_key(pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wrong_key = tmp_path / "wrong.key.pem"
    wrong_key.write_bytes(pki.stranger.key_file.read_bytes())  # not the certificate's key
    text = f"[http]\ntls_cert = {toml_str(pki.server.cert_file)}\ntls_key = {toml_str(wrong_key)}\n"
    path = write(tmp_path, text)
    assert main(["check-config", str(path)]) == 2
    assert "http.tls_cert: cannot load the certificate chain and key" in capsys.readouterr().err
    path.write_text(text.replace(toml_str(wrong_key), toml_str(pki.server.key_file)), encoding="utf-8")
    assert main(["check-config", str(path)]) == 0


# -- [xoev] trusted_certs and signing -------------------------------------------------------------------


def test_trusted_certs_and_signing(pki: Pki, antrag_bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "signing.key.pem").write_bytes(pki.signer.key_file.read_bytes())
    extra = f"""trusted_certs = [{toml_str(pki.signer.cert_file)}, {toml_str(pki.ca.cert_file)}]
[xoev.signing]
key = {{ file = "signing.key.pem" }}
cert = {toml_str(pki.signer.cert_file)}
"""
    plan = plan_file(write(tmp_path, base(antrag_bundle, tmp_path, extra)))
    assert plan.reader.errors == []
    xoev = plan.subsystems["xoev"]
    assert isinstance(xoev, XoevSubsystem)
    assert len(xoev.config.trusted_certs) == 2
    assert xoev.config.signing is not None
    assert "BEGIN" not in repr(xoev.config.signing)  # the key is a reference, read when signing
    signed = xoev.config.signing.sign(antrag())
    verdict = verify_policy(signed, "required", xoev.config.trusted_certs)
    assert (verdict.status, verdict.signer) == ("valid", "CN=Gemeinde Musterstadt Signatur,O=Gateway Tests")


@pytest.mark.parametrize(
    ("extra", "key", "reason"),
    [
        ('trusted_certs = ["token.txt"]', "xoev.trusted_certs[0]", "no readable X.509 certificate"),
        ('trusted_certs = "x.pem"', "xoev.trusted_certs", "expected list, got str"),
        ('[xoev.signing]\ncert = "x.pem"', "xoev.signing.key", "is required"),
        ('[xoev.signing]\nkey = "inline"\ncert = "x.pem"', "xoev.signing.key", "must not be written inline"),
        ('[xoev.signing]\nkey = { file = "token.txt" }\ncert = "missing.pem"', "xoev.signing.cert", "cannot read"),
    ],
)
def test_xoev_signature_options(antrag_bundle: Path, tmp_path: Path, extra: str, key: str, reason: str) -> None:
    errors = errors_of(write(tmp_path, base(antrag_bundle, tmp_path, extra)))
    assert [(e.key, reason in e.reason) for e in errors] == [(key, True)], errors


# -- the route signature policy on its own ----------------------------------------------------------------


def test_signature_refusal_reads_the_recorded_verdict() -> None:
    required = Route("r", "a", RouteMatch(), signature="required")
    optional = Route("o", "a", RouteMatch(), signature="optional")
    ignored = Route("i", "a", RouteMatch(), signature="ignored")
    valid = {"signature": {"status": "valid"}}
    invalid = {"signature": {"status": "invalid", "code": "tampered"}}
    nothing: dict[str, Any] = {}
    assert signature_refusal(required, valid) is None
    problem = signature_refusal(required, nothing)
    assert problem is not None
    assert (problem.type, problem.instance) == (SIGNATURE_REQUIRED, "signature")
    problem = signature_refusal(optional, invalid)
    assert problem is not None
    assert problem.type == SIGNATURE_INVALID
    assert problem.detail.endswith("(tampered)")
    assert signature_refusal(optional, nothing) is None
    assert signature_refusal(ignored, invalid) is None
    # a verdict code that is not a short token never reaches the problem detail
    odd = {"signature": {"status": "invalid", "code": "Max Mustermann <max@example.org>"}}
    problem = signature_refusal(required, odd)
    assert problem is not None
    assert "Mustermann" not in problem.detail
