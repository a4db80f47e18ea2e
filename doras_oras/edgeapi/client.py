"""The client of the Doras edge API (``GET /api/v1/delta/``), port of Doras v0.20.2 ``pkg/client/edgeapi``.

:class:`EdgeClient` asks a Doras server for a delta between two images of
one repository. The three calls of the Go client, with the same arguments:

- :meth:`EdgeClient.read_delta_async` sends one request: ``(response, True)``
  when the delta is ready, ``(None, False)`` while the server builds it (202);
- :meth:`EdgeClient.read_delta` polls with a fresh backoff strategy until the
  delta is ready, honouring ``Retry-After``, within an optional deadline;
- :meth:`EdgeClient.read_delta_as_stream` also fetches and checks the delta
  manifest and returns the delta layer as a stream that verifies digest and
  size. It reads the registry itself (plain HTTP when the client allows it,
  its TLS settings, its basic credentials), or through a :class:`ContentFetcher`
  of the caller's.

:meth:`EdgeClient.fetch_delta` is the conversation all of them and the
delta-aware pull share: ask (once or polling), check the answer against the
request, fetch and check the delta manifest, return a :class:`Delta`.

Transport rules (docs/edgeapi.md, docs/network.md): every request goes
through a :class:`~doras_oras.transport.Transport`: TLS verified by default;
plain ``http`` only with ``allow_http``; connection failures, timeouts and
the statuses of :data:`EDGE_RETRY_STATUSES` (429, 502, 503, 504, 408) are
retried with backoff honouring ``Retry-After``; redirects are followed at
most :data:`MAX_REDIRECTS` times, only to the same host and port (never
https to http), anything else raises
:class:`~doras_oras.errors.InsecureTransportError`; bodies are read with
caps (:data:`~doras_oras.schemas.MAX_JSON_BYTES`, :data:`MAX_ERROR_BODY_BYTES`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, BinaryIO, Protocol
from urllib.parse import urlencode, urlsplit

import requests

from .. import schemas
from ..algorithms import DeltaAlgorithm, check_algorithm_names
from ..auth import IDENTITY_TOKEN_USER, DockerConfigAuth
from ..backoff import BackoffStrategy, default_backoff, parse_retry_after
from ..descriptor import (
    Descriptor,
)
from ..errors import (
    BackoffExhausted,
    BodyTooLargeError,
    DocumentError,
    DorasServerError,
    Fix,
    ImagesIdenticalError,
    IncompatibleArtifactsError,
    InsecureTransportError,
    InvalidArgumentError,
    InvalidReferenceError,
    NotFoundError,
    UnauthorizedError,
)
from ..redact import excerpt, mask, secrets_of
from ..reference import Reference
from ..stream import verifies, verifying_stream
from ..transport import ERROR_BODY_CAP, REDIRECT_STATUSES, RETRY_STATUSES, TransferPolicy, Transport
from ..transport.failures import SERVER_PEER, read_error_body
from ..urls import safe_url
from .answers import (
    Delta,
    ImageRef,
    ReadDeltaResponse,
    check_delta_manifest,
    check_response,
    parse_error_body,
)
from .credentials import AuthArg, BasicAuth, as_provider

if TYPE_CHECKING:
    from ..registry_client import RegistryClient, SupportsRegistryClient

log = logging.getLogger(__name__)

API_DELTA_PATH = "/api/v1/delta/"
MAX_REDIRECTS = 10
MAX_ERROR_BODY_BYTES = ERROR_BODY_CAP
DEFAULT_TIMEOUT_S = 30.0
INCOMPATIBLE_MESSAGE = "artifacts are not compatible"
#: Statuses of the Doras server retried by the transport. Not 500: the server
#: answers its final errors (e.g. "artifacts are not compatible") with 500.
EDGE_RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})



class ContentFetcher(Protocol):
    """What :meth:`EdgeClient.fetch_delta` needs from the registry layer."""

    def fetch_manifest(self, ref: Reference) -> tuple[bytes, str]:
        """Body and Content-Type of the manifest ``ref`` names.

        At most 4 MiB; verified against ``ref.digest`` when it has one.
        """
        ...

    def open_blob(self, ref: Reference, descriptor: Descriptor) -> BinaryIO:
        """A stream of the blob ``descriptor`` in the repository of ``ref``."""
        ...


# --- the client ---------------------------------------------------------------


Query = list[tuple[str, str]]


def _check_server_url(server_url: str, allow_http: bool) -> str:
    if not isinstance(server_url, str):
        raise InvalidArgumentError(f"server URL must be a string, not {type(server_url).__name__}")
    parts = urlsplit(server_url)
    try:
        _port = parts.port
    except ValueError:
        raise InvalidArgumentError(f"server URL {safe_url(server_url)[:200]!r} has a bad port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgumentError(
            f"server URL {safe_url(server_url)[:200]!r} must be http(s)://host[:port][/path]"
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise InvalidArgumentError(
            f"server URL {safe_url(server_url)!r} must not carry a query, fragment or user info"
        )
    if parts.scheme == "http" and not allow_http:
        raise InsecureTransportError(f"the Doras server URL {server_url!r} is plain http", fix=Fix.SERVER_PLAIN_HTTP)
    return server_url.rstrip("/")


class EdgeClient:
    """Client of one Doras server.

    ``server_url`` is ``https://host[:port][/prefix]`` (``http`` only with
    ``allow_http``, which also lets :meth:`read_delta_as_stream` read the
    registry over plain HTTP, as the Go client does). ``auth`` is a
    :class:`BearerAuth`, :class:`BasicAuth`, ``(user, password)``,
    :class:`DockerConfigAuth` (looked up for the registry of the requested
    images) or ``None``; the server passes the credentials on to the registry.
    ``backoff`` makes a fresh strategy per polling call. ``tls_verify`` is
    spelled as the registry clients spell it: True (the system's CAs), a CA
    bundle path, or False (no verification).
    ``timeout_s`` bounds connect and each read. ``policy`` (a
    :class:`~doras_oras.transport.TransferPolicy`, e.g. the one of the whole
    pull) replaces the client's own: its timeouts, attempts, waits and deadline
    are used; ``allow_http``, the retried statuses and same-host redirects stay
    the client's.
    """

    def __init__(
        self,
        server_url: str,
        allow_http: bool = False,
        auth: AuthArg = None,
        *,
        backoff: Callable[[], BackoffStrategy] = default_backoff,
        session: requests.Session | None = None,
        tls_verify: bool | str | os.PathLike[str] = True,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        policy: TransferPolicy | None = None,
    ) -> None:
        self.server_url = _check_server_url(server_url, allow_http)
        if not (isinstance(timeout_s, int | float) and math.isfinite(timeout_s) and timeout_s > 0):
            raise InvalidArgumentError(f"timeout_s must be a positive number of seconds, not {timeout_s!r}")
        self.allow_http = allow_http
        self.auth = as_provider(auth)
        self.backoff = backoff
        self._own_session = session is None
        self.session = session if session is not None else requests.Session()
        self.verify: bool | str = tls_verify if isinstance(tls_verify, bool) else os.fspath(tls_verify)
        if self.verify is False:
            log.warning("TLS certificates of %s are not verified (insecure)", self.server_url)
        self.timeout_s = timeout_s
        if policy is None:
            policy = TransferPolicy(
                connect_timeout_s=timeout_s, read_timeout_s=timeout_s, deadline_s=max(120.0, 4 * timeout_s),
                max_attempts=3, wait_initial_s=0.25, wait_max_s=5.0, retry_after_max_s=30.0,
            )
        self._base_policy = policy
        self.policy = dataclasses.replace(
            policy, allow_http=allow_http, retry_statuses=EDGE_RETRY_STATUSES, cross_host_redirects=False,
            max_redirects=MAX_REDIRECTS,
        )
        self.transport = Transport(self.session, self.policy, verify=self.verify, peer=SERVER_PEER)
        self.bytes_received = 0
        """Body bytes of the server's answers read so far."""
        self._registry: RegistryClient | None = None

    @classmethod
    def for_registry(cls, registry: RegistryClient | SupportsRegistryClient, server_url: str,
                     registry_host: str) -> EdgeClient:
        """A client of ``server_url`` with the settings of ``registry``, the client of ``registry_host``.

        The registry's credentials for ``registry_host`` (basic credentials set on
        the client, or from docker config files: :meth:`RegistryClient.credentials_for`)
        are passed on: the server reads the registry with them. Over plain
        ``http://`` only when the registry allows insecure auth; its TLS settings
        (``tls_verify``) and transfer policy apply.
        """
        from ..registry_client import registry_client_of  # the registry layer, loaded on demand

        client = registry_client_of(registry)
        credentials = client.credentials_for(registry_host)
        if credentials is not None and credentials[0] == IDENTITY_TOKEN_USER:
            credentials = None  # an identity token is for the registry's token server, not a password to pass on
        auth = BasicAuth(*credentials) if credentials is not None else None
        plain = server_url.startswith("http://")
        if plain and auth is not None and not client.allow_insecure_auth:
            raise InsecureTransportError(
                f"the credentials for {registry_host} would go to the Doras server {safe_url(server_url)} over "
                "plain HTTP; refused", fix=Fix.INSECURE_AUTH)
        return cls(server_url, plain, auth, tls_verify=client.tls_verify, policy=client.policy)

    def __enter__(self) -> EdgeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP sessions the client made (a caller's session stays open)."""
        if self._own_session:
            self.session.close()
        if self._registry is not None:
            self._registry.close()

    # --- requests -------------------------------------------------------

    def delta_url(
        self,
        from_image: Reference | str,
        to_image: Reference | str,
        accepted_algorithms: Iterable[str] | None = None,
    ) -> str:
        """The request URL for a delta ``from_image -> to_image`` (checked locally)."""
        return self._url(self._query(from_image, to_image, accepted_algorithms)[0])

    def _url(self, query: Query) -> str:
        return f"{self.server_url}{API_DELTA_PATH}?{urlencode(query)}"

    def _query(
        self,
        from_image: Reference | str,
        to_image: Reference | str,
        accepted_algorithms: Iterable[str] | None,
    ) -> tuple[Query, Reference, Reference]:
        from_ref = _as_reference(from_image, "from")
        to_ref = _as_reference(to_image, "to")
        if from_ref.digest is None:
            raise InvalidReferenceError(
                f"from image {str(from_ref)!r} must be a digest reference (registry/repo@sha256:...)"
            )
        query: Query = [("from_digest", str(from_ref.with_digest(from_ref.digest)))]
        if to_ref.digest is not None:
            query.append(("to_digest", str(to_ref.with_digest(to_ref.digest))))
        else:
            query.append(("to_tag", str(to_ref.with_tag(to_ref.tag or "latest"))))
        names = check_algorithm_names(accepted_algorithms) if accepted_algorithms is not None else ()
        query.extend(("accepted_algorithm", name) for name in names)
        return query, from_ref, to_ref

    def read_delta_async(
        self,
        from_image: Reference | str,
        to_image: Reference | str,
        accepted_algorithms: Iterable[str] | None = None,
    ) -> tuple[ReadDeltaResponse | None, bool]:
        """One request: ``(response, True)`` when ready, ``(None, False)`` while being built.

        Raises :class:`ImagesIdenticalError` (204), a :class:`DorasServerError`
        subclass for error statuses, :class:`~doras_oras.errors.TransportError`
        subclasses for transport failures, :class:`DocumentError` for an unusable 200 body.
        """
        response, _retry_after = self._request_delta(from_image, to_image, accepted_algorithms)
        return response, response is not None

    def _request_delta(
        self,
        from_image: Reference | str,
        to_image: Reference | str,
        accepted_algorithms: Iterable[str] | None,
    ) -> tuple[ReadDeltaResponse | None, float | None]:
        query, from_ref, _to_ref = self._query(from_image, to_image, accepted_algorithms)
        return self._send_query(query, from_ref.registry)

    def _send_query(self, query: Query, registry: str) -> tuple[ReadDeltaResponse | None, float | None]:
        """Send a delta request with these query parameters as they are (no local checks)."""
        header = self.auth.authorization(registry) if self.auth else None
        url = self._url(query)
        log.debug("GET %s", url)
        resp = self._get(url, header)
        with resp:
            status = resp.status_code
            if status == 200:
                body = self._read_json_body(resp, "delta response")
                result = ReadDeltaResponse.from_json(body)
                log.info("delta ready: %s", result.delta_image)
                return result, None
            if status == 202:
                retry_after = parse_retry_after(resp.headers.get("Retry-After"), time.time())
                log.info("delta being built (202)%s",
                         f", retry after {retry_after:g} s" if retry_after is not None else "")
                return None, retry_after
            if status == 204:
                names = dict(query)
                to_name = names.get("to_tag") or names.get("to_digest")
                raise ImagesIdenticalError(f"{names.get('from_digest')} and {to_name} are the same image")
            raise self._error_from_response(resp, secrets=secrets_of(header))

    def read_delta(
        self,
        from_image: Reference | str,
        to_image: Reference | str,
        accepted_algorithms: Iterable[str] | None = None,
        *,
        deadline_s: float | None = None,
        on_wait: Callable[[int, float], None] | None = None,
    ) -> ReadDeltaResponse:
        """Poll until the delta is ready; :class:`BackoffExhausted` when attempts or ``deadline_s`` run out.

        ``on_wait(requests_sent, seconds_waited_so_far)`` is called before each wait
        (a spinner on a terminal).
        """
        strategy = self.backoff()
        start = strategy.now()
        algorithms = list(accepted_algorithms) if accepted_algorithms is not None else None
        requests_sent = 0
        while True:
            response, retry_after = self._request_delta(from_image, to_image, algorithms)
            requests_sent += 1
            if response is not None:
                return response
            limit: float | None = None
            if deadline_s is not None:
                limit = deadline_s - (strategy.now() - start)
                if limit <= 0:
                    raise BackoffExhausted(
                        f"delta not ready within the deadline of {deadline_s:g} s "
                        f"({requests_sent} requests)"
                    )
            if on_wait is not None:
                on_wait(requests_sent, strategy.now() - start)
            try:
                strategy.wait(retry_after, limit_s=limit)
            except BackoffExhausted as exc:
                raise BackoffExhausted(
                    f"delta not ready after {requests_sent} requests: {exc}"
                ) from exc

    def fetch_delta(
        self,
        from_image: Reference | str,
        to_image: Reference | str,
        accepted_algorithms: Iterable[str] | None = None,
        fetcher: ContentFetcher | None = None,
        *,
        wait: bool = True,
        deadline_s: float | None = None,
        on_wait: Callable[[int, float], None] | None = None,
    ) -> Delta | None:
        """Ask for the delta (polling with ``wait``, once without), check the answer and its manifest.

        Returns the checked :class:`Delta`, or None when ``wait`` is False and the server
        is still building it. The answer must name the requested repository (and the
        requested target digest, when asked by digest); the delta manifest must be the
        digest the answer names, a valid image manifest served as its media type, not the
        placeholder the server stores while building, for these two images, with exactly
        one layer of a delta media type. ``fetcher`` (default :meth:`registry_client`)
        reads the delta manifest.
        """
        from_ref = _as_reference(from_image, "from")
        to_ref = _as_reference(to_image, "to")
        if wait:
            response: ReadDeltaResponse | None = self.read_delta(
                from_ref, to_ref, accepted_algorithms, deadline_s=deadline_s, on_wait=on_wait)
        else:
            response, _exists = self.read_delta_async(from_ref, to_ref, accepted_algorithms)
        if response is None:
            return None
        check_response(response, from_ref, to_ref)
        source = fetcher if fetcher is not None else self.registry_client()
        body, content_type = source.fetch_manifest(response.delta_ref)
        layer, algorithm = check_delta_manifest(body, content_type, response, from_ref)
        log.info("delta %s: %s, %d bytes", response.delta_image, algorithm, layer.size)
        return Delta(response, layer, algorithm)

    def read_delta_as_stream(
        self,
        from_image: Reference | str,
        to_image: Reference | str,
        accepted_algorithms: Iterable[str] | None = None,
        fetcher: ContentFetcher | None = None,
        *,
        deadline_s: float | None = None,
    ) -> tuple[Descriptor, DeltaAlgorithm, BinaryIO]:
        """Wait for the delta, check its manifest, and open its layer.

        Returns the delta layer's descriptor, its algorithm and a stream that
        raises :class:`~doras_oras.errors.VerificationError` at its end when
        the bytes differ from the descriptor. The algorithm may be one that
        was not accepted (the server falls back to bsdiff): the caller checks.
        Without ``fetcher`` the registry is read by :meth:`registry_client`.
        """
        source = fetcher if fetcher is not None else self.registry_client()
        delta = self.fetch_delta(from_image, to_image, accepted_algorithms, source, deadline_s=deadline_s)
        assert delta is not None  # waiting never returns "pending"
        stream = source.open_blob(delta.manifest_ref, delta.layer)
        if not verifies(stream, delta.layer.digest, delta.layer.size):  # the registry client's already does
            stream = verifying_stream(stream, delta.layer.digest, delta.layer.size, what="delta layer")
        return delta.layer, delta.algorithm, stream

    def registry_client(self) -> RegistryClient:
        """The client this edge client reads the registry with when no fetcher is given.

        Plain HTTP when ``allow_http`` (as the Go client), the same TLS settings and
        transfer policy; basic credentials of ``auth`` are used for the registry too, a
        :class:`DockerConfigAuth` is read for it, a bearer token (for the Doras server)
        is not sent to the registry.
        """
        if self._registry is None:
            from ..registry_client import RegistryClient  # the registry layer, built on demand

            credentials: tuple[str, str] | None = None
            configs: list[str] = []
            if isinstance(self.auth, BasicAuth):
                credentials = (self.auth.username, self.auth.password)
            elif isinstance(self.auth, DockerConfigAuth):
                configs = [str(p) for p in self.auth.paths if p.is_file()]
            policy = dataclasses.replace(self._base_policy, retry_statuses=RETRY_STATUSES)
            self._registry = RegistryClient(plain_http=self.allow_http, tls_verify=self.verify, policy=policy,
                                            allow_insecure_auth=self.allow_http, credentials=credentials,
                                            registry_configs=configs)
        return self._registry

    # --- transport --------------------------------------------------------

    def _get(self, url: str, header: str | None) -> requests.Response:
        """GET through the transport (retries, checked redirects); the response is open (streamed).

        Any final status comes back (the caller maps it); a redirect without
        ``Location`` is a :class:`DorasServerError`.
        """
        if urlsplit(url).scheme != "https" and header and not self.allow_http:
            raise InsecureTransportError(f"refusing to send credentials over plain http to {safe_url(url)}",
                                         fix=Fix.INSECURE_AUTH)
        headers = {"Accept": "application/json"}
        if header:
            headers["Authorization"] = header
        resp = self.transport.get(url, headers=headers, stream=True, authenticate=False, raise_for_status=False)
        if resp.status_code in REDIRECT_STATUSES:
            resp.close()
            raise DorasServerError(resp.status_code, "redirect without a Location header")
        return resp

    def _read_json_body(self, resp: requests.Response, what: str) -> object:
        declared = _declared_length(resp)
        if declared is not None and declared > schemas.MAX_JSON_BYTES and "Content-Encoding" not in resp.headers:
            raise BodyTooLargeError(
                f"{what}: body of {declared} bytes is over the {schemas.MAX_JSON_BYTES} byte cap")
        try:
            data = self.transport.read_body(resp, max_bytes=schemas.MAX_JSON_BYTES)
        except BodyTooLargeError:
            raise BodyTooLargeError(f"{what}: body over the {schemas.MAX_JSON_BYTES} byte cap") from None
        self.bytes_received += len(data)
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the parser goes
            raise DocumentError(
                f"{what}: status {resp.status_code} with a body that is not JSON: {excerpt(data)!r}"
            ) from exc

    def _error_from_response(self, resp: requests.Response, *, secrets: tuple[str, ...]) -> DorasServerError:
        status = resp.status_code
        declared = _declared_length(resp)
        data, more = read_error_body(resp, MAX_ERROR_BODY_BYTES)
        self.bytes_received += len(data)
        parsed = None if more else parse_error_body(data)
        if parsed is not None:
            message, context = parsed
            message = mask(message, secrets)
            context = mask(context, secrets) if context else context
        else:
            reason = resp.reason or "no reason"
            if more or (declared is not None and declared > MAX_ERROR_BODY_BYTES):
                message = f"{reason} (body over {MAX_ERROR_BODY_BYTES} bytes, not read)"
            elif data:
                message = f"{reason} (body not a Doras error document)"
            else:
                message = f"{reason} (empty body)"
            context = f"body excerpt: {excerpt(data, secrets)!r}" if data else None
        cls: type[DorasServerError]
        if message == INCOMPATIBLE_MESSAGE or (context and INCOMPATIBLE_MESSAGE in context) or status == 406:
            cls = IncompatibleArtifactsError
        elif status == 401:
            cls = UnauthorizedError
        elif status == 404:
            cls = NotFoundError
        else:
            cls = DorasServerError
        return cls(status, message, context, fix=Fix.SERVER_CREDENTIALS if cls is UnauthorizedError else None)


def _as_reference(value: Reference | str, what: str) -> Reference:
    if isinstance(value, ImageRef):
        return value.ref
    if isinstance(value, Reference):
        return value
    try:
        return Reference.parse(value)
    except InvalidReferenceError as exc:
        raise InvalidReferenceError(f"{what} image: {exc}") from exc


def _declared_length(resp: requests.Response) -> int | None:
    value = resp.headers.get("Content-Length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


