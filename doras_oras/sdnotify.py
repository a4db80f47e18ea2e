"""The systemd notification protocol (``sd_notify``), without a dependency.

A service of ``Type=notify`` tells systemd how it is doing by sending
datagrams of ``KEY=VALUE`` lines to the ``AF_UNIX`` socket named in
``$NOTIFY_SOCKET`` (a path, or an abstract address written ``@name``):
``READY=1`` once it is up, ``WATCHDOG=1`` at least every ``$WATCHDOG_USEC``
microseconds when ``WatchdogSec=`` is set, ``STATUS=...`` (shown by
``systemctl status``) and ``STOPPING=1`` on the way out. Without
``$NOTIFY_SOCKET`` (not run by systemd) every call does nothing. A lost
datagram is not an error: systemd's own client ignores failures too; the
socket does not block (a full queue at the receiver drops the message).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


def _address(name: str) -> str | bytes:
    """``@name`` is an abstract address (a leading NUL byte); anything else a path."""
    return b"\0" + name[1:].encode() if name.startswith("@") else name


class Notifier:
    """A client of ``$NOTIFY_SOCKET``; ``Notifier(None)`` (or no variable) sends nothing."""

    def __init__(self, socket_name: str | None, *, watchdog_usec: int | None = None) -> None:
        self.socket_name = socket_name or None
        self.watchdog_s = watchdog_usec / 1e6 if watchdog_usec else None
        """The watchdog period systemd expects pings within (``None``: no watchdog)."""
        self._sock: socket.socket | None = None
        if self.socket_name is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)  # a receiver that does not read must never stall the service

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """The notifier systemd set up for this process (``$WATCHDOG_PID``, when set, must be ours)."""
        env = os.environ if environ is None else environ
        usec: int | None = None
        pid = env.get("WATCHDOG_PID")
        if env.get("WATCHDOG_USEC", "").isdigit() and (pid is None or pid == str(os.getpid())):
            usec = int(env["WATCHDOG_USEC"]) or None
        return cls(env.get("NOTIFY_SOCKET"), watchdog_usec=usec)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    @property
    def ping_interval_s(self) -> float | None:
        """How often to send ``WATCHDOG=1``: half the watchdog period (``None``: no watchdog)."""
        return self.watchdog_s / 2 if self.watchdog_s else None

    def notify(self, **fields: str) -> bool:
        """Send ``KEY=VALUE`` lines (``notify(READY="1", STATUS="up")``); whether the datagram left."""
        if self._sock is None or self.socket_name is None or not fields:
            return False
        message = "\n".join(f"{key}={value.replace(chr(10), ' ')}" for key, value in fields.items())
        try:
            self._sock.sendto(message.encode(), _address(self.socket_name))
        except OSError as exc:
            log.debug("sd_notify to %s failed: %s", self.socket_name, exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify(READY="1", STATUS=status)

    def status(self, status: str) -> bool:
        return self.notify(STATUS=status)

    def watchdog(self) -> bool:
        """``WATCHDOG=1`` when systemd watches this process (else nothing is sent)."""
        return self.notify(WATCHDOG="1") if self.watchdog_s else False

    def stopping(self, status: str) -> bool:
        return self.notify(STOPPING="1", STATUS=status)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
