"""Backoff: the one delay formula of doras-oras, and the strategy that polls the Doras server.

The delay before retry ``n`` (counting from 0) is ``base * 2**n``, moved
uniformly within ±half of itself (so within ``[base*2**n/2, 3*base*2**n/2)``)
and capped at ``max_delay_s``; :func:`backoff_delay` is that formula, pure.
A server's ``Retry-After`` replaces the computed delay, capped at its own
limit; :func:`next_delay` is the formula with that rule. Every wait of the
project uses it: polling the Doras server while it builds a delta
(:class:`ExponentialBackoffWithJitter`), retries of failed transfers
(:mod:`doras_oras.transport`) and waiting for the layout's lock.
After ``max_attempts`` waits the next :meth:`ExponentialBackoffWithJitter.wait`
raises :class:`~doras_oras.errors.BackoffExhausted`.

Sleep, clock and random source are injectable so tests never really sleep.
A strategy is stateful: every polling call takes a fresh one from a factory
(``Callable[[], BackoffStrategy]``), e.g. :func:`default_backoff`.
"""

from __future__ import annotations

import datetime
import email.utils
import logging
import math
import random as _random
import time
from collections.abc import Callable
from typing import Protocol

from .errors import BackoffExhausted, InvalidArgumentError

log = logging.getLogger(__name__)

DEFAULT_BASE_DELAY_S = 0.5
DEFAULT_MAX_DELAY_S = 30.0
DEFAULT_MAX_ATTEMPTS = 20


class BackoffStrategy(Protocol):
    """Waits between the attempts of one polling loop."""

    def wait(self, retry_after_s: float | None = None, *, limit_s: float | None = None) -> float:
        """Sleep before the next attempt and return the seconds slept.

        ``retry_after_s`` (a server's ``Retry-After``) replaces the computed
        delay; ``limit_s`` caps this one sleep (what is left of an overall
        deadline). Raise :class:`BackoffExhausted` when no attempt is left.
        """
        ...

    def now(self) -> float:
        """The strategy's monotonic clock, in seconds (for overall deadlines)."""
        ...


def backoff_delay(attempt: int, *, base_delay_s: float, max_delay_s: float, jitter: float) -> float:
    """The delay before retry ``attempt`` (0-based) for ``jitter`` in ``[0, 1)``.

    ``base * 2**attempt`` scaled by ``0.5 + jitter`` (uniform ±half), capped
    at ``max_delay_s``. Pure; never overflows for large ``attempt``.
    """
    if attempt < 0:
        raise InvalidArgumentError("attempt must be >= 0")
    if not 0.0 <= jitter < 1.0:
        raise InvalidArgumentError("jitter must be in [0, 1)")
    if base_delay_s <= 0.0:
        return 0.0
    # Past this exponent even the smallest jittered delay exceeds the cap.
    if attempt > 2 + math.log2(max(max_delay_s, base_delay_s) / base_delay_s):
        return max_delay_s
    nominal = base_delay_s * (2.0**attempt)
    return min(nominal * (0.5 + jitter), max_delay_s)


def next_delay(
    attempt: int,
    *,
    base_delay_s: float,
    max_delay_s: float,
    jitter: float,
    retry_after_s: float | None = None,
    retry_after_max_s: float | None = None,
) -> float:
    """The wait before retry ``attempt`` (0-based): a server's ``retry_after_s`` when given
    (never negative, at most ``retry_after_max_s``, default ``max_delay_s``), else
    :func:`backoff_delay`. Pure."""
    if retry_after_s is not None:
        cap = max_delay_s if retry_after_max_s is None else retry_after_max_s
        return min(max(retry_after_s, 0.0), cap)
    return backoff_delay(attempt, base_delay_s=base_delay_s, max_delay_s=max_delay_s, jitter=jitter)


def parse_retry_after(header: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header value, or ``None`` if absent/unparsable.

    Accepts delay-seconds (digits only) and an HTTP date; ``now`` is the
    current wall-clock time as a POSIX timestamp. A date in the past gives 0.
    """
    if header is None:
        return None
    text = header.strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        # RFC 9110: HTTP dates are always UTC.
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - now)


class ExponentialBackoffWithJitter:
    """Exponential backoff with uniform ±50 % jitter, a delay cap and an attempt limit."""

    def __init__(
        self,
        *,
        base_delay_s: float,
        max_delay_s: float,
        max_attempts: int,
        sleep: Callable[[float], None] = time.sleep,
        random: _random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if base_delay_s < 0 or max_delay_s < 0:
            raise InvalidArgumentError("delays must be >= 0")
        if max_attempts < 0:
            raise InvalidArgumentError("max_attempts must be >= 0")
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.max_attempts = max_attempts
        self.attempt = 0
        self._sleep = sleep
        self._random = random if random is not None else _random.Random()
        self._clock = clock

    def now(self) -> float:
        """The injected monotonic clock."""
        return self._clock()

    def next_delay(self, retry_after_s: float | None = None) -> float:
        """The delay the next :meth:`wait` would sleep (draws jitter; no state change)."""
        return next_delay(
            self.attempt,
            base_delay_s=self.base_delay_s,
            max_delay_s=self.max_delay_s,
            jitter=self._random.random(),
            retry_after_s=retry_after_s,
        )

    def wait(self, retry_after_s: float | None = None, *, limit_s: float | None = None) -> float:
        """Sleep before the next attempt; raise :class:`BackoffExhausted` when none is left."""
        if self.attempt >= self.max_attempts:
            raise BackoffExhausted(f"gave up after {self.max_attempts} retries")
        delay = self.next_delay(retry_after_s)
        if limit_s is not None:
            delay = min(delay, max(limit_s, 0.0))
        log.debug("backoff: waiting %.3f s (retry %d of %d)", delay, self.attempt + 1, self.max_attempts)
        self.attempt += 1
        if delay > 0:
            self._sleep(delay)
        return delay


def default_backoff() -> ExponentialBackoffWithJitter:
    """A fresh strategy with the device defaults: base 0.5 s, cap 30 s, 20 retries.

    The Go client uses 50 ms, 1 min and 10 retries (about 50 s in total);
    these defaults wait about 7.5 minutes in total before giving up, fit for
    large deltas built on a busy server, and never wait more than 30 s
    between two requests.
    """
    return ExponentialBackoffWithJitter(
        base_delay_s=DEFAULT_BASE_DELAY_S,
        max_delay_s=DEFAULT_MAX_DELAY_S,
        max_attempts=DEFAULT_MAX_ATTEMPTS,
    )
