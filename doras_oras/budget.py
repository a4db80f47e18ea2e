"""Download limits of a device, as the Go client's validators define them.

- ``max_size``: refuse, before downloading, an artifact whose manifest declares
  more bytes (manifest + config + layers) than the limit.
- a download budget: at most ``limit_bytes`` received per ``period_s``,
  counted across runs in a small ledger the layout keeps beside its blobs
  (``<layout>/.doras-oras/downloads.json``: :meth:`OCILayout.read_ledger`,
  :meth:`OCILayout.write_ledger`; only the layout writes into its directory). A pull checks what it is about to
  download against what is left, and records what it received.

- free space: :func:`check_free_space` refuses, before the first byte is
  downloaded, a pull whose blobs, scratch and extracted files would not fit
  on their file systems (a disk that fills anyway is still a clean error of
  the writer).

The ledger is replaced atomically (temp file, fsync, rename); records older
than the period are dropped when it is rewritten. :meth:`DownloadBudget.record`
needs the layout's lock; a failed write is a :class:`~doras_oras.errors.LayoutError`.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import (
    ArtifactTooLargeError,
    BudgetExceededError,
    DiskSpaceError,
    Fix,
    InvalidArgumentError,
)

if TYPE_CHECKING:
    from .layout import OCILayout


def check_max_size(declared: int, max_size: int | None, *, what: str) -> None:
    """Raise :class:`ArtifactTooLargeError` when ``declared`` exceeds ``max_size``."""
    if max_size is not None and declared > max_size:
        raise ArtifactTooLargeError(
            f"{what} declares {declared} bytes, more than the limit of {max_size} bytes", fix=Fix.MAX_SIZE
        )


def check_free_space(needs: Sequence[tuple[Path, int]], *, what: str) -> None:
    """Raise :class:`DiskSpaceError` unless every file system has room for what is to be written there.

    ``needs``: ``(path, bytes)`` pairs, one a file to be written below ``path`` (a
    directory that may not exist yet: its nearest existing parent is asked). Each
    file counts whole blocks; the pairs on one file system are summed and compared with the space free to
    unprivileged users (``statvfs`` ``f_bavail``).
    """
    totals: dict[int, tuple[Path, int]] = {}
    for path, size in needs:
        where = _existing(path)
        stat = os.statvfs(where)
        blocks = -(-max(size, 0) // stat.f_frsize)
        device = where.stat().st_dev
        first, total = totals.get(device, (where, 0))
        totals[device] = (first, total + blocks * stat.f_frsize)
    for where, total in totals.values():
        stat = os.statvfs(where)
        free = stat.f_bavail * stat.f_frsize
        if total > free:
            raise DiskSpaceError(f"{what} needs {total} bytes on the file system of {where}, which has "
                                 f"{free} bytes free", fix=Fix.DISK_SPACE)


def _existing(path: Path) -> Path:
    """``path`` or its nearest parent that exists."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


@dataclass
class DownloadBudget:
    """At most ``limit_bytes`` downloaded per ``period_s``, recorded in ``layout``'s ledger."""

    layout: OCILayout
    limit_bytes: int
    period_s: float
    clock: Callable[[], float] = field(default=time.time)

    def __post_init__(self) -> None:
        if not (isinstance(self.limit_bytes, int) and self.limit_bytes >= 0):
            raise InvalidArgumentError(f"budget limit must be an integer number of bytes >= 0, not {self.limit_bytes!r}")
        if not (isinstance(self.period_s, int | float) and math.isfinite(self.period_s) and self.period_s > 0):
            raise InvalidArgumentError(f"budget period must be a positive number of seconds, not {self.period_s!r}")

    def _records(self) -> list[tuple[float, int]]:
        data = self.layout.read_ledger()
        if data is None:
            return []
        try:
            records = [(float(t), int(n)) for t, n in json.loads(data).get("records", [])]
        except (ValueError, TypeError, AttributeError):
            # A damaged ledger must not block updates forever: start a new period.
            return []
        horizon = self.clock() - self.period_s
        return [(t, n) for t, n in records if t > horizon and n >= 0]

    def consumed(self) -> int:
        """Bytes received within the current period."""
        return sum(n for _t, n in self._records())

    def remaining(self) -> int:
        return max(0, self.limit_bytes - self.consumed())

    def check(self, about_to_download: int, *, what: str) -> None:
        """Raise :class:`BudgetExceededError` when the download would exceed the budget."""
        used = self.consumed()
        if used + about_to_download > self.limit_bytes:
            raise BudgetExceededError(
                f"{what} needs {about_to_download} bytes; {used} of the budget of "
                f"{self.limit_bytes} bytes per {self.period_s:g} s are already used", fix=Fix.BUDGET
            )

    def record(self, received: int) -> None:
        """Add ``received`` bytes at the current time to the ledger (under the layout's lock)."""
        if received <= 0:
            return
        records = self._records()
        records.append((self.clock(), received))
        self.layout.write_ledger(json.dumps({"records": records}).encode())
