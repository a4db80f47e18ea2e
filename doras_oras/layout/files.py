"""File-system primitives of the layout: the one atomic write, directory fsync, disk errors.

:func:`atomic_write` is how every small file of doras-oras is replaced (``index.json``,
``oci-layout``, the download ledger, a partial download's sidecar): a temp file in the
same directory (or ``tmp_dir``), written, fsynced, made 0644, renamed over the target,
the directory fsynced. A kill at any instant leaves the old or the new content.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from ..errors import Fix, LayoutError

TEMP_SUFFIX = ".tmp"
"""Suffix of every temp file doras-oras writes (``*.tmp`` in ``ingest/`` are cleaned on open)."""
INGEST_DIR = "ingest"
"""The layout's own directory: lock file, temp files, partial downloads."""
PARTIAL_SUFFIX = ".partial"
"""Suffix of a partial download in ``ingest/`` (``<alg>-<hex>.partial``)."""
META_SUFFIX = ".meta"
"""Sidecar of a partial download: which digest and size its bytes belong to."""


def fsync_dir(path: Path) -> None:
    """fsync a directory, so that a rename inside it is durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(target: Path, data: bytes, *, tmp_dir: Path | None = None, mode: int = 0o644) -> None:
    """Replace ``target`` by ``data`` atomically (temp file, fsync, chmod, rename, directory fsync).

    ``tmp_dir`` must be on the same file system as ``target`` (default: its directory).
    ``OSError`` on failure; the temp file is then removed and ``target`` is unchanged.
    """
    fd, name = tempfile.mkstemp(dir=tmp_dir if tmp_dir is not None else target.parent,
                                prefix=".write-", suffix=TEMP_SUFFIX)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def disk_error(what: str, exc: OSError) -> LayoutError:
    """A :class:`LayoutError` for a failed write of ``what`` (names a full disk as such)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return LayoutError(f"no space left on the device writing {what}")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return LayoutError(f"cannot write {what}: {exc.strerror or exc}", fix=Fix.READ_ONLY_LAYOUT)
    return LayoutError(f"cannot write {what}: {exc}")
