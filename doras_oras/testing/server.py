"""A Doras-compatible delta server for tests and demos (DESIGN.md §2).

``DorasServer`` answers the Doras v0.20.2 edge API on 127.0.0.1 with the
status codes, Content-Types and bodies recorded from the real server
(``shared/vectors/doras-v0.20.2``). It reads and writes the registry with
oras-py like any client, stores deltas under the real tag scheme
(``_delta-`` + sha256(FROMHEX + TOHEX + SUFFIX)) and manifest shape, keeps the
placeholder ("dummy") manifest under the tag while a background thread
builds, and reuses a stored delta on later requests.

Request handling follows the Go server step by step: parameters (400, or
401 when client auth is required), client credentials (401), same
repository (400), resolve ``from`` (400 "expected digest" / 404 "failed to
resolve"), resolve ``to`` (400 "invalid oci image"), identical (204),
compatibility, algorithm choice, then the delta tag: a delta there -> 200;
a fresh dummy -> 202; nothing (or a dummy older than ``dummy_ttl_s``) ->
push a dummy, start a build, 202.

Knobs for tests: ``build_delay_s`` (the worker waits before building, so
clients see 202s), ``fail_builds`` (the worker fails after the dummy is
pushed: the dummy stays and clients keep getting 202 until it expires, as
with the Go server), ``incompatible_status`` (status of "artifacts are not
compatible"), ``tamper_delta`` (a function applied to each delta blob before
it is stored: a delta that does not give the target, stored and announced as
a good one). ``builds`` counts finished builds, ``build_errors`` keeps the
worker failures.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import json
import logging
import os
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import oras.provider
import requests

from ..algorithms import DeltaAlgorithm
from ..algorithms import delta_tag as stored_delta_tag
from ..descriptor import (
    ANNOTATION_CREATED,
    ANNOTATION_DELTA_DUMMY,
    ANNOTATION_DELTA_FROM,
    ANNOTATION_DELTA_TO,
    ANNOTATION_TITLE,
    ANNOTATION_UNPACK,
    INDEX_MEDIA_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    digest_of,
)
from ..errors import InvalidReferenceError
from ..publish.encode import EMPTY_DESCRIPTOR, build_delta, go_json, now_rfc3339, pack_manifest
from ..reference import Reference

log = logging.getLogger(__name__)

JSON_CONTENT_TYPE = "application/json; charset=utf-8"
HTML_CONTENT_TYPE = "text/html; charset=utf-8"
DEFAULT_ALGORITHMS = ("bsdiff", "tardiff", "zstd")
DELTA_PATH = "/api/v1/delta/"
PING_PATH = "/api/v1/ping"
_MANIFEST_ACCEPT = ", ".join(
    [OCI_MANIFEST, OCI_INDEX, "application/vnd.docker.distribution.manifest.v2+json",
     "application/vnd.docker.distribution.manifest.list.v2+json"]
)
_EMPTY_DESCRIPTOR = EMPTY_DESCRIPTOR


def _html_escape(text: str) -> str:
    """Go's ``html.EscapeString`` replacement set, as ``http.Redirect`` uses it."""
    for char, escaped in (("&", "&amp;"), ("'", "&#39;"), ("<", "&lt;"), (">", "&gt;"),
                          ('"', "&#34;")):
        text = text.replace(char, escaped)
    return text


def error_body(code: int, message: str, context: str = "") -> bytes:
    """The Doras error body ``{"error":{"code","message"[,"context"]}}`` (context omitted when empty)."""
    inner: dict[str, Any] = {"code": code, "message": message}
    if context:
        inner["context"] = context
    return go_json({"error": inner})


@dataclass(frozen=True)
class Algorithm:
    """A differ and a compressor, as the server picked them (the product's :class:`DeltaAlgorithm`)."""

    differ: str  # "bsdiff" or "tardiff"
    compressor: str  # "", "gzip" or "zstd"

    @property
    def kind(self) -> DeltaAlgorithm:
        return DeltaAlgorithm.from_name(f"{self.differ}+{self.compressor}" if self.compressor else self.differ)

    @property
    def tag_suffix(self) -> str:
        return self.kind.tag_suffix

    @property
    def media_type(self) -> str:
        return self.kind.media_type

    @property
    def title(self) -> str:
        return self.kind.title


