"""Byte-wise addition modulo 256 of two equally long byte strings.

Two implementations with the same result: numpy (about 5 GB/s, used when
importable and allowed; imported lazily because it costs ~15 MB of RSS) and
a dependency-free one that treats the strings as big integers and adds all
bytes at once without letting carries cross byte boundaries (SWAR):
``((a & 0x7f..) + (b & 0x7f..)) ^ ((a ^ b) & 0x80..)``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import lru_cache

__all__ = ["AdaptiveAdder", "add_bytes", "add_bytes_int", "select_adder"]

#: Bytes added with big integers before an :class:`AdaptiveAdder` tries numpy. Measured
#: break-even of numpy's import (~0.15 s, ~18 MiB RSS) against the big-integer adder is
#: ~35 MiB of adds (docs/benchmarks.md): scattered edits of a typical update stay below it.
NUMPY_AFTER = 32 << 20

AddFn = Callable[[bytes, bytes], bytes]


@lru_cache(maxsize=16)
def _masks(n: int) -> tuple[int, int]:
    return int.from_bytes(b"\x7f" * n, "little"), int.from_bytes(b"\x80" * n, "little")


def add_bytes_int(a: bytes, b: bytes) -> bytes:
    """``bytes((x + y) % 256 for x, y in zip(a, b))`` with big-integer lanes."""
    n = len(a)
    if n != len(b):
        raise ValueError("operands differ in length")
    if n == 0:
        return b""
    low, high = _masks(n)
    x = int.from_bytes(a, "little")
    y = int.from_bytes(b, "little")
    return (((x & low) + (y & low)) ^ ((x ^ y) & high)).to_bytes(n, "little")


def _numpy_adder() -> AddFn | None:
    if "numpy" not in sys.modules:
        # OpenBLAS's busy-waiting worker threads (started on import) compete with
        # the decoding thread on small machines; numpy's adds need none of them.
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a test extra
        return None
    u8 = np.uint8

    def add_numpy(a: bytes, b: bytes) -> bytes:
        if len(a) != len(b):
            raise ValueError("operands differ in length")
        result: bytes = (np.frombuffer(a, u8) + np.frombuffer(b, u8)).tobytes()
        return result

    return add_numpy


def select_adder(use_numpy: bool | None = None) -> AddFn:
    """The adder to use: numpy when ``use_numpy`` (or, if None, when importable

    and the environment variable ``DORAS_ORAS_NO_NUMPY`` is not set), else the
    big-integer one.
    """
    if use_numpy is None:
        use_numpy = not os.environ.get("DORAS_ORAS_NO_NUMPY")
    if use_numpy:
        fn = _numpy_adder()
        if fn is not None:
            return fn
    return add_bytes_int


def add_bytes(a: bytes, b: bytes) -> bytes:
    """Byte-wise sum mod 256 with the big-integer adder (no import cost)."""
    return add_bytes_int(a, b)


class AdaptiveAdder:
    """Big-integer adds first; numpy (when allowed) once ``NUMPY_AFTER`` bytes were added.

    Sparse edits never pay numpy's import (~0.1 s, ~20 MB RSS); dense ones get
    its speed. ``use_numpy``: None = allowed if importable and
    ``DORAS_ORAS_NO_NUMPY`` is unset, True = from the first add, False = never.
    """

    def __init__(self, use_numpy: bool | None = None) -> None:
        self._use_numpy = use_numpy
        self._fn: AddFn = add_bytes_int
        self._added = 0
        self._settled = use_numpy is False

    def __call__(self, a: bytes, b: bytes) -> bytes:
        if not self._settled:
            self._added += len(a)
            if self._use_numpy or self._added > NUMPY_AFTER:
                self._fn = select_adder(self._use_numpy)
                self._settled = True
        return self._fn(a, b)
