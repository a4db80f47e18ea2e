"""The knobs that bound every transfer (:class:`TransferPolicy`), what a transfer cost
(:class:`ByteCounter`), how long to wait before the next attempt (:func:`retry_wait_s`),
the retry budget of a request chain with the one retry loop (:class:`RetryBudget`), and
the minimum throughput of a body (:class:`ThroughputGuard`)."""

from __future__ import annotations

import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from ..backoff import next_delay
from ..errors import Fix, InvalidArgumentError, TransferTimeoutError, TransportError
from .failures import Retryable, Stalled, error_kwargs

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Statuses that are retried (with backoff) besides connection failures.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True, kw_only=True)
class TransferPolicy:
    """The knobs that bound every transfer (units in the names).

    ``min_bytes_per_s`` over ``throughput_window_s``: a body that delivers
    fewer bytes than ``min_bytes_per_s * throughput_window_s`` in any window
    of that length is abandoned (0 turns the check off). ``deadline_s`` bounds
    one :meth:`Transport.get` or :meth:`Transport.download` call, retries and
    waits included (``None``: no deadline). ``max_attempts`` counts
    consecutive failed attempts; an attempt of a download that advanced the
    file resets the count. ``retry_statuses`` are the HTTP statuses worth
    another attempt. With ``cross_host_redirects`` off, a redirect to another
    host or port is refused (:class:`InsecureTransportError`) instead of being
    followed without credentials.
    """

    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    min_bytes_per_s: float = 1024.0
    throughput_window_s: float = 60.0
    deadline_s: float | None = 3600.0
    max_attempts: int = 5
    wait_initial_s: float = 0.5
    wait_max_s: float = 30.0
    retry_after_max_s: float = 60.0
    max_redirects: int = 10
    allow_http: bool = False
    chunk_size: int = 64 * 1024
    retry_statuses: frozenset[int] = RETRY_STATUSES
    cross_host_redirects: bool = True

    def __post_init__(self) -> None:
        positive = {
            "connect_timeout_s": self.connect_timeout_s,
            "read_timeout_s": self.read_timeout_s,
            "throughput_window_s": self.throughput_window_s,
        }
        for name, value in positive.items():
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise InvalidArgumentError(f"TransferPolicy.{name} must be a positive number, not {value!r}")
        non_negative = {
            "min_bytes_per_s": self.min_bytes_per_s,
            "wait_initial_s": self.wait_initial_s,
            "wait_max_s": self.wait_max_s,
            "retry_after_max_s": self.retry_after_max_s,
        }
        for name, value in non_negative.items():
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise InvalidArgumentError(f"TransferPolicy.{name} must be a number >= 0, not {value!r}")
        if self.deadline_s is not None and not (
            math.isfinite(self.deadline_s) and self.deadline_s > 0
        ):
            raise InvalidArgumentError(f"TransferPolicy.deadline_s must be positive or None, not {self.deadline_s!r}")
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise InvalidArgumentError(f"TransferPolicy.max_attempts must be an integer >= 1, not {self.max_attempts!r}")
        if not isinstance(self.max_redirects, int) or self.max_redirects < 0:
            raise InvalidArgumentError(f"TransferPolicy.max_redirects must be an integer >= 0, not {self.max_redirects!r}")
        if not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise InvalidArgumentError(f"TransferPolicy.chunk_size must be an integer >= 1, not {self.chunk_size!r}")
        statuses = self.retry_statuses
        if not (isinstance(statuses, frozenset) and all(isinstance(x, int) and 400 <= x <= 599 for x in statuses)):
            raise InvalidArgumentError(f"TransferPolicy.retry_statuses must be a frozenset of 4xx/5xx codes, not {statuses!r}")


@dataclass
class ByteCounter:
    """What a transfer cost: body bytes received, requests sent, clean restarts.

    ``received`` counts every body byte read from the network by
    :meth:`Transport.download` (bytes later discarded by a restart included);
    ``resumed_from`` is the offset of the first ranged request, if any.
    """

    received: int = 0
    requests: int = 0
    restarts: int = 0
    resumed_from: int | None = None
    on_progress: Callable[[int], None] | None = field(default=None, repr=False)

    def add(self, n: int) -> None:
        self.received += n
        if self.on_progress is not None:
            self.on_progress(self.received)


