"""A streaming applier of BSDIFF40 patches (bsdiff 4.x, Go bsdiff, bsdiff4).

Format (DESIGN.md §3): a 32-byte header ``BSDIFF40`` + three signed 64-bit
integers (little-endian magnitude, sign in the top bit of the last byte):
compressed control length, compressed diff length, new size; then three
bzip2 streams: control, diff, extra (the last runs to the end of the file).
Control triples ``(x, y, z)``: emit ``x`` bytes of diff added byte-wise
(mod 256) to ``x`` bytes of old; emit ``y`` bytes of extra; move the old
position by ``z``.

Behaviour, as in the reference ``bspatch``:

* bytes of the old file read outside ``[0, len(old))`` count as zero (the
  diff byte is emitted unchanged);
* a negative ``x`` or ``y``, a triple writing past the new size, a stream
  that ends before the data it must give, and a header with negative
  lengths are errors (:class:`CorruptDeltaError`);
* triples are read until the new size is reached; what follows in the
  streams is not read.

Beyond the reference: ``expected_size`` is compared with the header's new
size before any work; memory stays bounded whatever the header claims
(buffers of at most ``CHUNK`` bytes, nothing allocated from a header field);
more than ``MAX_IDLE_TRIPLES`` consecutive triples that emit nothing are an
error (a control-stream bomb would otherwise spin).

Speed, sequential decoding: one helper thread decodes the bzip2 streams (``bz2``
releases the GIL) while the caller's thread reads old bytes, adds and writes. Diff blocks are
mostly zero; a zero sub-block means "copy old", so only non-zero sub-blocks
are added (see :mod:`._addmod`).

Parallel decoding (``parallel``; on by default in :func:`~doras_oras.codecs.apply_delta`
when the process may use more than one CPU). libbz2 costs ~4 ns per *output*
byte, so the diff stream of a Go server patch (one triple ``(newsize, 0, 0)``,
a stream of zeros that expands ~50× per bzip2 block) is the critical path of an
apply. When the diff or extra stream is first needed, its bzip2 blocks are
located (:func:`._bz2parallel.split_stream`: a bit-level search for the block
magic, windowed, positions only) and, if the stored stream CRC equals the one
recomputed from the block CRCs, each block is decoded as a standalone one-block
stream by a worker thread (one per usable CPU, at most 4;
``DORAS_ORAS_BZ2_WORKERS`` overrides, 1 = off); a stream of one block is decoded
by one worker, which overlaps its decoding with the adds as the sequential
helper thread does. The output is read strictly in order; a parallel diff stream
reaches the caller's thread as runs, zero runs as lengths ("new = old": no add,
no compare), in pieces of at most ``CHUNK`` bytes of the new file. The caller's
thread reads the control stream itself and consumes the runs directly (no thread
and queue in between). The control stream, empty streams, streams that cannot be
split (truncated, no end-of-stream marker) or whose CRCs disagree (corrupt, or a
block magic found by chance inside a block) are decoded sequentially; a CRC
disagreement is named in the error if that decoding then fails.

Memory: what workers decode ahead of the reader is held compactly (zero runs as
lengths, scattered edits as ~256-byte pieces) and its non-zero bytes are capped
at :data:`._bz2parallel.BUDGET` (4 MiB) + :data:`._bz2parallel.RESERVE` (512 KiB)
per stream; at most one block per stream plus ``workers - 1`` more are
being decoded at once (~3.6 MiB of libbz2 state each at level 9). With 2 workers
this adds ~2–4 MiB of peak RSS to a Go server patch and ~11 MiB to one whose
diff is dense (measured).

Fallback: if a block fails to decode in parallel (a corrupt block, or a false
block boundary that passed the CRC check), :func:`apply_bsdiff` calls its
``restart`` function (``apply_delta`` empties its temp file and restarts its
hash) and applies the patch again with sequential decoding, which gives the
right result or the usual :class:`CorruptDeltaError`. Without ``restart`` the
parallel failure is itself a :class:`CorruptDeltaError`, so parallel decoding is
only automatic when a restart is possible.
"""

from __future__ import annotations

import bz2
import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from ..errors import CorruptDeltaError
from ._addmod import AdaptiveAdder
from ._bz2parallel import (
    DecoderGroup,
    ParallelDecodeError,
    ParallelReader,
    Run,
    decoder_count,
    split_stream,
    usable_cpus,
)

