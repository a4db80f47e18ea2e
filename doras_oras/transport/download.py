"""Resumable blob downloads: fill a :class:`Sink` (the layout's blob writer) from a URL.

:func:`download` sends ``Range: bytes=N-`` when the sink already holds ``N``
bytes (a partial file a dropped link or a killed run left), restarts the sink
cleanly from zero when the server does not honour the range, stops reading at
the expected size, and retries drops and stalls under the transport's policy.
The sink hashes what it is given; :meth:`Sink.finish` checks size and digest
at the end. The transport never writes a file itself.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

import requests

from ..errors import (
    ConnectError,
    DigestMismatchError,
    InvalidArgumentError,
    RegistryError,
    SizeMismatchError,
    TransferTimeoutError,
)
from ..urls import parse_content_range, safe_url
from .failures import NETWORK_ERRORS, Retryable, Stalled, translate
from .policy import ByteCounter
from .timing import CallBudget, ThroughputGuard

if TYPE_CHECKING:
    from .client import Transport

log = logging.getLogger(__name__)


class Sink(Protocol):
    """Where a download goes (a :class:`~doras_oras.layout.writer.BlobWriter`)."""

    digest: str | None
    size: int | None
    offset: int

    def write(self, data: bytes, /) -> int:
        """Append ``data`` (a local failure raises a non-network error: it is not retried)."""
        ...

    def restart(self) -> None:
        """Empty the sink: the next bytes written are the blob's first."""
        ...

    def discard(self) -> None:
        """Drop what the sink holds (the server lied about the blob)."""
        ...

    def finish(self) -> str:
        """Check size and digest (discarding on a mismatch); return the digest."""
        ...


def download(
    transport: Transport,
    url: str,
    sink: Sink,
    *,
    headers: Mapping[str, str] | None = None,
    counter: ByteCounter | None = None,
    deadline: float | None = None,
    exact_length: bool = False,
) -> str:
    """Fill ``sink`` with the blob at ``url`` (resuming from ``sink.offset``); return its digest.

    The sink's ``size`` must be known. On a digest or size mismatch the sink is discarded and
    :class:`DigestMismatchError`/:class:`SizeMismatchError` is raised (not retried). Transfer
    failures after the policy's retries raise :class:`~doras_oras.errors.TransportError` and
    leave the sink as it is (a partial file for the next run). With ``exact_length`` the server
    must agree with the descriptor: a ``Content-Length`` other than the bytes still missing, or
    a body without ``Content-Length`` that ends before ``size`` or runs past it, is a
    :class:`SizeMismatchError`. Without it, the descriptor alone decides where the body ends.
    """
    size = sink.size
    if size is None:
        raise InvalidArgumentError("download: the sink must know the blob's size")
    counter = counter if counter is not None else ByteCounter()
    budget = transport._budget(deadline)
    while True:
        if sink.offset == size:
            return sink.finish()
        start = sink.offset
        try:
            _attempt(transport, url, headers or {}, sink, budget, counter, exact_length=exact_length)
        except (DigestMismatchError, SizeMismatchError):
            sink.discard()
            raise
        except Retryable as failure:
            stalled = isinstance(failure.error, TransferTimeoutError)
            if sink.offset > start and not stalled:
                budget.failures = 0
            transport._after_failure(budget, failure)


