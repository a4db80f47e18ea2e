"""A reader that hashes and counts while streaming and fails on mismatch.

Reading never goes past the expected size: one byte more than announced is
an error, detected without reading the rest of a hostile stream. At the end
of the stream (or on :meth:`VerifyingReader.verify`) the digest is compared.
"""

from __future__ import annotations

import io
from typing import Any, BinaryIO, Protocol

from .descriptor import new_hasher, validate_digest
from .errors import DigestMismatchError, InvalidArgumentError, SizeMismatchError


class Readable(Protocol):
    """Anything with ``read(n) -> bytes``."""

    def read(self, n: int = -1, /) -> bytes: ...


class VerifyingReader(io.RawIOBase):
    """Wrap ``source``; yield at most ``size`` bytes; check digest and size at EOF."""

    def __init__(self, source: Readable, digest: str, size: int, *, what: str = "content") -> None:
        super().__init__()
        validate_digest(digest)
        if size < 0:
            raise InvalidArgumentError("size must be >= 0")
        self._source = source
        self.digest = digest
        self.size = size
        self.what = what
        self._hasher: Any = new_hasher(digest)
        self.count = 0
        self._verified = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = len(view)
        remaining = self.size - self.count
        if want == 0:
            return 0
        if remaining <= 0:
            # Probe for excess bytes once: a source longer than announced is an error.
            extra = self._source.read(1)
            if extra:
                raise SizeMismatchError(
                    f"{self.what} {self.digest}: more than the expected {self.size} bytes"
                )
            self.verify()
            return 0
        chunk = self._source.read(min(want, remaining))
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


def verifying_reader(source: Readable, digest: str, size: int, *, what: str = "content") -> BinaryIO:
    """A buffered :class:`VerifyingReader` over ``source``."""
    return io.BufferedReader(VerifyingReader(source, digest, size, what=what), buffer_size=1 << 16)
