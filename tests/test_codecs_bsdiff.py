"""The bsdiff applier against the reference tools: Debian bsdiff/bspatch and bsdiff4."""

from __future__ import annotations

import gzip
import io
import random
import subprocess
from pathlib import Path

import bsdiff4
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from doras_oras.algorithms import DeltaAlgorithm
from doras_oras.codecs._addmod import add_bytes_int, select_adder
from doras_oras.codecs.bsdiff import apply_bsdiff, read_header
from tests._codec_support import apply_file, make_bsdiff


def _random_pair(rng: random.Random, size: int) -> tuple[bytes, bytes]:
    old = rng.randbytes(size)
    new = bytearray(old)
    for _ in range(size // 500 + 1):  # scattered edits
        pos = rng.randrange(len(new))
        new[pos] = rng.randrange(256)
    cut = rng.randrange(size)
    new[cut:cut] = rng.randbytes(rng.randrange(2000))  # an insertion
    del new[rng.randrange(len(new)) :][:1000]  # a deletion
    return old, bytes(new) + rng.randbytes(300)  # and an appended tail


@pytest.mark.parametrize("algorithm", [DeltaAlgorithm.BSDIFF, DeltaAlgorithm.BSDIFF_GZIP,
                                       DeltaAlgorithm.BSDIFF_ZSTD])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_debian_bsdiff_patches(tmp_path: Path, algorithm: DeltaAlgorithm, seed: int) -> None:
    rng = random.Random(seed)
    old, new = _random_pair(rng, rng.choice([1, 4096, 200_000]))
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    subprocess.run(["bsdiff", str(tmp_path / "old"), str(tmp_path / "new"), str(tmp_path / "patch")],
                   check=True, timeout=60)
    patch = (tmp_path / "patch").read_bytes()
    assert read_header(patch).new_size == len(new)
    if algorithm is DeltaAlgorithm.BSDIFF_GZIP:
        patch = gzip.compress(patch)
    elif algorithm is DeltaAlgorithm.BSDIFF_ZSTD:
        patch = zstandard.ZstdCompressor().compress(patch)
    assert DeltaAlgorithm.detect(patch[:8]) is algorithm
    # once from a regular file (read in place), once from a non-seekable stream (spooled)
    (tmp_path / "delta").write_bytes(patch)
    with open(tmp_path / "delta", "rb") as delta:
        digest, size = apply_file(algorithm, tmp_path / "old", delta, tmp_path / "out1")
    assert (tmp_path / "out1").read_bytes() == new
    assert size == len(new)
    apply_file(algorithm, tmp_path / "old", io.BytesIO(patch), tmp_path / "out2",
                expected_digest=digest, expected_size=len(new))
    assert (tmp_path / "out2").read_bytes() == new


def test_reads_past_the_end_of_old_are_zero_like_debian_bspatch(tmp_path: Path) -> None:
    old = bytes(range(1, 101))  # no zero byte: a zero read is visible
    # 30 bytes from old position 80 (20 in the file, 10 past its end), then jump far past it
    patch = make_bsdiff([(0, 0, 80), (30, 0, 1000), (30, 5, 0)], bytes([1]) * 60, b"extra", 65)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "patch").write_bytes(patch)
    subprocess.run(["bspatch", str(tmp_path / "old"), str(tmp_path / "ref"), str(tmp_path / "patch")],
                   check=True, timeout=30)
    reference = (tmp_path / "ref").read_bytes()
    out = io.BytesIO()
    apply_bsdiff(tmp_path / "old", tmp_path / "patch", out)
    assert out.getvalue() == reference
    assert reference == bytes(range(82, 102)) + bytes([1]) * 40 + b"extra"


def test_reads_before_the_start_of_old_are_zero(tmp_path: Path) -> None:
    # Debian's bspatch reads heap memory here (its bounds check fails for negative
    # positions), so the rule of the original bspatch is checked directly.
    old = bytes(range(1, 101))
    patch = make_bsdiff([(0, 0, -20), (30, 0, 0)], bytes([1]) * 30, b"", 30)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "patch").write_bytes(patch)
    out = io.BytesIO()
    apply_bsdiff(tmp_path / "old", tmp_path / "patch", out)
    assert out.getvalue() == bytes([1]) * 20 + bytes(range(2, 12))


def test_threaded_and_single_thread_agree(tmp_path: Path) -> None:
    rng = random.Random(7)
    old, new = _random_pair(rng, 300_000)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "patch").write_bytes(bsdiff4.diff(old, new))
    outs = []
    for threaded in (True, False):
        out = io.BytesIO()
        apply_bsdiff(tmp_path / "old", tmp_path / "patch", out, threaded=threaded, use_numpy=False)
        outs.append(out.getvalue())
    assert outs == [new, new]


@pytest.mark.parametrize(("cpus", "threads"), [(2, 1), (1, 0)])
def test_a_decoding_thread_only_with_a_second_cpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                  cpus: int, threads: int) -> None:
    from doras_oras.codecs import bsdiff as bsdiff_mod

    started: list[int] = []
    real = bsdiff_mod._run_threaded

    def counting(*args: object) -> None:
        started.append(1)
        real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(bsdiff_mod, "usable_cpus", lambda: cpus)
    monkeypatch.setattr(bsdiff_mod, "_run_threaded", counting)
    old, new = _random_pair(random.Random(9), 200_000)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "patch").write_bytes(bsdiff4.diff(old, new))
    out = io.BytesIO()
    apply_bsdiff(tmp_path / "old", tmp_path / "patch", out, parallel=False, use_numpy=False)
    assert out.getvalue() == new and len(started) == threads


def _inputs() -> st.SearchStrategy[tuple[bytes, bytes]]:
    blob = st.binary(max_size=3000)

    def shapes(old: bytes) -> st.SearchStrategy[tuple[bytes, bytes]]:
        return st.one_of(
            st.just((old, b"")),  # empty new
            st.just((b"", old)),  # empty old
            st.just((old, old)),  # identical
            blob.map(lambda other: (old, other)),  # unrelated
            blob.map(lambda tail: (old, old + tail)),  # appended
            st.integers(0, len(old)).map(lambda n: (old, old[:n])),  # truncated
            st.lists(st.tuples(st.integers(0, max(len(old) - 1, 0)), st.integers(0, 255)),
                     max_size=20).map(lambda edits: (old, _edit(old, edits))),  # tiny edits
        )

    return blob.flatmap(shapes)


def _edit(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, value in edits:
        if out:
            out[pos % len(out)] = value
    return bytes(out)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pair=_inputs())
def test_bsdiff4_patches_round_trip(tmp_path: Path, pair: tuple[bytes, bytes]) -> None:
    old, new = pair
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "patch").write_bytes(bsdiff4.diff(old, new))
    out = io.BytesIO()
    assert apply_bsdiff(tmp_path / "old", tmp_path / "patch", out, expected_size=len(new)) == len(new)
    assert out.getvalue() == new


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=5000).flatmap(lambda a: st.tuples(st.just(a), st.binary(min_size=len(a), max_size=len(a)))))
def test_adders_add_bytewise_mod_256(pair: tuple[bytes, bytes]) -> None:
    a, b = pair
    expected = bytes((x + y) & 0xFF for x, y in zip(a, b, strict=True))
    assert add_bytes_int(a, b) == expected
    assert select_adder(True)(a, b) == expected
    assert select_adder(False) is add_bytes_int


def test_adders_refuse_different_lengths() -> None:
    with pytest.raises(ValueError):
        add_bytes_int(b"ab", b"a")
