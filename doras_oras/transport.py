"""The resilient HTTP transport every transfer of a pull goes through.

:class:`Transport` sends GET requests with bounded time (connect and read
timeouts, a minimum throughput over a window, an overall deadline), follows
redirects itself (at most ``max_redirects``, never from https to http,
``Authorization`` dropped when the origin changes), retries 429/5xx and
connection failures with a capped backoff that honours ``Retry-After``, and
answers registry authentication challenges through an :class:`AuthHook`.

:meth:`Transport.download` fetches a blob into a partial file that survives
drops and process restarts: it resumes with ``Range: bytes=N-`` after
re-hashing what is on disk, restarts cleanly from zero when the server does
not honour the range, stops reading at the expected size, verifies digest and
size, and fsyncs before returning. See ``docs/network.md``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import math
import os
import random
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests
import urllib3.exceptions

from ._writeback import WriteBehind
from .backoff import parse_retry_after
from .descriptor import new_hasher, validate_digest
from .errors import (
    BodyTooLargeError,
    ConnectError,
    DigestMismatchError,
    InsecureTransportError,
    RegistryAuthError,
    RegistryError,
    SizeMismatchError,
    TransferTimeoutError,
    TransportError,
)

log = logging.getLogger(__name__)

#: Error bodies are read up to this many bytes, never more.
ERROR_BODY_CAP = 64 * 1024
#: Statuses that are retried (with backoff) besides connection failures.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: Unwanted bodies (redirects, 401 challenges) up to this size are read to keep the connection.
_DRAIN_MAX = 64 * 1024
_META_SUFFIX = ".meta"


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
                raise ValueError(f"TransferPolicy.{name} must be a positive number, not {value!r}")
        non_negative = {
            "min_bytes_per_s": self.min_bytes_per_s,
            "wait_initial_s": self.wait_initial_s,
            "wait_max_s": self.wait_max_s,
            "retry_after_max_s": self.retry_after_max_s,
        }
        for name, value in non_negative.items():
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"TransferPolicy.{name} must be a number >= 0, not {value!r}")
        if self.deadline_s is not None and not (
            math.isfinite(self.deadline_s) and self.deadline_s > 0
        ):
            raise ValueError(f"TransferPolicy.deadline_s must be positive or None, not {self.deadline_s!r}")
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"TransferPolicy.max_attempts must be an integer >= 1, not {self.max_attempts!r}")
        if not isinstance(self.max_redirects, int) or self.max_redirects < 0:
            raise ValueError(f"TransferPolicy.max_redirects must be an integer >= 0, not {self.max_redirects!r}")
        if not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise ValueError(f"TransferPolicy.chunk_size must be an integer >= 1, not {self.chunk_size!r}")
        statuses = self.retry_statuses
        if not (isinstance(statuses, frozenset) and all(isinstance(x, int) and 400 <= x <= 599 for x in statuses)):
            raise ValueError(f"TransferPolicy.retry_statuses must be a frozenset of 4xx/5xx codes, not {statuses!r}")


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


# --- pure helpers -----------------------------------------------------------


def retry_wait_s(
    failures: int,
    policy: TransferPolicy,
    *,
    retry_after_s: float | None = None,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before the next attempt after ``failures`` failed ones (>= 1).

    Exponential from ``wait_initial_s``, capped at ``wait_max_s``, with
    jitter in [50 %, 100 %]; a server's ``Retry-After`` wins when longer, capped
    at ``retry_after_max_s``.
    """
    exponent = min(max(failures - 1, 0), 62)
    base = min(policy.wait_max_s, policy.wait_initial_s * (2.0**exponent))
    wait = base * (0.5 + 0.5 * rand())
    if retry_after_s is not None:
        wait = max(wait, min(retry_after_s, policy.retry_after_max_s))
    return wait


_SECRET_PATTERNS = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 [REDACTED]"),
    (
        re.compile(r'(?i)"(token|access_token|refresh_token|password|secret|auth)"\s*:\s*"[^"]*"'),
        r'"\1":"[REDACTED]"',
    ),
    (re.compile(r"(?i)\b(token|access_token|password|secret|signature|sig|x-amz-signature)=[^&\s\"']+"),
     r"\1=[REDACTED]"),
    (re.compile(r"(?i)(https?://)[^/\s:@]+:[^/\s@]+@"), r"\1[REDACTED]@"),
)