__all__ = ["CHUNK", "HEADER_SIZE", "MAGIC", "BsdiffHeader", "Writable", "apply_bsdiff", "read_header"]

log = logging.getLogger(__name__)

MAGIC = b"BSDIFF40"
HEADER_SIZE = 32
#: Largest piece of diff or extra data handled at once.
CHUNK = 1 << 17
#: Consecutive control triples with x == y == 0 tolerated.
MAX_IDLE_TRIPLES = 1 << 16
_SUB = 1 << 12  # granularity of the zero test in diff chunks
_IN_CHUNK = 1 << 16
_QUEUE_DEPTH = 8
#: Largest piece of the new file one item of a parallel-decoded diff stream covers
#: (measured: 128 KiB pieces stay in the caches while read, added, hashed and written;
#: 1 MiB pieces made the whole application ~10 % slower).
_REGION = CHUNK
_ZERO_CHUNK = bytes(CHUNK)
_ZERO_SUB = bytes(_SUB)


class Writable(Protocol):
    """Anything with ``write(bytes)``."""

    def write(self, data: bytes | bytearray, /) -> object: ...


def _offtin(raw: bytes) -> int:
    magnitude = int.from_bytes(raw[:7] + bytes([raw[7] & 0x7F]), "little")
    return -magnitude if raw[7] & 0x80 else magnitude


class BsdiffHeader:
    """The parsed 32-byte header."""

    __slots__ = ("ctrl_len", "diff_len", "new_size")

    def __init__(self, ctrl_len: int, diff_len: int, new_size: int) -> None:
        self.ctrl_len = ctrl_len
        self.diff_len = diff_len
        self.new_size = new_size

    def __repr__(self) -> str:
        return f"BsdiffHeader(ctrl_len={self.ctrl_len}, diff_len={self.diff_len}, new_size={self.new_size})"


def read_header(head: bytes) -> BsdiffHeader:
    """Parse and check a BSDIFF40 header (the first 32 bytes of a patch)."""
    if len(head) < HEADER_SIZE:
        raise CorruptDeltaError(f"bsdiff patch truncated: {len(head)} of {HEADER_SIZE} header bytes")
    if head[:8] != MAGIC:
        raise CorruptDeltaError(f"not a BSDIFF40 patch: magic {head[:8]!r}")
    header = BsdiffHeader(_offtin(head[8:16]), _offtin(head[16:24]), _offtin(head[24:32]))
    for name in ("ctrl_len", "diff_len", "new_size"):
        if getattr(header, name) < 0:
            raise CorruptDeltaError(f"bsdiff header: negative {name} {getattr(header, name)}")
    return header


class _Bz2Block:
    """One bzip2 stream stored at ``[start, end)`` of a file, decoded on demand."""

    def __init__(self, fd: int, start: int, end: int, name: str, hint: str = "") -> None:
        self._fd = fd
        self._pos = start
        self._end = end
        self._name = name
        self._hint = hint  # added to the message of a bzip2 error
        self._dec = bz2.BZ2Decompressor()

    def read(self, n: int) -> bytes:
        """Up to ``n`` (> 0) decoded bytes; an error if the stream has none left."""
        dec = self._dec
        while True:
            if dec.eof:
                raise CorruptDeltaError(f"bsdiff {self._name} stream ends before the data it must give")
            data = b""
            if dec.needs_input:
                if self._pos >= self._end:
                    raise CorruptDeltaError(f"bsdiff {self._name} stream truncated")
                data = os.pread(self._fd, min(_IN_CHUNK, self._end - self._pos), self._pos)
                if not data:
                    raise CorruptDeltaError(f"bsdiff {self._name} stream truncated (file shorter)")
                self._pos += len(data)
            try:
                out = dec.decompress(data, n)
            except (OSError, ValueError) as exc:
                raise CorruptDeltaError(
                    f"bsdiff {self._name} stream: invalid bzip2 data: {exc}{self._hint}"
                ) from exc
            if out:
                return out

    def read_exact(self, n: int) -> bytes:
        parts = []
        while n:
            piece = self.read(n)
            parts.append(piece)
            n -= len(piece)
        return b"".join(parts)


_ADD = 0  # (_ADD, diff bytes, oldpos)
_EXTRA = 1  # (_EXTRA, extra bytes, 0)
_SPARSE = 2  # (_SPARSE, runs of a parallel-decoded diff stream, oldpos)