def _attempt(
    transport: Transport,
    url: str,
    headers: Mapping[str, str],
    sink: Sink,
    budget: CallBudget,
    counter: ByteCounter,
    *,
    exact_length: bool = False,
) -> bool:
    size = sink.size or 0
    send = dict(headers)
    send["Accept-Encoding"] = "identity"
    if sink.offset > 0:
        send["Range"] = f"bytes={sink.offset}-"
        if counter.resumed_from is None:
            counter.resumed_from = sink.offset
    counter.requests += 1
    try:
        response = transport._attempt(url, send, budget, authenticate=True)
    except RegistryError as exc:
        if exc.status == 416 and sink.offset > 0:
            sink.discard()
            raise SizeMismatchError(
                f"blob {sink.digest}: the server has nothing past byte {sink.offset}, "
                f"the descriptor says {size} bytes"
            ) from exc
        raise
    try:
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise RegistryError(
                f"GET {safe_url(url)}: unexpected Content-Encoding {encoding!r} for a blob",
                status=response.status_code,
            )
        status = response.status_code
        if status == 206:
            content_range = parse_content_range(response.headers.get("Content-Range"))
            if content_range is None or content_range[0] != sink.offset or content_range[2] != size:
                if sink.offset == 0:
                    raise Retryable(RegistryError(
                        f"GET {safe_url(url)}: 206 with Content-Range "
                        f"{response.headers.get('Content-Range')!r} for a whole blob of {size} bytes",
                        status=status,
                    ))
                log.warning(
                    "%s: Content-Range %r does not continue at %d of %d; restarting from 0",
                    safe_url(url), response.headers.get("Content-Range"), sink.offset, size,
                )
                counter.restarts += 1
                sink.restart()
                # The next request has no Range, so this cannot repeat.
                return False
        elif status == 200:
            if sink.offset > 0:
                log.warning("%s: range ignored (200 instead of 206); restarting from 0", safe_url(url))
                counter.restarts += 1
                sink.restart()
        else:
            raise RegistryError(f"GET {safe_url(url)} answered {status} to a blob download", status=status)
        if exact_length:
            _check_length(response, sink, url)
        _copy_body(transport, response, sink, budget, counter, url, exact_length=exact_length)
    finally:
        response.close()
    return True

def _check_length(response: requests.Response, sink: Sink, url: str) -> None:
    """With ``exact_length``: a ``Content-Length`` must announce exactly the missing bytes."""
    assert sink.size is not None
    declared = response.headers.get("Content-Length")
    if declared is None:
        return
    missing = sink.size - sink.offset
    if declared.strip().isdigit() and int(declared) == missing:
        return
    where = f" from byte {sink.offset}" if sink.offset else ""
    raise SizeMismatchError(
        f"blob {sink.digest}: {safe_url(url)} announces {declared.strip()!r} bytes{where}, "
        f"the descriptor says {sink.size} bytes in all"
    )

def _copy_body(
    transport: Transport,
    response: requests.Response,
    sink: Sink,
    budget: CallBudget,
    counter: ByteCounter,
    url: str,
    *,
    exact_length: bool = False,
) -> None:
    policy = transport.policy
    assert sink.size is not None
    raw = response.raw
    guard = ThroughputGuard(policy, transport._clock)
    delimited = "Content-Length" not in response.headers
    try:
        while sink.offset < sink.size:
            budget.check_deadline(safe_url(url))
            want = min(policy.chunk_size, sink.size - sink.offset)
            chunk = raw.read1(want, decode_content=False)
            if not chunk and exact_length and delimited:
                # The body is complete by HTTP's rules (no length announced): the blob is short.
                raise SizeMismatchError(
                    f"blob {sink.digest}: got {sink.offset} bytes, expected {sink.size}"
                )
            if not chunk:
                raise Retryable(
                    ConnectError(
                        f"GET {safe_url(url)}: connection ended at byte {sink.offset} of {sink.size}"
                    )
                )
            sink.write(chunk)
            counter.add(len(chunk))
            guard.add(len(chunk))
        if exact_length and delimited and raw.read1(1, decode_content=False):
            raise SizeMismatchError(
                f"blob {sink.digest}: more than the expected {sink.size} bytes"
            )
    except Stalled:
        raise Retryable(
            TransferTimeoutError(
                f"GET {safe_url(url)}: slower than {policy.min_bytes_per_s:g} B/s over "
                f"{policy.throughput_window_s:g} s at byte {sink.offset} of {sink.size}"
            )
        ) from None
    except NETWORK_ERRORS as exc:
        raise Retryable(translate(exc, url, at=sink.offset)) from exc


