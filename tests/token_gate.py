"""A hand-made bearer-token gate in front of the real registry (a fault no real peer here makes).

``TokenGate`` serves ``/token`` (issues opaque tokens for basic credentials or
anonymously) and forwards ``/v2/...`` to the upstream registry only with a
valid ``Bearer`` token, answering 401 with a ``WWW-Authenticate: Bearer``
challenge otherwise. ``expire_all()`` invalidates the tokens issued so far
(a token that expires mid-pull); ``realm`` can be pointed elsewhere.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


@dataclass
class Seen:
    path: str
    authorization: str | None
    status: int


class TokenGate:
    def __init__(
        self,
        upstream: str,
        *,
        users: dict[str, str] | None = None,
        anonymous: bool = False,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.upstream = urlsplit(upstream)
        self.users = users or {}
        self.anonymous = anonymous
        self.valid: set[str] = set()
        self.reject_all = False
        #: Bytes of filler added to each token answer (a token server that answers too much).
        self.token_padding = 0
        self.seen: list[Seen] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        gate = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                gate._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = int(self._server.server_address[1])
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"{'https' if tls else 'http'}://{self.host}"
        self.realm = f"{self.url}/token"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> TokenGate:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def expire_all(self) -> None:
        with self._lock:
            self.valid.clear()

    def token_requests(self) -> list[Seen]:
        return [s for s in self.seen if s.path.startswith("/token")]

    def _reply(self, h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]) -> None:
        h.send_response(status)
        for key, value in headers.items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Connection", "close")
        # Recorded before the body goes out: a client that has the body sees the record.
        with self._lock:
            self.seen.append(Seen(h.path, h.headers.get("Authorization"), status))
        h.end_headers()
        h.wfile.write(body)
        h.close_connection = True

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        auth = h.headers.get("Authorization")
        if h.path.startswith("/token"):
            ok = self.anonymous and auth is None
            if auth and auth.startswith("Basic "):
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                ok = self.users.get(user) == password
            if not ok:
                self._reply(h, 401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {"Content-Type": "application/json"})
                return
            scope = parse_qs(urlsplit(h.path).query).get("scope", [""])[0]
            token = f"tok-{next(self._ids)}-{scope.replace(':', '.')}"
            with self._lock:
                self.valid.add(token)
            filler = "x" * self.token_padding
            body = f'{{"token":"{token}","expires_in":300,"filler":"{filler}"}}'.encode()
            self._reply(h, 200, body, {"Content-Type": "application/json"})
            return
        token = auth[7:] if auth and auth.startswith("Bearer ") else None
        with self._lock:
            good = token in self.valid and not self.reject_all
        if not good:
            repo = h.path.split("/blobs/")[0].split("/manifests/")[0].removeprefix("/v2/")
            challenge = f'Bearer realm="{self.realm}",service="gate"'
            if repo and repo != h.path and repo.strip("/"):
                challenge += f',scope="repository:{repo}:pull"'
            body = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
            self._reply(h, 401, body, {"WWW-Authenticate": challenge, "Content-Type": "application/json"})
            return
        conn = http.client.HTTPConnection(self.upstream.hostname or "", self.upstream.port or 80, timeout=30)
        try:
            conn.request("GET", h.path, headers={"Accept": h.headers.get("Accept", "*/*")})
            response = conn.getresponse()
            data = response.read()
            headers = {k: v for k, v in response.getheaders()
                       if k.lower() in ("content-type", "docker-content-digest")}
            self._reply(h, response.status, data, headers)
        finally:
            conn.close()
