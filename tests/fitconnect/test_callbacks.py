"""Callback HMAC: the documented test vector verbatim, freshness window and tampering."""

from __future__ import annotations

import json

import pytest

from gateway.fitconnect.callbacks import (
    CALLBACK_NEW_EVENTS,
    CALLBACK_NEW_SUBMISSIONS,
    sign_callback,
    verify_callback,
)

# FIT-Connect docs, receiving/notification example (digest §2.6), exact bytes.
SECRET = "insecure_unsafe_qHScgrg_kP-R31jHUwp3GkVkGJolvBchz65b74Lzue0"
TIMESTAMP = 1672527599
BODY = (
    b'{"type":"https://schema.fitko.de/fit-connect/submission-api/callbacks/new-submissions",'
    b'"submissionIds":["f39ab143-d91a-474a-b69f-b00f1a1873c2"],"submissions":[{"destinationId":'
    b'"d12caea8-f372-4eb1-b102-b0a228253a11","submissionId":"f39ab143-d91a-474a-b69f-b00f1a1873c2",'
    b'"caseId":"9eec7d3e-dc66-4f82-9f52-1520bf96a32e"}]}'
)
EXPECTED = (
    "2056b372b5bcec06d8f11ab79b84b42d6cbe1c8e1178cdfa36e4385dcf717758"
    "aaa7599f417d9ec3e079087884f4fd59680bf713621383e2d4414ef74fb10df3"
)


def test_documented_vector() -> None:
    assert sign_callback(SECRET, BODY, TIMESTAMP) == EXPECTED
    verdict = verify_callback(SECRET, str(TIMESTAMP), EXPECTED, BODY, now=TIMESTAMP + 12.5)
    assert (verdict.ok, verdict.reason) == (True, "ok")


def test_uris() -> None:
    assert json.loads(BODY)["type"] == CALLBACK_NEW_SUBMISSIONS
    assert CALLBACK_NEW_EVENTS.endswith("/callbacks/new-events")


def test_header_case_and_whitespace_tolerated() -> None:
    assert verify_callback(SECRET, f" {TIMESTAMP} ", EXPECTED.upper() + "\n", BODY, now=TIMESTAMP).ok


@pytest.mark.parametrize(
    ("now", "reason"),
    [
        (TIMESTAMP + 300, "ok"),
        (TIMESTAMP + 301, "stale"),
        (TIMESTAMP + 86400, "stale"),
        (TIMESTAMP - 300, "ok"),
        (TIMESTAMP - 301, "future"),
    ],
)
def test_freshness_window(now: int, reason: str) -> None:
    assert verify_callback(SECRET, str(TIMESTAMP), EXPECTED, BODY, now=now).reason == reason


def test_re_serialised_body_fails() -> None:
    reserialised = json.dumps(json.loads(BODY)).encode()  # same JSON, different bytes
    assert reserialised != BODY
    assert verify_callback(SECRET, str(TIMESTAMP), EXPECTED, reserialised, now=TIMESTAMP).reason == "bad-hmac"


@pytest.mark.parametrize(
    ("secret", "ts", "auth", "reason"),
    [
        ("wrong-secret-" + "x" * 32, str(TIMESTAMP), EXPECTED, "bad-hmac"),
        (SECRET, str(TIMESTAMP), EXPECTED[:-1] + "0", "bad-hmac"),
        (SECRET, str(TIMESTAMP), EXPECTED[:64], "bad-hmac"),
        (SECRET, str(TIMESTAMP), "zz" * 64, "bad-hmac"),
        (SECRET, str(TIMESTAMP + 1), EXPECTED, "bad-hmac"),  # timestamp is covered by the HMAC
        (SECRET, None, EXPECTED, "missing-headers"),
        (SECRET, str(TIMESTAMP), None, "missing-headers"),
        (SECRET, "", EXPECTED, "missing-headers"),
        (SECRET, "abc", EXPECTED, "bad-timestamp"),
        (SECRET, "-1672527599", EXPECTED, "bad-timestamp"),
        (SECRET, "1672527599.0", EXPECTED, "bad-timestamp"),
        (SECRET, "1" * 20, EXPECTED, "bad-timestamp"),
    ],
)
def test_refusals(secret: str, ts: str | None, auth: str | None, reason: str) -> None:
    verdict = verify_callback(secret, ts, auth, BODY, now=TIMESTAMP)
    assert (verdict.ok, verdict.reason) == (False, reason)
