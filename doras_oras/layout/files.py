"""File-system primitives of the layout: the one atomic write, directory fsync, disk errors,
the claim a writer of ``ingest/`` holds on its file, and the cleaning of ``ingest/``.

:func:`atomic_write` is how every small file of doras-oras is replaced (``index.json``,
``oci-layout``, the download ledger, a partial download's sidecar): a temp file in the
same directory (or ``tmp_dir``), written, fsynced, made 0644, renamed over the target,
the directory fsynced. A kill at any instant leaves the old or the new content.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import tempfile
import time
from pathlib import Path

from ..descriptor import validate_digest
from ..errors import Fix, LayoutError

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"
"""Suffix of every temp file doras-oras writes (``*.tmp`` in ``ingest/`` are cleaned on open)."""
INGEST_DIR = "ingest"
"""The layout's own directory: lock file, temp files, partial downloads."""
PARTIAL_SUFFIX = ".partial"
"""Suffix of a partial download in ``ingest/`` (``<alg>-<hex>.partial``)."""
META_SUFFIX = ".meta"
"""Sidecar of a partial download: which digest and size its bytes belong to."""
STALE_PARTIAL_SECONDS = 7 * 24 * 3600
"""Partial downloads untouched this long are removed."""


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
        claim(fd, tmp)  # a housekeeper of ingest/ leaves it alone while it is written
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


def claim(fd: int, path: Path) -> bool:
    """Take the exclusive ``flock`` of the open file ``fd`` if no one holds it and ``path`` still names it.

    A writer in ``ingest/`` holds its file so: the layout's housekeeping
    (:func:`remove_unless_claimed`) leaves a claimed file alone, and a second
    writer of the same partial download sees it is taken. Released when ``fd`` is closed.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino  # not removed between open and flock
    except FileNotFoundError:
        return False


def remove_unless_claimed(path: Path) -> bool:
    """Remove ``path`` unless a writer holds it (:func:`claim`); True when it was removed (or gone)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        if not claim(fd, path):
            return False
        path.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)


def clean_ingest(root: Path, *, stale_after: float = STALE_PARTIAL_SECONDS) -> list[Path]:
    """Remove leftovers of killed runs in ``root/ingest/``; keep what a next pull can resume (run on every lock).

    Removed: temp files (``*.tmp``); partial downloads that are stale (untouched
    for ``stale_after`` seconds), already complete in ``blobs/`` or badly named,
    with their ``.meta`` sidecars; sidecars whose partial file is gone. Kept: fresh
    partials and their sidecars (the next download resumes them).
    """
    removed: list[Path] = []
    ingest = root / INGEST_DIR
    now = time.time()
    entries = sorted(ingest.iterdir()) if ingest.is_dir() else []
    for entry in entries:
        name = entry.name
        remove = False
        if name.endswith(TEMP_SUFFIX):
            remove = True
        elif name.endswith(PARTIAL_SUFFIX):
            alg, _, hexpart = name[: -len(PARTIAL_SUFFIX)].partition("-")
            try:
                validate_digest(f"{alg}:{hexpart}")
                done = (root / "blobs" / alg / hexpart).exists()
                remove = done or now - entry.stat().st_mtime > stale_after
            except (ValueError, OSError):
                remove = True
        if remove and remove_unless_claimed(entry):  # a download in flight holds its file: kept
            removed.append(entry)
            sidecar = entry.with_name(name + META_SUFFIX)
            if name.endswith(PARTIAL_SUFFIX) and sidecar.exists():
                with contextlib.suppress(FileNotFoundError):
                    sidecar.unlink()
                removed.append(sidecar)
    for entry in entries:
        name = entry.name
        orphan = (
            name.endswith(PARTIAL_SUFFIX + META_SUFFIX)
            and entry not in removed
            and not entry.with_name(name[: -len(META_SUFFIX)]).exists()
        )
        if orphan:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
            removed.append(entry)
    if removed:
        log.info("cleaned %d leftover file(s) in %s", len(removed), ingest)
    return removed