class _Stop(Exception):
    pass


def _open_stream(
    fd: int, start: int, end: int, name: str, group: DecoderGroup | None, *, sparse: bool
) -> _Bz2Block | ParallelReader:
    """A reader of the bzip2 stream at ``[start, end)`` of the patch: its blocks decoded in

    by ``group``'s workers when it splits consistently into one block or more, else sequentially.
    """
    if group is None:
        return _Bz2Block(fd, start, end, name)

    def read_at(offset: int, n: int) -> bytes:
        n = min(n, end - start - offset)
        return os.pread(fd, n, start + offset) if n > 0 else b""

    layout = split_stream(read_at, end - start)
    if layout is None or not layout.blocks:
        return _Bz2Block(fd, start, end, name)
    if not layout.consistent:
        hint = (f" (the stream CRC stored after its last block, {layout.stored_crc:08x}, is not "
                f"the one of its {len(layout.blocks)} blocks, {layout.combined_crc:08x})")
        log.debug("bsdiff: %s stream: split not consistent%s; decoding it sequentially", name, hint)
        return _Bz2Block(fd, start, end, name, hint)
    log.debug("bsdiff: %s stream: %d bzip2 blocks, %d workers", name, len(layout.blocks), group.workers)
    return group.open(read_at, layout, name, sparse=sparse)


def _put_regions(diff: ParallelReader, x: int, oldpos: int, put: Callable[[object], None]) -> None:
    """Put ``x`` diff bytes as ``_SPARSE`` items of at most ``_REGION`` bytes each."""
    remaining = x
    while remaining:
        runs: list[Run] = []
        length = 0
        while remaining and length < _REGION:
            run = diff.read(min(remaining, _REGION - length))
            if isinstance(run, int):
                last = runs[-1] if runs else None
                if isinstance(last, int):
                    runs[-1] = last + run
                else:
                    runs.append(run)
                n = run
            else:
                runs.append(run)
                n = len(run)
            length += n
            remaining -= n
        put((_SPARSE, runs, oldpos))
        oldpos += length


def _produce(
    fd: int, header: BsdiffHeader, patch_size: int, put: Callable[[object], None],
    parallel: bool = False,
) -> None:
    """Decode the streams and put ``(_ADD, diff, oldpos)`` / ``(_SPARSE, runs, oldpos)`` /

    ``(_EXTRA, data, 0)`` items. ``parallel``: decode multi-block diff and extra streams
    block by block in worker threads (the control stream is always sequential).
    """
    start = HEADER_SIZE
    diff_start = start + header.ctrl_len
    extra_start = diff_start + header.diff_len
    ctrl = _Bz2Block(fd, start, diff_start, "control")
    diff: _Bz2Block | ParallelReader | None = None  # opened when first needed
    extra: _Bz2Block | ParallelReader | None = None
    group = DecoderGroup() if parallel else None
    try:
        new_size = header.new_size
        newpos = 0
        oldpos = 0
        idle = 0
        while newpos < new_size:
            triple = ctrl.read_exact(24)
            x, y, z = _offtin(triple[0:8]), _offtin(triple[8:16]), _offtin(triple[16:24])
            if x < 0 or y < 0:
                raise CorruptDeltaError(f"bsdiff control triple at output {newpos}: negative length ({x}, {y})")
            if newpos + x > new_size:
                raise CorruptDeltaError(
                    f"bsdiff control triple at output {newpos}: {x} diff bytes pass the new size {new_size}"
                )
            if x == 0 and y == 0:
                idle += 1
                if idle > MAX_IDLE_TRIPLES:
                    raise CorruptDeltaError(f"bsdiff control stream: over {MAX_IDLE_TRIPLES} empty triples")
            else:
                idle = 0
            if x and diff is None:
                diff = _open_stream(fd, diff_start, extra_start, "diff", group, sparse=True)
            if isinstance(diff, ParallelReader):
                _put_regions(diff, x, oldpos, put)
                oldpos += x
            else:
                remaining = x
                while remaining:
                    assert diff is not None
                    piece = diff.read(min(remaining, CHUNK))
                    put((_ADD, piece, oldpos))
                    oldpos += len(piece)
                    remaining -= len(piece)
            newpos += x
            if newpos + y > new_size:
                raise CorruptDeltaError(
                    f"bsdiff control triple at output {newpos}: {y} extra bytes pass the new size {new_size}"
                )
            if y and extra is None:
                extra = _open_stream(fd, extra_start, patch_size, "extra", group, sparse=False)
            remaining = y
            while remaining:
                assert extra is not None
                data = extra.read(min(remaining, CHUNK))
                if isinstance(data, int):
                    data = bytes(data)
                put((_EXTRA, data, 0))
                remaining -= len(data)
            newpos += y
            oldpos += z
    finally:
        if group is not None:
            group.close()
            log.debug("bsdiff: at most %d non-zero bytes buffered by the bzip2 workers",
                      group.peak_buffered)


