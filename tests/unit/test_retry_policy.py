"""Backoff: exponential, capped, with full jitter (anywhere from 0 to the ceiling)."""

from __future__ import annotations

import random

import pytest

from actors.model.retry_policy import RetryPolicy

DRAWS = 2000


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(1, 2.0), (2, 4.0), (3, 8.0), (8, 256.0), (9, 300.0), (50, 300.0), (5000, 300.0)],
)
def test_the_ceiling_doubles_up_to_the_cap(attempt: int, ceiling: float) -> None:
    assert RetryPolicy().ceiling_s(attempt) == ceiling  # base 2 s, cap 300 s; no overflow far out


@pytest.mark.parametrize("attempt", [1, 3, 12])
def test_full_jitter_spans_zero_to_the_ceiling(attempt: int) -> None:
    policy = RetryPolicy()
    ceiling = policy.ceiling_s(attempt)
    rng = random.Random(20261122)
    delays = [policy.delay_s(attempt, rng=rng) for _ in range(DRAWS)]
    assert all(0.0 <= delay <= ceiling for delay in delays)
    # Half-to-full jitter never goes below half the ceiling; full jitter often does.
    below_half = sum(delay < ceiling / 2 for delay in delays)
    assert 0.4 * DRAWS < below_half < 0.6 * DRAWS
    assert min(delays) < 0.05 * ceiling and max(delays) > 0.95 * ceiling


def test_without_a_generator_the_module_random_is_used() -> None:
    policy = RetryPolicy(base_delay_s=10.0, max_delay_s=60.0)
    delays = [policy.delay_s(4) for _ in range(DRAWS)]  # ceiling: min(60, 10 * 2**3) = 60
    assert all(0.0 <= delay <= 60.0 for delay in delays)
    assert any(delay < 30.0 for delay in delays)


def test_the_same_seed_gives_the_same_delays() -> None:
    policy = RetryPolicy()
    first = [policy.delay_s(n, rng=random.Random(7)) for n in range(1, 6)]
    again = [policy.delay_s(n, rng=random.Random(7)) for n in range(1, 6)]
    assert first == again


def test_no_delay_when_the_base_or_cap_is_zero() -> None:
    assert RetryPolicy(base_delay_s=0.0).delay_s(3) == 0.0
    assert RetryPolicy(max_delay_s=0.0).delay_s(3) == 0.0
