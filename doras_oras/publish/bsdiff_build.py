"""Building BSDIFF40 patches by hand (headers, Go-server-shaped frames), for tests and benchmarks.

The format (DESIGN.md §3): a 32-byte header ``BSDIFF40`` + three signed 64-bit
integers (magnitude little-endian, sign in the top bit of the last byte) for
the compressed control length, the compressed diff length and the new size;
then the control, diff and extra bzip2 streams.

:func:`go_patch_frame` gives the parts around the diff stream of a patch shaped
as the Go Doras server makes them for an in-place update: one control triple
``(new_size, 0, 0)`` (the whole new file is old + diff) and an empty extra stream.
"""

from __future__ import annotations

import bz2

__all__ = ["bsdiff_header", "go_patch_frame", "offtout"]


def offtout(x: int) -> bytes:
    """A bsdiff signed 64-bit integer (magnitude little-endian, sign in the top bit)."""
    raw = bytearray(abs(x).to_bytes(8, "little"))
    if x < 0:
        raw[7] |= 0x80
    return bytes(raw)


def bsdiff_header(ctrl_len: int, diff_len: int, new_size: int, magic: bytes = b"BSDIFF40") -> bytes:
    """The 32-byte header (``magic`` may be wrong on purpose)."""
    return magic + offtout(ctrl_len) + offtout(diff_len) + offtout(new_size)


def go_patch_frame(new_size: int, diff_len: int) -> tuple[bytes, bytes]:
    """``(head, tail)`` of a Go-server-shaped patch: ``head + <bzip2 diff stream of diff_len
    bytes> + tail`` is the whole patch (header and control stream; empty extra stream)."""
    ctrl = bz2.compress(offtout(new_size) + offtout(0) + offtout(0))
    return bsdiff_header(len(ctrl), diff_len, new_size) + ctrl, bz2.compress(b"")
