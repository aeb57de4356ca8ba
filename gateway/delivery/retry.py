"""Retry policy: exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff
And Jitter"): ``delay = uniform(0, min(max_delay, initial * 2 ** (attempt - 1)))``. Full jitter
spreads the retries of many messages that failed together (e.g. a Fachverfahren outage)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from gateway.config import RetryPolicy


def backoff_ceiling(policy: RetryPolicy, attempt: int) -> float:
    exponent = min(max(attempt - 1, 0), 62)  # avoid float overflow for absurd attempt counts
    return float(min(policy.max_delay, policy.initial_delay * (2.0**exponent)))


def backoff_delay(policy: RetryPolicy, attempt: int, rng: random.Random | None = None) -> float:
    return (rng or random).uniform(0.0, backoff_ceiling(policy, attempt))


@dataclass(frozen=True, slots=True)
class RetryDecision:
    retry: bool
    delay: float
    reason: str


def after_transient_failure(
    policy: RetryPolicy,
    *,
    attempts: int,
    age: float,
    rng: random.Random | None = None,
    retry_after: float | None = None,
) -> RetryDecision:
    if attempts >= policy.max_attempts:
        return RetryDecision(False, 0.0, f"retries exhausted ({attempts}/{policy.max_attempts} attempts)")
    delay = backoff_delay(policy, attempts, rng)
    if retry_after is not None and retry_after > delay:
        # The Fachverfahren told us when it can take the message again (429/503 Retry-After);
        # honour it, but never beyond the policy's longest delay.
        delay = min(retry_after, policy.max_delay)
    if age + delay > policy.max_age:
        return RetryDecision(False, 0.0, f"maximum age {policy.max_age:.0f}s exceeded")
    return RetryDecision(True, delay, "")
