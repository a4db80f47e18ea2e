"""Streams: what a source of bytes is (:class:`Readable`), and the one reader that verifies.

:class:`VerifyingStream` reads a source (a blob file, an HTTP body, bytes in
memory), hashes and counts what passes, and never reads past the expected
size: at that size it probes for one byte more (a source longer than
announced is a :class:`SizeMismatchError`, found without reading the rest of
a hostile stream), then compares the digest. Closing it closes its source.
:func:`verifying_stream` is its buffered form, the one every verified read
of the project returns.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any, BinaryIO, Protocol

from .descriptor import new_hasher, validate_digest
from .errors import DigestMismatchError, DorasOrasError, InvalidArgumentError, SizeMismatchError


class Readable(Protocol):
    """Anything with ``read(n) -> bytes``."""

    def read(self, n: int = -1, /) -> bytes: ...


class VerifyingStream(io.RawIOBase):
    """Yield at most ``size`` bytes of ``source``; check digest and size at its end; close it on close.

    ``on_read`` is told the length of every piece read from the source (the
    probe included): a byte count. ``on_error`` turns an exception the source
    raises (one that is no :class:`DorasOrasError`) into the one to raise
    (a network failure into a :class:`~doras_oras.errors.TransportError`).
    """

    def __init__(
        self,
        source: Readable,
        digest: str,
        size: int,
        *,
        what: str = "content",
        on_read: Callable[[int], None] | None = None,
        on_error: Callable[[Exception], Exception] | None = None,
    ) -> None:
        super().__init__()
        validate_digest(digest)
        if size < 0:
            raise InvalidArgumentError("size must be >= 0")
        self._source = source
        self.digest = digest
        self.size = size
        self.what = what
        self._on_read = on_read
        self._on_error = on_error
        self._hasher: Any = new_hasher(digest)
        self.count = 0
        self._verified = False

    def readable(self) -> bool:
        return True

    def _read(self, n: int) -> bytes:
        try:
            data = self._source.read(n)
        except DorasOrasError:
            raise
        except Exception as exc:
            if self._on_error is None:
                raise
            raise self._on_error(exc) from exc
        if self._on_read is not None:
            self._on_read(len(data))
        return data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = len(view)
        remaining = self.size - self.count
        if want == 0:
            return 0
        if remaining <= 0:
            # Probe for excess bytes once: a source longer than announced is an error.
            if self._read(1):
                raise SizeMismatchError(
                    f"{self.what} {self.digest}: more than the expected {self.size} bytes"
                )
            self.verify()
            return 0
        chunk = self._read(min(want, remaining))
        if not chunk:
            raise SizeMismatchError(
                f"{self.what} {self.digest}: got {self.count} bytes, expected {self.size}"
            )
        n = len(chunk)
        view[:n] = chunk
        self._hasher.update(chunk)
        self.count += n
        return n

    def verify(self) -> None:
        """Raise unless exactly ``size`` bytes matching ``digest`` were read."""
        if self._verified:
            return
        if self.count != self.size:
            raise SizeMismatchError(
                f"{self.what} {self.digest}: got {self.count} bytes, expected {self.size}"
            )
        actual = f"{self.digest.split(':', 1)[0]}:{self._hasher.hexdigest()}"
        if actual != self.digest:
            raise DigestMismatchError(f"{self.what}: expected {self.digest}, got {actual}")
        self._verified = True

    def close(self) -> None:
        if not self.closed:
            try:
                close = getattr(self._source, "close", None)
                if callable(close):
                    close()
            finally:
                super().close()


def verifying_stream(
    source: Readable,
    digest: str,
    size: int,
    *,
    what: str = "content",
    on_read: Callable[[int], None] | None = None,
    on_error: Callable[[Exception], Exception] | None = None,
) -> BinaryIO:
    """A buffered :class:`VerifyingStream` over ``source`` (see there)."""
    return io.BufferedReader(
        VerifyingStream(source, digest, size, what=what, on_read=on_read, on_error=on_error), buffer_size=1 << 16)


def verifies(stream: object, digest: str, size: int) -> bool:
    """Whether ``stream`` is a :func:`verifying_stream` of exactly ``digest`` and ``size``."""
    raw = getattr(stream, "raw", None)
    return isinstance(raw, VerifyingStream) and raw.digest == digest and raw.size == size
