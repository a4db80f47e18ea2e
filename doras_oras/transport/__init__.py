"""The network layer: one :class:`Transport` for every registry and Doras request.

Modules, one job each:

- :mod:`.policy`: :class:`TransferPolicy` (the knobs), :class:`ByteCounter`, :func:`retry_wait_s`, :class:`AuthHook`;
- :mod:`.client`: :class:`Transport` (GET/HEAD with timeouts, redirects, retries, auth challenges);
- :mod:`.download`: resumable downloads into a blob writer (``Range``, restarts);
- :mod:`.timing`: the deadline of a call and the throughput floor of a body;
- :mod:`.failures`: the one translation of ``requests``/``urllib3`` errors, unwanted answers.
"""

from __future__ import annotations

from .client import Transport
from .download import Sink
from .failures import ERROR_BODY_CAP
from .policy import RETRY_STATUSES, AuthHook, ByteCounter, TransferPolicy, retry_wait_s

__all__ = [
    "ERROR_BODY_CAP",
    "RETRY_STATUSES",
    "AuthHook",
    "ByteCounter",
    "Sink",
    "TransferPolicy",
    "Transport",
    "retry_wait_s",
]
