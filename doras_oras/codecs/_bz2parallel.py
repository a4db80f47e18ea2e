"""Decoding the blocks of one bzip2 stream in parallel threads.

libbz2 decodes one stream in one thread at ~4 ns per *output* byte (the
block CRC and the run output dominate), so a bsdiff diff stream of zeros
that expands to 256 MiB costs ~1 s however small it is. But a bzip2 stream
is a header ``BZh<level>``, blocks that are independent of each other, and
an end-of-stream marker, so its blocks can be decoded at the same time:

1. **Splitting** (:func:`split_stream`). Blocks are bit-aligned: each starts
   with the 48-bit magic ``0x314159265359`` and its 32-bit CRC; the stream
   ends with the 48-bit magic ``0x177245385090``, the 32-bit combined CRC
   and zero padding to a byte. For each of the 8 bit shifts a magic can
   have, ``bytes.find`` looks for the 5 or 6 whole bytes the shifted magic
   always contains (~90 MB/s for all 16 patterns, well under a tenth of the
   decoding time of the same compressed bytes); each hit is checked on all
   48 bits. The stream is read in 1 MiB windows and only bit offsets are
   kept, so splitting needs no memory proportional to the stream.
2. **Checking the split.** The first block must start right after the
   header, no block may span more than :data:`MAX_SEGMENT` compressed bytes,
   there may be at most :data:`MAX_BLOCKS` blocks, and the combined CRC
   recomputed from the block CRCs (``combined = rotl1(combined) ^ crc``, as
   bzip2 computes it) must equal the stored one. A magic found by chance (or
   planted) inside a block's bits adds a "block" whose CRC is random, so the
   check fails; the caller then decodes the stream sequentially, where a
   truly corrupt stream fails as it always did.
3. **Decoding** (:class:`DecoderGroup`, :class:`ParallelReader`). Each block
   becomes a standalone one-block stream (header + the block's bits shifted
   to a byte boundary + end-of-stream magic + its CRC, which is the combined
   CRC of a one-block stream + padding) decoded by its own
   ``bz2.BZ2Decompressor`` (which releases the GIL) in a worker thread.
   libbz2 checks every block's CRC against its output. Blocks are handed to
   workers in order; the reader takes output strictly in order. A block that
   fails to decode makes :meth:`ParallelReader.read` raise
   :class:`ParallelDecodeError` when the reader reaches it (not before: a
   sequential decoder would not read it either if the data before it is all
   that is needed), and the caller then starts over sequentially. (A false
   split that passed the CRC check cannot decode: the piece before a false
   magic ends inside the block's coded data, so libbz2 reads on into the
   80 bits of trailer appended to it; the block could only end within the
   first 7 of them, and the end-of-stream magic would then have to match
   itself shifted by 1 to 7 bits, which it does not.)

**Memory.** A worker decoding ahead of the reader keeps its output, but
compactly: output chunks are split into runs of zeros (kept as an ``int``
length: a block of zeros expanding to 45 MB costs a few bytes) and non-zero
pieces. For a diff stream (``sparse=True``) zero is tested on 4 KiB
sub-blocks, then on 256-byte pieces, so a scattered edit costs ~256 bytes and a
dense chunk stays one piece; for an extra stream whole 128 KiB chunks are kept.
The non-zero bytes buffered by all the workers of a group are capped at
:data:`BUDGET` (4 MiB); the block a reader is on may always buffer up to
:data:`RESERVE` (512 KiB) beyond it, so the reader always progresses (a worker
over the cap waits; the block being read never does: no deadlock). Each decoder
holds ~3.6 MiB (level 9) while it decodes: each stream may always decode one
block (its head, or, once the head is fully decoded and only being read, the next
one: a worker never waits for the reader to finish a block), and at most
``workers - 1`` more in the whole group. With ``workers`` = 2, one stream of dense data costs at most
~7 MiB of decoders + ~4.6 MiB of buffers (measured: 100 MB of non-zero diff
applied in 34 MiB peak RSS, 4.5 MiB buffered at most).
"""

from __future__ import annotations

import bz2
import collections
import logging
import math
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "BLOCK_MAGIC",
    "BUDGET",
    "EOS_MAGIC",
    "MAX_BLOCKS",
    "MAX_SEGMENT",
    "RESERVE",
    "Bz2Block",
    "Bz2Layout",
    "DecoderGroup",
    "ParallelDecodeError",
    "ParallelReader",
    "block_stream",
    "decoder_count",
    "split_stream",
    "usable_cpus",
]

