"""A streaming applier of tar-diff deltas (``containers/tar-diff`` v1 format).

Format (DESIGN.md §3): the 8 bytes ``tardf1\\n\\0``, then one zstd stream
(possibly several concatenated frames) of operations ``op:u8,
size:uvarint, data[size]`` (data only for Data, Open and AddData):

====  =======  =========================================================
0     Data     emit ``data``
1     Open     ``data`` names a regular file of the base tar: the new source, at 0
2     Copy     emit ``size`` bytes of the source and advance
3     AddData  emit source bytes + ``data`` (byte-wise mod 256) and advance
4     Seek     set the source position to ``size``
====  =======  =========================================================

The base is a ``.tar``, ``.tar.gz`` or ``.tar.zst`` (detected from its
magic bytes; compressed bases are decompressed into a ``scratch()`` file,
by default an anonymous temp file). Its regular files are indexed by normalised path: empty and
``.`` components are dropped (``./a`` == ``a``; ``._a`` is a real name);
when a path occurs twice the last entry wins, as extraction does. Entries
whose names are absolute or contain ``..`` cannot be referenced.

Rejected with :class:`CorruptDeltaError` (naming the path or the op): a bad
header, an unknown op, a varint longer than 10 bytes or over 2**63 - 1, an
Open path that is absolute, contains ``..`` or NUL, is empty, longer than
4096 bytes, or names a directory, symlink, hard link, other non-regular
entry or nothing; Copy/AddData without an open source or past its end; Seek
past its end; a size larger than the output still allowed by
``expected_size``; a truncated stream or data after the last zstd frame.
No size read from the delta is used to allocate memory: data is streamed in
pieces of at most ``CHUNK`` bytes.
"""

from __future__ import annotations

import logging
import os
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import IO, BinaryIO

from ..errors import CodecError, CorruptDeltaError
from ._addmod import AdaptiveAdder
from .bsdiff import Writable
from .compression import (
    DEFAULT_MAX_WINDOW_SIZE,
    Compression,
    Readable,
    Scratch,
    open_decompressed,
)

__all__ = ["CHUNK", "MAGIC", "TarIndex", "TarMember", "apply_tardiff", "normalize_path"]

log = logging.getLogger(__name__)

MAGIC = b"tardf1\n\x00"
CHUNK = 1 << 18
MAX_PATH = 4096
_MAX_SIZE = (1 << 63) - 1

OP_DATA, OP_OPEN, OP_COPY, OP_ADD_DATA, OP_SEEK = range(5)
_OP_NAMES = {0: "Data", 1: "Open", 2: "Copy", 3: "AddData", 4: "Seek"}


def normalize_path(name: str) -> str | None:
    """The normalised form of a tar path, or None if it cannot be referenced."""
    if not name or "\x00" in name or name.startswith("/"):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


@dataclass(frozen=True)
class TarMember:
    """An indexed entry: where its data starts in the uncompressed tar, and its kind."""

    name: str
    offset: int
    size: int
    regular: bool
    kind: str


def _kind(info: tarfile.TarInfo) -> tuple[bool, str]:
    if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE) and info.sparse is None:
        return True, "regular file"
    if info.isdir():
        return False, "directory"
    if info.issym():
        return False, "symlink"
    if info.islnk():
        return False, "hard link"
    if info.type == tarfile.GNUTYPE_SPARSE or info.sparse is not None:
        return False, "sparse file"
    return False, f"entry of type {info.type!r}"


