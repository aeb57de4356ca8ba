"""Hostile event logs end to end: tokens signed with the real Zustelldienst key but carrying a foreign
issuer or a crafted key id are refused (invalid-event-log) before any key lookup they could steer;
the key-lookup URL builder refuses what is not one path segment even if a caller forgot to check.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from gateway.fitconnect.jose import b64url_encode, parse_jws
from gateway.fitconnect.sets import SUBMIT_SUBMISSION
from gateway.sources.fitconnect.client import ApiError, SubmissionApi, TokenProvider, error_summary
from gateway.sources.fitconnect.profile import PROFILES

from .subscriber_helpers import Gateway, e2e


def _signed(header: dict[str, Any], claims: dict[str, Any], key: RSAPrivateKey) -> str:
    signing_input = b64url_encode(json.dumps(header).encode()) + "." + b64url_encode(json.dumps(claims).encode())
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=64)
    return signing_input + "." + b64url_encode(key.sign(signing_input.encode(), pss, hashes.SHA512()))


def _resign_submit(gw: Gateway, case_id: str, submission_id: str, *, issuer: str | None, kid: str | None) -> None:
    """Replace the submit-submission SET by one with another iss/kid, signed with the REAL ZSD key."""
    zsd = gw.sandbox.sandbox.zsd
    events = gw.sandbox.sandbox.state.cases[case_id].events
    for index, record in enumerate(events):
        if record.event == SUBMIT_SUBMISSION and record.submission_id == submission_id:
            jws = parse_jws(record.token)
            claims = dict(jws.payload, iss=issuer or jws.payload["iss"])
            header = dict(jws.header, kid=kid or jws.header["kid"])
            events[index] = dataclasses.replace(record, token=_signed(header, claims, zsd.key))
            return
    raise AssertionError("no submit-submission event")


@pytest.mark.parametrize(
    ("issuer", "kid", "reason"),
    [
        ("https://evil.example", None, "neither the Zustelldienst nor a destination"),
        ("{base}/", None, "neither the Zustelldienst nor a destination"),  # not exactly the configured one
        ("{base}.evil.example", None, "neither the Zustelldienst nor a destination"),
        (None, "../../submissions", "not a valid SET (kid)"),
        (None, "..%2F..%2Fsubmissions", "not a valid SET (kid)"),
        (None, "abcdefgh\r\nX-Injected: 1", "not a valid SET (kid)"),
        ("{destination}", "a" * 40, "longer than 36"),  # a destination key id must fit the keyId path
    ],
    ids=["other-https", "trailing-slash", "suffix", "traversal", "percent", "crlf", "overlong-key-id"],
)
async def test_hostile_submit_event_is_refused(
    tmp_path: Path, fitconnect_shared: Path, issuer: str | None, kid: str | None, reason: str
) -> None:
    async with e2e(tmp_path, fitconnect_shared, start=False) as gw:
        sent = await gw.send()
        if issuer is not None:
            issuer = issuer.format(base=gw.sandbox.base_url, destination=gw.sandbox.destination_id)
        _resign_submit(gw, sent.case_id, sent.submission_id, issuer=issuer, kid=kid)
        await gw.start()
        event = await gw.outcome(sent)
        problems = event.payload["problems"]
        assert [p["type"].rsplit("/", 1)[-1] for p in problems] == ["invalid-event-log"], problems
        assert reason in problems[0]["detail"]
        if kid is not None:
            assert kid not in problems[0]["detail"]


@pytest.mark.parametrize("kid", ["../../submissions", "a/b", "..", "x?y=1", "a%2Fb", "k\x00", "ключ"])
async def test_key_lookup_url_refuses_what_is_not_one_segment(kid: str) -> None:
    # the port is closed: a request would fail as "request failed", the refusal comes before it
    api = SubmissionApi(
        base_url="http://127.0.0.1:9",
        profile=PROFILES["v1"],
        tokens_for=lambda session: TokenProvider(session, "http://127.0.0.1:9/token", "id", "secret"),
    )
    try:
        with pytest.raises(ApiError) as info:
            await api.get_destination_key("5b0d8a16-2e5f-4d0c-9d6c-9f1b7a3c2e01", kid)
        assert info.value.detail.startswith("refused")
        with pytest.raises(ApiError):
            await api.get_destination_key("../admin", "c66e4423-e28d-4a1f")
        for call in (
            api.get_submission(kid, limit=1),
            api.get_destination(kid),
            api.get_events(kid, limit=1, offset=0),
            api.post_event(kid, "a.b.c"),
        ):
            with pytest.raises(ApiError) as info:
                await call
            assert info.value.detail.startswith("refused")
        with pytest.raises(ApiError) as info:
            async with api.attachment("5b0d8a16-2e5f-4d0c-9d6c-9f1b7a3c2e01", kid):
                pass
        assert info.value.detail.startswith("refused")
    finally:
        await api.close()


@pytest.mark.parametrize("body", [b"boom\r\nfake_event=1", b'{"title": "a\\nb\\u0000c"}'])
def test_server_error_bodies_reach_log_lines_without_controls(body: bytes) -> None:
    summary = error_summary(body)
    assert not any(ord(c) < 0x20 for c in summary)
