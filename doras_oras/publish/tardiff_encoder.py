"""A tar-diff encoder (``containers/tar-diff`` format): publish-delta and the test server build with it.

``encode(old_tar, new_tar)`` returns a delta that, applied to the regular
files of ``old_tar``, reproduces the uncompressed ``new_tar`` byte for byte.
Format: the 8 bytes ``tardf1\\n\\0`` and one zstd frame of operations
``op:u8, size:uvarint, data[size]`` (DESIGN.md §3).

What it emits:

- tar headers, padding and the end-of-archive blocks of ``new_tar`` as Data;
- a regular file whose content equals a regular file of ``old_tar`` (same
  path preferred) as Open + Copy;
- a changed file with an old file of the same path (or, failing that, of the
  same base name when it is unique) as Open + runs of Copy (blocks found in
  the old file, with Seek), AddData (in-place edits) and Data (new bytes);
- any other content as Data.

Inputs may be gzip-compressed tars; they are decompressed first.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

import zstandard

MAGIC = b"tardf1\n\x00"
OP_DATA = 0
OP_OPEN = 1
OP_COPY = 2
OP_ADD_DATA = 3
OP_SEEK = 4

BLOCK = 64
_MAX_INDEXED_FILE = 16 << 20
_MAX_ADD_DATA = 1 << 20


def clean_path(name: str) -> str:
    """The normalised relative path of a tar member name (``./a/`` -> ``a``)."""
    return posixpath.normpath("/" + name).lstrip("/")


def uvarint(value: int) -> bytes:
    """An unsigned LEB128 varint, as tar-diff sizes are written."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def maybe_gunzip(data: bytes) -> bytes:
    """``data`` decompressed when it is gzip, else unchanged."""
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    return data


@dataclass
class _OldFile:
    path: str
    content: bytes


class _OpWriter:
    """Collects operations, merging adjacent Data runs."""

    def __init__(self) -> None:
        self.out = bytearray()
        self._data = bytearray()

    def _op(self, op: int, size: int, data: bytes = b"") -> None:
        self.out.append(op)
        self.out += uvarint(size)
        self.out += data

    def flush(self) -> None:
        if self._data:
            self._op(OP_DATA, len(self._data), bytes(self._data))
            self._data.clear()

    def data(self, chunk: bytes) -> None:
        self._data += chunk

    def open(self, path: str) -> None:
        self.flush()
        name = path.encode("utf-8", "surrogateescape")
        self._op(OP_OPEN, len(name), name)

    def copy(self, size: int) -> None:
        if size:
            self.flush()
            self._op(OP_COPY, size)

    def add(self, diff: bytes) -> None:
        if diff:
            self.flush()
            self._op(OP_ADD_DATA, len(diff), diff)

    def seek(self, position: int) -> None:
        self.flush()
        self._op(OP_SEEK, position)


def _regular_members(raw: bytes) -> Iterator[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as archive:
        for member in archive:
            if member.isreg() and not member.issparse():
                yield member


def _old_files(raw: bytes) -> dict[str, _OldFile]:
    files: dict[str, _OldFile] = {}
    for member in _regular_members(raw):
        path = clean_path(member.name)
        if not path:
            continue
        # The last entry of a path wins, as on extraction.
        files[path] = _OldFile(path, raw[member.offset_data : member.offset_data + member.size])
    return files


def _match_length(new: bytes, i: int, old: bytes, o: int) -> int:
    """Length of the common run of ``new[i:]`` and ``old[o:]``."""
    n = 0
    limit = min(len(new) - i, len(old) - o)
    step = 4096
    while n + step <= limit and new[i + n : i + n + step] == old[o + n : o + n + step]:
        n += step
    while n < limit and new[i + n] == old[o + n]:
        n += 1
    return n


def _emit_literal(ops: _OpWriter, literal: bytes, old: bytes, src: int) -> int:
    """Emit ``literal`` as AddData against ``old[src:]`` when mostly equal, else Data."""
    size = len(literal)
    if size and size <= _MAX_ADD_DATA and src + size <= len(old):
        base = old[src : src + size]
        diff = bytes((a - b) & 0xFF for a, b in zip(literal, base, strict=True))
        if diff.count(0) * 2 > size:
            ops.add(diff)
            return src + size
    ops.data(literal)
    return src


def _encode_changed(ops: _OpWriter, new: bytes, old: _OldFile) -> None:
    """Content ``new`` against the old file ``old`` (already opened, position 0)."""
    src = 0
    data = old.content
    if len(data) > _MAX_INDEXED_FILE or len(new) > _MAX_INDEXED_FILE:
        common = min(len(new), len(data))
        _emit_literal(ops, new[:common], data, 0)
        ops.data(new[common:])
        return
    index: dict[bytes, int] = {}
    for k in range(0, len(data) - BLOCK + 1, BLOCK):
        index.setdefault(data[k : k + BLOCK], k)
    i = lit = 0
    while i + BLOCK <= len(new):
        o = index.get(new[i : i + BLOCK])
        if o is None:
            i += 1
            continue
        while i > lit and o > 0 and new[i - 1] == data[o - 1]:
            i -= 1
            o -= 1
        length = _match_length(new, i, data, o)
        if lit < i:
            literal = new[lit:i]
            # An in-place edit: the literal sits exactly before the next copy.
            if src + len(literal) == o:
                src = _emit_literal(ops, literal, data, src)
            else:
                ops.data(literal)
        if src != o:
            ops.seek(o)
        ops.copy(length)
        src = o + length
        i += length
        lit = i
    if lit < len(new):
        _emit_literal(ops, new[lit:], data, src)


def encode(old_tar: bytes, new_tar: bytes, *, level: int = 19) -> bytes:
    """A tar-diff delta from ``old_tar`` to ``new_tar`` (either may be gzip-compressed)."""
    old_raw = maybe_gunzip(old_tar)
    new_raw = maybe_gunzip(new_tar)
    old = _old_files(old_raw)
    by_digest: dict[bytes, _OldFile] = {}
    by_base: dict[str, list[_OldFile]] = {}
    for entry in old.values():
        by_digest.setdefault(hashlib.sha256(entry.content).digest(), entry)
        by_base.setdefault(posixpath.basename(entry.path), []).append(entry)

    ops = _OpWriter()
    pos = 0
    for member in _regular_members(new_raw):
        start, size = member.offset_data, member.size
        if start < pos:  # never expected from tarfile; stay correct anyway
            continue
        ops.data(new_raw[pos:start])
        content = new_raw[start : start + size]
        pos = start + size
        if not size:
            continue
        path = clean_path(member.name)
        same_path = old.get(path)
        if same_path is not None and same_path.content == content:
            ops.open(same_path.path)
            ops.copy(size)
            continue
        same = by_digest.get(hashlib.sha256(content).digest())
        if same is not None:
            ops.open(same.path)
            ops.copy(size)
            continue
        base = by_base.get(posixpath.basename(path), [])
        similar = same_path or (base[0] if len(base) == 1 else None)
        if similar is None or not similar.content:
            ops.data(content)
            continue
        ops.open(similar.path)
        _encode_changed(ops, content, similar)
    ops.data(new_raw[pos:])
    ops.flush()
    return MAGIC + zstandard.ZstdCompressor(level=level).compress(bytes(ops.out))
