"""Client of the Doras edge API (``GET /api/v1/delta/``), port of Doras v0.20.2 ``pkg/client/edgeapi``.

:class:`EdgeClient` asks a Doras server for a delta between two images of
one repository:

- :meth:`EdgeClient.read_delta_async` sends one request: ``(response, True)``
  when the delta is ready, ``(None, False)`` while the server builds it (202);
- :meth:`EdgeClient.read_delta` polls with a fresh backoff strategy until the
  delta is ready, honouring ``Retry-After``, within an optional deadline;
- :meth:`EdgeClient.read_delta_as_stream` also fetches and checks the delta
  manifest through a :class:`ContentFetcher` (the registry layer) and returns
  the delta layer as a stream that verifies digest and size.

Transport rules (docs/edgeapi.md, docs/network.md): every request goes
through a :class:`~doras_oras.transport.Transport`: TLS verified by default;
plain ``http`` only with ``allow_http``; connection failures, timeouts and
the statuses of :data:`EDGE_RETRY_STATUSES` (429, 502, 503, 504, 408) are
retried with backoff honouring ``Retry-After``; redirects are followed at
most :data:`MAX_REDIRECTS` times, only to the same host and port (never
https to http), anything else raises
:class:`~doras_oras.errors.InsecureTransportError`; bodies are read in
streaming with caps (:data:`MAX_JSON_BYTES`, :data:`MAX_ERROR_BODY_BYTES`);
transfer failures are :class:`~doras_oras.errors.ConnectError` or
:class:`~doras_oras.errors.TransferTimeoutError`.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol
from urllib.parse import urlencode, urlsplit

import requests

from . import schemas
from .auth import DockerConfigAuth as DockerConfigAuth
from .auth import basic_header
from .backoff import BackoffStrategy, default_backoff, parse_retry_after
from .codecs import Compression as Compression
from .codecs import DeltaAlgorithm
from .codecs import Patch as Patch
from .descriptor import (
    ANNOTATION_DELTA_DUMMY,
    ANNOTATION_DELTA_FROM,
    ANNOTATION_DELTA_TO,
    OCI_MANIFEST,
    Descriptor,
    digest_of,
)
from .errors import (
    BackoffExhausted,
    BadRequestError,
    BodyTooLargeError,
    ConnectError,
    DeltaManifestError,
    DigestMismatchError,
    DocumentError,
    DorasServerError,
    ImagesIdenticalError,
    IncompatibleArtifactsError,
    InsecureTransportError,
    InvalidReferenceError,
    MediaTypeMismatchError,
    NotFoundError,
    SchemaValidationError,
    ServerError,
    TransferTimeoutError,
    TransportError,
    UnauthorizedError,
    UnsupportedAlgorithmError,
)
from .reference import Reference
from .transport import TransferPolicy, Transport, redact
from .verify import VerifyingReader

log = logging.getLogger(__name__)

API_DELTA_PATH = "/api/v1/delta/"
MAX_REDIRECTS = 10
MAX_JSON_BYTES = 4 << 20
MAX_ERROR_BODY_BYTES = 64 << 10
MAX_MANIFEST_BYTES = 4 << 20
EXCERPT_CHARS = 200
DEFAULT_TIMEOUT_S = 30.0
INCOMPATIBLE_MESSAGE = "artifacts are not compatible"
#: Statuses of the Doras server retried by the transport. Not 500: the server
#: answers its final errors (e.g. "artifacts are not compatible") with 500.
EDGE_RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})

#: Values of ``accepted_algorithm`` the server knows (DESIGN §2).
ALGORITHM_NAMES = ("bsdiff", "tardiff", "gzip", "zstd")
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


# --- algorithms ------------------------------------------------------------


# --- response --------------------------------------------------------------


@dataclass(frozen=True)
class ReadDeltaResponse:
    """The 200 answer: the target image and the delta image, both digest references."""

    target_image: Reference
    delta_image: Reference

    @classmethod
    def from_json(cls, obj: object) -> ReadDeltaResponse:
        """Parse the body; ``to_image`` is accepted for ``target_image``; unknown fields are ignored."""
        if not isinstance(obj, Mapping):
            raise SchemaValidationError("delta response: expected a JSON object")
        target = obj.get("target_image")
        if target is None:
            target = obj.get("to_image")
        return cls(
            target_image=_digest_reference(target, "target_image"),
            delta_image=_digest_reference(obj.get("delta_image"), "delta_image"),
        )

    def to_json(self) -> dict[str, str]:
        """The wire form (``target_image``, ``delta_image``)."""
        return {"target_image": str(self.target_image), "delta_image": str(self.delta_image)}


def _digest_reference(value: object, field: str) -> Reference:
    if not isinstance(value, str):
        raise SchemaValidationError(f"delta response: {field} missing or not a string")
    try:
        ref = Reference.parse(value)
    except InvalidReferenceError as exc:
        raise SchemaValidationError(f"delta response: {field}: {exc}") from exc
    if ref.digest is None:
        raise SchemaValidationError(f"delta response: {field} {value[:200]!r} is not a digest reference")
    return ref


# --- auth ------------------------------------------------------------------


class AuthProvider(Protocol):
    """Supplies the ``Authorization`` header value for a registry host, or ``None``."""

    def authorization(self, registry: str) -> str | None: ...


@dataclass(frozen=True)
class BearerAuth:
    """``Authorization: Bearer <token>``."""

    token: str

    def authorization(self, registry: str) -> str | None:
        return f"Bearer {self.token}"

    def __repr__(self) -> str:
        return "BearerAuth(token=***)"


@dataclass(frozen=True)
class BasicAuth:
    """``Authorization: Basic base64(user:password)``."""

    username: str
    password: str

    def authorization(self, registry: str) -> str | None:
        return basic_header(self.username, self.password)

    def __repr__(self) -> str:
        return f"BasicAuth(username={self.username!r}, password=***)"


AuthArg = AuthProvider | tuple[str, str] | None


def _as_provider(auth: AuthArg) -> AuthProvider | None:
    if auth is None:
        return None
    if isinstance(auth, tuple):
        user, password = auth
        return BasicAuth(user, password)
    return auth


class ContentFetcher(Protocol):
    """What :meth:`EdgeClient.read_delta_as_stream` needs from the registry layer."""

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


class EdgeClient:
    """Client of one Doras server.

    ``server_url`` is ``https://host[:port][/prefix]`` (``http`` only with
    ``allow_http``). ``auth`` is a :class:`BearerAuth`, :class:`BasicAuth`,
    ``(user, password)``, :class:`DockerConfigAuth` (looked up for the
    registry of the requested images) or ``None``; the server passes the
    credentials on to the registry. ``backoff`` makes a fresh strategy per
    polling call. ``ca_file`` verifies TLS against that CA bundle;
    ``insecure`` turns verification off. ``timeout_s`` bounds connect and
    each read. ``policy`` (a :class:`~doras_oras.transport.TransferPolicy`,
    e.g. the one of the whole pull) replaces the client's own: its timeouts,
    attempts, waits and deadline are used; ``allow_http``, the retried
    statuses and same-host redirects stay the client's.
    """

    def __init__(
        self,
        server_url: str,
        *,
        allow_http: bool = False,
        auth: AuthArg = None,
        backoff: Callable[[], BackoffStrategy] = default_backoff,
        session: requests.Session | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        insecure: bool = False,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        policy: TransferPolicy | None = None,
    ) -> None:
        parts = urlsplit(server_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidReferenceError(
                f"server URL {server_url[:200]!r} must be http(s)://host[:port][/path]"
            )
        if parts.query or parts.fragment or parts.username or parts.password:
            raise InvalidReferenceError(
                f"server URL {_redact_url(server_url)!r} must not carry a query, fragment or user info"
            )
        if parts.scheme == "http" and not allow_http:
            raise InsecureTransportError(
                f"server URL {server_url!r} is plain http: pass allow_http=True (--plain-http) to allow it"
            )
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.server_url = server_url.rstrip("/")
        self.allow_http = allow_http
        self.auth = _as_provider(auth)
        self.backoff = backoff
        self._own_session = session is None
        self.session = session if session is not None else requests.Session()
        self.verify: bool | str = False if insecure else (os.fspath(ca_file) if ca_file else True)
        if insecure:
            log.warning("TLS certificates of %s are not verified (insecure)", self.server_url)
        self.timeout_s = timeout_s
        if policy is None:
            policy = TransferPolicy(
                connect_timeout_s=timeout_s, read_timeout_s=timeout_s, deadline_s=max(120.0, 4 * timeout_s),
                max_attempts=3, wait_initial_s=0.25, wait_max_s=5.0, retry_after_max_s=30.0,
            )
        self.policy = dataclasses.replace(
            policy, allow_http=allow_http, retry_statuses=EDGE_RETRY_STATUSES, cross_host_redirects=False,
            max_redirects=MAX_REDIRECTS,
        )
        self.transport = Transport(self.session, self.policy, verify=self.verify)

    def __enter__(self) -> EdgeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP session if the client made it (a caller's session stays open)."""
        if self._own_session:
            self.session.close()

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
        for name in accepted_algorithms or ():
            if name not in ALGORITHM_NAMES:
                raise UnsupportedAlgorithmError(
                    f"unknown accepted algorithm {name[:50]!r}: use {', '.join(ALGORITHM_NAMES)}"
                )
            query.append(("accepted_algorithm", name))
        return query, from_ref, to_ref

    def read_delta_async(
        self,
        from_image: Reference | str,
        to_image: Reference | str,
        accepted_algorithms: Iterable[str] | None = None,
    ) -> tuple[ReadDeltaResponse | None, bool]:
        """One request: ``(response, True)`` when ready, ``(None, False)`` while being built.

        Raises :class:`ImagesIdenticalError` (204), a :class:`DorasServerError`
        subclass for error statuses, :class:`TransportError` subclasses for
        transport failures, :class:`DocumentError` for an unusable 200 body.
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
                body = _read_json_body(resp, "delta response")
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
            raise _error_from_response(resp, secrets=_secrets(header))

    def read_delta(
        self,
        from_image: Reference | str,
        to_image: Reference | str,
        accepted_algorithms: Iterable[str] | None = None,
        *,
        deadline_s: float | None = None,
    ) -> ReadDeltaResponse:
        """Poll until the delta is ready; :class:`BackoffExhausted` when attempts or ``deadline_s`` run out."""
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
            try:
                strategy.wait(retry_after, limit_s=limit)
            except BackoffExhausted as exc:
                raise BackoffExhausted(
                    f"delta not ready after {requests_sent} requests: {exc}"
                ) from exc

    def read_delta_as_stream(
        self,
        from_image: Reference | str,
        to_image: Reference | str,
        accepted_algorithms: Iterable[str] | None,
        fetcher: ContentFetcher,
        *,
        deadline_s: float | None = None,
    ) -> tuple[Descriptor, DeltaAlgorithm, BinaryIO]:
        """Wait for the delta, check its manifest, and open its layer.

        Returns the delta layer's descriptor, its algorithm and a stream that
        raises :class:`~doras_oras.errors.VerificationError` at its end when
        the bytes differ from the descriptor. The algorithm may be one that
        was not accepted (the server falls back to bsdiff): the caller checks.
        """
        from_ref = _as_reference(from_image, "from")
        to_ref = _as_reference(to_image, "to")
        response = self.read_delta(from_ref, to_ref, accepted_algorithms, deadline_s=deadline_s)
        check_response(response, from_ref, to_ref)
        body, content_type = fetcher.fetch_manifest(response.delta_image)
        descriptor, algorithm = check_delta_manifest(body, content_type, response, from_ref)
        log.info("delta %s: %s, %d bytes", response.delta_image, algorithm, descriptor.size)
        source = fetcher.open_blob(response.delta_image, descriptor)
        reader = _ClosingVerifyingReader(source, descriptor.digest, descriptor.size, what="delta layer")
        return descriptor, algorithm, io.BufferedReader(reader, buffer_size=1 << 16)

    # --- transport --------------------------------------------------------

    def _get(self, url: str, header: str | None) -> requests.Response:
        """GET through the transport (retries, checked redirects); the response is open (streamed).

        Any final status comes back (the caller maps it); a redirect without
        ``Location`` is a :class:`ServerError`.
        """
        if urlsplit(url).scheme != "https" and header and not self.allow_http:
            raise InsecureTransportError(f"refusing to send credentials over plain http to {_redact_url(url)}")
        headers = {"Accept": "application/json"}
        if header:
            headers["Authorization"] = header
        resp = self.transport.get(url, headers=headers, stream=True, authenticate=False, raise_for_status=False)
        if resp.status_code in _REDIRECT_STATUSES:
            resp.close()
            raise ServerError(resp.status_code, "redirect without a Location header")
        return resp


class _ClosingVerifyingReader(VerifyingReader):
    """A :class:`VerifyingReader` that also closes its source (the blob's HTTP stream)."""

    def __init__(self, source: BinaryIO, digest: str, size: int, *, what: str) -> None:
        super().__init__(source, digest, size, what=what)
        self._closable = source

    def close(self) -> None:
        try:
            if not self.closed:
                self._closable.close()
        finally:
            super().close()


def check_response(response: ReadDeltaResponse, from_ref: Reference, to_ref: Reference) -> None:
    """Check a 200 answer against the request: same repository, same target digest when asked by digest."""
    for field, ref in (("target_image", response.target_image), ("delta_image", response.delta_image)):
        if not ref.same_repository(to_ref):
            raise DeltaManifestError(
                f"server answered {field} {ref} outside the requested repository {to_ref.name}"
            )
    if to_ref.digest is not None and response.target_image.digest != to_ref.digest:
        raise DeltaManifestError(
            f"server answered target {response.target_image.digest}, requested {to_ref.digest}"
        )
    if response.delta_image.digest in (from_ref.digest, response.target_image.digest):
        raise DeltaManifestError("server named an image itself as the delta")


def _validate_manifest_document(obj: object) -> dict[str, Any]:
    """Check a delta manifest against the image manifest JSON schema (names the bad field)."""
    if not isinstance(obj, dict):
        raise SchemaValidationError("delta manifest: expected a JSON object")
    schemas.validate(obj, "manifest")
    return obj


def check_delta_manifest(
    body: bytes, content_type: str, response: ReadDeltaResponse, from_ref: Reference
) -> tuple[Descriptor, DeltaAlgorithm]:
    """Check a delta manifest and return its layer's descriptor and algorithm.

    Raises :class:`DigestMismatchError` if ``body`` is not ``response.delta_image``,
    :class:`DocumentError` subclasses for anything else unusable (a placeholder,
    other images, not exactly one layer, an unknown layer media type).
    """
    assert response.delta_image.digest is not None
    if len(body) > MAX_MANIFEST_BYTES:
        raise BodyTooLargeError(f"delta manifest over {MAX_MANIFEST_BYTES} bytes")
    actual = digest_of(body, response.delta_image.digest.split(":", 1)[0])
    if actual != response.delta_image.digest:
        raise DigestMismatchError(f"delta manifest: expected {response.delta_image.digest}, got {actual}")
    try:
        obj = json.loads(body)
    except ValueError as exc:
        raise DeltaManifestError(f"delta manifest {response.delta_image} is not JSON: {exc}") from exc
    manifest = _validate_manifest_document(obj)
    served_type = content_type.split(";", 1)[0].strip().lower()
    media_type = manifest.get("mediaType", OCI_MANIFEST)
    if served_type and served_type != media_type:
        raise MediaTypeMismatchError(
            f"delta manifest mediaType {media_type!r} served as Content-Type {served_type[:100]!r}"
        )
    annotations: dict[str, str] = manifest.get("annotations", {})
    if annotations.get(ANNOTATION_DELTA_DUMMY, "").lower() == "true":
        raise DeltaManifestError(
            f"{response.delta_image} is the placeholder the server stores while building, not a delta"
        )
    _check_annotation(annotations, ANNOTATION_DELTA_FROM, from_ref.digest)
    _check_annotation(annotations, ANNOTATION_DELTA_TO, response.target_image.digest)
    layers = manifest["layers"]
    if len(layers) != 1:
        raise DeltaManifestError(f"delta manifest has {len(layers)} layers, expected exactly 1")
    try:
        descriptor = Descriptor.from_json(layers[0])
    except (ValueError, TypeError) as exc:
        raise DeltaManifestError(f"delta manifest layer: {exc}") from exc
    try:
        algorithm = DeltaAlgorithm.from_media_type(descriptor.media_type)
    except UnsupportedAlgorithmError as exc:
        raise DeltaManifestError(f"delta manifest layer: {exc}") from exc
    return descriptor, algorithm


def _check_annotation(annotations: Mapping[str, str], key: str, digest: str | None) -> None:
    value = annotations.get(key)
    if value is None:
        raise DeltaManifestError(f"delta manifest lacks the annotation {key}")
    try:
        ref = Reference.parse(value)
    except InvalidReferenceError as exc:
        raise DeltaManifestError(f"delta manifest annotation {key}: {exc}") from exc
    if ref.digest != digest:
        raise DeltaManifestError(
            f"delta manifest is for other images: {key} is {value[:200]!r}, expected digest {digest}"
        )


# --- helpers ------------------------------------------------------------------


def _as_reference(value: Reference | str, what: str) -> Reference:
    if isinstance(value, Reference):
        return value
    try:
        return Reference.parse(value)
    except InvalidReferenceError as exc:
        raise InvalidReferenceError(f"{what} image: {exc}") from exc


def _redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        return parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")).geturl()[:300]
    return url[:300]


def _transport_error(exc: requests.RequestException, url: str) -> TransportError:
    where = _redact_url(url)
    if isinstance(exc, requests.Timeout):
        return TransferTimeoutError(f"timed out talking to {where}: {type(exc).__name__}")
    if isinstance(exc, requests.exceptions.SSLError):
        return ConnectError(f"TLS failed with {where}: {_short(str(exc))}")
    text = str(exc)
    if "timed out" in text.lower():
        return TransferTimeoutError(f"timed out talking to {where}")
    return ConnectError(f"cannot talk to {where}: {type(exc).__name__}: {_short(text)}")


def _short(text: str, limit: int = EXCERPT_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _read_capped(resp: requests.Response, cap: int) -> tuple[bytes, bool]:
    """Up to ``cap`` bytes of the (decoded) body and whether there was more."""
    buf = bytearray()
    try:
        for chunk in resp.iter_content(chunk_size=1 << 16):
            buf += chunk
            if len(buf) > cap:
                return bytes(buf[:cap]), True
    except requests.RequestException as exc:
        raise _transport_error(exc, resp.url) from exc
    return bytes(buf), False


def _declared_length(resp: requests.Response) -> int | None:
    value = resp.headers.get("Content-Length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def _read_json_body(resp: requests.Response, what: str) -> object:
    declared = _declared_length(resp)
    if declared is not None and declared > MAX_JSON_BYTES and "Content-Encoding" not in resp.headers:
        raise BodyTooLargeError(f"{what}: body of {declared} bytes is over the {MAX_JSON_BYTES} byte cap")
    data, more = _read_capped(resp, MAX_JSON_BYTES)
    if more:
        raise BodyTooLargeError(f"{what}: body over the {MAX_JSON_BYTES} byte cap")
    try:
        return json.loads(data)
    except ValueError as exc:
        raise DocumentError(
            f"{what}: status {resp.status_code} with a body that is not JSON: {_excerpt(data, ())!r}"
        ) from exc


def _secrets(header: str | None) -> tuple[str, ...]:
    if not header:
        return ()
    scheme, _, value = header.partition(" ")
    out = [value]
    if scheme.lower() == "basic":
        with contextlib.suppress(ValueError):
            out += [s for s in base64.b64decode(value).decode("utf-8", "replace").split(":", 1) if s]
    return tuple(s for s in out if len(s) >= 3)


def _excerpt(data: bytes, secrets: Sequence[str]) -> str:
    """A short printable excerpt of a body with credentials masked."""
    text = data[: EXCERPT_CHARS * 4].decode("utf-8", "replace")
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    text = " ".join(text.split())
    for secret in secrets:
        text = text.replace(secret, "***")
    return _short(redact(text))  # credentials, tokens, passwords, URL userinfo


def _field(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return _short(value, 1000)
    return _short(json.dumps(value, sort_keys=True), 1000)


def parse_error_body(data: bytes) -> tuple[str, str | None] | None:
    """``(message, context)`` from ``{"error": {...}}`` or RFC 9457 problem details, else ``None``."""
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    error = obj.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return _short(error["message"], 1000), _field(error.get("context"))
    if isinstance(error, str):
        return _short(error, 1000), None
    title, detail = obj.get("title"), obj.get("detail")
    if isinstance(title, str) or isinstance(detail, str):
        message = title if isinstance(title, str) and title else str(detail)
        context = detail if isinstance(detail, str) and message != detail else None
        instance = obj.get("instance")
        if context is None and isinstance(instance, str):
            context = instance
        return _short(message, 1000), _field(context)
    return None


def _error_from_response(resp: requests.Response, *, secrets: Sequence[str]) -> DorasServerError:
    status = resp.status_code
    declared = _declared_length(resp)
    data, more = _read_capped(resp, MAX_ERROR_BODY_BYTES)
    parsed = None if more else parse_error_body(data)
    if parsed is not None:
        message, context = parsed
        for secret in secrets:
            message = message.replace(secret, "***")
            context = context.replace(secret, "***") if context else context
    else:
        reason = resp.reason or "no reason"
        if more or (declared is not None and declared > MAX_ERROR_BODY_BYTES):
            message = f"{reason} (body over {MAX_ERROR_BODY_BYTES} bytes, not read)"
        elif data:
            message = f"{reason} (body not a Doras error document)"
        else:
            message = f"{reason} (empty body)"
        context = f"body excerpt: {_excerpt(data, secrets)!r}" if data else None
    cls: type[DorasServerError]
    if message == INCOMPATIBLE_MESSAGE or (context and INCOMPATIBLE_MESSAGE in context) or status == 406:
        cls = IncompatibleArtifactsError
    elif status == 400:
        cls = BadRequestError
    elif status == 401:
        cls = UnauthorizedError
    elif status == 404:
        cls = NotFoundError
    else:
        cls = ServerError
    return cls(status, message, context)
