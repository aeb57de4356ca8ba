"""Full-jitter exponential backoff and when retrying stops."""

from __future__ import annotations

import random

import pytest

from gateway.config import RetryPolicy
from gateway.delivery.retry import after_transient_failure, backoff_ceiling, backoff_delay

POLICY = RetryPolicy("p", max_attempts=8, initial_delay=2.0, max_delay=300.0, max_age=3600.0)


def test_ceiling_doubles_then_caps() -> None:
    assert [backoff_ceiling(POLICY, n) for n in range(1, 10)] == [2, 4, 8, 16, 32, 64, 128, 256, 300]
    assert backoff_ceiling(POLICY, 0) == 2.0
    assert backoff_ceiling(POLICY, 10_000) == 300.0  # no overflow for absurd counts


def test_full_jitter_bounds_with_seeded_rng() -> None:
    rng = random.Random(20240601)
    for attempt in range(1, 25):
        ceiling = min(POLICY.max_delay, POLICY.initial_delay * 2 ** (attempt - 1))
        delays = [backoff_delay(POLICY, attempt, rng) for _ in range(400)]
        assert all(0.0 <= d <= ceiling for d in delays)
        # Full jitter: spread over the whole range, not bunched near the ceiling ("equal jitter").
        assert min(delays) < 0.05 * ceiling
        assert max(delays) > 0.95 * ceiling


def test_seeded_rng_is_reproducible() -> None:
    a = [backoff_delay(POLICY, 5, random.Random(7)) for _ in range(3)]
    b = [backoff_delay(POLICY, 5, random.Random(7)) for _ in range(3)]
    assert a == b


def test_retry_until_attempts_exhausted() -> None:
    rng = random.Random(1)
    for attempts in range(1, POLICY.max_attempts):
        decision = after_transient_failure(POLICY, attempts=attempts, age=0.0, rng=rng)
        assert decision.retry
        assert 0.0 <= decision.delay <= backoff_ceiling(POLICY, attempts)
    decision = after_transient_failure(POLICY, attempts=POLICY.max_attempts, age=0.0, rng=rng)
    assert not decision.retry
    assert decision.reason == "retries exhausted (8/8 attempts)"
    assert not after_transient_failure(POLICY, attempts=99, age=0.0, rng=rng).retry


@pytest.mark.parametrize("age", [3600.0, 3599.999, 10_000.0])
def test_retry_stops_at_max_age(age: float) -> None:
    # The next attempt would happen after max_age (any positive delay at 3599.999 s does).
    rng = random.Random(3)
    decision = after_transient_failure(POLICY, attempts=3, age=age, rng=rng)
    assert not decision.retry
    assert decision.reason == "maximum age 3600s exceeded"


def test_young_message_is_retried() -> None:
    decision = after_transient_failure(POLICY, attempts=1, age=10.0, rng=random.Random(3))
    assert decision.retry
    assert decision.reason == ""


def test_retry_after_extends_the_backoff_up_to_max_delay() -> None:
    rng = random.Random(5)
    # Attempt 1: jitter in [0, 2]; the Fachverfahren asked for 120 s.
    decision = after_transient_failure(POLICY, attempts=1, age=0.0, rng=rng, retry_after=120.0)
    assert decision.retry
    assert decision.delay == 120.0
    capped = after_transient_failure(POLICY, attempts=1, age=0.0, rng=rng, retry_after=10_000.0)
    assert capped.delay == POLICY.max_delay
    # A Retry-After shorter than the jittered delay does not shorten it.
    delays = [
        after_transient_failure(POLICY, attempts=7, age=0.0, rng=random.Random(s), retry_after=0.5).delay
        for s in range(50)
    ]
    assert all(0.5 <= d <= 300.0 for d in delays)
    assert max(delays) > 100.0
    # Retry-After counts against max_age like any delay.
    late = after_transient_failure(POLICY, attempts=1, age=3500.0, rng=rng, retry_after=200.0)
    assert not late.retry
    assert late.reason == "maximum age 3600s exceeded"
