"""A fault-injecting HTTP proxy for tests, placed in front of a real server.

``FaultProxy(upstream_url)`` listens on 127.0.0.1 (plain HTTP, or HTTPS with
``tls=(cert, key)``), forwards every request to the upstream server and
passes the answer back, unless a :class:`Fault` whose ``path`` pattern
matches the request says otherwise. Faults apply to the first ``times``
matching requests (``None``: all). Kinds:

- ``drop``: close the connection after ``after_bytes`` body bytes;
- ``reset``: send a TCP reset after ``after_bytes`` body bytes (0: before any answer);
- ``stall``: send the headers and ``after_bytes`` body bytes, then nothing
  (until ``stall_s`` passes or the proxy stops);
- ``trickle``: send the body one byte every ``interval_s``;
- ``status``: answer ``status`` (429, 500, 503, ...) with ``retry_after`` and ``body`` if set;
- ``ignore_range``: forward without ``Range`` (the client gets 200 and the whole body);
- ``ignore_conditions``: forward without ``If-None-Match`` (a registry that never answers 304);
- ``shift_range``: forward the range starting ``shift`` bytes earlier
  (an honest ``Content-Range`` that does not start where asked);
- ``wrong_total``: rewrite the ``Content-Range`` total to ``total``;
- ``lie_length``: announce ``Content-Length`` plus ``extra`` bytes, send the real body, close;
- ``redirect``: answer 307 to ``location`` + the request path and query;
- ``rate``: send the body at ``bytes_per_s``.

The proxy counts requests and body bytes sent per path and records each
request's headers (``proxy.log``), so tests can assert what crossed the wire.
Repeated request header fields (several ``Accept`` lines, as skopeo sends)
are forwarded joined with ``", "``.
"""

from __future__ import annotations

import http.client
import logging
import re
import socket
import ssl
import struct
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailers", "transfer-encoding", "upgrade", "host",
})
FAULT_KINDS = frozenset({
    "drop", "reset", "stall", "trickle", "status", "ignore_range", "ignore_conditions", "shift_range",
    "wrong_total", "lie_length", "redirect", "rate",
})


@dataclass
class Fault:
    """One fault rule: ``kind`` applied to requests whose path matches ``path`` (a regex)."""

    kind: str
    path: str = ".*"
    times: int | None = None
    after_bytes: int = 0
    stall_s: float = 300.0
    interval_s: float = 1.0
    status: int = 503
    retry_after: str | None = None
    body: bytes | None = None
    shift: int = 1
    total: int = 0
    extra: int = 1000
    location: str = ""
    bytes_per_s: float = 1 << 20
    method: str | None = None
    applied: int = 0
    _pattern: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {sorted(FAULT_KINDS)}")
        self._pattern = re.compile(self.path)

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and method != self.method:
            return False
        if self.times is not None and self.applied >= self.times:
            return False
        return bool(self._pattern.search(path))


