"""Streaming decompression (none, gzip, zstd) with the output capped.

:func:`open_decompressed` wraps a byte source in a reader whose ``read(n)``
returns at most ``n`` decompressed bytes, so no single call inflates more
than a bounded amount. Rules, the same for every codec:

* more output than ``max_output`` is a :class:`CorruptDeltaError`;
* a truncated stream (input ends inside a gzip member or zstd frame) is an error;
* an empty input is an error for gzip and zstd (no compressor writes nothing);
* gzip: several concatenated members are accepted (as Go's ``gzip.Reader``);
* zstd: several concatenated frames are accepted, skippable frames are
  skipped; anything after the last complete frame that is not a frame is an
  error; a frame that needs a window larger than ``max_window_size`` is
  refused (it would need that much memory).
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Callable, Iterator
from typing import IO, Any

from ..algorithms import GZIP_MAGIC as _GZIP_MAGIC
from ..algorithms import ZSTD_MAGIC as _ZSTD_MAGIC
from ..algorithms import Compression
from ..errors import CorruptDeltaError, InvalidArgumentError
from ..stream import Readable

__all__ = [
    "DEFAULT_MAX_WINDOW_SIZE",
    "Compression",
    "Readable",
    "Scratch",
    "open_decompressed",
]

#: Largest zstd window accepted by default (16 MiB): the decoder allocates it.
DEFAULT_MAX_WINDOW_SIZE = 1 << 24

_IN_CHUNK = 1 << 16


Scratch = Callable[[], IO[bytes]]
"""A factory of anonymous temp files (read/write, gone when closed) for spooling."""


class _CappedReader:
    """Base of the readers: counts output and enforces ``max_output``."""

    def __init__(self, source: Readable, max_output: int | None, what: str) -> None:
        if max_output is not None and max_output < 0:
            raise InvalidArgumentError("max_output must be >= 0")
        self._source = source
        self._max = max_output
        self._what = what
        self.produced = 0

    def _count(self, data: bytes) -> bytes:
        self.produced += len(data)
        if self._max is not None and self.produced > self._max:
            raise CorruptDeltaError(
                f"{self._what}: decompressed output exceeds the allowed {self._max} bytes"
            )
        return data

    def read(self, n: int = -1, /) -> bytes:
        raise NotImplementedError

    def readall(self) -> bytes:
        parts = []
        while chunk := self.read(_IN_CHUNK):
            parts.append(chunk)
        return b"".join(parts)


class _PlainReader(_CappedReader):
    def read(self, n: int = -1, /) -> bytes:
        if n < 0:
            return self.readall()
        return self._count(self._source.read(n))


class _GzipReader(_CappedReader):
    """Concatenated gzip members, output bounded per call by ``max_length``."""

    def __init__(self, source: Readable, max_output: int | None, what: str) -> None:
        super().__init__(source, max_output, what)
        self._dec = zlib.decompressobj(31)
        self._pending = b""  # compressed input not yet given to the decompressor
        self._members = 0
        self._in_member = False
        self._done = False

    def _fill(self) -> bool:
        data = self._source.read(_IN_CHUNK)
        self._pending += data
        return bool(data)

    def read(self, n: int = -1, /) -> bytes:
        if n < 0:
            return self.readall()
        if n == 0 or self._done:
            return b""
        while True:
            if not self._in_member:
                # At a member boundary: another member, or the end.
                while len(self._pending) < 2 and self._fill():
                    pass
                if not self._pending:
                    if self._members == 0:
                        raise CorruptDeltaError(f"{self._what}: empty gzip stream")
                    self._done = True
                    return b""
                if not self._pending.startswith(_GZIP_MAGIC):
                    raise CorruptDeltaError(
                        f"{self._what}: {len(self._pending)}+ bytes of garbage after gzip member "
                        f"{self._members}"
                    )
                self._dec = zlib.decompressobj(31)
                self._in_member = True
                self._members += 1
            if not self._pending and not self._fill():
                raise CorruptDeltaError(f"{self._what}: gzip stream truncated")
            try:
                out = self._dec.decompress(self._pending, n)
            except zlib.error as exc:
                raise CorruptDeltaError(f"{self._what}: invalid gzip data: {exc}") from exc
            self._pending = self._dec.unconsumed_tail
            if self._dec.eof:
                self._pending = self._dec.unused_data + self._pending
                self._in_member = False
            if out:
                return self._count(out)


class _ZstdReader(_CappedReader):
    """Concatenated zstd frames, walked block by block.

    The frame structure is parsed here so that (a) the decompressor is given
    exactly one frame, (b) truncation and trailing garbage are detected, and
    (c) no call inflates more than one block (at most 128 KiB).
    """

    def __init__(
        self, source: Readable, max_output: int | None, what: str, max_window_size: int
    ) -> None:
        super().__init__(source, max_output, what)
        import zstandard

        self._zstd = zstandard
        self._dctx = zstandard.ZstdDecompressor(max_window_size=max_window_size)
        self._buf = bytearray()
        self._eof_in = False
        self._out: deque[bytes] = deque()
        self._frames = 0
        self._done = False
        self._gen = self._walk()

    # -- input helpers ---------------------------------------------------
    def _need(self, n: int) -> bool:
        """Ensure ``n`` bytes are buffered; False at a clean end of input."""
        while len(self._buf) < n:
            if self._eof_in:
                return False
            data = self._source.read(max(_IN_CHUNK, n - len(self._buf)))
            if not data:
                self._eof_in = True
            self._buf += data
        return True

    def _take(self, n: int) -> bytes:
        if not self._need(n):
            raise CorruptDeltaError(f"{self._what}: zstd stream truncated (frame {self._frames})")
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def _walk(self) -> Iterator[bytes]:
        """Generator yielding decompressed pieces, frame by frame."""
        zstd = self._zstd
        while True:
            if not self._need(1):
                if self._frames == 0:
                    raise CorruptDeltaError(f"{self._what}: empty zstd stream")
                return
            if not self._need(4):
                raise CorruptDeltaError(
                    f"{self._what}: {len(self._buf)} bytes of garbage after the last zstd frame"
                )
            magic = bytes(self._buf[:4])
            value = int.from_bytes(magic, "little")
            if 0x184D2A50 <= value <= 0x184D2A5F:  # skippable frame
                self._take(4)
                size = int.from_bytes(self._take(4), "little")
                while size:
                    size -= len(self._take(min(size, _IN_CHUNK)))
                self._frames += 1
                continue
            if magic != _ZSTD_MAGIC:
                what = "garbage after the last zstd frame" if self._frames else "not a zstd stream"
                raise CorruptDeltaError(f"{self._what}: {what} (bytes {magic.hex()})")
            self._frames += 1
            dec = self._dctx.decompressobj()

            def feed(data: bytes, dec: Any = dec) -> bytes:
                try:
                    return dec.decompress(data)  # type: ignore[no-any-return]
                except zstd.ZstdError as exc:
                    raise CorruptDeltaError(f"{self._what}: invalid zstd data: {exc}") from exc

            header = self._take(5)
            fhd = header[4]
            if fhd & 0x08:
                raise CorruptDeltaError(f"{self._what}: zstd frame header reserved bit set")
            fcs_flag = fhd >> 6
            single = bool(fhd & 0x20)
            checksum = bool(fhd & 0x04)
            extra = (0 if single else 1) + (0, 1, 2, 4)[fhd & 3]
            extra += (1 if single else 0, 2, 4, 8)[fcs_flag]
            header += self._take(extra)
            if out := feed(header):
                yield out
            while True:
                bh = self._take(3)
                value = int.from_bytes(bh, "little")
                last = value & 1
                btype = (value >> 1) & 3
                bsize = value >> 3
                if btype == 3:
                    raise CorruptDeltaError(f"{self._what}: reserved zstd block type")
                if out := feed(bh):
                    yield out
                remaining = 1 if btype == 1 else bsize
                while remaining:
                    piece = self._take(min(remaining, _IN_CHUNK))
                    remaining -= len(piece)
                    if out := feed(piece):
                        yield out
                if last:
                    break
            if checksum and (out := feed(self._take(4))):
                yield out
            if not dec.eof:
                raise CorruptDeltaError(f"{self._what}: zstd frame did not end where expected")

    def read(self, n: int = -1, /) -> bytes:
        if n < 0:
            return self.readall()
        if n == 0:
            return b""
        while not self._out:
            if self._done:
                return b""
            try:
                piece = next(self._gen)
            except StopIteration:
                self._done = True
                return b""
            self._out.append(self._count(piece))
        head = self._out[0]
        if len(head) <= n:
            return self._out.popleft()
        self._out[0] = head[n:]
        return head[:n]


def open_decompressed(
    source: Readable,
    compression: Compression,
    *,
    max_output: int | None = None,
    what: str = "delta",
    max_window_size: int = DEFAULT_MAX_WINDOW_SIZE,
) -> _CappedReader:
    """A reader of the decompressed bytes of ``source`` (see the module docstring).

    ``what`` names the stream in error messages.
    """
    if compression is Compression.NONE:
        return _PlainReader(source, max_output, what)
    if compression is Compression.GZIP:
        return _GzipReader(source, max_output, what)
    return _ZstdReader(source, max_output, what, max_window_size)
