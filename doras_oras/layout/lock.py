"""The layout's writer lock: one process at a time per layout (``flock`` on ``ingest/lock``).

Re-entrant within a process. A waiting process polls with the project's one
backoff formula (:func:`doras_oras.backoff.next_delay`, from 10 ms up to
200 ms) until its timeout, then raises :class:`~doras_oras.errors.LayoutLockedError`.

A layout this process cannot write (a read-only file system, a directory it may
not write) is still locked, for reading: the lock file is opened read-only
(``flock`` works on it), or, when there is none, nothing is locked (no one can
have written it). :attr:`LayoutLock.read_only` then says why it cannot be written;
the layout refuses every write with :data:`~doras_oras.errors.Fix.READ_ONLY_LAYOUT`.
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

from ..backoff import next_delay
from ..errors import Fix, InvalidArgumentError, LayoutLockedError

LOCK_FILE = "lock"
_CANNOT_WRITE = (errno.EROFS, errno.EACCES, errno.EPERM)
_WAIT_INITIAL_S = 0.01
_WAIT_MAX_S = 0.2


class LayoutLock:
    """An exclusive ``flock`` on ``path``, re-entrant in this process."""

    def __init__(self, path: Path, *, what: str, sleep: Callable[[float], None] = time.sleep) -> None:
        self.path = path
        self.what = what
        self.depth = 0
        self._fd: int | None = None
        self._sleep = sleep
        self.read_only: str | None = None
        """Why the layout cannot be written (``strerror``), found when the lock was taken; None: it can."""

    @property
    def held(self) -> bool:
        """Whether this process holds the lock."""
        return self.depth > 0

    def acquire(self, timeout: float) -> bool:
        """Take the lock (waiting at most ``timeout`` s); True when this call took it first (depth 1)."""
        if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout >= 0):
            raise InvalidArgumentError(f"lock timeout must be a number of seconds >= 0, not {timeout!r}")
        if self.depth:
            self.depth += 1
            return False
        fd = self._open()
        deadline = time.monotonic() + timeout
        attempt = 0
        while fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    os.close(fd)
                    raise LayoutLockedError(
                        f"{self.what} is locked by another process (waited {timeout:g} s)",
                        fix=Fix.LOCK_TIMEOUT,
                    ) from None
                wait = next_delay(attempt, base_delay_s=_WAIT_INITIAL_S, max_delay_s=_WAIT_MAX_S,
                                  jitter=random.random())
                self._sleep(min(wait, left))
                attempt += 1
        self._fd = fd
        self.depth = 1
        return True

    def _open(self) -> int | None:
        """The lock file, opened for writing; read-only (or None) when the layout cannot be written."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            self.read_only = None
            return fd
        except OSError as exc:
            if exc.errno not in _CANNOT_WRITE:
                raise
            self.read_only = exc.strerror or str(exc)
        try:
            return os.open(self.path, os.O_RDONLY)
        except (FileNotFoundError, PermissionError):
            return None

    def release(self) -> None:
        """Undo one :meth:`acquire`; the outermost one unlocks."""
        if self.depth > 1:
            self.depth -= 1
            return
        fd, self._fd, self.depth = self._fd, None, 0
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