class TarIndex:
    """The entries of an uncompressed tar file, by normalised path (last one wins)."""

    def __init__(self, tar: BinaryIO | str | os.PathLike[str]) -> None:
        self.name = _name(tar) if not isinstance(tar, str | os.PathLike) else os.fspath(tar)
        self.members: dict[str, TarMember] = {}
        try:
            with ExitStack() as stack:
                handle: BinaryIO = (stack.enter_context(open(tar, "rb"))
                                    if isinstance(tar, str | os.PathLike) else tar)
                handle.seek(0)
                tf = stack.enter_context(tarfile.open(fileobj=handle, mode="r:", encoding="utf-8",
                                                      errors="surrogateescape"))
                while (info := tf.next()) is not None:
                    tf.members.clear()  # type: ignore[attr-defined]  # keep only our index
                    name = normalize_path(info.name)
                    if name is None:
                        log.debug("tar-diff base: entry %r cannot be referenced", info.name)
                        continue
                    regular, kind = _kind(info)
                    self.members[name] = TarMember(name, info.offset_data, info.size, regular, kind)
        except tarfile.TarError as exc:
            raise CodecError(f"tar-diff base {self.name} is not a readable tar: {exc}") from exc

    def lookup(self, raw: bytes) -> TarMember:
        """The regular file an Open op names, or :class:`CorruptDeltaError`."""
        shown = raw[:200].decode("utf-8", "backslashreplace")
        if b"\x00" in raw:
            raise CorruptDeltaError(f"tar-diff Open of a path with a NUL byte: {shown!r}")
        name = raw.decode("utf-8", "surrogateescape")
        if name.startswith("/"):
            raise CorruptDeltaError(f"tar-diff Open of an absolute path: {shown!r}")
        if ".." in name.split("/"):
            raise CorruptDeltaError(f"tar-diff Open of a path with '..': {shown!r}")
        key = normalize_path(name)
        if key is None:
            raise CorruptDeltaError(f"tar-diff Open of an empty path: {shown!r}")
        member = self.members.get(key)
        if member is None:
            raise CorruptDeltaError(f"tar-diff Open of {shown!r}: no such file in the base tar")
        if not member.regular:
            raise CorruptDeltaError(f"tar-diff Open of {shown!r}: a {member.kind}, not a regular file")
        return member


@contextmanager
def plain_tar(base: BinaryIO | str | os.PathLike[str], scratch: Scratch | None = None) -> Iterator[BinaryIO]:
    """An open uncompressed tar for ``base`` (a file or a path), copied into a ``scratch()``
    file (default: an anonymous temp file) when it is gzip or zstd (decompressed) or has no
    file descriptor (it is read with ``pread``)."""
    with ExitStack() as stack:
        fh: BinaryIO = (stack.enter_context(open(base, "rb"))
                        if isinstance(base, str | os.PathLike) else base)
        fh.seek(0)
        compression = Compression.detect(fh.read(4))
        fh.seek(0)
        if compression is Compression.NONE and _has_fd(fh):
            yield fh
            return
        out = stack.enter_context((scratch or _anonymous)())
        reader: Readable = fh if compression is Compression.NONE else open_decompressed(
            fh, compression, what=f"tar-diff base {_name(fh)}")
        while chunk := reader.read(1 << 20):
            out.write(chunk)
        out.flush()
        out.seek(0)
        yield out  # type: ignore[misc]


def _has_fd(handle: BinaryIO) -> bool:
    try:
        handle.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


def _anonymous() -> IO[bytes]:
    return tempfile.TemporaryFile(prefix=".doras-oras-base-")


def _name(handle: object) -> str:
    name = getattr(handle, "name", None)
    return os.path.basename(name) if isinstance(name, str) else "(stream)"


class _OpReader:
    """Reads ops from the decompressed stream, checking every field."""

    def __init__(self, source: Readable) -> None:
        self._src = source
        self._buf = b""
        self._pos = 0

    def _fill(self) -> bool:
        data = self._src.read(CHUNK)
        if not data:
            return False
        self._buf = self._buf[self._pos :] + data
        self._pos = 0
        return True

    def byte(self) -> int | None:
        if self._pos >= len(self._buf) and not self._fill():
            return None
        b = self._buf[self._pos]
        self._pos += 1
        return b

    def uvarint(self, op: str) -> int:
        value = 0
        for i in range(10):
            b = self.byte()
            if b is None:
                raise CorruptDeltaError(f"tar-diff {op}: stream ends inside a size")
            if i == 9 and b > 1:
                raise CorruptDeltaError(f"tar-diff {op}: size varint overflows 64 bits")
            value |= (b & 0x7F) << (7 * i)
            if b < 0x80:
                if value > _MAX_SIZE:
                    raise CorruptDeltaError(f"tar-diff {op}: size {value} is out of range")
                return value
        raise CorruptDeltaError(f"tar-diff {op}: size varint longer than 10 bytes")

    def data(self, n: int, op: str) -> Iterator[bytes]:
        """``n`` bytes of op data in pieces of at most CHUNK bytes."""
        while n:
            if self._pos >= len(self._buf) and not self._fill():
                raise CorruptDeltaError(f"tar-diff {op}: stream ends {n} bytes before the op's data")
            take = min(n, len(self._buf) - self._pos, CHUNK)
            piece = self._buf[self._pos : self._pos + take]
            self._pos += take
            n -= take
            yield piece


