"""Write-behind for files that are fsynced when complete.

Every blob doras-oras stores is fsynced before it is renamed into place
(DESIGN.md §5). Without help, the kernel starts writing a new file's pages
only at that fsync (or after ~30 s), so the fsync of a 256 MiB result waits
for all of it (0.15-0.2 s here). :class:`WriteBehind` asks the kernel to
start writeback of each range soon after it is written
(``posix_fadvise(POSIX_FADV_DONTNEED)`` starts asynchronous writeback of dirty
pages on Linux; pages still dirty or under writeback stay cached, but pages
whose writeback already finished are dropped from the cache, so a file read
again soon after, as ``--output`` does after a pull, may come partly from the
disk), so the disk works while the CPU decodes and hashes, and the final
fsync finds little left to do. It changes no byte and no durability guarantee: the
fsync still follows. Where ``posix_fadvise`` is missing or refused, it does
nothing.
"""

from __future__ import annotations

import os

__all__ = ["STEP", "WriteBehind"]

STEP = 8 << 20
"""Bytes written between two writeback requests."""

_ADVISE = getattr(os, "posix_fadvise", None)
_DONTNEED = getattr(os, "POSIX_FADV_DONTNEED", 0)


class WriteBehind:
    """Tracks how far a file descriptor has been written and starts writeback behind it."""

    __slots__ = ("_enabled", "_fd", "_start", "_step")

    def __init__(self, fd: int, *, start: int = 0, step: int = STEP) -> None:
        self._fd = fd
        self._start = start
        self._step = step
        self._enabled = _ADVISE is not None

    def wrote(self, end: int) -> None:
        """The file holds written bytes up to offset ``end``."""
        if end < self._start:  # rewound (a restarted download): follow it
            self._start = end
            return
        if not self._enabled or end - self._start < self._step:
            return
        try:
            _ADVISE(self._fd, self._start, end - self._start, _DONTNEED)  # type: ignore[misc]
        except OSError:
            self._enabled = False
            return
        self._start = end

    def restart(self, offset: int = 0) -> None:
        """The file was truncated or rewound to ``offset``."""
        self._start = offset
