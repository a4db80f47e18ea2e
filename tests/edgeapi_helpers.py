"""Helpers of the edge API tests: a hand-made HTTP server for faults no real server
makes, a ContentFetcher over plain requests, the recorded vectors, and pushing
exact manifests and blobs to the real registry."""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import struct
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qsl, urlsplit

import requests

from doras_oras.descriptor import Descriptor, digest_of
from doras_oras.errors import DigestMismatchError
from doras_oras.reference import Reference
from doras_oras.testing.registry import TLSFiles

JSON_TYPE = "application/json; charset=utf-8"


def vectors_dir() -> Path:
    """``../shared/vectors`` beside the repository root, else ``/work/shared/vectors``."""
    for candidate in (
        Path(__file__).resolve().parents[1] / ".." / "shared" / "vectors",
        Path("/work/shared/vectors"),
    ):
        if (candidate / "README.md").is_file():
            return candidate.resolve()
    raise FileNotFoundError("shared/vectors not found beside the repository nor at /work/shared")


def doras_vectors() -> Path:
    return vectors_dir() / "doras-v0.20.2"


def exchanges() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((doras_vectors() / "exchanges.json").read_text())
    return data


DELTA_CASES = ("bsdiff", "bsdiff+gzip", "bsdiff+zstd", "gzip-layer-bsdiff+zstd",
               "tardiff-oras-dir", "tardiff-doras-dir", "dir-bsdiff-only")


# --- the hand-made server ------------------------------------------------------


@dataclass
class Reply:
    """What the fault server answers. ``body`` may be an iterable of chunks (no Content-Length)."""

    status: int
    body: bytes | Iterable[bytes] = b""
    content_type: str | None = JSON_TYPE
    headers: dict[str, str] = field(default_factory=dict)
    reset: bool = False          # close the connection with a TCP RST instead of answering
    delay_s: float = 0.0         # wait before answering
    content_length: int | None = None  # announce this length instead of len(body)


@dataclass
class Seen:
    """A request the fault server received."""

    method: str
    path: str
    raw_query: str
    headers: dict[str, str]

    @property
    def query(self) -> list[tuple[str, str]]:
        return parse_qsl(self.raw_query, keep_blank_values=True)


Handler = Callable[[Seen], Reply]


