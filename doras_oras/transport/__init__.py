"""The network layer: one :class:`Transport` for every registry and Doras request.

Modules, one job each:

- :mod:`.policy`: :class:`TransferPolicy` (the knobs), :class:`ByteCounter`, :func:`retry_wait_s`,
  :class:`RetryBudget` (the budget of a request chain and the one retry loop), the throughput floor;
- :mod:`.client`: :class:`Transport` (GET/HEAD with timeouts, redirects, retries, auth challenges;
  resumable downloads into a :class:`Sink`), the :class:`AuthHook` protocol;
- :mod:`.failures`: the one translation of ``requests``/``urllib3`` errors, unwanted answers,
  the caps of error bodies and the redirect statuses.
"""

from __future__ import annotations

from .client import AuthHook, Sink, Transport
from .failures import ERROR_BODY_CAP, REDIRECT_STATUSES
from .policy import RETRY_STATUSES, ByteCounter, RetryBudget, TransferPolicy, retry_wait_s

__all__ = [
    "ERROR_BODY_CAP",
    "REDIRECT_STATUSES",
    "RETRY_STATUSES",
    "AuthHook",
    "ByteCounter",
    "RetryBudget",
    "Sink",
    "TransferPolicy",
    "Transport",
    "retry_wait_s",
]
