from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from adapters.blobdir import make_context
from adapters.pki import make_pki
from gateway.errors import ConfigErrors
from gateway_webhook import WebhookAdapter, create

URL = "https://fachverfahren.example/inbox"


@pytest.mark.parametrize(
    ("options", "key", "reason_part"),
    [
        ({}, "url", "required"),
        ({"url": 5}, "url", "must be a string"),
        ({"url": "ftp://host/x"}, "url", "http:// or https://"),
        ({"url": "/relative"}, "url", "http:// or https://"),
        ({"url": "https://user:pw@host/x"}, "url", "credentials"),
        ({"url": "https://host/x#frag"}, "url", "fragment"),
        (
            {"url": URL, "fromat": "json"},
            "fromat",
            "unknown key (known: auth_token, ca_file, client_cert, client_key, connect_timeout, "
            "format, headers, max_connections, max_inline_bytes, timeout, url)",
        ),
        ({"url": URL, "format": "xml"}, "format", "must be 'json' or 'multipart'"),
        ({"url": URL, "max_inline_bytes": 0}, "max_inline_bytes", "integer between 1"),
        ({"url": URL, "max_inline_bytes": "10MB"}, "max_inline_bytes", "expected int, got str"),
        ({"url": URL, "timeout": 0}, "timeout", "greater than 0"),
        ({"url": URL, "timeout": True}, "timeout", "expected float, got bool"),
        ({"url": URL, "timeout": "30"}, "timeout", "expected float, got str"),
        ({"url": URL, "timeout": 5, "connect_timeout": 10}, "connect_timeout", "not be larger than timeout"),
        ({"url": URL, "max_connections": 0}, "max_connections", "integer between 1"),
        ({"url": URL, "max_connections": 2.5}, "max_connections", "expected int, got float"),
        ({"url": URL, "headers": "X-A: b"}, "headers", "table"),
        ({"url": URL, "headers": {"Bad Name": "x"}}, "headers.Bad Name", "header name"),
        ({"url": URL, "headers": {"X-A": "a\r\nInjected: yes"}}, "headers.X-A", "control characters"),
        ({"url": URL, "headers": {"X-A": 1}}, "headers.X-A", "must be a string"),
        ({"url": URL, "headers": {"authorization": "Bearer x"}}, "headers.authorization", "auth_token"),
        ({"url": URL, "headers": {"Idempotency-Key": "x"}}, "headers.Idempotency-Key", "set by the adapter"),
        ({"url": URL, "headers": {"Content-Length": "1"}}, "headers.Content-Length", "set by the adapter"),
        ({"url": URL, "auth_token": "inline-secret"}, "auth_token", "must not be written inline"),
        ({"url": URL, "auth_token": {"file": "missing.txt"}}, "auth_token", "cannot read"),
        ({"url": URL, "auth_token": {"env": "GATEWAY_TEST_UNSET_VARIABLE"}}, "auth_token", "not set"),
        ({"url": URL, "auth_token": {"file": "bad-token.txt"}}, "auth_token", "not a valid bearer token"),
        ({"url": URL, "auth_token": {"file": "empty.txt"}}, "auth_token", "is empty"),
        ({"url": URL, "ca_file": "nope.pem"}, "ca_file", "file not found"),
        ({"url": URL, "ca_file": "garbage.pem"}, "ca_file", "cannot load CA"),
        ({"url": URL, "client_key": "pki/client.key"}, "client_key", "needs client_cert"),
        ({"url": URL, "client_cert": "pki/client.pem", "client_key": "pki/server.key"}, "client_cert", "cannot load"),
        ({"url": URL, "client_cert": "pki/client.pem"}, "client_cert", "cannot load"),  # key not in the file
        ({"url": "http://host/x", "ca_file": "pki/ca.pem"}, "ca_file", "need an https:// url"),
    ],
)
def test_bad_options(tmp_path: Path, options: dict[str, Any], key: str, reason_part: str) -> None:
    make_pki(tmp_path / "pki")
    (tmp_path / "bad-token.txt").write_text("two words\n")
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigErrors) as raised:
        create(make_context(tmp_path, production=False), options)
    (error,) = raised.value.errors
    assert error.key == key
    assert reason_part in error.reason
    assert "two words" not in str(raised.value)  # a secret is never echoed


def test_defaults_and_secret_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FV_TOKEN", "abc.DEF-123")
    adapter = create(make_context(tmp_path), {"url": URL, "auth_token": {"env": "FV_TOKEN"}})
    assert isinstance(adapter, WebhookAdapter)
    options = adapter.options
    assert options.format == "json"
    assert options.max_inline_bytes == 10 * 1024 * 1024
    assert options.timeout == 30.0
    assert options.connect_timeout == 10.0
    assert options.max_connections == 10
    assert options.auth_token == "abc.DEF-123"
    assert "abc.DEF-123" not in repr(adapter)  # the token never shows up in logs of the object
    assert adapter._session is None  # nothing opened before the loop runs a delivery


def test_connect_timeout_defaults_to_at_most_timeout(tmp_path: Path) -> None:
    adapter = create(make_context(tmp_path), {"url": URL, "timeout": 2})
    assert isinstance(adapter, WebhookAdapter)
    assert adapter.options.connect_timeout == 2.0


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://fachverfahren.intern/inbox", False),
        ("http://127.0.0.1:8080/inbox", True),
        ("http://[::1]:8080/inbox", True),
        ("http://localhost/inbox", True),
        ("https://fachverfahren.intern/inbox", True),
    ],
)
def test_production_refuses_plain_http_except_loopback(tmp_path: Path, url: str, allowed: bool) -> None:
    ctx = make_context(tmp_path, production=True)
    if allowed:
        create(ctx, {"url": url})
    else:
        with pytest.raises(ConfigErrors) as raised:
            create(ctx, {"url": url})
        (error,) = raised.value.errors
        assert error.key == "url"
    create(make_context(tmp_path, production=False), {"url": url})  # fine outside production
