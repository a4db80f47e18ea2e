"""A counting TCP relay for tests: what a client really puts on the wire.

:class:`TcpRelay` listens on 127.0.0.1 and relays every connection to a
target address unchanged (TLS, keep-alive and all), counting the connections
it accepts and the bytes in each direction. Unlike ``FaultProxy`` (an HTTP
proxy that closes every connection and counts response bodies), it sees
handshakes, headers and connection reuse as the peers make them.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType


class TcpRelay:
    """``with TcpRelay("127.0.0.1", port) as relay: ...``; clients connect to ``relay.host``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.host = f"127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._active = 0
        self._idle = threading.Condition(self._lock)
        self.connections = 0
        self.bytes_down = 0  # target -> client
        self.bytes_up = 0  # client -> target
        self._accepter = threading.Thread(target=self._accept, name=f"relay-{self.port}", daemon=True)

    def __enter__(self) -> TcpRelay:
        self._accepter.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone does not)
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()
        for thread in [self._accepter, *self._threads]:
            thread.join(10)

    def reset(self) -> None:
        """Wait until no connection is open, then zero the counters."""
        self.wait_idle()
        with self._lock:
            self.connections = self.bytes_down = self.bytes_up = 0

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until every relayed connection has been closed by its peers."""
        with self._idle:
            if not self._idle.wait_for(lambda: self._active == 0, timeout):
                raise TimeoutError(f"relay {self.host}: {self._active} connection(s) still open")

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._target, timeout=30)
            except OSError:  # the target is down: this client is refused, the next may fare better
                client.close()
                continue
            with self._lock:
                self.connections += 1
                self._active += 1
                self._sockets += [client, upstream]
            pumps = [threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True),
                     threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True)]
            done = threading.Thread(target=self._close_after, args=(pumps, client, upstream), daemon=True)
            for thread in (*pumps, done):
                thread.start()
            with self._lock:
                self._threads += [*pumps, done]

    def _pump(self, source: socket.socket, sink: socket.socket, down: bool) -> None:
        try:
            while data := source.recv(65536):
                with self._lock:
                    if down:
                        self.bytes_down += len(data)
                    else:
                        self.bytes_up += len(data)
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)  # pass the end of stream on

    def _close_after(self, pumps: list[threading.Thread], client: socket.socket,
                     upstream: socket.socket) -> None:
        for thread in pumps:
            thread.join()
        client.close()
        upstream.close()
        with self._idle:
            self._active -= 1
            self._idle.notify_all()
