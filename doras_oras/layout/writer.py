"""The one writer of blobs: hashes and counts while writing, then checks, fsyncs and renames.

Everything doras-oras stores goes through a :class:`BlobWriter` (the shape of
oras-go's ``content/oci`` storage: ingest to a temp file, verify, rename into
place): downloads from the registry (resumable), results of a delta, blobs
read from memory. Two kinds:

- :meth:`BlobWriter.temporary`: a new temp file (``*.tmp``) for content made or
  read here; discarded unless committed.
- :meth:`BlobWriter.partial`: a resumable download. The file and its sidecar
  ``<file>.meta`` (the digest and size its bytes belong to) survive
  :meth:`~BlobWriter.close`; opening it again re-hashes what is there and
  continues at its end. Bytes of another or an unknown blob are dropped.

:meth:`~BlobWriter.write` refuses bytes past the expected size;
:meth:`~BlobWriter.finish` checks size and digest (a mismatch removes the
file), makes it 0644 and fsyncs it; :meth:`~BlobWriter.commit` also renames it
and fsyncs the directory. :meth:`~BlobWriter.restart` empties it (a server
that ignored a ``Range``, a parallel decode that failed). Write-behind
(:mod:`doras_oras._writeback`) starts writeback while the bytes arrive, so the
final fsync finds little left to do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

from .._writeback import WriteBehind
from ..descriptor import validate_digest
from ..errors import DigestMismatchError, InvalidArgumentError, SizeMismatchError
from .files import META_SUFFIX, TEMP_SUFFIX, atomic_write, disk_error, fsync_dir

log = logging.getLogger(__name__)

_REHASH_CHUNK = 1 << 20


class BlobWriter:
    """One blob being written to ``path``. Build it with :meth:`temporary` or :meth:`partial`.

    ``digest`` and ``size``, when known, are what the content must be; the
    digest of what was written is :attr:`digest_written` after :meth:`finish`.
    ``what`` names the content in errors (``blob``, ``delta output``).
    """

    def __init__(self, path: Path, fd: int, *, digest: str | None, size: int | None,
                 algorithm: str = "sha256", what: str = "blob", sidecar: Path | None = None) -> None:
        if digest is not None:
            algorithm, _hex = validate_digest(digest)
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise InvalidArgumentError(f"size must be a non-negative integer, not {size!r}")
        self.path = path
        self.digest = digest
        self.size = size
        self.algorithm = algorithm
        self.what = what
        self.offset = 0
        """Bytes in the file so far."""
        self.digest_written: str | None = None
        self._fd = fd
        self._sidecar = sidecar
        if algorithm not in ("sha256", "sha512"):
            raise InvalidArgumentError(f"unsupported digest algorithm {algorithm!r}")
        self._hasher: Any = hashlib.new(algorithm)
        self._behind = WriteBehind(fd)
        self._state = "open"  # open | finished | committed | closed | discarded

    # --- construction ------------------------------------------------------------
    @classmethod
    def temporary(cls, directory: Path, *, digest: str | None = None, size: int | None = None,
                  algorithm: str = "sha256", what: str = "blob") -> BlobWriter:
        """A new temp file ``directory/.blob-*.tmp`` (removed unless committed)."""
        try:
            fd, name = tempfile.mkstemp(dir=directory, prefix=".blob-", suffix=TEMP_SUFFIX)
        except OSError as exc:
            raise disk_error(what, exc) from exc
        return cls(Path(name), fd, digest=digest, size=size, algorithm=algorithm, what=what)

    @classmethod
    def partial(cls, path: Path, *, digest: str, size: int, what: str = "blob") -> BlobWriter:
        """The resumable partial file ``path`` of the blob ``digest``/``size`` (created if absent)."""
        validate_digest(digest)
        sidecar = path.with_name(path.name + META_SUFFIX)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            recorded = _read_meta(sidecar)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise disk_error(f"{what} {digest}", exc) from exc
        writer = cls(path, fd, digest=digest, size=size, what=what, sidecar=sidecar)
        try:
            writer._resume(recorded)
            atomic_write(sidecar, json.dumps({"digest": digest, "size": size}).encode())
        except OSError as exc:
            writer.discard()
            raise disk_error(f"{what} {digest}", exc) from exc
        return writer

    def _resume(self, recorded: dict[str, Any] | None) -> None:
        length = os.fstat(self._fd).st_size
        if not length:
            return
        if recorded != {"digest": self.digest, "size": self.size}:
            # Bytes of unknown or other content: keep them only if they already are the blob.
            if not (length == self.size and self._rehash() and self._matches()):
                log.warning("%s: partial file of another or unknown blob; starting over", self.path)
                self.restart()
        elif self.size is not None and length > self.size:
            log.warning("%s: partial file longer than %d bytes; starting over", self.path, self.size)
            self.restart()
        else:
            self._rehash()
            if length == self.size and not self._matches():
                log.warning("%s: complete partial file does not match; starting over", self.path)
                self.restart()
        self._behind.restart(self.offset)

    def _rehash(self) -> bool:
        self._hasher = hashlib.new(self.algorithm)
        os.lseek(self._fd, 0, os.SEEK_SET)
        count = 0
        while block := os.read(self._fd, _REHASH_CHUNK):
            self._hasher.update(block)
            count += len(block)
        self.offset = count
        return True

    def _matches(self) -> bool:
        return self.offset == self.size and self._written() == self.digest

    def _written(self) -> str:
        return f"{self.algorithm}:{self._hasher.hexdigest()}"

    # --- writing ---------------------------------------------------------------------
    @property
    def _label(self) -> str:
        return f"{self.what} {self.digest}" if self.digest else self.what

    @property
    def resumable(self) -> bool:
        """Whether the file is a partial download kept across :meth:`close`."""
        return self._sidecar is not None

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        """Append ``data``; :class:`SizeMismatchError` (file removed) past the expected size."""
        n = len(data)
        if self.size is not None and self.offset + n > self.size:
            self.discard()
            raise SizeMismatchError(f"{self._label}: more than the expected {self.size} bytes")
        view = memoryview(data).cast("B")
        try:
            os.lseek(self._fd, self.offset, os.SEEK_SET)
            while view:
                written = os.write(self._fd, view)
                if not written:
                    raise OSError(5, "the file took no bytes")
                view = view[written:]
        except OSError as exc:
            self.discard()  # a full disk: free what this blob took
            raise disk_error(self._label, exc) from exc
        self._hasher.update(data)
        self.offset += n
        self._behind.wrote(self.offset)
        return n

    def restart(self) -> None:
        """Discard everything written: empty the file, start the hash and the count again."""
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        self.offset = 0
        self._hasher = hashlib.new(self.algorithm)
        self._behind.restart()

    # --- ending ------------------------------------------------------------------------
    def finish(self) -> str:
        """Check size and digest, make the file 0644 and fsync it; return its digest.

        A mismatch removes the file (and its sidecar) and raises
        :class:`SizeMismatchError` / :class:`DigestMismatchError`.
        """
        if self._state == "finished":
            return self.digest_written or self._written()
        if self._state != "open":
            raise InvalidArgumentError(f"{self.what}: writer is {self._state}")
        if self.size is not None and self.offset != self.size:
            self.discard()
            raise SizeMismatchError(f"{self._label}: got {self.offset} bytes, expected {self.size}")
        actual = self._written()
        if self.digest is not None and actual != self.digest:
            self.discard()
            raise DigestMismatchError(f"{self.what}: expected {self.digest}, got {actual}")
        try:
            os.fchmod(self._fd, 0o644)
            os.fsync(self._fd)
        except OSError as exc:
            self.discard()
            raise disk_error(f"{self.what} {actual}", exc) from exc
        if self._sidecar is not None:  # the bytes are the blob now: no sidecar needed to trust them
            self._sidecar.unlink(missing_ok=True)
        self.digest_written = actual
        self._state = "finished"
        return actual

    def commit(self, final: Path) -> str:
        """:meth:`finish`, then rename the file to ``final`` and fsync its directory; return the digest."""
        digest = self.finish()
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.path, final)
            fsync_dir(final.parent)
        except OSError as exc:
            self.discard()
            raise disk_error(f"{self.what} {digest}", exc) from exc
        self._close_fd()
        if self._sidecar is not None:
            self._sidecar.unlink(missing_ok=True)
        self._state = "committed"
        return digest

    def close(self) -> None:
        """Stop writing. A partial download keeps its bytes for a resume (an empty one is removed);
        a temporary file not committed is removed."""
        if self._state in ("committed", "closed", "discarded"):
            return
        if not self.resumable or self.offset == 0:
            self.discard()
            return
        self._close_fd()
        self._state = "closed"

    def discard(self) -> None:
        """Remove the file and its sidecar."""
        if self._state in ("committed", "discarded"):
            return
        self._close_fd()
        self.path.unlink(missing_ok=True)
        if self._sidecar is not None:
            self._sidecar.unlink(missing_ok=True)
        self._state = "discarded"

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._state == "finished" and not self.resumable:
            self.discard()  # finished but never committed: nobody will use it
        self.close()


def _read_meta(sidecar: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
