"""A hand-made registry on loopback for faults no real registry makes, and for the referrers API.

Debian's docker-registry 2.8 has no ``/v2/<name>/referrers/<digest>``; this
server serves exactly what it is loaded with: manifests by tag or digest (with
their Content-Type), blobs (optionally with a body other than their digest
promises), and a referrers answer (bytes, possibly huge), or 404 for it.
Every request path is logged in ``requests``.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qs, urlsplit


@dataclass
class Content:
    manifests: dict[tuple[str, str], tuple[bytes, str]] = field(default_factory=dict)
    """(repository, tag or digest) -> (body, content type)."""
    blobs: dict[tuple[str, str], bytes] = field(default_factory=dict)
    referrers: dict[tuple[str, str], bytes] = field(default_factory=dict)
    """(repository, digest) -> the referrers API answer; absent: 404 (no API)."""
    pages: dict[str, tuple[bytes, str | None, str]] = field(default_factory=dict)
    """Exact ``path?query`` -> (body, ``Link`` header or None, content type): answers served before any other."""
    requests: list[str] = field(default_factory=list)

    def add_manifest(self, repository: str, body: bytes, media_type: str, *tags: str) -> str:
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        self.manifests[(repository, digest)] = (body, media_type)
        for tag in tags:
            self.manifests[(repository, tag)] = (body, media_type)
        return digest

    def add_blob(self, repository: str, data: bytes, *, digest: str | None = None) -> str:
        digest = digest or "sha256:" + hashlib.sha256(data).hexdigest()
        self.blobs[(repository, digest)] = data
        return digest


class FakeRegistry:
    """``with FakeRegistry() as registry:`` ``registry.url``, ``registry.content``."""

    def __init__(self) -> None:
        self.content = Content()
        content = self.content

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _send(self, status: int, body: bytes, content_type: str, link: str | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                if link is not None:
                    self.send_header("Link", link)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    for at in range(0, len(body), 1 << 16):
                        self.wfile.write(body[at:at + (1 << 16)])
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                path = parts.path
                full = path + (f"?{parts.query}" if parts.query else "")
                content.requests.append(full)
                if full in content.pages:
                    body, link, content_type = content.pages[full]
                    self._send(200, body, content_type, link)
                    return
                for kind in ("manifests", "blobs", "referrers"):
                    marker = f"/{kind}/"
                    if path.startswith("/v2/") and marker in path:
                        repository, ref = path[len("/v2/"):].split(marker, 1)
                        break
                else:
                    self._send(404, b"{}", "application/json")
                    return
                if kind == "manifests" and (repository, ref) in content.manifests:
                    body, media_type = content.manifests[(repository, ref)]
                    self._send(200, body, media_type)
                elif kind == "blobs" and (repository, ref) in content.blobs:
                    self._send(200, content.blobs[(repository, ref)], "application/octet-stream")
                elif kind == "referrers" and (repository, ref) in content.referrers:
                    assert parse_qs(parts.query).get("artifactType") is not None
                    self._send(200, content.referrers[(repository, ref)], "application/vnd.oci.image.index.v1+json")
                else:
                    self._send(404, b'{"errors":[{"code":"NOT_FOUND"}]}', "application/json")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.url = f"http://{self.host}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeRegistry:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


def fake_registry() -> Iterator[FakeRegistry]:
    with FakeRegistry() as registry:
        yield registry