def redact(text: str) -> str:
    """``text`` with bearer/basic credentials, tokens, passwords and URL userinfo masked."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def safe_url(url: str) -> str:
    """``url`` without userinfo and query (which may hold signatures), for messages and logs."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    query = "…" if parts.query else ""
    return urlunsplit((parts.scheme, host, parts.path, query, ""))


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """The value of header ``name`` (any case) in ``headers``, or None."""
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)


def origin(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of ``url``, the unit credentials are bound to."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower(), port


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """``(first, last, total)`` of ``bytes first-last/total`` (total None for ``*``), else None."""
    if value is None:
        return None
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value)
    if not match:
        return None
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), int(match.group(2)), total


# --- the transport ------------------------------------------------------------


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


class _Retryable(Exception):
    """Internal: an attempt failed in a way worth another attempt."""

    def __init__(
        self,
        error: TransportError,
        retry_after_s: float | None = None,
        response: requests.Response | None = None,
    ) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after_s = retry_after_s
        self.response = response  # an unread error answer to hand over when giving up


class _WriteFailed(Exception):
    """Internal: writing the partial file failed (disk full, I/O error); not a network fault."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class _Stalled(Exception):
    """Internal: the body came slower than the policy's minimum throughput."""


@dataclass
class _Budget:
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
            raise TransferTimeoutError(f"{what}: overall deadline of the transfer passed")

    def timeouts(self) -> tuple[float, float]:
        connect, read = self.policy.connect_timeout_s, self.policy.read_timeout_s
        left = self.remaining_s()
        if left is not None:
            connect, read = max(0.01, min(connect, left)), max(0.01, min(read, left))
        return connect, read


