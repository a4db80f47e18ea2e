"""Running ``doras-oras watch`` in a child process and reading its events (tests of the update agent)."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.layout_support import REPO_ROOT

Event = dict[str, Any]


class Agent:
    """``with Agent(args) as agent: agent.next(lambda e: ...)``; SIGTERM and a bounded wait on exit."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "doras_oras", "watch", "--json", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
                                     env={**os.environ, **(env or {})})
        self.events: queue.Queue[Event | None] = queue.Queue()
        self.seen: list[Event] = []
        self.stderr = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(json.loads(line))
        self.events.put(None)

    def next(self, wanted: Callable[[Event], bool] = lambda e: True, timeout_s: float = 60.0) -> Event:
        """The next event ``wanted`` accepts (those before it are kept in ``seen``); fails after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                break
            if event is None:
                raise AssertionError(f"the agent exited ({self.proc.wait()}): {self._stderr()}")
            self.seen.append(event)
            if wanted(event):
                return event
        raise AssertionError(f"no such event within {timeout_s} s; seen {self.seen[-5:]}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` (0: none), wait for the exit (bounded), read what is left; the exit code."""
        if sig and self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=60)
        self._reader.join(10)
        while (event := self.events.get_nowait() if not self.events.empty() else None) is not None:
            self.seen.append(event)
        self._stderr()
        return code

    def _stderr(self) -> str:
        if self.proc.poll() is not None and self.proc.stderr is not None and not self.stderr:
            self.stderr = self.proc.stderr.read()
        return self.stderr

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


class NotifySocket:
    """A real ``AF_UNIX`` datagram socket standing in for systemd's ``$NOTIFY_SOCKET``.

    A thread reads every datagram as it comes (as systemd does: the sender's socket does not block,
    so a receiver that fell behind would lose messages).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            if not data:
                return
            self.messages.put(data.decode())

    def receive(self, wanted: str, limit: int = 10000, timeout_s: float = 30.0) -> list[str]:
        """Datagrams until one holds the line ``wanted`` (bounded in count and time); all of them."""
        got: list[str] = []
        deadline = time.monotonic() + timeout_s
        for _ in range(limit):
            try:
                text = self.messages.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                break
            got.append(text)
            if wanted in text.splitlines():
                return got
        raise AssertionError(f"no {wanted} in {got[-20:]}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._reader.join(5)