def _combine(old: bytes, diff: bytes, add: AdaptiveAdder) -> bytes | bytearray:
    """``old + diff`` byte-wise, skipping zero sub-blocks of ``diff``."""
    n = len(diff)
    if diff == (_ZERO_CHUNK if n == CHUNK else bytes(n)):
        return old
    out = bytearray(old)
    for i in range(0, n, _SUB):
        d = diff[i : i + _SUB]
        if d != (_ZERO_SUB if len(d) == _SUB else bytes(len(d))):
            out[i : i + len(d)] = add(old[i : i + len(d)], d)
    return out


def _apply_runs(old: bytes, runs: list[Run], add: AdaptiveAdder) -> bytes | bytearray:
    """``old`` + the diff given as runs (zero runs as lengths: "copy old")."""
    if len(runs) == 1 and isinstance(runs[0], int):
        return old
    out = bytearray(old)
    pos = 0
    for run in runs:
        if isinstance(run, int):
            pos += run
            continue
        n = len(run)
        out[pos : pos + n] = add(old[pos : pos + n], run)
        pos += n
    return out


def _read_old(fd: int, old_size: int, pos: int, n: int) -> bytes:
    """``n`` old bytes at ``pos``; positions outside the file read as zero."""
    if pos >= 0 and pos + n <= old_size:
        data = os.pread(fd, n, pos)
        if len(data) != n:
            raise CorruptDeltaError(f"old file shrank while reading at {pos}")
        return data
    buf = bytearray(n)
    lo = max(pos, 0)
    hi = min(pos + n, old_size)
    if lo < hi:
        data = os.pread(fd, hi - lo, lo)
        if len(data) != hi - lo:
            raise CorruptDeltaError(f"old file shrank while reading at {lo}")
        buf[lo - pos : hi - pos] = data
    return bytes(buf)


def apply_bsdiff(
    old: BinaryIO | str | os.PathLike[str],
    patch: str | os.PathLike[str] | BinaryIO,
    out: Writable,
    *,
    expected_size: int | None = None,
    use_numpy: bool | None = None,
    threaded: bool = True,
    parallel: bool | None = None,
    restart: Callable[[], object] | None = None,
) -> int:
    """Apply the BSDIFF40 ``patch`` to the file ``old``, writing the new file to ``out``.

    ``old`` and ``patch`` are file objects with a file descriptor (read with
    ``pread``, the patch from its start; not pipes), or paths. Returns the number of
    bytes written (the header's new size). ``expected_size``, when given,
    must equal the header's new size. ``use_numpy``: None = numpy when
    importable and many bytes must be added while decoding sequentially (not with
    parallel decoding: memory), True = always, False = never. Raises
    :class:`CorruptDeltaError` on any malformed patch.

    ``threaded``: decode a sequentially decoded diff stream in a second thread (only when
    this process may use more than one CPU). ``parallel``: decode the blocks of multi-block diff and extra streams in
    worker threads (see the module docstring). None (the default) = when
    ``restart`` is given and this process may use more than one CPU; True =
    always; False = never. ``restart``: a function that discards everything
    written to ``out`` so far; if a block fails to decode in parallel (a
    corrupt stream, or a block boundary found by chance inside a block), it
    is called and the patch is applied again with sequential decoding, which
    gives the right result or the usual error. Without ``restart``, such a
    failure is a :class:`CorruptDeltaError`.
    """
    if isinstance(patch, (str, os.PathLike)):
        with open(patch, "rb") as fh:
            return apply_bsdiff(old, fh, out, expected_size=expected_size, use_numpy=use_numpy,
                                threaded=threaded, parallel=parallel, restart=restart)
    if parallel is None:
        parallel = restart is not None and decoder_count() > 1
    if parallel:
        try:
            return _apply(old, patch, out, expected_size, use_numpy, threaded, parallel=True)
        except ParallelDecodeError as exc:
            if restart is None:
                raise CorruptDeltaError(f"bsdiff {exc} (decoding bzip2 blocks in parallel)") from exc
            log.info("bsdiff: %s; applying the patch again with sequential decoding", exc)
            restart()
    # On one usable CPU a decoding thread only adds GIL hand-overs (measured: 5-12 % slower).
    return _apply(old, patch, out, expected_size, use_numpy, threaded and usable_cpus() > 1, parallel=False)