class _QuietServer(ThreadingHTTPServer):
    """Quiet about clients that hang up (some tests do on purpose); other errors still print."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


class FaultServer:
    """A tiny threaded HTTP(S) server on 127.0.0.1 answering with ``handler(request)``."""

    def __init__(self, handler: Handler, *, tls: TLSFiles | None = None) -> None:
        self.handler = handler
        self.seen: list[Seen] = []
        self._stop = threading.Event()
        outer = self

        class _RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                seen = Seen("GET", parts.path, parts.query, {k.lower(): v for k, v in self.headers.items()})
                outer.seen.append(seen)
                reply = outer.handler(seen)
                if reply.delay_s:
                    outer._stop.wait(reply.delay_s)
                if reply.reset:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                    return
                try:
                    self._answer(reply)
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
                    self.close_connection = True

            def _answer(self, reply: Reply) -> None:
                self.send_response(reply.status)
                if reply.content_type:
                    self.send_header("Content-Type", reply.content_type)
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                if isinstance(reply.body, bytes):
                    length = reply.content_length if reply.content_length is not None else len(reply.body)
                    if reply.status not in (204, 304) and not 100 <= reply.status < 200:
                        self.send_header("Content-Length", str(length))
                    self.end_headers()
                    self.wfile.write(reply.body)
                    return
                # close-delimited streaming body
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                for chunk in reply.body:
                    if outer._stop.is_set():
                        break
                    self.wfile.write(chunk)

        self._server = _QuietServer(("127.0.0.1", 0), _RequestHandler)
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls.server_cert), str(tls.server_key))
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self.port = self._server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"{self.scheme}://{self.host}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def __enter__(self) -> FaultServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def delta_requests(self) -> list[Seen]:
        return [s for s in self.seen if s.path.startswith("/api/v1/delta")]


# --- a fetcher over plain requests ---------------------------------------------------

MANIFEST_ACCEPT = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"


class RequestsFetcher:
    """A ContentFetcher over plain requests against one registry URL (the ref's host is ignored)."""

    def __init__(self, base_url: str, *, auth: tuple[str, str] | None = None,
                 verify: bool | str = True) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.session.auth = auth
        self.verify = verify  # per request: requests lets REQUESTS_CA_BUNDLE override session.verify
        self.fetched: list[Reference] = []

    def fetch_manifest(self, ref: Reference) -> tuple[bytes, str]:
        self.fetched.append(ref)
        url = f"{self.base_url}/v2/{ref.repository}/manifests/{ref.reference}"
        with self.session.get(url, headers={"Accept": MANIFEST_ACCEPT}, stream=True, timeout=10,
                              verify=self.verify) as resp:
            resp.raise_for_status()
            body = resp.raw.read(4 << 20, decode_content=True)
            content_type = resp.headers.get("Content-Type", "")
        if ref.digest and digest_of(body) != ref.digest:
            raise DigestMismatchError(f"manifest {ref}: got {digest_of(body)}")
        return body, content_type

    def open_blob(self, ref: Reference, descriptor: Descriptor) -> BinaryIO:
        url = f"{self.base_url}/v2/{ref.repository}/blobs/{descriptor.digest}"
        resp = self.session.get(url, stream=True, timeout=10, verify=self.verify)
        resp.raise_for_status()
        resp.raw.decode_content = True
        raw: BinaryIO = resp.raw
        return raw


# --- pushing exact bytes to the real registry -------------------------------------


def push_blob(base_url: str, repository: str, data: bytes, *, session: requests.Session | None = None) -> str:
    s = session or requests.Session()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if s.head(f"{base_url}/v2/{repository}/blobs/{digest}", timeout=10).status_code == 200:
        return digest
    start = s.post(f"{base_url}/v2/{repository}/blobs/uploads/", timeout=10)
    assert start.status_code == 202, start.text
    location = start.headers["Location"]
    if location.startswith("/"):
        location = base_url + location
    sep = "&" if "?" in location else "?"
    done = s.put(f"{location}{sep}digest={digest}", data=data,
                 headers={"Content-Type": "application/octet-stream"}, timeout=30)
    assert done.status_code == 201, done.text
    return digest


def push_manifest(base_url: str, repository: str, body: bytes, reference: str | None = None,
                  *, session: requests.Session | None = None) -> str:
    s = session or requests.Session()
    digest = digest_of(body)
    media_type = json.loads(body).get("mediaType", "application/vnd.oci.image.manifest.v1+json")
    resp = s.put(f"{base_url}/v2/{repository}/manifests/{reference or digest}", data=body,
                 headers={"Content-Type": media_type}, timeout=10)
    assert resp.status_code == 201, resp.text
    return digest


def push_image(base_url: str, repository: str, manifest: bytes, blobs: dict[str, bytes],
               tag: str | None = None, *, session: requests.Session | None = None) -> str:
    """Push the blobs a manifest names (``blobs`` by digest; the empty config is pushed too) and it."""
    obj = json.loads(manifest)
    needed = [obj["config"], *obj.get("layers", [])]
    for desc in needed:
        data = blobs.get(desc["digest"])
        if data is None and desc.get("data") is not None:
            import base64
            data = base64.b64decode(desc["data"])
        if data is None and desc["digest"] == digest_of(b"{}"):
            data = b"{}"
        assert data is not None, f"no bytes for {desc['digest']}"
        push_blob(base_url, repository, data, session=session)
    return push_manifest(base_url, repository, manifest, tag, session=session)


def chunks(total: int, size: int = 1 << 16) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        yield b"x" * n
        sent += n