log = logging.getLogger(__name__)

BLOCK_MAGIC = 0x314159265359
EOS_MAGIC = 0x177245385090
_MASK48 = (1 << 48) - 1
#: Bytes of a compressed stream scanned at once.
SCAN_WINDOW = 1 << 20
# A window is read this much longer: a magic at any bit shift (7 bytes) + its CRC.
_OVERLAP = 16
#: Most blocks a stream may have to be decoded in parallel (beyond: sequentially).
MAX_BLOCKS = 1 << 14
#: Most compressed bytes one block may span (a level-9 block of random data takes ~0.91 MB).
MAX_SEGMENT = 2 << 20
#: Non-zero output bytes buffered ahead of the reader by all the workers of a group.
BUDGET = 4 << 20
#: Non-zero output bytes the block a reader is on may always buffer.
RESERVE = 1 << 19
#: Most workers per stream.
MAX_WORKERS = 4
CHUNK = 1 << 17
_SUB = 1 << 12
_PIECE = 1 << 8
_ZERO_CHUNK = bytes(CHUNK)
_ZERO_SUB = bytes(_SUB)
_ZERO_PIECE = bytes(_PIECE)

ReadAt = Callable[[int, int], bytes]
Run = int | bytes


class ParallelDecodeError(Exception):
    """A block failed to decode in parallel (or the stream ended early): decode sequentially."""


def decoder_count() -> int:
    """Workers per stream: ``DORAS_ORAS_BZ2_WORKERS`` when set to a positive integer (1 =
    no parallel decoding), else :func:`usable_cpus`; at most :data:`MAX_WORKERS`.
    """
    setting = os.environ.get("DORAS_ORAS_BZ2_WORKERS", "").strip()
    if setting.isdigit() and int(setting) > 0:
        return min(int(setting), MAX_WORKERS)
    return max(1, min(usable_cpus(), MAX_WORKERS))


