"""Delta codecs: apply bsdiff and tar-diff deltas, streaming, with bounded memory.

Only streams and files here (no HTTP, no layout). The public API:

* :class:`DeltaAlgorithm` — the four delta kinds a Doras server produces,
  parsed from a delta layer's media type (:meth:`DeltaAlgorithm.from_media_type`),
  a CLI name (:meth:`DeltaAlgorithm.from_name`) or magic bytes
  (:meth:`DeltaAlgorithm.detect`);
* :func:`apply_delta` — apply one to a base file and commit the result to
  ``output_path`` atomically (temp file next to it, verified while written,
  fsync + rename; nothing left behind on error).

Lower-level appliers: :func:`~.bsdiff.apply_bsdiff`,
:func:`~.tardiff.apply_tardiff`, :func:`~.compression.open_decompressed`.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import hashlib
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from .._writeback import WriteBehind
from ..errors import (
    CorruptDeltaError,
    DigestMismatchError,
    SizeMismatchError,
    UnsupportedAlgorithmError,
)
from . import bsdiff as _bsdiff
from .compression import DEFAULT_MAX_WINDOW_SIZE, Compression, Readable, open_decompressed

__all__ = [
    "Compression",
    "DeltaAlgorithm",
    "Patch",
    "apply_delta",
    "open_decompressed",
]

log = logging.getLogger(__name__)

_SPOOL_CHUNK = 1 << 20
TARDIFF_MAGIC = b"tardf1\n\x00"


class Patch(enum.StrEnum):
    """The patch format of a delta."""

    BSDIFF = "bsdiff"
    TARDIFF = "tardiff"


class DeltaAlgorithm(enum.Enum):
    """A delta kind, valued by its CLI name (``str()`` gives it too)."""

    BSDIFF = "bsdiff"
    BSDIFF_GZIP = "bsdiff+gzip"
    BSDIFF_ZSTD = "bsdiff+zstd"
    TARDIFF = "tardiff"

    @property
    def media_type(self) -> str:
        """The delta layer media type the Doras server uses (``application/<name>``)."""
        return f"application/{self.value}"

    @property
    def compression(self) -> Compression:
        """The compression around the patch (``NONE`` for bsdiff and tardiff)."""
        return {
            DeltaAlgorithm.BSDIFF_GZIP: Compression.GZIP,
            DeltaAlgorithm.BSDIFF_ZSTD: Compression.ZSTD,
        }.get(self, Compression.NONE)

    def __str__(self) -> str:
        return self.value

    @property
    def patch(self) -> Patch:
        """The patch format, without its compression."""
        return Patch.TARDIFF if self is DeltaAlgorithm.TARDIFF else Patch.BSDIFF

    @property
    def is_bsdiff(self) -> bool:
        """True for the three bsdiff kinds."""
        return self is not DeltaAlgorithm.TARDIFF

    @classmethod
    def from_media_type(cls, media_type: str) -> DeltaAlgorithm:
        """Parse exactly one of the four delta layer media types."""
        for algorithm in cls:
            if media_type == algorithm.media_type:
                return algorithm
        raise UnsupportedAlgorithmError(f"unsupported delta media type {media_type[:200]!r}")

    @classmethod
    def from_name(cls, name: str) -> DeltaAlgorithm:
        """Parse a CLI name: ``bsdiff``, ``bsdiff+gzip``, ``bsdiff+zstd`` or ``tardiff``."""
        try:
            return cls(name)
        except ValueError:
            raise UnsupportedAlgorithmError(f"unknown delta algorithm {name[:100]!r}") from None

    @classmethod
    def detect(cls, head: bytes) -> DeltaAlgorithm:
        """The algorithm of a delta from its first bytes (at least 8).

        ``BSDIFF40`` → bsdiff, ``tardf1\\n\\0`` → tardiff, gzip → bsdiff+gzip,
        zstd → bsdiff+zstd (the server compresses only bsdiff patches).
        """
        if head.startswith(_bsdiff.MAGIC):
            return cls.BSDIFF
        if head.startswith(TARDIFF_MAGIC):
            return cls.TARDIFF
        compression = Compression.detect(head)
        if compression is Compression.GZIP:
            return cls.BSDIFF_GZIP
        if compression is Compression.ZSTD:
            return cls.BSDIFF_ZSTD
        raise CorruptDeltaError(f"unrecognised delta: first bytes {head[:8].hex()}")


class _HashingWriter:
    """Writes to a file, hashing and counting; refuses to pass ``limit`` bytes."""

    def __init__(self, fh: BinaryIO, algorithm: str, limit: int | None) -> None:
        self._fh = fh
        self._algorithm = algorithm
        self.hasher: Any = hashlib.new(algorithm)
        self.size = 0
        self._limit = limit
        self._behind = WriteBehind(fh.fileno())

    def restart(self) -> None:
        """Discard everything written: empty the file, start the hash and the count again."""
        self._fh.seek(0)
        self._fh.truncate()
        self.hasher = hashlib.new(self._algorithm)
        self.size = 0
        self._behind.restart()

    def write(self, data: bytes | bytearray, /) -> int:
        n = len(data)
        self.size += n
        if self._limit is not None and self.size > self._limit:
            raise SizeMismatchError(f"delta output exceeds the expected {self._limit} bytes")
        self.hasher.update(data)
        view = memoryview(data)
        while view:  # an unbuffered file may take less than asked
            written = self._fh.write(view)
            if not written:
                raise OSError(errno.EIO, "the output file took no bytes")
            view = view[written:]
        self._behind.wrote(self.size)
        return n


def _is_plain_file(stream: Any) -> bool:
    """True for a regular file positioned at its start (read with pread as is)."""
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode) and stream.tell() == 0
    except (AttributeError, OSError, ValueError):
        return False


def _bsdiff_patch_cap(expected_size: int | None) -> int | None:
    # A bzip2 patch is at most ~1% larger than the data it carries plus its
    # control block; twice the output plus 1 MiB is a generous bound.
    return None if expected_size is None else 2 * expected_size + (1 << 20)


def apply_delta(
    algorithm: DeltaAlgorithm,
    base_path: str | os.PathLike[str],
    delta_stream: Readable,
    output_path: str | os.PathLike[str],
    *,
    expected_digest: str | None = None,
    expected_size: int | None = None,
    tmp_dir: str | os.PathLike[str] | None = None,
    max_window_size: int = DEFAULT_MAX_WINDOW_SIZE,
    use_numpy: bool | None = None,
) -> tuple[str, int]:
    """Apply ``delta_stream`` to ``base_path``; write the result to ``output_path``.

    Returns ``(digest, size)`` of the result (sha256, or the algorithm of
    ``expected_digest``). The result is written to a temp file next to
    ``output_path``, checked against ``expected_size`` while written and
    against ``expected_digest`` at the end, fsynced and renamed; on any error
    the temp file is removed and ``output_path`` is untouched. A bsdiff patch
    that is compressed or not a regular file is first spooled to a temp file
    in ``tmp_dir`` (default: the output's directory); so is a compressed
    tar-diff base. Errors: :class:`CorruptDeltaError`,
    :class:`DigestMismatchError`, :class:`SizeMismatchError`,
    :class:`UnsupportedAlgorithmError`, ``OSError`` for I/O failures.
    """
    hash_name = "sha256"
    if expected_digest is not None:
        from ..descriptor import validate_digest  # lazy: keeps start-up lean

        hash_name, _hex = validate_digest(expected_digest)
    if expected_size is not None and expected_size < 0:
        raise ValueError("expected_size must be >= 0")
    output_path = Path(output_path)
    out_dir = output_path.parent
    work_dir = Path(tmp_dir) if tmp_dir is not None else out_dir
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output_path.name}.", suffix=".part", dir=out_dir)
    try:
        with contextlib.ExitStack() as stack:
            out_fh = stack.enter_context(os.fdopen(fd, "wb", buffering=0))
            writer = _HashingWriter(out_fh, hash_name, expected_size)
            if algorithm is DeltaAlgorithm.TARDIFF:
                from .tardiff import apply_tardiff  # lazy: tarfile is a heavy import

                apply_tardiff(base_path, delta_stream, writer, expected_size=expected_size,
                                       tmp_dir=work_dir, max_window_size=max_window_size,
                                       use_numpy=use_numpy)
            else:
                patch: Any = delta_stream
                if algorithm.compression is not Compression.NONE or not _is_plain_file(delta_stream):
                    patch = stack.enter_context(
                        _spool(delta_stream, algorithm.compression, work_dir,
                               _bsdiff_patch_cap(expected_size), max_window_size)
                    )
                # restart: if decoding bzip2 blocks in parallel fails, the patch is
                # applied again with sequential decoding (see codecs.bsdiff).
                _bsdiff.apply_bsdiff(base_path, patch, writer, expected_size=expected_size,
                                     use_numpy=use_numpy, restart=writer.restart)
            if expected_size is not None and writer.size != expected_size:
                raise SizeMismatchError(
                    f"delta output has {writer.size} bytes, expected {expected_size}"
                )
            digest = f"{hash_name}:{writer.hasher.hexdigest()}"
            if expected_digest is not None and digest != expected_digest:
                raise DigestMismatchError(f"delta output: expected {expected_digest}, got {digest}")
            os.fchmod(out_fh.fileno(), 0o644)
            os.fsync(out_fh.fileno())
        os.replace(tmp_name, output_path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(out_dir)
    log.info("applied %s delta: %s (%d bytes)", algorithm.value, digest, writer.size)
    return digest, writer.size


def _fsync_dir(path: Path) -> None:
    try:
        dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@contextlib.contextmanager
def _spool(
    stream: Readable, compression: Compression, work_dir: Path, cap: int | None, max_window_size: int
) -> Any:
    """Decompress ``stream`` into an anonymous temp file; yield it open for reading."""
    with tempfile.TemporaryFile(prefix=".doras-oras-patch-", dir=work_dir) as fh:
        reader = open_decompressed(stream, compression, max_output=cap, what="bsdiff patch",
                                   max_window_size=max_window_size)
        while chunk := reader.read(_SPOOL_CHUNK):
            fh.write(chunk)
        fh.flush()
        fh.seek(0)
        yield fh
