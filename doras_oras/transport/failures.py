"""The one error boundary of the network: ``requests``/``urllib3``/socket failures as
:class:`~doras_oras.errors.TransportError` subclasses, and the handling of answers whose
body is not wanted.

:func:`translate` is the only place that turns a lower-level exception into a project
error. It keeps the cause a user can act on ("connection refused", "cannot resolve host
registry.example (Name or service not known)", "certificate verify failed") and nothing
that may hold a secret (URLs lose their userinfo and query, texts are redacted); a TLS
failure carries the :class:`~doras_oras.errors.Fix` of its peer (:func:`tls_error`). The
internal exceptions :class:`Retryable` and :class:`Stalled` carry a failure from an
attempt to the retry loop.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3.exceptions

from ..errors import ConnectError, Fix, RegistryError, TransferTimeoutError, TransportError
from ..redact import redact, shorten
from ..urls import origin, safe_url

#: The statuses of a redirect (followed only with a ``Location``).
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: Error bodies are read up to this many bytes, never more.
ERROR_BODY_CAP = 64 * 1024
#: Unwanted bodies (redirects, 401 challenges) up to this size are read to keep the connection.
DRAIN_MAX = 64 * 1024

#: What a failing connection, TLS session or HTTP parser may raise.
NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
)

_TIMEOUTS = (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError, TimeoutError, socket.timeout)

#: How a :class:`Transport` names its peer in messages; the Doras server's TLS fixes differ.
REGISTRY_PEER = "the registry"
SERVER_PEER = "the Doras server"

#: OpenSSL reasons of a TLS client talking to a plain HTTP server (its answer is no TLS record).
_PLAIN_HTTP_ANSWERS = ("WRONG_VERSION_NUMBER", "wrong version number", "record layer failure",
                       "RECORD_LAYER_FAILURE", "packet length too long", "http request")


class Retryable(Exception):
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


class Stalled(Exception):
    """Internal: the body came slower than the policy's minimum throughput."""


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps (``reason`` of urllib3 errors, args, causes), outermost first."""
    seen: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 20:
        item = todo.pop(0)
        if any(item is other for other in seen):
            continue
        seen.append(item)
        reason = getattr(item, "reason", None)
        if isinstance(reason, BaseException):
            todo.append(reason)
        todo.extend(arg for arg in getattr(item, "args", ()) if isinstance(arg, BaseException))
        for linked in (item.__cause__, item.__context__):
            if linked is not None:
                todo.append(linked)
    return seen


def cause(exc: BaseException, url: str | None = None) -> str:
    """The innermost reason of a network failure, short and redacted (``connection refused``).

    A name resolution failure names the host of ``url`` and the resolver's words.
    """
    chain = _chain(exc)
    if any(isinstance(item, socket.gaierror) or "NameResolution" in type(item).__name__ for item in chain):
        strerror = next((str(item.strerror) for item in chain
                         if isinstance(item, socket.gaierror) and item.strerror), None)
        host = origin(url)[1] if url else None
        text = f"cannot resolve host {host}" if host else "name resolution failed"
        return text + (f" ({strerror})" if strerror else "")
    for item in reversed(chain):
        if isinstance(item, ssl.SSLError):
            text = getattr(item, "verify_message", None) or getattr(item, "reason", None) or str(item)
            return f"TLS: {shorten(redact(str(text)), 160)}"
    for item in reversed(chain):
        strerror = getattr(item, "strerror", None)
        if isinstance(item, OSError) and strerror:
            return str(strerror).lower()
    inner = chain[-1]
    return shorten(f"{type(inner).__name__}: {redact(str(inner))}", 200)


def translate(exc: BaseException, url: str, *, at: int | None = None, method: str = "GET") -> TransportError:
    """A lower-level exception as a :class:`TransportError` naming the URL (without secrets)."""
    where = f"{method} {safe_url(url)}" + (f" at byte {at}" if at is not None else "")
    if isinstance(exc, TransportError):
        return exc
    # (urllib3's NewConnectionError derives from its ConnectTimeoutError: a refusal is no timeout)
    if isinstance(exc, _TIMEOUTS) and not isinstance(exc, urllib3.exceptions.NewConnectionError):
        return TransferTimeoutError(f"{where}: timed out ({type(exc).__name__})")
    return ConnectError(f"{where}: {cause(exc, url)}")


def speaks_plain_http(exc: BaseException) -> bool:
    """Whether a TLS failure says the peer answered plain HTTP (no TLS record)."""
    return any(isinstance(item, ssl.SSLError) and any(word in str(item) for word in _PLAIN_HTTP_ANSWERS)
               for item in _chain(exc))


def tls_error(exc: BaseException, url: str, *, peer: str) -> ConnectError:
    """A TLS handshake or verification failure with ``peer`` (:data:`REGISTRY_PEER`, :data:`SERVER_PEER`).

    Its :class:`~doras_oras.errors.Fix`: the peer speaks plain HTTP (an answer that is no TLS
    record), else its certificate does not verify (a CA bundle, or verification off).
    """
    parts = urlsplit(url)
    where = f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"
    server = peer == SERVER_PEER
    if speaks_plain_http(exc):
        fix = Fix.SERVER_SPEAKS_HTTP if server else Fix.PLAIN_HTTP
        return ConnectError(f"TLS with {peer} at {where} failed: it answers plain HTTP ({cause(exc)})", fix=fix)
    fix = Fix.TLS_SERVER if server else Fix.TLS_REGISTRY
    return ConnectError(f"TLS with {peer} at {where} failed ({cause(exc)})", fix=fix)


def error_kwargs(error: TransportError) -> dict[str, Any]:
    """The keyword arguments that rebuild ``error`` with another message (its fix kept)."""
    kwargs: dict[str, Any] = {"fix": error.fix}
    if isinstance(error, RegistryError):
        kwargs["status"] = error.status
    return kwargs


def release(response: requests.Response) -> None:
    """Close ``response`` whose body is not wanted (a HEAD, a redirect, a 401 challenge).

    Closing a streamed response with its body unread closes its connection, so
    the next request would pay a new TCP and TLS handshake. When the rest of the
    body is known to be small (a HEAD answer; a declared ``Content-Length`` of at
    most :data:`DRAIN_MAX`) it is read and dropped instead, which hands the
    connection back to the session's pool; anything else is closed as before.
    """
    drain = getattr(response.raw, "drain_conn", None)  # urllib3 >= 1.26
    length = response.headers.get("Content-Length", "")
    method = response.request.method if response.request is not None else None
    if drain is not None and (method == "HEAD" or (length.isdigit() and int(length) <= DRAIN_MAX)):
        # Reads raw bytes (no decoding), at most the declared length; urllib3 hands the
        # connection back to the pool only once the answer has been read to its end.
        with contextlib.suppress(*NETWORK_ERRORS):
            drain()
    response.close()


def read_error_body(response: requests.Response, cap: int = ERROR_BODY_CAP) -> tuple[bytes, bool]:
    """At most ``cap`` bytes of an error body (decoded) and whether there was more; closes it."""
    try:
        data = response.raw.read(cap + 1, decode_content=True) or b""
    except NETWORK_ERRORS:
        data = b""
    finally:
        response.close()
    return data[:cap], len(data) > cap


def error_body(response: requests.Response) -> str:
    """At most :data:`ERROR_BODY_CAP` bytes of an error body, decoded and redacted."""
    data, _more = read_error_body(response)
    return redact(data.decode("utf-8", "replace")).strip()