def choose_algorithm(accepted: Sequence[str], from_layer: Mapping[str, Any]) -> Algorithm:
    """The Go server's choice: tardiff for an unpackable from-layer when accepted,
    else bsdiff (even when not accepted); zstd over gzip over nothing, as accepted.
    tardiff is never compressed again."""
    annotations = from_layer.get("annotations") or {}
    if annotations.get(ANNOTATION_UNPACK) == "true" and "tardiff" in accepted:
        return Algorithm("tardiff", "")
    compressor = "zstd" if "zstd" in accepted else "gzip" if "gzip" in accepted else ""
    return Algorithm("bsdiff", compressor)


def delta_tag(from_digest: str, to_digest: str, algorithm: Algorithm) -> str:
    """``_delta-`` + hex sha256 of ``FROMHEX + TOHEX + SUFFIX`` (:func:`doras_oras.algorithms.delta_tag`)."""
    return stored_delta_tag(from_digest, to_digest, algorithm.kind)


class _Unauthorized(Exception):
    """The registry refused the credentials."""


class _NotFound(Exception):
    """The registry does not have it (or cannot be reached for this reference)."""


class _RegistryClient(oras.provider.Registry):  # type: ignore[misc]
    """oras-py's Registry without its sleeping retry loop, for one request's credentials."""

    # The decorated do_request retries with sleeps of 3..83 s on any exception;
    # the test bed wants prompt answers, so use the undecorated function.
    do_request = oras.provider.Registry.do_request.__wrapped__

    def __init__(self, host: str, *, plain_http: bool, ca_file: str | None,
                 auth: tuple[str, str] | str | None) -> None:
        backend = "token" if isinstance(auth, str) else "basic"
        super().__init__(hostname=host, insecure=plain_http,
                         tls_verify=ca_file if ca_file else True, auth_backend=backend)
        if isinstance(auth, str):
            self.auth.set_token_auth(auth)
        elif auth is not None:
            self.auth.set_basic_auth(auth[0], auth[1])
        else:
            self.auth._basic_auth = None
        self.host = host

    def _url(self, repository: str, kind: str, ref: str) -> str:
        return f"{self.prefix}://{self.host}/v2/{repository}/{kind}/{ref}"

    def _request(self, url: str, method: str = "GET", *, data: bytes | None = None,
                 headers: dict[str, str] | None = None) -> requests.Response:
        try:
            response: requests.Response = self.do_request(url, method, data=data,
                                                          headers=dict(headers or {}))
        except ValueError as exc:  # "Cannot respond to request for authentication."
            raise _Unauthorized(str(exc)) from exc
        except requests.RequestException as exc:
            raise _NotFound(f"registry unreachable: {exc}") from exc
        if response.status_code in (401, 403):
            raise _Unauthorized(f"unauthorized: {method} {url}: {response.status_code}")
        return response

    def fetch_manifest(self, repository: str, ref: str) -> tuple[bytes, str, str]:
        """``(bytes, media type, digest)`` of a manifest by tag or digest."""
        response = self._request(self._url(repository, "manifests", ref),
                                 headers={"Accept": _MANIFEST_ACCEPT})
        if response.status_code != 200:
            raise _NotFound(f"manifest {repository}:{ref}: {response.status_code}")
        body = response.content
        digest = digest_of(body)
        if ref.startswith("sha256:") and digest != ref:
            raise _NotFound(f"manifest {repository}@{ref} has digest {digest}")
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        return body, media_type, digest

    def fetch_blob(self, repository: str, digest: str, size: int) -> bytes:
        """A blob, checked against its digest and size."""
        response = self._request(self._url(repository, "blobs", digest))
        if response.status_code != 200:
            raise _NotFound(f"blob {repository}@{digest}: {response.status_code}")
        body = response.content
        if len(body) != size or digest_of(body) != digest:
            raise ValueError(f"blob {repository}@{digest} does not match its descriptor")
        return body

    def push_blob(self, repository: str, data: bytes) -> dict[str, Any]:
        """Upload ``data`` (oras-py ``upload_blob``); return its descriptor stub."""
        layer = {"digest": digest_of(data), "size": len(data)}
        fd, path = tempfile.mkstemp(prefix="doras-testbed-blob-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            response = self.upload_blob(path, f"{self.host}/{repository}", layer)
        finally:
            os.unlink(path)
        if response.status_code not in (200, 201, 202):
            raise RuntimeError(f"blob upload to {repository} failed: {response.status_code}")
        return layer

    def push_manifest(self, repository: str, ref: str, body: bytes, media_type: str = OCI_MANIFEST) -> None:
        """PUT the exact manifest bytes under a tag or digest."""
        response = self._request(self._url(repository, "manifests", ref), "PUT", data=body,
                                 headers={"Content-Type": media_type})
        if response.status_code not in (200, 201):
            raise RuntimeError(f"manifest upload {repository}:{ref} failed: "
                               f"{response.status_code} {response.text[:300]}")


@dataclass
class _Answer:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


def _json_answer(status: int, body: bytes) -> _Answer:
    return _Answer(status, body, JSON_CONTENT_TYPE)


@dataclass
class _Build:
    repository: str
    tag: str
    algorithm: Algorithm
    from_image: str
    to_image: str
    from_layer: dict[str, Any]
    to_layer: dict[str, Any]
    auth: tuple[str, str] | str | None


class DorasServer:
    """A Doras-compatible server on 127.0.0.1 in front of one registry.

    ``registry_url_or_host``: ``http://127.0.0.1:PORT``, ``https://...`` or
    ``127.0.0.1:PORT`` (then ``plain_http`` decides the scheme). References
    in requests name the registry by its host; ``localhost`` and
    ``127.0.0.1`` with the registry's port are the same registry. Answers
    name images with the host the client named.
    """

    def __init__(
        self,
        registry_url_or_host: str,
        *,
        require_client_auth: bool = False,
        plain_http: bool = True,
        ca_file: str | os.PathLike[str] | None = None,
        build_delay_s: float = 0.0,
        registry_auth: tuple[str, str] | None = None,
        fail_builds: bool = False,
        incompatible_status: int = 406,
        dummy_ttl_s: float = 300.0,
        tamper_delta: Callable[[bytes], bytes] | None = None,
        port: int = 0,
    ) -> None:
        text = registry_url_or_host.rstrip("/")
        if "://" in text:
            scheme, _, text = text.partition("://")
            plain_http = scheme == "http"
        self.registry_host = text
        self.plain_http = plain_http
        self.ca_file = str(ca_file) if ca_file else None
        self.require_client_auth = require_client_auth
        self.build_delay_s = build_delay_s
        self.registry_auth = registry_auth
        self.fail_builds = fail_builds
        self.incompatible_status = incompatible_status
        self.dummy_ttl_s = dummy_ttl_s
        self.tamper_delta = tamper_delta
        self.builds = 0
        self.delta_requests = 0
        """``GET /api/v1/delta/`` requests answered (a pull that must not ask for a delta leaves it alone)."""
        self.build_errors: list[str] = []
        self._requested_port = port
        self._lock = threading.Lock()
        self._active: set[str] = set()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._serve_thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------
    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> DorasServer:
        server = self

        class Handler(_Handler):
            doras = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self._requested_port), Handler)
        self._httpd.daemon_threads = True
        self._serve_thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                              name="doras-testbed-http", daemon=True)
        self._serve_thread.start()
        log.info("Doras test server on %s for registry %s", self.url, self.registry_host)
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        for thread in list(self._threads):
            thread.join(timeout=30)
        self._httpd = None

    def __enter__(self) -> DorasServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Wait until no build is running (raise ``TimeoutError`` after ``timeout``)."""
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                raise TimeoutError("a delta build is still running")

    # --- the registry --------------------------------------------------------
    def registry_client(self, auth: tuple[str, str] | str | None = None) -> _RegistryClient:
        """An oras-py client of the registry with ``auth`` (or the server's own credentials)."""
        return _RegistryClient(self.registry_host, plain_http=self.plain_http, ca_file=self.ca_file,
                               auth=auth if auth is not None else self.registry_auth)

    def _is_our_registry(self, host: str) -> bool:
        def norm(value: str) -> str:
            name, _, port = value.rpartition(":")
            if name in ("localhost", "127.0.0.1") and port.isdigit():
                return f"127.0.0.1:{port}"
            return value
        return norm(host) == norm(self.registry_host)

    # --- the API -------------------------------------------------------------
    def handle_delta(self, query: Mapping[str, list[str]], authorization: str | None) -> _Answer:
        """Answer one ``GET /api/v1/delta/`` request."""
        with self._lock:
            self.delta_requests += 1
        unauthorized = _json_answer(401, error_body(401, "unauthorized"))
        from_text = (query.get("from_digest") or [""])[0]
        to_tag = (query.get("to_tag") or [""])[0]
        to_digest = (query.get("to_digest") or [""])[0]
        if not from_text or bool(to_tag) == bool(to_digest):
            if self.require_client_auth:
                return unauthorized
            return _json_answer(400, error_body(400, "bad request"))
        to_text = to_tag or to_digest
        accepted = query.get("accepted_algorithm") or list(DEFAULT_ALGORITHMS)

        auth: tuple[str, str] | str | None = None
        try:
            auth = _client_auth(authorization)
        except ValueError as exc:
            log.debug("client credentials: %s", exc)
            if self.require_client_auth:
                return unauthorized

        from_ref: Reference | None = None
        to_ref: Reference | None = None
        with contextlib.suppress(InvalidReferenceError):
            from_ref, to_ref = Reference.parse(from_text), Reference.parse(to_text)
        if from_ref is None or to_ref is None or from_ref.name != to_ref.name:
            return _json_answer(400, error_body(400, "bad request", "images are not in the same repository"))
        if from_ref.digest is None:
            return _json_answer(400, error_body(400, "bad request", "expected digest"))

        client = self.registry_client(auth)
        repo = from_ref.repository
        try:
            if not self._is_our_registry(from_ref.registry):
                raise _NotFound(f"unknown registry {from_ref.registry}")
            from_body, _, from_digest = client.fetch_manifest(repo, from_ref.digest)
        except _Unauthorized:
            return unauthorized
        except _NotFound as exc:
            log.info("failed to resolve %s: %s", from_text, exc)
            return _json_answer(404, error_body(404, "failed to resolve", from_text))
        try:
            to_body, _, to_digest_value = client.fetch_manifest(repo, to_ref.reference)
        except _Unauthorized:
            return unauthorized
        except _NotFound as exc:
            log.info("failed to resolve %s: %s", to_text, exc)
            return _json_answer(400, error_body(400, "invalid oci image", to_text))
        if from_digest == to_digest_value:
            return _Answer(204)

        from_image = f"{from_ref.name}@{from_digest}"
        to_image = f"{to_ref.name}@{to_digest_value}"
        layers = _single_layers(from_body, to_body)
        if layers is None:
            return _json_answer(self.incompatible_status,
                                error_body(self.incompatible_status, "artifacts are not compatible",
                                           "cannot build a delta from images"))
        from_layer, to_layer = layers
        algorithm = choose_algorithm(accepted, from_layer)
        tag = delta_tag(from_digest, to_digest_value, algorithm)

        with self._lock:
            try:
                existing = client.fetch_manifest(repo, tag)
            except _Unauthorized:
                return unauthorized
            except _NotFound:
                existing = None
            if existing is not None:
                body, _, delta_digest = existing
                annotations = json.loads(body).get("annotations") or {}
                if annotations.get(ANNOTATION_DELTA_DUMMY) != "true":
                    return _json_answer(200, go_json({"target_image": to_image,
                                                      "delta_image": f"{from_ref.name}@{delta_digest}"}))
                if tag in self._active or not self._expired(annotations):
                    return _Answer(202)
            if tag in self._active:
                return _Answer(202)
            try:
                client.push_blob(repo, b"{}")
                client.push_manifest(repo, tag, pack_manifest(
                    [dict(_EMPTY_DESCRIPTOR)],
                    {ANNOTATION_DELTA_FROM: from_image, ANNOTATION_DELTA_TO: to_image,
                     ANNOTATION_DELTA_DUMMY: "true", ANNOTATION_CREATED: now_rfc3339()}))
            except _Unauthorized:
                return unauthorized
            except Exception as exc:
                log.error("failed to push dummy: %s", exc)
                return _json_answer(500, error_body(500, "internal"))
            self._active.add(tag)
            build = _Build(repo, tag, algorithm, from_image, to_image, from_layer, to_layer, auth)
            thread = threading.Thread(target=self._build, args=(build,), name=f"doras-build-{tag[7:19]}",
                                      daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()
        return _Answer(202)

    def _expired(self, annotations: Mapping[str, str]) -> bool:
        try:
            created = dt.datetime.strptime(annotations.get(ANNOTATION_CREATED, ""), "%Y-%m-%dT%H:%M:%SZ")
        except ValueError:
            return True
        age = dt.datetime.now(dt.UTC).replace(tzinfo=None) - created
        return age.total_seconds() > self.dummy_ttl_s

    def _build(self, build: _Build) -> None:
        try:
            if self.build_delay_s and self._stopping.wait(self.build_delay_s):
                return
            if self.fail_builds:
                raise RuntimeError("delta build failed on purpose (fail_builds)")
            client = self.registry_client(build.auth)
            old = client.fetch_blob(build.repository, build.from_layer["digest"], build.from_layer["size"])
            new = client.fetch_blob(build.repository, build.to_layer["digest"], build.to_layer["size"])
            delta = make_delta(old, new, build.algorithm)
            if self.tamper_delta is not None:
                delta = self.tamper_delta(delta)
            stub = client.push_blob(build.repository, delta)
            layer = {"mediaType": build.algorithm.media_type, "digest": stub["digest"],
                     "size": stub["size"], "annotations": {ANNOTATION_TITLE: build.algorithm.title}}
            manifest = pack_manifest([layer], {ANNOTATION_DELTA_FROM: build.from_image,
                                               ANNOTATION_DELTA_TO: build.to_image,
                                               ANNOTATION_CREATED: now_rfc3339()})
            with self._lock:  # a request that sees the delta sees it counted
                client.push_manifest(build.repository, build.tag, manifest)
                self.builds += 1
            log.info("built %s delta %s:%s (%d bytes)", build.algorithm.media_type,
                     build.repository, build.tag, len(delta))
        except Exception as exc:
            log.error("failed to create delta %s: %s", build.tag, exc)
            with self._lock:
                self.build_errors.append(f"{build.tag}: {exc}")
        finally:
            with self._lock:
                self._active.discard(build.tag)


def make_delta(old: bytes, new: bytes, algorithm: Algorithm) -> bytes:
    """The delta blob, built by the product's encoders (:func:`doras_oras.publish.encode.build_delta`)."""
    return build_delta(old, new, algorithm.kind)


def _single_layers(from_body: bytes, to_body: bytes) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The one layer of each manifest, or ``None`` when the pair cannot be diffed
    (an index, layer counts other than one each, different unpack annotations)."""
    try:
        from_manifest, to_manifest = json.loads(from_body), json.loads(to_body)
    except ValueError:
        return None
    for manifest in (from_manifest, to_manifest):
        if not isinstance(manifest, dict) or manifest.get("mediaType") in INDEX_MEDIA_TYPES:
            return None
        layers = manifest.get("layers")
        if not isinstance(layers, list) or len(layers) != 1 or not isinstance(layers[0], dict):
            return None
    from_layer, to_layer = from_manifest["layers"][0], to_manifest["layers"][0]
    unpack_from = (from_layer.get("annotations") or {}).get(ANNOTATION_UNPACK)
    unpack_to = (to_layer.get("annotations") or {}).get(ANNOTATION_UNPACK)
    if unpack_from != unpack_to:
        return None
    return from_layer, to_layer


def _client_auth(header: str | None) -> tuple[str, str] | str:
    """Credentials from an ``Authorization`` header: a bearer token or ``(user, password)``."""
    if not header:
        raise ValueError("missing Authorization header")
    if header.startswith("Bearer "):
        return header[len("Bearer "):]
    if header.startswith("Basic "):
        try:
            decoded = base64.b64decode(header[len("Basic "):], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ValueError("invalid base64 encoding in authorization header") from exc
        user, sep, password = decoded.partition(":")
        if not sep:
            raise ValueError("invalid authorization header: missing username or password")
        return user, password
    raise ValueError("invalid Authorization header")


class _Handler(BaseHTTPRequestHandler):
    """HTTP front of :class:`DorasServer` (routes as gin does for the Doras server)."""

    doras: DorasServer
    protocol_version = "HTTP/1.1"
    server_version = "doras-oras-testbed"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, answer: _Answer) -> None:
        self.send_response(answer.status)
        if answer.content_type:
            self.send_header("Content-Type", answer.content_type)
        for name, value in answer.headers:
            self.send_header(name, value)
        if answer.status not in (204, 304):
            self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        if answer.body and self.command != "HEAD":
            self.wfile.write(answer.body)

    def do_GET(self) -> None:
        split = urllib.parse.urlsplit(self.path)
        try:
            if split.path == PING_PATH:
                answer = _json_answer(200, go_json({"message": "pong"}))
            elif split.path == DELTA_PATH:
                query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
                answer = self.doras.handle_delta(query, self.headers.get("Authorization"))
            elif split.path == DELTA_PATH.rstrip("/"):
                location = DELTA_PATH + (f"?{split.query}" if split.query else "")
                body = f'<a href="{_html_escape(location)}">Moved Permanently</a>.\n\n'.encode()
                answer = _Answer(301, body, HTML_CONTENT_TYPE, (("Location", location),))
            else:
                answer = _Answer(404, b"404 page not found", "text/plain")
        except Exception as exc:  # the test bed must answer, whatever happens
            log.exception("internal error")
            answer = _json_answer(500, error_body(500, "internal", str(exc)[:200]))
        self._send(answer)

    def do_HEAD(self) -> None:
        self.do_GET()
