"""The resilient HTTP transport every request of a pull goes through.

:class:`Transport` sends GET and HEAD requests with bounded time (connect and
read timeouts, a minimum throughput over a window, an overall deadline),
follows redirects itself (at most ``max_redirects``, never from https to
http, ``Authorization`` dropped when the origin changes), retries 429/5xx and
connection failures with the project's one backoff formula honouring
``Retry-After``, and answers registry authentication challenges through an
:class:`~doras_oras.transport.policy.AuthHook`. :meth:`Transport.download`
fills a blob writer resumably (:mod:`.download`). Every lower-level failure
becomes a :class:`~doras_oras.errors.TransportError` in :mod:`.failures`.
See ``docs/network.md``.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

import requests

from ..backoff import parse_retry_after
from ..errors import (
    BodyTooLargeError,
    Fix,
    InsecureTransportError,
    InvalidArgumentError,
    RegistryAuthError,
    RegistryError,
    TransferTimeoutError,
    TransportError,
)
from ..urls import origin, safe_url
from . import download as _download
from .failures import (
    NETWORK_ERRORS,
    REGISTRY_PEER,
    Retryable,
    Stalled,
    error_body,
    error_kwargs,
    release,
    tls_error,
    translate,
)
from .policy import AuthHook, ByteCounter, TransferPolicy, retry_wait_s
from .timing import CallBudget, ThroughputGuard

if TYPE_CHECKING:
    from .download import Sink

log = logging.getLogger(__name__)

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


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

    def _budget(self, deadline: float | None) -> CallBudget:
        """The attempts and deadline of one public call (``deadline``: a monotonic instant)."""
        if deadline is None and self.policy.deadline_s is not None:
            deadline = self._clock() + self.policy.deadline_s
        return CallBudget(self.policy, self._clock, deadline)

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
            except Retryable as failure:
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
                except NETWORK_ERRORS as exc:
                    response.close()
                    self._after_failure(budget, Retryable(translate(exc, url)))
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
            except Retryable as failure:
                self._after_failure(budget, failure)
                continue
            try:
                body = self._read_capped(response, max_bytes, url, budget)
            except Stalled:
                self._after_failure(budget, Retryable(TransferTimeoutError(
                    f"GET {safe_url(url)}: slower than {self.policy.min_bytes_per_s:g} B/s over "
                    f"{self.policy.throughput_window_s:g} s"
                )))
                continue
            except NETWORK_ERRORS as exc:
                self._after_failure(budget, Retryable(translate(exc, url)))
                continue
            finally:
                response.close()
            return body, response

    def _read_capped(self, response: requests.Response, limit: int, url: str, budget: CallBudget) -> bytes:
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
            chunk = response.raw.read1(64 * 1024, decode_content=True)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise BodyTooLargeError(f"GET {safe_url(url)}: body is over the {limit} byte cap")
            parts.append(chunk)
            guard.add(len(chunk))
        return b"".join(parts)

    def read_body(self, response: requests.Response, *, max_bytes: int, deadline: float | None = None) -> bytes:
        """The (decoded) body of an answer of :meth:`get` with ``stream=True``; closes it.

        More than ``max_bytes`` is a :class:`BodyTooLargeError`; a failure while reading is a
        :class:`TransportError` (not retried: the answer is spent).
        """
        budget = self._budget(deadline)
        try:
            return self._read_capped(response, max_bytes, response.url, budget)
        except Stalled:
            raise TransferTimeoutError(
                f"GET {safe_url(response.url)}: slower than {self.policy.min_bytes_per_s:g} B/s"
            ) from None
        except NETWORK_ERRORS as exc:
            raise translate(exc, response.url) from exc
        finally:
            response.close()

    def _after_failure(self, budget: CallBudget, failure: Retryable) -> None:
        budget.failures += 1
        if budget.failures >= self.policy.max_attempts:
            raise type(failure.error)(
                f"{failure.error.detail} (gave up after {budget.failures} attempts)",
                **error_kwargs(failure.error),
            ) from failure.error
        wait = retry_wait_s(budget.failures, self.policy, retry_after_s=failure.retry_after_s, rand=self._rand)
        left = budget.remaining_s()
        if left is not None and wait >= left:
            raise TransferTimeoutError(
                f"{failure.error.detail}; the next attempt would pass the overall deadline", fix=failure.error.fix,
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
            except Retryable as failure:
                self._after_failure(budget, failure)
                continue
            release(response)
            return response

    def _attempt(
        self,
        url: str,
        headers: Mapping[str, str],
        budget: CallBudget,
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
                    timeout=budget.timeouts(),
                    verify=self.verify,
                    auth=_ExactAuthorization(_header(send, "Authorization")),
                )
            except requests.exceptions.SSLError as exc:
                raise tls_error(exc, current, peer=self.peer) from exc
            except NETWORK_ERRORS as exc:
                raise Retryable(translate(exc, current, method=method)) from exc
            status = response.status_code
            if status in _REDIRECT_STATUSES and "Location" in response.headers:
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
            if 200 <= status < 300:
                return response
            if not raise_for_status:
                if status in self.policy.retry_statuses:
                    retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
                    error = RegistryError(f"{method} {safe_url(current)} answered {status}", status=status)
                    raise Retryable(error, retry_after, response)
                return response
            body = error_body(response)
            message = f"{method} {safe_url(current)} answered {status}"
            if body:
                message += f": {body[:300]}"
            if status in (401, 403):
                raise RegistryAuthError(message, status=status, fix=Fix.REGISTRY_CREDENTIALS)
            if status in self.policy.retry_statuses:
                retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
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
        deadline: float | None = None,
        exact_length: bool = False,
    ) -> str:
        """Fill ``sink`` with the blob at ``url``, resumably; return its digest (see :func:`.download.download`)."""
        return _download.download(self, url, sink, headers=headers, counter=counter, deadline=deadline,
                                  exact_length=exact_length)