def apply_tardiff(
    base: BinaryIO | str | os.PathLike[str],
    delta: Readable,
    out: Writable,
    *,
    expected_size: int | None = None,
    scratch: Scratch | None = None,
    max_window_size: int = DEFAULT_MAX_WINDOW_SIZE,
    use_numpy: bool | None = None,
) -> int:
    """Apply the tar-diff ``delta`` (a stream starting with the magic) to the tar ``base``.

    Writes the uncompressed target tar to ``out`` and returns its size. With
    ``expected_size``, any op that would write past it is an error.
    """
    head = b""
    while len(head) < len(MAGIC):
        piece = delta.read(len(MAGIC) - len(head))
        if not piece:
            break
        head += piece
    if head != MAGIC:
        raise CorruptDeltaError(f"not a tar-diff delta: header {head!r}, expected {MAGIC!r}")
    ops_cap = None if expected_size is None else 2 * expected_size + (1 << 20)
    stream = open_decompressed(delta, Compression.ZSTD, max_output=ops_cap,
                               what="tar-diff operations", max_window_size=max_window_size)
    reader = _OpReader(stream)
    add = AdaptiveAdder(use_numpy)
    limit = _MAX_SIZE if expected_size is None else expected_size
    written = 0
    with ExitStack() as stack:
        tar = stack.enter_context(plain_tar(base, scratch))
        index = TarIndex(tar)
        tar_fd = tar.fileno()
        source: TarMember | None = None
        pos = 0

        def room(op: str, size: int) -> None:
            if size > limit - written:
                raise CorruptDeltaError(
                    f"tar-diff {op} of {size} bytes at output {written} passes the expected size {limit}"
                )

        def check_source(op: str, size: int) -> TarMember:
            if source is None:
                raise CorruptDeltaError(f"tar-diff {op} before any Open")
            if size > source.size - pos:
                raise CorruptDeltaError(
                    f"tar-diff {op} of {size} bytes at {pos} passes the end of {source.name!r} "
                    f"({source.size} bytes)"
                )
            return source

        def read_source(member: TarMember, n: int) -> bytes:
            nonlocal pos
            data = os.pread(tar_fd, n, member.offset + pos)
            if len(data) != n:
                raise CodecError(f"tar-diff base {index.name} is shorter than its index says")
            pos += n
            return data

        while True:
            op = reader.byte()
            if op is None:
                break
            name = _OP_NAMES.get(op)
            if name is None:
                raise CorruptDeltaError(f"tar-diff: unknown op {op} at output {written}")
            size = reader.uvarint(name)
            if op == OP_DATA:
                room(name, size)
                for piece in reader.data(size, name):
                    out.write(piece)
                    written += len(piece)
            elif op == OP_OPEN:
                if size > MAX_PATH:
                    raise CorruptDeltaError(f"tar-diff Open: path of {size} bytes (limit {MAX_PATH})")
                source = index.lookup(b"".join(reader.data(size, name)))
                pos = 0
            elif op == OP_COPY:
                room(name, size)
                member = check_source(name, size)
                while size:
                    piece = read_source(member, min(size, CHUNK))
                    size -= len(piece)
                    out.write(piece)
                    written += len(piece)
            elif op == OP_ADD_DATA:
                room(name, size)
                member = check_source(name, size)
                for piece in reader.data(size, name):
                    out.write(add(read_source(member, len(piece)), piece))
                    written += len(piece)
            else:  # OP_SEEK
                if source is None:
                    raise CorruptDeltaError("tar-diff Seek before any Open")
                if size > source.size:
                    raise CorruptDeltaError(
                        f"tar-diff Seek to {size} passes the end of {source.name!r} ({source.size} bytes)"
                    )
                pos = size
    return written

