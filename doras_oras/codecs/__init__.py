"""Delta codecs: apply bsdiff and tar-diff deltas, streaming, with bounded memory.

Only streams here: no HTTP, no layout, no file names. The public API:

* :class:`~doras_oras.algorithms.DeltaAlgorithm` (from :mod:`doras_oras.algorithms`, re-exported)
  — the four delta kinds a Doras server produces;
* :func:`apply_delta` — apply one to a base file and write the result to an
  output stream (for a pull: the layout's blob writer, which hashes, checks,
  fsyncs and renames; the codecs do none of that).

Lower-level appliers: :func:`~.bsdiff.apply_bsdiff`,
:func:`~.tardiff.apply_tardiff`, :func:`~.compression.open_decompressed`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from typing import IO, Any, BinaryIO, Protocol

from ..algorithms import Compression, DeltaAlgorithm, Patch
from ..errors import InvalidArgumentError, SizeMismatchError
from . import bsdiff as _bsdiff
from .compression import DEFAULT_MAX_WINDOW_SIZE, Readable, Scratch, open_decompressed

__all__ = [
    "Compression",
    "DeltaAlgorithm",
    "Output",
    "Patch",
    "Scratch",
    "apply_delta",
    "open_decompressed",
]

log = logging.getLogger(__name__)

_SPOOL_CHUNK = 1 << 20

class Output(Protocol):
    """Where a delta's result goes: ``write``; ``restart`` (optional) empties it."""

    def write(self, data: bytes | bytearray, /) -> object: ...


class _Counting:
    """Counts what goes to ``out`` and refuses to pass ``limit`` bytes."""

    def __init__(self, out: Output, limit: int | None) -> None:
        self._out = out
        self._limit = limit
        self.size = 0
        restart = getattr(out, "restart", None)
        self.restart: Callable[[], object] | None = self._restart if callable(restart) else None

    def _restart(self) -> None:
        self._out.restart()  # type: ignore[attr-defined]
        self.size = 0

    def write(self, data: bytes | bytearray, /) -> int:
        n = len(data)
        self.size += n
        if self._limit is not None and self.size > self._limit:
            raise SizeMismatchError(f"delta output exceeds the expected {self._limit} bytes")
        self._out.write(data)
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


def _default_scratch() -> IO[bytes]:
    return tempfile.TemporaryFile(prefix=".doras-oras-")


def apply_delta(
    algorithm: DeltaAlgorithm,
    base: BinaryIO,
    delta: Readable,
    out: Output,
    *,
    expected_size: int | None = None,
    scratch: Scratch | None = None,
    max_window_size: int = DEFAULT_MAX_WINDOW_SIZE,
    use_numpy: bool | None = None,
) -> int:
    """Apply ``delta`` to ``base``, writing the result to ``out``; return its size.

    ``base`` is a readable file (bsdiff reads it with ``pread``; tar-diff reads it
    as a ``.tar``, ``.tar.gz`` or ``.tar.zst``). ``out`` takes the result with
    ``write``; when it also has ``restart()`` (empty it), a failed parallel bzip2
    decoding is retried sequentially instead of being an error. More output than
    ``expected_size`` is refused while writing, less at the end
    (:class:`SizeMismatchError`). A bsdiff patch that is compressed or not a
    regular file, and a compressed tar-diff base, are first spooled into a file
    of ``scratch()`` (default: an anonymous temp file). Errors:
    :class:`~doras_oras.errors.CorruptDeltaError`, :class:`SizeMismatchError`,
    :class:`~doras_oras.errors.UnsupportedAlgorithmError`; ``OSError`` and the
    output's own errors pass through.
    """
    if expected_size is not None and expected_size < 0:
        raise InvalidArgumentError("expected_size must be >= 0")
    make_scratch = scratch if scratch is not None else _default_scratch
    counted = _Counting(out, expected_size)
    if algorithm is DeltaAlgorithm.TARDIFF:
        from .tardiff import apply_tardiff  # lazy: tarfile is a heavy import

        apply_tardiff(base, delta, counted, expected_size=expected_size, scratch=make_scratch,
                      max_window_size=max_window_size, use_numpy=use_numpy)
    else:
        with contextlib.ExitStack() as stack:
            patch: Any = delta
            if algorithm.compression is not Compression.NONE or not _is_plain_file(delta):
                patch = stack.enter_context(
                    _spool(delta, algorithm.compression, make_scratch,
                           _bsdiff_patch_cap(expected_size), max_window_size)
                )
            # restart: if decoding bzip2 blocks in parallel fails, the patch is
            # applied again with sequential decoding (see codecs.bsdiff).
            _bsdiff.apply_bsdiff(base, patch, counted, expected_size=expected_size,
                                 use_numpy=use_numpy, restart=counted.restart)
    if expected_size is not None and counted.size != expected_size:
        raise SizeMismatchError(f"delta output has {counted.size} bytes, expected {expected_size}")
    log.info("applied %s delta: %d bytes", algorithm.value, counted.size)
    return counted.size


@contextlib.contextmanager
def _spool(
    stream: Readable, compression: Compression, scratch: Scratch, cap: int | None, max_window_size: int
) -> Iterator[IO[bytes]]:
    """Decompress ``stream`` into a scratch file; yield it open for reading at its start."""
    with scratch() as fh:
        reader = open_decompressed(stream, compression, max_output=cap, what="bsdiff patch",
                                   max_window_size=max_window_size)
        while chunk := reader.read(_SPOOL_CHUNK):
            fh.write(chunk)
        fh.flush()
        fh.seek(0)
        yield fh
