from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway_webhook.status import reference_from, retry_after_seconds, status_text

NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("", None),
        ("0", 0),
        (" 90 ", 90),
        ("99999999999999", 10**9),
        ("Tue, 24 Nov 2026 12:02:00 GMT", 120),
        ("Tue, 24 Nov 2026 11:00:00 GMT", 0),  # in the past: now
        ("-5", None),
        ("1.5", None),
        ("tomorrow", None),
    ],
)
def test_retry_after(value: str | None, seconds: int | None) -> None:
    assert retry_after_seconds(value, now=NOW) == seconds


@pytest.mark.parametrize(
    ("body", "content_type", "location", "reference"),
    [
        (b'{"id": "V-1"}', "application/json; charset=utf-8", None, "V-1"),
        (b'{"id": "V-1"}', "text/plain", "/v/2", "/v/2"),  # not JSON: body ignored
        (b'{"id": true}', "application/json", None, None),
        (b'{"id": "a\\nb"}', "application/json", "/v/3", "/v/3"),  # control characters: not an id
        (b'{"id": "' + b"x" * 300 + b'"}', "application/json", None, None),
        (b"[1]", "application/json", None, None),
        (b"{broken", "application/json", None, None),
        (None, "", "https://fv.example/vorgang/7", "https://fv.example/vorgang/7"),
    ],
)
def test_reference(body: bytes | None, content_type: str, location: str | None, reference: str | None) -> None:
    assert reference_from(body, content_type, location) == reference


def test_status_text_uses_standard_phrases_only() -> None:
    assert status_text(418) == "HTTP 418 I'm a Teapot"
    assert status_text(299) == "HTTP 299"


def test_classify_passes_retry_after_as_number() -> None:
    from gateway_webhook.status import classify

    result = classify(429, "120", None)
    assert result.retry_after == 120.0
    assert classify(503, None, None).retry_after is None
    assert classify(200, "120", None).retry_after is None