class Transport:
    """HTTP GETs and resumable verified downloads under a :class:`TransferPolicy`.

    ``verify`` is True (system CAs), False (no TLS verification: only when the
    user asked for it) or the path of a CA bundle. ``auth`` answers 401
    challenges (:class:`doras_oras.auth.RegistryAuth`). ``sleep``, ``clock``
    and ``rand`` are injectable for tests.
    """

    def __init__(
        self,
        session: requests.Session | None = None,
        policy: TransferPolicy | None = None,
        *,
        verify: bool | str | Path = True,
        auth: AuthHook | None = None,
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
            raise FileNotFoundError(f"CA file {verify} does not exist")
        self.verify: bool | str = verify
        self.auth = auth
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

    def _budget(self, deadline: float | None) -> _Budget:
        if deadline is None and self.policy.deadline_s is not None:
            deadline = self._clock() + self.policy.deadline_s
        return _Budget(self.policy, self._clock, deadline)

    # -- requests ----------------------------------------------------------------

    def get(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
        authenticate: bool = True,
        deadline: float | None = None,
        raise_for_status: bool = True,
    ) -> requests.Response:
        """GET ``url`` and return the final 2xx response (redirects followed, retried).

        With ``stream`` the body is left unread (close the response). Errors:
        :class:`RegistryAuthError` (401/403), :class:`RegistryError` (other
        statuses, after retries for 429/5xx), :class:`ConnectError`,
        :class:`TransferTimeoutError`, :class:`InsecureTransportError`.
        ``deadline`` is a :func:`time.monotonic` instant that overrides the
        policy's ``deadline_s``. With ``raise_for_status=False`` an error
        status is returned instead of raised (body unread): a status of
        ``policy.retry_statuses`` after its retries, when attempts or time
        run out; any other at once. Redirects and 401 challenges are handled
        as always.
        """
        budget = self._budget(deadline)
        while True:
            try:
                response = self._attempt(url, headers or {}, budget, authenticate=authenticate,
                                         raise_for_status=raise_for_status)
            except _Retryable as failure:
                if failure.response is None:
                    self._after_failure(budget, failure)
                    continue
                try:
                    self._after_failure(budget, failure)
                except TransportError:
                    return failure.response  # out of attempts or time: the caller reads the answer
                failure.response.close()
                continue
            if not stream:
                try:
                    _ = response.content
                except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
                    response.close()
                    self._after_failure(budget, _Retryable(_translate(exc, url)))
                    continue
            return response

    def get_bytes(
        self,
        url: str,
        *,
        max_bytes: int,
        headers: Mapping[str, str] | None = None,
        authenticate: bool = True,
        deadline: float | None = None,
    ) -> tuple[bytes, requests.Response]:
        """GET ``url`` and return its body, refusing one over ``max_bytes`` (:class:`BodyTooLargeError`)."""
        budget = self._budget(deadline)
        while True:
            try:
                response = self._attempt(url, headers or {}, budget, authenticate=authenticate)
            except _Retryable as failure:
                self._after_failure(budget, failure)
                continue
            try:
                body = self._read_capped(response, max_bytes, url, budget)
            except _Stalled:
                self._after_failure(budget, _Retryable(TransferTimeoutError(
                    f"GET {safe_url(url)}: slower than {self.policy.min_bytes_per_s:g} B/s over "
                    f"{self.policy.throughput_window_s:g} s"
                )))
                continue
            except (
                requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException, OSError
            ) as exc:
                self._after_failure(budget, _Retryable(_translate(exc, url)))
                continue
            finally:
                response.close()
            return body, response

    def _read_capped(self, response: requests.Response, limit: int, url: str, budget: _Budget) -> bytes:
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BodyTooLargeError(
                f"GET {safe_url(url)}: body of {declared} bytes is over the {limit} byte cap"
            )
        guard = _ThroughputGuard(self.policy, self._clock)
        parts: list[bytes] = []
        total = 0
        while True:
            budget.check_deadline(safe_url(url))
            chunk = response.raw.read1(64 * 1024, decode_content=True)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise BodyTooLargeError(f"GET {safe_url(url)}: body is over the {limit} byte cap")
            parts.append(chunk)
            guard.add(len(chunk))
        return b"".join(parts)

    def _after_failure(self, budget: _Budget, failure: _Retryable) -> None:
        budget.failures += 1
        if budget.failures >= self.policy.max_attempts:
            raise type(failure.error)(
                f"{failure.error} (gave up after {budget.failures} attempts)",
                **_error_kwargs(failure.error),
            ) from failure.error
        wait = retry_wait_s(budget.failures, self.policy, retry_after_s=failure.retry_after_s, rand=self._rand)
        left = budget.remaining_s()
        if left is not None and wait >= left:
            raise TransferTimeoutError(
                f"{failure.error}; the next attempt would pass the overall deadline"
            ) from failure.error
        log.info("attempt %d failed (%s); retrying in %.2f s", budget.failures, failure.error, wait)
        self._sleep(wait)

    def head(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        authenticate: bool = True,
        deadline: float | None = None,
    ) -> requests.Response:
        """HEAD ``url`` (e.g. resolve a tag via ``Docker-Content-Digest``), like :meth:`get`."""
        budget = self._budget(deadline)
        while True:
            try:
                response = self._attempt(url, headers or {}, budget, authenticate=authenticate, method="HEAD")
            except _Retryable as failure:
                self._after_failure(budget, failure)
                continue
            _release(response)
            return response

    def _attempt(
        self,
        url: str,
        headers: Mapping[str, str],
        budget: _Budget,
        *,
        authenticate: bool,
        method: str = "GET",
        raise_for_status: bool = True,
    ) -> requests.Response:
        """One attempt: the request plus its redirects and at most one auth round."""
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
                    f"refusing plain http to {safe_url(current)}: allow_http is off"
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
                    timeout=budget.timeouts(),
                    verify=self.verify,
                    auth=_ExactAuthorization(_header(send, "Authorization")),
                )
            except requests.exceptions.SSLError as exc:
                raise ConnectError(
                    f"TLS verification with {safe_url(current)} failed: {exc.__class__.__name__} "
                    "(give the registry's CA file, or allow insecure TLS explicitly)"
                ) from exc
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
                raise _Retryable(_translate(exc, current)) from exc
            status = response.status_code
            if status in _REDIRECT_STATUSES and "Location" in response.headers:
                _release(response)
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
                    _release(response)
                    continue
            if 200 <= status < 300:
                return response
            if not raise_for_status:
                if status in self.policy.retry_statuses:
                    retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
                    error = RegistryError(f"{method} {safe_url(current)} answered {status}", status=status)
                    raise _Retryable(error, retry_after, response)
                return response
            body = _error_body(response)
            message = f"{method} {safe_url(current)} answered {status}"
            if body:
                message += f": {body[:300]}"
            if status in (401, 403):
                raise RegistryAuthError(message, status=status)
            if status in self.policy.retry_statuses:
                retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
                raise _Retryable(RegistryError(message, status=status), retry_after)
            raise RegistryError(message, status=status)

    # -- downloads ---------------------------------------------------------------

    def download(
        self,
        url: str,
        *,
        digest: str,
        size: int,
        partial_path: Path,
        headers: Mapping[str, str] | None = None,
        counter: ByteCounter | None = None,
        deadline: float | None = None,
        exact_length: bool = False,
    ) -> Path:
        """Fetch ``url`` (a blob of ``digest``/``size``) into ``partial_path``, resumably.

        Returns ``partial_path`` holding exactly the verified, fsynced blob.
        ``partial_path`` and its sidecar ``partial_path + ".meta"`` (the digest
        the partial bytes belong to) are owned by this call; the sidecar is
        removed on success. On a digest or size mismatch the partial file is
        removed and :class:`DigestMismatchError`/:class:`SizeMismatchError` is
        raised. Transfer failures leave the partial file for the next call.
        A local write failure (disk full) removes the partial file and raises
        the :class:`OSError`, not retried.

        With ``exact_length`` the server must agree with the descriptor: a
        ``Content-Length`` other than the bytes still missing, or a body
        without ``Content-Length`` that ends before ``size`` or runs past it,
        is a :class:`SizeMismatchError` (not retried; partial removed).
        Without it, the descriptor alone decides where the body ends.
        """
        validate_digest(digest)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"size must be a non-negative integer, not {size!r}")
        partial_path = Path(partial_path)
        counter = counter if counter is not None else ByteCounter()
        budget = self._budget(deadline)
        with _PartialFile(partial_path, digest, size) as partial:
            while True:
                if partial.offset == size:
                    partial.finish()
                    return partial_path
                try:
                    self._download_attempt(url, headers or {}, partial, budget, counter, exact_length=exact_length)
                except _WriteFailed as failure:
                    partial.discard()
                    raise failure.error from None
                except (DigestMismatchError, SizeMismatchError):
                    partial.discard()
                    raise
                except _Retryable as failure:
                    stalled = isinstance(failure.error, TransferTimeoutError)
                    if partial.offset > partial.attempt_start and not stalled:
                        budget.failures = 0
                    self._after_failure(budget, failure)

    def _download_attempt(
        self,
        url: str,
        headers: Mapping[str, str],
        partial: _PartialFile,
        budget: _Budget,
        counter: ByteCounter,
        *,
        exact_length: bool = False,
    ) -> bool:
        size = partial.size
        partial.attempt_start = partial.offset
        send = dict(headers)
        send["Accept-Encoding"] = "identity"
        if partial.offset > 0:
            send["Range"] = f"bytes={partial.offset}-"
            if counter.resumed_from is None:
                counter.resumed_from = partial.offset
        counter.requests += 1
        try:
            response = self._attempt(url, send, budget, authenticate=True)
        except RegistryError as exc:
            if exc.status == 416 and partial.offset > 0:
                partial.discard()
                raise SizeMismatchError(
                    f"blob {partial.digest}: the server has nothing past byte {partial.offset}, "
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
                if content_range is None or content_range[0] != partial.offset or content_range[2] != size:
                    if partial.offset == 0:
                        raise _Retryable(RegistryError(
                            f"GET {safe_url(url)}: 206 with Content-Range "
                            f"{response.headers.get('Content-Range')!r} for a whole blob of {size} bytes",
                            status=status,
                        ))
                    log.warning(
                        "%s: Content-Range %r does not continue at %d of %d; restarting from 0",
                        safe_url(url), response.headers.get("Content-Range"), partial.offset, size,
                    )
                    counter.restarts += 1
                    partial.restart()
                    # The next request has no Range, so this cannot repeat.
                    return False
            elif status == 200:
                if partial.offset > 0:
                    log.warning("%s: range ignored (200 instead of 206); restarting from 0", safe_url(url))
                    counter.restarts += 1
                    partial.restart()
            else:
                raise RegistryError(f"GET {safe_url(url)} answered {status} to a blob download", status=status)
            if exact_length:
                self._check_length(response, partial, url)
            self._copy_body(response, partial, budget, counter, url, exact_length=exact_length)
        finally:
            response.close()
        return True

    @staticmethod
    def _check_length(response: requests.Response, partial: _PartialFile, url: str) -> None:
        """With ``exact_length``: a ``Content-Length`` must announce exactly the missing bytes."""
        declared = response.headers.get("Content-Length")
        if declared is None:
            return
        missing = partial.size - partial.offset
        if declared.strip().isdigit() and int(declared) == missing:
            return
        where = f" from byte {partial.offset}" if partial.offset else ""
        raise SizeMismatchError(
            f"blob {partial.digest}: {safe_url(url)} announces {declared.strip()!r} bytes{where}, "
            f"the descriptor says {partial.size} bytes in all"
        )

    def _copy_body(
        self,
        response: requests.Response,
        partial: _PartialFile,
        budget: _Budget,
        counter: ByteCounter,
        url: str,
        *,
        exact_length: bool = False,
    ) -> None:
        policy = self.policy
        raw = response.raw
        guard = _ThroughputGuard(policy, self._clock)
        delimited = "Content-Length" not in response.headers
        try:
            while partial.offset < partial.size:
                budget.check_deadline(safe_url(url))
                want = min(policy.chunk_size, partial.size - partial.offset)
                chunk = raw.read1(want, decode_content=False)
                if not chunk and exact_length and delimited:
                    # The body is complete by HTTP's rules (no length announced): the blob is short.
                                raise SizeMismatchError(
                        f"blob {partial.digest}: got {partial.offset} bytes, expected {partial.size}"
                    )
                if not chunk:
                    raise _Retryable(
                        ConnectError(
                            f"GET {safe_url(url)}: connection ended at byte {partial.offset} of {partial.size}"
                        )
                    )
                partial.write(chunk)
                counter.add(len(chunk))
                guard.add(len(chunk))
            if exact_length and delimited and raw.read1(1, decode_content=False):
                        raise SizeMismatchError(
                    f"blob {partial.digest}: more than the expected {partial.size} bytes"
                )
        except _Stalled:
            raise _Retryable(
                TransferTimeoutError(
                    f"GET {safe_url(url)}: slower than {policy.min_bytes_per_s:g} B/s over "
                    f"{policy.throughput_window_s:g} s at byte {partial.offset} of {partial.size}"
                )
            ) from None
        except (
            requests.RequestException,
            urllib3.exceptions.HTTPError,
            http.client.HTTPException,
            OSError,
        ) as exc:
            raise _Retryable(_translate(exc, url, at=partial.offset)) from exc


class _ThroughputGuard:
    """Raises :class:`_Stalled` when a body is slower than the policy's minimum over its window."""

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
            raise _Stalled()


class _PartialFile:
    """The partial file of one download: re-hashed on open, written and hashed as it grows."""

    def __init__(self, path: Path, digest: str, size: int) -> None:
        self.path = path
        self.meta = path.with_name(path.name + _META_SUFFIX)
        self.digest = digest
        self.size = size
        self.offset = 0
        self.attempt_start = 0
        self._hasher: Any = new_hasher(digest)
        self._fd = -1
        self._behind: WriteBehind | None = None

    def __enter__(self) -> _PartialFile:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        recorded = self._read_meta()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        length = os.fstat(self._fd).st_size
        if length and recorded != {"digest": self.digest, "size": self.size}:
            # Bytes of unknown or other content: keep them only if they already are the blob.
            if not (length == self.size and self._rehash() and self._matches()):
                log.warning("%s: partial file of another or unknown blob; removing it", self.path)
                os.close(self._fd)
                self.path.unlink()
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                self.restart()
        elif length > self.size:
            log.warning("%s: partial file longer than %d bytes; starting over", self.path, self.size)
            self.restart()
        elif length:
            self._rehash()
            if length == self.size and not self._matches():
                log.warning("%s: complete partial file does not match; starting over", self.path)
                self.restart()
        self._write_meta()
        self._behind = WriteBehind(self._fd, start=self.offset)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _read_meta(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.meta.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _write_meta(self) -> None:
        tmp = self.meta.with_name(self.meta.name + ".tmp")
        tmp.write_text(json.dumps({"digest": self.digest, "size": self.size}))
        os.replace(tmp, self.meta)

    def _rehash(self) -> bool:
        self._hasher = new_hasher(self.digest)
        os.lseek(self._fd, 0, os.SEEK_SET)
        count = 0
        while True:
            block = os.read(self._fd, 1 << 20)
            if not block:
                break
            self._hasher.update(block)
            count += len(block)
        self.offset = count
        return True

    def _matches(self) -> bool:
        algorithm = self.digest.split(":", 1)[0]
        return self.offset == self.size and f"{algorithm}:{self._hasher.hexdigest()}" == self.digest

    def restart(self) -> None:
        """Truncate to zero: the next bytes written are the blob's first."""
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        self.offset = 0
        if self._behind is not None:
            self._behind.restart()
        self.attempt_start = 0
        self._hasher = new_hasher(self.digest)

    def write(self, chunk: bytes) -> None:
        try:
            os.lseek(self._fd, self.offset, os.SEEK_SET)
            view = memoryview(chunk)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            raise _WriteFailed(exc) from exc
        self._hasher.update(chunk)
        self.offset += len(chunk)
        if self._behind is not None:
            self._behind.wrote(self.offset)

    def finish(self) -> None:
        """Verify digest and size, fsync, drop the sidecar; remove the file on mismatch."""
        if self.offset != self.size:
            self.discard()
            raise SizeMismatchError(f"blob {self.digest}: got {self.offset} bytes, expected {self.size}")
        if not self._matches():
            algorithm = self.digest.split(":", 1)[0]
            actual = f"{algorithm}:{self._hasher.hexdigest()}"
            self.discard()
            raise DigestMismatchError(f"blob: expected {self.digest}, got {actual}")
        os.fsync(self._fd)
        self.meta.unlink(missing_ok=True)

    def discard(self) -> None:
        """Remove the partial file and its sidecar."""
        self.path.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)


# --- error helpers -------------------------------------------------------------


def _error_kwargs(error: TransportError) -> dict[str, Any]:
    if isinstance(error, RegistryError):
        return {"status": error.status}
    return {}


def _translate(exc: BaseException, url: str, *, at: int | None = None) -> TransportError:
    """A library exception as a :class:`TransportError` naming the URL (without secrets)."""
    where = safe_url(url) + (f" at byte {at}" if at is not None else "")
    timeouts = (
        requests.exceptions.Timeout,
        urllib3.exceptions.TimeoutError,
        TimeoutError,
    )
    if isinstance(exc, timeouts):
        return TransferTimeoutError(f"GET {where}: timed out ({exc.__class__.__name__})")
    return ConnectError(f"GET {where}: connection failed ({exc.__class__.__name__}: {redact(str(exc))[:200]})")


def _release(response: requests.Response) -> None:
    """Close ``response`` whose body is not wanted (a HEAD, a redirect, a 401 challenge).

    Closing a streamed response with its body unread closes its connection, so
    the next request would pay a new TCP and TLS handshake. When the rest of the
    body is known to be small (a HEAD answer; a declared ``Content-Length`` of at
    most :data:`_DRAIN_MAX`) it is read and dropped instead, which hands the
    connection back to the session's pool; anything else is closed as before.
    """
    drain = getattr(response.raw, "drain_conn", None)  # urllib3 >= 1.26
    length = response.headers.get("Content-Length", "")
    method = response.request.method if response.request is not None else None
    if drain is not None and (method == "HEAD" or (length.isdigit() and int(length) <= _DRAIN_MAX)):
        # Reads raw bytes (no decoding), at most the declared length; urllib3 hands the
        # connection back to the pool only once the answer has been read to its end.
        with contextlib.suppress(requests.RequestException, urllib3.exceptions.HTTPError, OSError):
            drain()
    response.close()


def _error_body(response: requests.Response) -> str:
    """At most :data:`ERROR_BODY_CAP` bytes of an error body, decoded and redacted."""
    try:
        data = response.raw.read(ERROR_BODY_CAP, decode_content=True) or b""
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError):
        data = b""
    finally:
        response.close()
    return redact(data.decode("utf-8", "replace")).strip()