def retry_wait_s(
    failures: int,
    policy: TransferPolicy,
    *,
    retry_after_s: float | None = None,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before the next attempt after ``failures`` failed ones (>= 1).

    The project's one formula (:func:`doras_oras.backoff.next_delay`): exponential from
    ``wait_initial_s`` with ±50 % jitter, capped at ``wait_max_s``; a server's
    ``Retry-After`` replaces it, capped at ``retry_after_max_s``.
    """
    return RetryBudget.of(policy, rand=rand).delay_s(failures, retry_after_s)


@dataclass(kw_only=True)
class RetryBudget:
    """The attempts, waits and deadline of one request chain, and the one retry loop (:meth:`run`).

    A chain is what one public operation sends: a resolve (``HEAD``, then a
    ``GET`` where the ``HEAD`` was no use), a manifest read, a blob download
    (its ranged resumes included). Every request of a chain draws on the same
    budget: at most ``attempts`` consecutive failed attempts in all, the
    waits between them from the one formula (``wait_initial_s`` doubling up
    to ``wait_max_s``, ±50 % jitter; a ``Retry-After`` capped at
    ``retry_after_max_s``), and no wait that would pass ``deadline`` (a
    :func:`time.monotonic` instant; ``None``: none). ``clock``, ``sleep`` and
    ``rand`` are injectable: tests assert waits without waiting.
    """

    attempts: int
    deadline: float | None
    wait_initial_s: float
    wait_max_s: float
    retry_after_max_s: float
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    rand: Callable[[], float] = random.random
    failures: int = 0
    waited_s: float = 0.0

    @classmethod
    def of(cls, policy: TransferPolicy, *, deadline: float | None = None,
           clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
           rand: Callable[[], float] = random.random) -> RetryBudget:
        """The budget ``policy`` gives a chain starting now (``deadline`` overrides ``policy.deadline_s``)."""
        if deadline is None and policy.deadline_s is not None:
            deadline = clock() + policy.deadline_s
        return cls(attempts=policy.max_attempts, deadline=deadline, wait_initial_s=policy.wait_initial_s,
                   wait_max_s=policy.wait_max_s, retry_after_max_s=policy.retry_after_max_s,
                   clock=clock, sleep=sleep, rand=rand)

    @property
    def spent(self) -> bool:
        """Whether the chain has no attempt left."""
        return self.failures >= self.attempts

    def remaining_s(self) -> float | None:
        return None if self.deadline is None else self.deadline - self.clock()

    def check_deadline(self, what: str) -> None:
        left = self.remaining_s()
        if left is not None and left <= 0:
            raise TransferTimeoutError(f"{what}: overall deadline of the transfer passed", fix=Fix.DEADLINE)

    def run(self, attempt: Callable[[], T], *, give_up: Callable[[Retryable], T] | None = None) -> T:
        """Call ``attempt`` until it returns, waiting after each :class:`Retryable` it raises.

        When the budget is spent (attempts or deadline) the last failure is raised as its
        :class:`TransportError`; with ``give_up`` a failure that carries an unread answer is
        handed to it instead (the caller reads the error status itself).
        """
        while True:
            try:
                return attempt()
            except Retryable as failure:
                try:
                    self.wait(failure)
                except TransportError:
                    if give_up is not None and failure.response is not None:
                        return give_up(failure)
                    raise
                if failure.response is not None:
                    failure.response.close()

    def delay_s(self, failures: int, retry_after_s: float | None = None) -> float:
        """The wait after ``failures`` failed attempts (>= 1): the project's one formula."""
        return next_delay(max(failures - 1, 0), base_delay_s=self.wait_initial_s, max_delay_s=self.wait_max_s,
                          jitter=min(self.rand(), 0.999999), retry_after_s=retry_after_s,
                          retry_after_max_s=self.retry_after_max_s)

    def wait(self, failure: Retryable) -> None:
        """Count ``failure``; sleep before the next attempt, or raise when none is left."""
        self.failures += 1
        if self.failures >= self.attempts:
            raise type(failure.error)(
                f"{failure.error.detail} (gave up after {self.failures} attempts)",
                **error_kwargs(failure.error),
            ) from failure.error
        wait = self.delay_s(self.failures, failure.retry_after_s)
        left = self.remaining_s()
        if left is not None and wait >= left:
            raise TransferTimeoutError(
                f"{failure.error.detail}; the next attempt would pass the overall deadline", fix=failure.error.fix,
            ) from failure.error
        log.info("attempt %d failed (%s); retrying in %.2f s", self.failures, failure.error, wait)
        self.waited_s += wait
        self.sleep(wait)


class ThroughputGuard:
    """Raises :class:`Stalled` when a body is slower than the policy's minimum over its window."""

    def __init__(self, policy: TransferPolicy, clock: Callable[[], float]) -> None:
        self.window_s = policy.throughput_window_s
        self.needed = policy.min_bytes_per_s * policy.throughput_window_s
        self.clock = clock
        self.total = 0
        self.samples: deque[tuple[float, int]] = deque([(clock(), 0)])

    def add(self, n: int) -> None:
        if self.needed <= 0:
            return
        now = self.clock()
        self.total += n
        if now - self.samples[-1][0] >= self.window_s / 16:
            self.samples.append((now, self.total))
        # samples[0] stays the newest sample at least one window old.
        while len(self.samples) > 1 and now - self.samples[1][0] >= self.window_s:
            self.samples.popleft()
        first_time, first_total = self.samples[0]
        if now - first_time >= self.window_s and self.total - first_total < self.needed:
            raise Stalled()
