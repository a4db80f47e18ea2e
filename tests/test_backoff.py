"""Backoff: the delay formula, jitter bounds, cap, attempt limit and Retry-After, never really sleeping."""

from __future__ import annotations

import email.utils
import random
import statistics

import pytest

from doras_oras.backoff import (
    DEFAULT_BASE_DELAY_S,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_DELAY_S,
    ExponentialBackoffWithJitter,
    backoff_delay,
    default_backoff,
    parse_retry_after,
)
from doras_oras.errors import BackoffExhausted


class FakeTime:
    """A clock that only moves when something sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def make(base: float = 0.1, cap: float = 60.0, attempts: int = 10, seed: int = 1) -> tuple[ExponentialBackoffWithJitter, FakeTime]:
    fake = FakeTime()
    strategy = ExponentialBackoffWithJitter(
        base_delay_s=base, max_delay_s=cap, max_attempts=attempts,
        sleep=fake.sleep, random=random.Random(seed), clock=fake.clock,
    )
    return strategy, fake


def test_formula_edges() -> None:
    assert backoff_delay(0, base_delay_s=1.0, max_delay_s=100, jitter=0.0) == 0.5
    assert backoff_delay(3, base_delay_s=1.0, max_delay_s=100, jitter=0.5) == 8.0
    assert backoff_delay(3, base_delay_s=1.0, max_delay_s=100, jitter=0.999) == pytest.approx(11.992)
    assert backoff_delay(10, base_delay_s=1.0, max_delay_s=100, jitter=0.0) == 100
    # no overflow for absurd attempt numbers
    assert backoff_delay(100_000, base_delay_s=0.5, max_delay_s=30, jitter=0.3) == 30
    with pytest.raises(ValueError):
        backoff_delay(0, base_delay_s=1, max_delay_s=1, jitter=1.0)
    with pytest.raises(ValueError):
        backoff_delay(-1, base_delay_s=1, max_delay_s=1, jitter=0.0)


def test_jitter_is_uniform_within_half_over_many_draws() -> None:
    base = 0.2
    for attempt in range(6):
        nominal = base * 2**attempt
        rng = random.Random(attempt)
        draws = [backoff_delay(attempt, base_delay_s=base, max_delay_s=1e9, jitter=rng.random())
                 for _ in range(20_000)]
        assert min(draws) >= nominal / 2
        assert max(draws) < nominal * 1.5
        # uniform on [n/2, 3n/2): mean n, both halves populated, spread ~ n/sqrt(12)
        assert statistics.fmean(draws) == pytest.approx(nominal, rel=0.02)
        assert statistics.pstdev(draws) == pytest.approx(nominal / 12**0.5, rel=0.03)
        assert min(draws) < nominal * 0.52 and max(draws) > nominal * 1.48


def test_wait_sleeps_growing_delays_capped_then_gives_up() -> None:
    strategy, fake = make(base=0.1, cap=2.0, attempts=8)
    for _ in range(8):
        strategy.wait()
    assert len(fake.sleeps) == 8
    for n, slept in enumerate(fake.sleeps):
        assert min(0.1 * 2**n / 2, 2.0) <= slept <= min(0.1 * 2**n * 1.5, 2.0)
    assert fake.sleeps[-1] == 2.0  # 0.1 * 2**7 / 2 = 6.4 > cap
    with pytest.raises(BackoffExhausted, match="8 retries"):
        strategy.wait()
    assert len(fake.sleeps) == 8  # no sleep when exhausted


def test_cap_holds_over_many_strategies() -> None:
    worst = 0.0
    for seed in range(300):
        strategy, fake = make(base=0.05, cap=1.5, attempts=12, seed=seed)
        for _ in range(12):
            strategy.wait()
        worst = max(worst, *fake.sleeps)
    assert worst == 1.5


def test_zero_attempts_exhausts_immediately() -> None:
    strategy, fake = make(attempts=0)
    with pytest.raises(BackoffExhausted):
        strategy.wait()
    assert fake.sleeps == []


def test_retry_after_replaces_the_delay_and_is_capped() -> None:
    strategy, fake = make(base=0.1, cap=30.0, attempts=5)
    assert strategy.wait(7.0) == 7.0
    assert strategy.wait(3600.0) == 30.0
    assert strategy.wait(-5.0) == 0.0
    assert fake.sleeps == [7.0, 30.0]  # a zero delay does not call sleep
    assert strategy.attempt == 3


def test_limit_truncates_a_sleep() -> None:
    strategy, fake = make(base=10.0, cap=60.0, attempts=5)
    assert strategy.wait(limit_s=0.25) == 0.25
    assert fake.sleeps == [0.25]
    assert strategy.now() == pytest.approx(1000.25)


def test_default_backoff_values_and_freshness() -> None:
    first, second = default_backoff(), default_backoff()
    assert first is not second
    assert (first.base_delay_s, first.max_delay_s, first.max_attempts) == (
        DEFAULT_BASE_DELAY_S, DEFAULT_MAX_DELAY_S, DEFAULT_MAX_ATTEMPTS) == (0.5, 30.0, 20)


def test_parse_retry_after_seconds() -> None:
    assert parse_retry_after("120", 0.0) == 120.0
    assert parse_retry_after(" 0 ", 0.0) == 0.0
    for junk in (None, "", "-3", "1.5", "soon", "١٢", "Mon, 99 Foo 2020 00:00:00 GMT"):
        assert parse_retry_after(junk, 0.0) is None, junk


def test_parse_retry_after_http_dates() -> None:
    now = 1_700_000_000.0
    later = email.utils.formatdate(now + 42, usegmt=True)  # IMF-fixdate
    assert parse_retry_after(later, now) == 42.0
    earlier = email.utils.formatdate(now - 42, usegmt=True)
    assert parse_retry_after(earlier, now) == 0.0
    # the obsolete forms RFC 9110 still asks recipients to accept
    assert parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", 784111767.0) == 10.0
    assert parse_retry_after("Sun Nov  6 08:49:37 1994", 784111767.0) == 10.0
