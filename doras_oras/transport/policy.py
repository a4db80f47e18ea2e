"""The knobs that bound every transfer (:class:`TransferPolicy`), what a transfer cost
(:class:`ByteCounter`), how long to wait before the next attempt (:func:`retry_wait_s`),
and the protocol registry authentication answers (:class:`AuthHook`)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import requests

from ..backoff import next_delay
from ..errors import InvalidArgumentError

if TYPE_CHECKING:
    from .client import Transport

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


class AuthHook(Protocol):
    """Registry authentication as the transport sees it (see :mod:`doras_oras.auth`)."""

    def headers_for(self, url: str) -> Mapping[str, str]:
        """Headers (``Authorization``) to send with a request to ``url``; empty if none."""
        ...

    def on_unauthorized(self, url: str, response: requests.Response, transport: Transport) -> bool:
        """Handle a 401 from ``url``; True when new credentials make a retry worthwhile."""
        ...


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
    return next_delay(max(failures - 1, 0), base_delay_s=policy.wait_initial_s,
                      max_delay_s=policy.wait_max_s, jitter=min(rand(), 0.999999),
                      retry_after_s=retry_after_s, retry_after_max_s=policy.retry_after_max_s)
