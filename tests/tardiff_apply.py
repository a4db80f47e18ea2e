"""A small tar-diff applier for the tests of the test bed only (the real one is
``doras_oras.codecs``): applies a delta to the regular files of an old tar."""

from __future__ import annotations

import io
import tarfile

import zstandard

from doras_oras.testing.tardiff_encoder import MAGIC, clean_path, maybe_gunzip


def _uvarint(buf: io.BytesIO) -> int:
    shift = value = 0
    while True:
        b = buf.read(1)
        if not b:
            raise ValueError("truncated varint")
        value |= (b[0] & 0x7F) << shift
        if b[0] < 0x80:
            return value
        shift += 7


def apply(old_tar: bytes, delta: bytes) -> bytes:
    """The new uncompressed tar made from ``old_tar`` (gzip or not) and ``delta``."""
    if delta[:8] != MAGIC:
        raise ValueError("not a tar-diff")
    raw = maybe_gunzip(old_tar)
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as archive:
        for member in archive:
            if member.isreg() and not member.issparse():
                files[clean_path(member.name)] = raw[member.offset_data : member.offset_data + member.size]
    ops = io.BytesIO(zstandard.ZstdDecompressor().decompressobj().decompress(delta[8:]))
    out = bytearray()
    source = b""
    pos = 0
    while True:
        op = ops.read(1)
        if not op:
            break
        size = _uvarint(ops)
        if op[0] == 0:
            data = ops.read(size)
            assert len(data) == size
            out += data
        elif op[0] == 1:
            name = clean_path(ops.read(size).decode("utf-8", "surrogateescape"))
            source, pos = files[name], 0
        elif op[0] == 2:
            assert pos + size <= len(source)
            out += source[pos : pos + size]
            pos += size
        elif op[0] == 3:
            data = ops.read(size)
            assert pos + size <= len(source)
            out += bytes((a + b) & 0xFF for a, b in zip(data, source[pos : pos + size], strict=True))
            pos += size
        elif op[0] == 4:
            pos = size
        else:
            raise ValueError(f"unknown op {op[0]}")
    return bytes(out)