def _apply(
    old: BinaryIO | str | os.PathLike[str],
    patch: BinaryIO,
    out: Writable,
    expected_size: int | None,
    use_numpy: bool | None,
    threaded: bool,
    *,
    parallel: bool,
) -> int:
    fd = patch.fileno()
    patch_size = os.fstat(fd).st_size
    header = read_header(os.pread(fd, HEADER_SIZE, 0))
    if expected_size is not None and header.new_size != expected_size:
        raise CorruptDeltaError(
            f"bsdiff header announces a new size of {header.new_size} bytes, expected {expected_size}"
        )
    if HEADER_SIZE + header.ctrl_len + header.diff_len > patch_size:
        raise CorruptDeltaError(
            f"bsdiff patch truncated: header needs {HEADER_SIZE + header.ctrl_len + header.diff_len} "
            f"bytes before the extra block, file has {patch_size}"
        )
    log.debug("bsdiff: %r, patch %d bytes, parallel %s", header, patch_size, parallel)
    with _opened(old) as old_fh:
        old_fd = old_fh.fileno()
        old_size = os.fstat(old_fd).st_size
        # With parallel decoding both CPUs are busy already and the decoders hold ~15 MiB;
        # numpy's ~18 MiB on top would break the 48 MiB bound of a dense 1 GiB apply, for ~7 %.
        add = AdaptiveAdder(False if parallel and use_numpy is None else use_numpy)
        written = 0

        def consume(item: tuple[int, Any, int]) -> None:
            nonlocal written
            kind, data, oldpos = item
            result: bytes | bytearray
            if kind == _EXTRA:
                result = data
            elif kind == _ADD:
                result = _combine(_read_old(old_fd, old_size, oldpos, len(data)), data, add)
            else:
                length = sum(run if isinstance(run, int) else len(run) for run in data)
                result = _apply_runs(_read_old(old_fd, old_size, oldpos, length), data, add)
            out.write(result)
            written += len(result)

        if threaded and not parallel:
            _run_threaded(fd, header, patch_size, consume)
        else:
            # Parallel: the bzip2 workers decode the diff and extra streams (one block
            # or more); this thread reads the control stream and adds and writes, with
            # no thread in between.
            _produce(fd, header, patch_size, consume, parallel)  # type: ignore[arg-type]
    if written != header.new_size:  # pragma: no cover - guaranteed by _produce
        raise CorruptDeltaError(f"bsdiff output has {written} bytes, header says {header.new_size}")
    return written


@contextlib.contextmanager
def _opened(old: BinaryIO | str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """``old`` as an open file (a path is opened and closed here; a file stays open)."""
    if isinstance(old, str | os.PathLike):
        with open(Path(old), "rb") as handle:
            yield handle
    else:
        yield old


def _run_threaded(
    fd: int, header: BsdiffHeader, patch_size: int, consume: Callable[[tuple[int, Any, int]], None],
) -> None:
    """Decode sequentially in a helper thread, consume in this one; errors of either side surface here."""
    items: queue.Queue[object] = queue.Queue(maxsize=_QUEUE_DEPTH)
    stop = threading.Event()
    done = object()

    def put(item: object) -> None:
        while True:
            if stop.is_set():
                raise _Stop
            try:
                items.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def producer() -> None:
        try:
            _produce(fd, header, patch_size, put)
            put(done)
        except _Stop:
            pass
        except BaseException as exc:  # handed to the consumer
            with contextlib.suppress(_Stop):
                put(exc)

    thread = threading.Thread(target=producer, name="bsdiff-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is done:
                break
            if isinstance(item, BaseException):
                raise item
            consume(item)  # type: ignore[arg-type]
    finally:
        stop.set()
        thread.join()
