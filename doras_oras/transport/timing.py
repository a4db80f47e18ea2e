"""Time bounds of one transport call: its deadline and attempts (:class:`CallBudget`), and the
minimum throughput of a body (:class:`ThroughputGuard`)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import Fix, TransferTimeoutError
from .failures import Stalled
from .policy import TransferPolicy


@dataclass
class CallBudget:
    """Attempts and deadline of one public call."""

    policy: TransferPolicy
    clock: Callable[[], float]
    deadline: float | None
    failures: int = 0

    def remaining_s(self) -> float | None:
        return None if self.deadline is None else self.deadline - self.clock()

    def check_deadline(self, what: str) -> None:
        left = self.remaining_s()
        if left is not None and left <= 0:
            raise TransferTimeoutError(f"{what}: overall deadline of the transfer passed", fix=Fix.DEADLINE)

    def timeouts(self) -> tuple[float, float]:
        connect, read = self.policy.connect_timeout_s, self.policy.read_timeout_s
        left = self.remaining_s()
        if left is not None:
            connect, read = max(0.01, min(connect, left)), max(0.01, min(read, left))
        return connect, read


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