#: Where the CPU quota of this process's cgroup is read (cgroup v2, then v1).
CGROUP_CPU_FILES = (Path("/sys/fs/cgroup/cpu.max"),
                    (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")))


def usable_cpus(cgroup: tuple[Path, tuple[Path, Path]] | None = None) -> int:
    """The CPUs this process may run on (its affinity), capped by its cgroup's CPU quota.

    A container limited to one CPU (``docker run --cpus 1``, a systemd ``CPUQuota=100%``)
    still sees every CPU in its affinity; decoding a second block there only adds memory.
    The quota is rounded up (1.5 CPUs: 2 workers). ``cgroup``: the files to read
    (default :data:`CGROUP_CPU_FILES`).
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - platforms without affinity
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota(*(cgroup or CGROUP_CPU_FILES))
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return cpus


def _cgroup_quota(v2: Path, v1: tuple[Path, Path]) -> float | None:
    """CPUs of quota (``quota / period``), or None when unlimited or unreadable."""
    try:
        fields = v2.read_text().split()
        if len(fields) == 2 and fields[0] != "max":
            return int(fields[0]) / int(fields[1])
        if fields:
            return None
    except (OSError, ValueError, ZeroDivisionError):
        pass
    try:
        quota, period = (int(path.read_text().strip()) for path in v1)
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


# --- splitting ----------------------------------------------------------------------------------


def _patterns(magic: int) -> list[tuple[int, bytes, int]]:
    """``(shift, bytes, lead)``: for a magic starting at bit ``shift`` of a byte (0 = most

    significant), the whole bytes it always contains, found ``lead`` bytes after that byte.
    """
    result = []
    for shift in range(8):
        raw = (magic << (8 - shift)).to_bytes(7, "big")
        result.append((shift, raw[0:6], 0) if shift == 0 else (shift, raw[1:6], 1))
    return result


_BLOCK_PATTERNS = _patterns(BLOCK_MAGIC)
_EOS_PATTERNS = _patterns(EOS_MAGIC)


class Bz2Block(NamedTuple):
    """One block: bits ``[start, end)`` of the stream (its magic included) and its CRC."""

    start: int
    end: int
    crc: int


class Bz2Layout(NamedTuple):
    """The blocks of a bzip2 stream and its CRCs."""

    level: int
    blocks: list[Bz2Block]
    stored_crc: int
    combined_crc: int

    @property
    def consistent(self) -> bool:
        """True when the stored combined CRC is the one of the blocks found."""
        return self.stored_crc == self.combined_crc


def combine_crcs(crcs: list[int]) -> int:
    """The stream CRC bzip2 stores for blocks of these CRCs."""
    combined = 0
    for crc in crcs:
        combined = (((combined << 1) | (combined >> 31)) & 0xFFFFFFFF) ^ crc
    return combined


class _TooMany(Exception):
    pass


def _find(buf: bytes, patterns: list[tuple[int, bytes, int]], magic: int, limit: int,
          found: list[int], budget: list[int]) -> None:
    """Append to ``found`` the bit offsets in ``buf`` of ``magic`` whose first byte is < ``limit``."""
    size = len(buf)
    for shift, pattern, lead in patterns:
        i = buf.find(pattern)
        while i >= 0:
            budget[0] -= 1
            if budget[0] < 0:
                raise _TooMany
            k = i - lead
            if 0 <= k < limit and k + 7 <= size + (shift == 0):
                window = int.from_bytes(buf[k : k + 7].ljust(7, b"\0"), "big")
                if (window >> (8 - shift)) & _MASK48 == magic:
                    found.append(8 * k + shift)
            i = buf.find(pattern, i + 1)


def _bits(read_at: ReadAt, bit: int, n: int) -> int | None:
    """``n`` bits from bit offset ``bit`` (None when the stream ends before)."""
    first = bit // 8
    last = (bit + n + 7) // 8
    raw = read_at(first, last - first)
    if len(raw) != last - first:
        return None
    return (int.from_bytes(raw, "big") >> (8 * last - bit - n)) & ((1 << n) - 1)


def split_stream(read_at: ReadAt, length: int) -> Bz2Layout | None:
    """The blocks of the bzip2 stream of ``length`` bytes read by ``read_at(offset, n)``.

    None when it cannot be split: not a bzip2 header, no end-of-stream marker
    (truncated), a first block not right after the header, a block longer than
    :data:`MAX_SEGMENT`, more than :data:`MAX_BLOCKS` blocks. Only the first
    stream is considered (as ``bz2.BZ2Decompressor`` does). The stored and
    recomputed combined CRCs are returned for the caller to compare.
    """
    head = read_at(0, 4)
    if len(head) != 4 or head[:3] != b"BZh" or not 0x31 <= head[3] <= 0x39:
        return None
    starts: list[int] = []
    eos: int | None = None
    budget = [4 * MAX_BLOCKS]  # pattern hits examined (a hostile stream could be all hits)
    pos = 0
    try:
        while pos < length and eos is None:
            buf = read_at(pos, min(SCAN_WINDOW + _OVERLAP, length - pos))
            if not buf:
                return None
            limit = SCAN_WINDOW if pos + len(buf) < length else len(buf)
            block_bits: list[int] = []
            eos_bits: list[int] = []
            _find(buf, _BLOCK_PATTERNS, BLOCK_MAGIC, limit, block_bits, budget)
            _find(buf, _EOS_PATTERNS, EOS_MAGIC, limit, eos_bits, budget)
            if eos_bits:
                eos = 8 * pos + min(eos_bits)
            starts.extend(8 * pos + b for b in block_bits if eos is None or 8 * pos + b < eos)
            if len(starts) > MAX_BLOCKS:
                return None
            pos += SCAN_WINDOW
    except _TooMany:
        return None
    if eos is None:
        return None
    starts.sort()
    if (starts[0] if starts else eos) != 32:
        return None
    ends = [*starts[1:], eos] if starts else []
    blocks = []
    for start, end in zip(starts, ends, strict=True):
        if not 80 <= end - start <= 8 * MAX_SEGMENT:
            return None
        crc = _bits(read_at, start + 48, 32)
        if crc is None:  # pragma: no cover - the end-of-stream magic comes later
            return None
        blocks.append(Bz2Block(start, end, crc))
    stored = _bits(read_at, eos + 48, 32)
    if stored is None:
        return None
    return Bz2Layout(head[3] - 0x30, blocks, stored, combine_crcs([b.crc for b in blocks]))


def block_stream(read_at: ReadAt, level: int, block: Bz2Block) -> bytes:
    """A standalone one-block bzip2 stream of ``block``."""
    first = block.start // 8
    last = (block.end + 7) // 8
    raw = read_at(first, last - first)
    if len(raw) != last - first:
        raise ParallelDecodeError("the compressed stream shrank while being read")
    nbits = block.end - block.start
    bits = (int.from_bytes(raw, "big") >> (8 * last - block.end)) & ((1 << nbits) - 1)
    total = nbits + 80
    pad = -total % 8
    bits = ((((bits << 48) | EOS_MAGIC) << 32) | block.crc) << pad
    return b"BZh" + bytes([0x30 + level]) + bits.to_bytes((total + pad) // 8, "big")


# --- decoding -----------------------------------------------------------------------------------


def _sparse_runs(chunk: bytes) -> tuple[list[Run], int]:
    """Runs of ``chunk``: zero runs as lengths, the rest as bytes.

    Zero is tested with memcmp on whole 4 KiB sub-blocks, then on 256-byte pieces
    at both ends of the others (Python-level scanning for the exact non-zero span
    would cost more than it saves), and adjacent non-zero spans are merged: a
    scattered edit costs ~256 buffered bytes, a dense chunk is one piece.
    """
    n = len(chunk)
    if chunk == (_ZERO_CHUNK if n == CHUNK else bytes(n)):
        return [n], 0
    spans: list[list[int]] = []
    for i in range(0, n, _SUB):
        end = min(i + _SUB, n)
        if chunk[i:end] == (_ZERO_SUB if end - i == _SUB else bytes(end - i)):
            continue
        lo = i
        while lo + _PIECE < end and chunk[lo : lo + _PIECE] == _ZERO_PIECE:
            lo += _PIECE
        hi = end
        while hi - _PIECE > lo and chunk[hi - _PIECE : hi] == _ZERO_PIECE:
            hi -= _PIECE
        if spans and spans[-1][1] == lo:
            spans[-1][1] = hi
        else:
            spans.append([lo, hi])
    runs: list[Run] = []
    pos = 0
    literal = 0
    for lo, hi in spans:
        if lo > pos:
            runs.append(lo - pos)
        runs.append(chunk[lo:hi])
        literal += hi - lo
        pos = hi
    if pos < n:
        runs.append(n - pos)
    return runs, literal


def _chunk_runs(chunk: bytes) -> tuple[list[Run], int]:
    """Runs of ``chunk``: its length when all zero, else the chunk itself."""
    n = len(chunk)
    if chunk == (_ZERO_CHUNK if n == CHUNK else bytes(n)):
        return [n], 0
    return [chunk], n


class _Stopped(Exception):
    pass


class _BlockState:
    __slots__ = ("buffered", "done", "error", "runs")

    def __init__(self) -> None:
        self.runs: collections.deque[Run] = collections.deque()
        self.buffered = 0  # non-zero bytes in runs
        self.done = False
        self.error: BaseException | None = None


class DecoderGroup:
    """The worker threads, memory budget and look-ahead slots of one application.

    Use as a context manager (or call :meth:`close`): closing stops and joins
    every worker. One lock guards the state of the group and of its readers;
    readers wait on ``data`` (a worker produced output or finished a block),
    workers on ``room`` (buffered bytes were read or a reader moved on) or on
    ``slot`` (a block finished decoding or a reader moved on).
    """

    def __init__(self, workers: int | None = None, *, budget: int = BUDGET,
                 reserve: int = RESERVE) -> None:
        self.workers = workers if workers is not None else decoder_count()
        self.budget = budget
        self.reserve = reserve
        self.lock = threading.Lock()
        self.data = threading.Condition(self.lock)
        self.room = threading.Condition(self.lock)
        self.slot = threading.Condition(self.lock)
        self.slots = self.workers - 1  # blocks decoded at once beyond one per stream
        self._readers: list[ParallelReader] = []
        self.buffered = 0
        #: Largest number of non-zero bytes buffered at once (for tests and logs).
        self.peak_buffered = 0
        self.stopped = False
        self._threads: list[threading.Thread] = []

    def open(self, read_at: ReadAt, layout: Bz2Layout, name: str, *, sparse: bool) -> ParallelReader:
        """Start decoding ``layout``'s blocks; read them in order from the reader returned."""
        reader = ParallelReader(self, read_at, layout, name, sparse)
        self._readers.append(reader)
        for i in range(min(self.workers, len(layout.blocks))):
            thread = threading.Thread(target=reader._work, name=f"bz2-{name}-{i}", daemon=True)
            self._threads.append(thread)
            thread.start()
        return reader

    def extra_decoding(self) -> int:
        """Blocks being decoded beyond one per stream (call with ``lock`` held)."""
        return sum(max(0, reader._decoding - 1) for reader in self._readers)

    def close(self) -> None:
        """Stop the workers (each within one output chunk) and join them."""
        with self.lock:
            self.stopped = True
            for cond in (self.data, self.room, self.slot):
                cond.notify_all()
        for thread in self._threads:
            thread.join()
        self._threads.clear()

    def __enter__(self) -> DecoderGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ParallelReader:
    """The decoded output of one stream, in order, as runs (see :meth:`read`)."""

    def __init__(self, group: DecoderGroup, read_at: ReadAt, layout: Bz2Layout, name: str,
                 sparse: bool) -> None:
        self._group = group
        self._read_at = read_at
        self._layout = layout
        self._name = name
        self._runs_of = _sparse_runs if sparse else _chunk_runs
        self._states = [_BlockState() for _ in layout.blocks]
        self._next = 0  # next block to hand to a worker
        self._head = 0  # block being read
        self._decoding = 0  # blocks of this stream being decoded now

    @property
    def blocks(self) -> int:
        return len(self._states)

    def read(self, n: int) -> Run:
        """The next run of at most ``n`` (> 0) output bytes: an ``int`` for that many zero

        bytes, else ``bytes`` (which may hold zeros). Raises :class:`ParallelDecodeError` when the
        block it reaches failed to decode or when the stream has no output left.
        """
        group = self._group
        with group.lock:
            while True:
                if self._head >= len(self._states):
                    raise ParallelDecodeError(f"{self._name} stream: no output after its last block")
                state = self._states[self._head]
                if state.runs:
                    run = state.runs[0]
                    if isinstance(run, int):
                        if run > n:
                            state.runs[0] = run - n
                            return n
                        state.runs.popleft()
                        return run
                    if len(run) > n:
                        state.runs[0] = run[n:]
                        run = run[:n]
                    else:
                        state.runs.popleft()
                    state.buffered -= len(run)
                    group.buffered -= len(run)
                    group.room.notify_all()
                    return run
                if state.error is not None:
                    raise ParallelDecodeError(
                        f"{self._name} stream: block {self._head + 1} of {len(self._states)} "
                        f"failed to decode: {state.error}"
                    ) from state.error
                if not state.done:
                    group.data.wait()
                    continue
                self._states[self._head] = _BlockState()  # drop what is left of it
                self._head += 1
                group.room.notify_all()
                group.slot.notify_all()

    # worker side

    def _work(self) -> None:
        group = self._group
        while True:
            with group.lock:
                if group.stopped or self._next >= len(self._states):
                    return
                index = self._next
                self._next += 1
                state = self._states[index]
                # A stream may always decode one block: its head, or, once the head is fully
                # decoded (only being read), the next one, so that a worker does not wait for
                # the reader; a second block at once takes one of the group's look-ahead slots.
                while (not group.stopped and index != self._head and self._decoding
                       and group.extra_decoding() >= group.slots):
                    group.slot.wait()
                if group.stopped:
                    return
                self._decoding += 1
            error: BaseException | None = None
            try:
                self._decode(index, state)
            except _Stopped:
                return
            except BaseException as exc:  # handed to the reader (which must not wait forever)
                error = exc
            with group.lock:
                state.error = error
                state.done = True
                self._decoding -= 1
                group.slot.notify_all()
                group.data.notify_all()

    def _decode(self, index: int, state: _BlockState) -> None:
        group = self._group
        data = block_stream(self._read_at, self._layout.level, self._layout.blocks[index])
        dec = bz2.BZ2Decompressor()
        out = dec.decompress(data, CHUNK)
        del data
        while True:
            if group.stopped:
                raise _Stopped
            if out:
                self._push(index, state, *self._runs_of(out))
            if dec.eof:
                return
            if dec.needs_input:
                raise ParallelDecodeError("block ends early")
            out = dec.decompress(b"", CHUNK)

    def _push(self, index: int, state: _BlockState, runs: list[Run], literal: int) -> None:
        group = self._group
        with group.lock:
            while literal and not group.stopped and not (
                (index == self._head and state.buffered < group.reserve)
                or group.buffered + literal <= group.budget
            ):
                group.room.wait()
            if group.stopped:
                raise _Stopped
            queue = state.runs
            for run in runs:
                if isinstance(run, int) and queue and isinstance(queue[-1], int):
                    queue[-1] += run
                else:
                    queue.append(run)
            state.buffered += literal
            group.buffered += literal
            if group.buffered > group.peak_buffered:
                group.peak_buffered = group.buffered
            group.data.notify_all()