@dataclass
class RequestRecord:
    """What the proxy saw of one request."""

    method: str
    path: str
    headers: dict[str, str]
    fault: str | None
    status: int | None = None
    body_bytes: int = 0
    done: bool = False


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: FaultProxy

    def handle_error(self, request: object, client_address: object) -> None:
        log.debug("faultproxy: connection from %s ended abruptly", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        log.debug("faultproxy: " + format, *args)

    def do_GET(self) -> None:
        self.server.proxy._handle(self)

    do_HEAD = do_GET
    do_PUT = do_GET
    do_POST = do_GET
    do_PATCH = do_GET
    do_DELETE = do_GET


class FaultProxy:
    """A threaded fault-injecting proxy on 127.0.0.1 in front of ``upstream`` (``http(s)://host:port``)."""

    def __init__(
        self,
        upstream: str,
        *,
        tls: tuple[Path, Path] | None = None,
        upstream_ca: Path | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream must be http(s)://host:port, not {upstream!r}")
        self.upstream_scheme = parts.scheme
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or (443 if parts.scheme == "https" else 80)
        self.upstream_ca = upstream_ca
        self.tls = tls
        self.faults: list[Fault] = []
        self.log: list[RequestRecord] = []
        self.bytes_by_path: dict[str, int] = defaultdict(int)
        self.requests_by_path: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server = _Server((host, 0), _Handler)
        self._server.proxy = self
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = int(self._server.server_address[1])
        self.host = f"{host}:{self.port}"
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    # -- configuration -------------------------------------------------------

    def add(self, kind: str, path: str = ".*", **options: object) -> Fault:
        """Add a fault rule (see the module docstring); returns it (``.applied`` counts uses)."""
        fault = Fault(kind, path, **options)  # type: ignore[arg-type]
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        """Remove every fault rule."""
        with self._lock:
            self.faults.clear()

    def reset_counters(self) -> None:
        """Forget the request log and the byte/request counts."""
        with self._lock:
            self.log.clear()
            self.bytes_by_path.clear()
            self.requests_by_path.clear()

    def bytes_sent(self, pattern: str = ".*") -> int:
        """Body bytes sent to clients for paths matching ``pattern``."""
        rx = re.compile(pattern)
        with self._lock:
            return sum(n for p, n in self.bytes_by_path.items() if rx.search(p))

    def wait_idle(self, timeout_s: float = 10.0) -> None:
        """Wait until every request seen so far has been fully handled (counts are final)."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                if all(r.done for r in self.log):
                    return
            if time.monotonic() > deadline:
                raise TimeoutError("faultproxy: requests still in progress")
            time.sleep(0.01)

    def requests(self, pattern: str = ".*") -> list[RequestRecord]:
        """The recorded requests whose path matches ``pattern``."""
        rx = re.compile(pattern)
        with self._lock:
            return [r for r in self.log if rx.search(r.path)]

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"faultproxy-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- the work --------------------------------------------------------------

    def _pick(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.applied += 1
                    return fault
        return None

    def _count(self, record: RequestRecord, n: int) -> None:
        with self._lock:
            record.body_bytes += n
            self.bytes_by_path[record.path.split("?", 1)[0]] += n

    def _upstream(self) -> http.client.HTTPConnection:
        if self.upstream_scheme == "https":
            context = ssl.create_default_context(cafile=str(self.upstream_ca) if self.upstream_ca else None)
            return http.client.HTTPSConnection(self.upstream_host, self.upstream_port, timeout=60,
                                               context=context)
        return http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=60)

    def _handle(self, handler: _Handler) -> None:
        method, path = handler.command, handler.path
        headers: dict[str, str] = {}
        for key, value in handler.headers.items():  # repeated fields (skopeo's Accept) joined
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        fault = self._pick(method, path)
        record = RequestRecord(method, path, headers, fault.kind if fault else None)
        with self._lock:
            self.log.append(record)
            self.requests_by_path[path.split("?", 1)[0]] += 1
        try:
            self._serve(handler, record, fault)
        finally:
            with self._lock:
                record.done = True

    def _serve(self, handler: _Handler, record: RequestRecord, fault: Fault | None) -> None:
        method, path, headers = record.method, record.path, record.headers
        handler.close_connection = True
        length = int(headers.get("Content-Length", "0") or 0)
        body = handler.rfile.read(length) if length else b""

        if fault is not None and fault.kind == "reset" and fault.after_bytes == 0:
            _reset(handler.connection)
            return
        if fault is not None and fault.kind == "status":
            payload = fault.body if fault.body is not None else (
                f'{{"errors":[{{"code":"FAULT","message":"injected {fault.status}"}}]}}'.encode()
            )
            record.status = fault.status  # recorded before the client can see the answer
            handler.send_response(fault.status)
            if fault.retry_after is not None:
                handler.send_header("Retry-After", fault.retry_after)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            handler.send_header("Connection", "close")
            handler.end_headers()
            if method != "HEAD":
                handler.wfile.write(payload)
            return
        if fault is not None and fault.kind == "redirect":
            record.status = 307
            handler.send_response(307)
            handler.send_header("Location", fault.location + path)
            handler.send_header("Content-Length", "0")
            handler.send_header("Connection", "close")
            handler.end_headers()
            return

        forward = {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP}
        forward["Host"] = headers.get("Host", f"{self.upstream_host}:{self.upstream_port}")
        forward["Connection"] = "close"
        if fault is not None and fault.kind == "ignore_range":
            forward = {k: v for k, v in forward.items() if k.lower() != "range"}
        if fault is not None and fault.kind == "ignore_conditions":
            forward = {k: v for k, v in forward.items() if k.lower() != "if-none-match"}
        if fault is not None and fault.kind == "shift_range":
            wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", headers.get("Range", ""))
            if wanted:
                start = max(0, int(wanted.group(1)) - fault.shift)
                forward = {k: v for k, v in forward.items() if k.lower() != "range"}
                forward["Range"] = f"bytes={start}-{wanted.group(2)}"
        conn = self._upstream()
        try:
            conn.request(method, path, body=body or None, headers=forward)
            upstream = conn.getresponse()
            self._relay(handler, upstream, fault, record, method)
        except (OSError, http.client.HTTPException) as exc:
            log.debug("faultproxy: %s %s ended: %s", method, path, exc)
        finally:
            conn.close()

    def _relay(
        self,
        handler: _Handler,
        upstream: http.client.HTTPResponse,
        fault: Fault | None,
        record: RequestRecord,
        method: str,
    ) -> None:
        kind = fault.kind if fault else None
        record.status = upstream.status
        handler.send_response_only(upstream.status, upstream.reason)
        declared: int | None = None
        for key, value in upstream.getheaders():
            low = key.lower()
            if low in _HOP_BY_HOP:
                continue
            if low == "content-length":
                declared = int(value)
                if kind == "lie_length" and fault is not None:
                    value = str(declared + fault.extra)
            if low == "content-range" and kind == "wrong_total" and fault is not None:
                value = re.sub(r"/(\d+|\*)$", f"/{fault.total}", value)
            if low == "location":
                value = value.replace(f"{self.upstream_host}:{self.upstream_port}", self.host)
            handler.send_header(key, value)
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.flush()
        if method == "HEAD":
            return
        sock = handler.connection
        sent = 0
        started = time.monotonic()
        while True:
            want = 64 * 1024
            if kind == "trickle":
                want = 1
            elif kind in ("drop", "reset", "stall") and fault is not None:
                want = max(1, min(want, fault.after_bytes - sent))
            elif kind == "rate" and fault is not None:
                want = max(1, min(want, int(fault.bytes_per_s / 20) or 1))
            if kind in ("drop", "reset", "stall") and fault is not None and sent >= fault.after_bytes:
                if kind == "drop":
                    sock.shutdown(socket.SHUT_RDWR)
                elif kind == "reset":
                    _reset(sock)
                else:
                    self._stop.wait(fault.stall_s)
                return
            chunk = upstream.read(want)
            if not chunk:
                return
            handler.wfile.write(chunk)
            handler.wfile.flush()
            sent += len(chunk)
            self._count(record, len(chunk))
            if kind == "trickle" and fault is not None:
                if self._stop.wait(fault.interval_s):
                    return
            elif kind == "rate" and fault is not None:
                ahead = sent / fault.bytes_per_s - (time.monotonic() - started)
                if ahead > 0 and self._stop.wait(ahead):
                    return


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP RST (SO_LINGER 0)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass
