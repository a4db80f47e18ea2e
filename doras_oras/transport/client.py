"""The resilient HTTP transport every request of a pull goes through.

:class:`Transport` sends GET and HEAD requests with bounded time (connect and
read timeouts, a minimum throughput over a window, an overall deadline),
follows redirects itself (at most ``max_redirects``, never from https to
http, ``Authorization`` dropped when the origin changes), retries 429/5xx and
connection failures under one :class:`~.policy.RetryBudget` per request chain
(the project's one backoff formula, honouring ``Retry-After``), and answers
registry authentication challenges through an :class:`AuthHook`.
:meth:`Transport.download` fills a :class:`Sink` (the layout's blob writer)
resumably. Every lower-level failure becomes a
:class:`~doras_oras.errors.TransportError` in :mod:`.failures`. See
``docs/network.md``.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol
from urllib.parse import urljoin, urlsplit

import requests

from ..backoff import parse_retry_after
from ..errors import (
    BodyTooLargeError,
    ConnectError,
    DigestMismatchError,
    Fix,
    InsecureTransportError,
    InvalidArgumentError,
    RegistryAuthError,
    RegistryError,
    SizeMismatchError,
    TransferTimeoutError,
)
from ..urls import origin, parse_content_range, safe_url
from .failures import (
    NETWORK_ERRORS,
    REDIRECT_STATUSES,
    REGISTRY_PEER,
    Retryable,
    Stalled,
    error_body,
    release,
    tls_error,
    translate,
)
from .policy import ByteCounter, RetryBudget, ThroughputGuard, TransferPolicy

log = logging.getLogger(__name__)


class AuthHook(Protocol):
    """Registry authentication as the transport sees it (see :mod:`doras_oras.auth`)."""

    def headers_for(self, url: str) -> Mapping[str, str]:
        """Headers (``Authorization``) to send with a request to ``url``; empty if none."""
        ...

    def on_unauthorized(self, url: str, response: requests.Response, transport: Transport) -> bool:
        """Handle a 401 from ``url``; True when new credentials make a retry worthwhile."""
        ...


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


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """The value of header ``name`` (any case) in ``headers``, or None."""
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)


class _ExactAuthorization(requests.auth.AuthBase):
    """Sends exactly the ``Authorization`` this request was given, or none.

    Drops one a shared session carries in its default headers, and keeps
    ``requests`` from adding ``~/.netrc`` credentials behind our back.
    """

    def __init__(self, value: str | None) -> None:
        self.value = value

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers.pop("Authorization", None)
        if self.value:
            r.headers["Authorization"] = self.value
        return r

    def __bool__(self) -> bool:
        return True


class Transport:
    """HTTP GETs and resumable verified downloads under a :class:`TransferPolicy`.

    ``verify`` is True (system CAs), False (no TLS verification: only when the
    user asked for it) or the path of a CA bundle. ``auth`` answers 401
    challenges (:class:`doras_oras.auth.RegistryAuth`). ``peer`` names the
    other end in errors (``the registry``, ``the Doras server``). ``sleep``,
    ``clock`` and ``rand`` are injectable for tests.
    """

    def __init__(
        self,
        session: requests.Session | None = None,
        policy: TransferPolicy | None = None,
        *,
        verify: bool | str | Path = True,
        auth: AuthHook | None = None,
        peer: str = REGISTRY_PEER,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.session = session if session is not None else requests.Session()
        self._own_session = session is None
        self.policy = policy if policy is not None else TransferPolicy()
        if isinstance(verify, Path):
            verify = str(verify)
        if isinstance(verify, str) and not os.path.exists(verify):
            raise InvalidArgumentError(f"CA file {verify} does not exist")
        self.verify: bool | str = verify
        self.auth = auth
        self.peer = peer
        self._sleep = sleep
        self._clock = clock
        self._rand = rand

    def close(self) -> None:
        """Close the session if this transport created it."""
        if self._own_session:
            self.session.close()

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def budget(self, deadline: float | None = None) -> RetryBudget:
        """A fresh retry budget for one request chain under this transport's policy.

        ``deadline`` (a :func:`time.monotonic` instant) overrides the policy's
        ``deadline_s``. Pass the budget to every request of the chain (a
        resolve's ``HEAD`` and ``GET``): they share its attempts and waits.
        """
        return RetryBudget.of(self.policy, deadline=deadline, clock=self._clock, sleep=self._sleep, rand=self._rand)

    def _timeouts(self, budget: RetryBudget) -> tuple[float, float]:
        connect, read = self.policy.connect_timeout_s, self.policy.read_timeout_s
        left = budget.remaining_s()
        if left is not None:
            connect, read = max(0.01, min(connect, left)), max(0.01, min(read, left))
        return connect, read

    def _stalled(self, url: str, at: str = "") -> Retryable:
        return Retryable(TransferTimeoutError(
            f"GET {safe_url(url)}: slower than {self.policy.min_bytes_per_s:g} B/s over "
            f"{self.policy.throughput_window_s:g} s{at}"
        ))

    # -- requests ----------------------------------------------------------------

    def get(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
        authenticate: bool = True,
        budget: RetryBudget | None = None,
        raise_for_status: bool = True,
    ) -> requests.Response:
        """GET ``url`` and return the final 2xx response (redirects followed, retried).

        With ``stream`` the body is left unread (close the response). Errors:
        :class:`RegistryAuthError` (401/403), :class:`RegistryError` (other
        statuses, after retries for 429/5xx), :class:`ConnectError`,
        :class:`TransferTimeoutError`, :class:`InsecureTransportError`.
        ``budget`` is the retry budget of the chain this request belongs to
        (default: a fresh :meth:`budget`). With ``raise_for_status=False`` an
        error status is returned instead of raised (body unread): a status of
        ``policy.retry_statuses`` after its retries, when attempts or time
        run out; any other at once. Redirects and 401 challenges are handled
        as always.
        """
        chain = budget if budget is not None else self.budget()

        def attempt() -> requests.Response:
            response = self._attempt(url, headers or {}, chain, authenticate=authenticate,
                                     raise_for_status=raise_for_status)
            if not stream:
                try:
                    _ = response.content
                except NETWORK_ERRORS as exc:
                    response.close()
                    raise Retryable(translate(exc, url)) from exc
            return response

        return chain.run(attempt, give_up=_unread_answer)

    def get_bytes(
        self,
        url: str,
        *,
        max_bytes: int,
        headers: Mapping[str, str] | None = None,
        authenticate: bool = True,
        budget: RetryBudget | None = None,
        not_modified: bool = False,
    ) -> tuple[bytes, requests.Response]:
        """GET ``url`` and return its body, refusing one over ``max_bytes`` (:class:`BodyTooLargeError`).

        ``not_modified``: a 304 (the answer to a conditional GET) is returned as a 2xx is, with its
        empty body; the caller reads ``response.status_code``.
        """
        chain = budget if budget is not None else self.budget()

        def attempt() -> tuple[bytes, requests.Response]:
            response = self._attempt(url, headers or {}, chain, authenticate=authenticate,
                                     not_modified=not_modified)
            try:
                return self._read_capped(response, max_bytes, url, chain), response
            except Stalled:
                raise self._stalled(url) from None
            except NETWORK_ERRORS as exc:
                raise Retryable(translate(exc, url)) from exc
            finally:
                response.close()

        return chain.run(attempt)

    def _read_capped(self, response: requests.Response, limit: int, url: str, budget: RetryBudget) -> bytes:
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BodyTooLargeError(
                f"GET {safe_url(url)}: body of {declared} bytes is over the {limit} byte cap"
            )
        guard = ThroughputGuard(self.policy, self._clock)
        parts: list[bytes] = []
        total = 0
        while True:
            budget.check_deadline(safe_url(url))
            chunk = response.raw.read1(self.policy.chunk_size, decode_content=True)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise BodyTooLargeError(f"GET {safe_url(url)}: body is over the {limit} byte cap")
            parts.append(chunk)
            guard.add(len(chunk))
        return b"".join(parts)

    def read_body(self, response: requests.Response, *, max_bytes: int) -> bytes:
        """The (decoded) body of an answer of :meth:`get` with ``stream=True``; closes it.

        More than ``max_bytes`` is a :class:`BodyTooLargeError`; a failure while reading is a
        :class:`TransportError` (not retried: the answer is spent).
        """
        try:
            return self._read_capped(response, max_bytes, response.url, self.budget())
        except Stalled:
            raise self._stalled(response.url).error from None
        except NETWORK_ERRORS as exc:
            raise translate(exc, response.url) from exc
        finally:
            response.close()

    def head(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        authenticate: bool = True,
        budget: RetryBudget | None = None,
    ) -> requests.Response:
        """HEAD ``url`` (e.g. resolve a tag via ``Docker-Content-Digest``), like :meth:`get`."""
        chain = budget if budget is not None else self.budget()

        def attempt() -> requests.Response:
            response = self._attempt(url, headers or {}, chain, authenticate=authenticate, method="HEAD")
            release(response)
            return response

        return chain.run(attempt)

    def _attempt(
        self,
        url: str,
        headers: Mapping[str, str],
        budget: RetryBudget,
        *,
        authenticate: bool,
        method: str = "GET",
        raise_for_status: bool = True,
        not_modified: bool = False,
    ) -> requests.Response:
        """One attempt: the request plus its redirects and at most one auth round (``not_modified``:
        a 304 is an answer, as a 2xx)."""
        start = url
        current = url
        redirects = 0
        auth_rounds = 0
        while True:
            budget.check_deadline(safe_url(start))
            scheme = urlsplit(current).scheme.lower()
            if scheme not in ("http", "https"):
                raise InsecureTransportError(f"unsupported URL scheme in {safe_url(current)}")
            if scheme == "http" and not self.policy.allow_http:
                raise InsecureTransportError(
                    f"refusing plain http to {safe_url(current)}: the transfer policy allows only https"
                )
            same_origin = origin(current) == origin(start)
            send = {k: v for k, v in headers.items() if same_origin or k.lower() != "authorization"}
            if authenticate and same_origin and self.auth is not None:
                send.update(self.auth.headers_for(current))
            try:
                response = self.session.request(
                    method,
                    current,
                    headers=send,
                    stream=True,
                    allow_redirects=False,
                    timeout=self._timeouts(budget),
                    verify=self.verify,
                    auth=_ExactAuthorization(_header(send, "Authorization")),
                )
            except requests.exceptions.SSLError as exc:
                raise tls_error(exc, current, peer=self.peer) from exc
            except NETWORK_ERRORS as exc:
                raise Retryable(translate(exc, current, method=method)) from exc
            status = response.status_code
            if status in REDIRECT_STATUSES and "Location" in response.headers:
                release(response)
                redirects += 1
                if redirects > self.policy.max_redirects:
                    raise InsecureTransportError(
                        f"{safe_url(start)}: more than {self.policy.max_redirects} redirects"
                    )
                target = urljoin(current, response.headers["Location"])
                if scheme == "https" and urlsplit(target).scheme.lower() != "https":
                    raise InsecureTransportError(
                        f"refusing redirect from https to plain http: {safe_url(target)} (from {safe_url(current)})"
                    )
                if not self.policy.cross_host_redirects and origin(target)[1:] != origin(current)[1:]:
                    raise InsecureTransportError(
                        f"refusing redirect to another host: {safe_url(current)} -> {safe_url(target)}"
                    )
                log.debug("redirect %d: %s -> %s", redirects, safe_url(current), safe_url(target))
                current = target
                continue
            if status == 401 and authenticate and self.auth is not None and same_origin and auth_rounds == 0:
                auth_rounds += 1
                try:
                    retry = self.auth.on_unauthorized(current, response, self)
                except BaseException:
                    response.close()
                    raise
                if retry:
                    release(response)
                    continue
            if 200 <= status < 300 or (status == 304 and not_modified):
                return response
            if not raise_for_status:
                if status in self.policy.retry_statuses:
                    retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
                    error = RegistryError(f"{method} {safe_url(current)} answered {status}", status=status)
                    raise Retryable(error, retry_after, response)
                return response
            retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
            body = error_body(response)
            message = f"{method} {safe_url(current)} answered {status}"
            if body:
                message += f": {body[:300]}"
            if status in (401, 403):
                raise RegistryAuthError(message, status=status, fix=Fix.REGISTRY_CREDENTIALS)
            if status in self.policy.retry_statuses:
                raise Retryable(RegistryError(message, status=status), retry_after)
            raise RegistryError(message, status=status)

    # -- downloads ---------------------------------------------------------------

    def download(
        self,
        url: str,
        sink: Sink,
        *,
        headers: Mapping[str, str] | None = None,
        counter: ByteCounter | None = None,
        budget: RetryBudget | None = None,
        exact_length: bool = False,
    ) -> str:
        """Fill ``sink`` with the blob at ``url`` (resuming from ``sink.offset``); return its digest.

        Sends ``Range: bytes=N-`` when the sink already holds ``N`` bytes, restarts the sink
        cleanly from zero when the server does not honour the range, stops reading at the
        expected size, and retries drops and stalls under ``budget`` (an attempt that
        advanced the sink resets its count of failures). The sink's ``size`` must be known.
        On a digest or size mismatch the sink is discarded and
        :class:`DigestMismatchError`/:class:`SizeMismatchError` is raised (not retried).
        Transfer failures after the retries raise :class:`~doras_oras.errors.TransportError`
        and leave the sink as it is (a partial file for the next run). With ``exact_length``
        the server must agree with the descriptor: a ``Content-Length`` other than the bytes
        still missing, or a body without ``Content-Length`` that ends before ``size`` or runs
        past it, is a :class:`SizeMismatchError`. Without it, the descriptor alone decides
        where the body ends. The transport never writes a file itself.
        """
        size = sink.size
        if size is None:
            raise InvalidArgumentError("download: the sink must know the blob's size")
        chain = budget if budget is not None else self.budget()
        count = counter if counter is not None else ByteCounter()

        def attempt() -> str:
            while sink.offset < size:  # a range the server did not honour: again from 0, no failure
                start = sink.offset
                try:
                    self._download_attempt(url, headers or {}, sink, chain, count, exact_length=exact_length)
                except (DigestMismatchError, SizeMismatchError):
                    sink.discard()
                    raise
                except Retryable as failure:
                    if sink.offset > start and not isinstance(failure.error, TransferTimeoutError):
                        chain.failures = 0  # the link works, only slowly: a fresh count
                    raise
            return sink.finish()

        return chain.run(attempt)

    def _download_attempt(
        self,
        url: str,
        headers: Mapping[str, str],
        sink: Sink,
        budget: RetryBudget,
        counter: ByteCounter,
        *,
        exact_length: bool,
    ) -> None:
        size = sink.size or 0
        send = dict(headers)
        send["Accept-Encoding"] = "identity"
        if sink.offset > 0:
            send["Range"] = f"bytes={sink.offset}-"
            if counter.resumed_from is None:
                counter.resumed_from = sink.offset
        counter.requests += 1
        try:
            response = self._attempt(url, send, budget, authenticate=True)
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
                    return  # the next request has no Range, so this cannot repeat
            elif status == 200:
                if sink.offset > 0:
                    log.warning("%s: range ignored (200 instead of 206); restarting from 0", safe_url(url))
                    counter.restarts += 1
                    sink.restart()
            else:
                raise RegistryError(f"GET {safe_url(url)} answered {status} to a blob download", status=status)
            if exact_length:
                _check_length(response, sink, url)
            self._copy_body(response, sink, budget, counter, url, exact_length=exact_length)
        finally:
            response.close()

    def _copy_body(
        self,
        response: requests.Response,
        sink: Sink,
        budget: RetryBudget,
        counter: ByteCounter,
        url: str,
        *,
        exact_length: bool,
    ) -> None:
        assert sink.size is not None
        raw = response.raw
        guard = ThroughputGuard(self.policy, self._clock)
        delimited = "Content-Length" not in response.headers
        try:
            while sink.offset < sink.size:
                budget.check_deadline(safe_url(url))
                want = min(self.policy.chunk_size, sink.size - sink.offset)
                chunk = raw.read1(want, decode_content=False)
                if not chunk and exact_length and delimited:
                    # The body is complete by HTTP's rules (no length announced): the blob is short.
                    raise SizeMismatchError(f"blob {sink.digest}: got {sink.offset} bytes, expected {sink.size}")
                if not chunk:
                    raise Retryable(ConnectError(
                        f"GET {safe_url(url)}: connection ended at byte {sink.offset} of {sink.size}"
                    ))
                sink.write(chunk)
                counter.add(len(chunk))
                guard.add(len(chunk))
            if exact_length and delimited and raw.read1(1, decode_content=False):
                raise SizeMismatchError(f"blob {sink.digest}: more than the expected {sink.size} bytes")
        except Stalled:
            raise self._stalled(url, f" at byte {sink.offset} of {sink.size}") from None
        except NETWORK_ERRORS as exc:
            raise Retryable(translate(exc, url, at=sink.offset)) from exc


def _unread_answer(failure: Retryable) -> requests.Response:
    """The error answer a failure carries, handed to the caller when retries run out."""
    assert failure.response is not None
    return failure.response


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
