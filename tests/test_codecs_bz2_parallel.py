"""Decoding the bzip2 streams of a bsdiff patch block by block in parallel.

The splitter is checked against Debian's ``bzip2recover`` (an independent
search for the same block boundaries), the parallel decoder against
``bz2.decompress``, and the bsdiff applier's fallback (a false block
boundary, a corrupt block, a wrong stream CRC) against the sequential one.
"""

from __future__ import annotations

import bz2
import functools
import glob
import hashlib
import itertools
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from doras_oras.algorithms import DeltaAlgorithm
from doras_oras.codecs import _bz2parallel as bzp
from doras_oras.codecs import bsdiff as bsdiff_mod
from doras_oras.codecs._addmod import add_bytes_int
from doras_oras.codecs.bsdiff import HEADER_SIZE, apply_bsdiff, read_header
from doras_oras.errors import CorruptDeltaError
from doras_oras.publish.bsdiff_build import go_patch_frame
from tests._codec_support import REPO_ROOT, RSS_BOUND, apply_file, bsdiff_header

MB = 1_000_000


def _reader(data: bytes) -> bzp.ReadAt:
    return lambda offset, n: data[offset : offset + n]


def _split(data: bytes) -> bzp.Bz2Layout:
    layout = bzp.split_stream(_reader(data), len(data))
    assert layout is not None
    return layout


def _recovered_blocks(tmp_path: Path, stream: bytes) -> list[tuple[int, int]]:
    """Bit ranges ``[magic, next magic)`` of the blocks Debian's bzip2recover finds."""
    work = tmp_path / "recover"
    work.mkdir(exist_ok=True)
    (work / "s.bz2").write_bytes(stream)
    proc = subprocess.run(["bzip2recover", "s.bz2"], cwd=work, capture_output=True, text=True,
                          timeout=120, check=True)
    for path in work.iterdir():
        path.unlink()
    # "block N runs from A to B": A is the bit after the block's 48-bit magic, B its last bit;
    # the bits after the end-of-stream magic are reported as an "(incomplete)" block.
    return [(int(a) - 48, int(b) + 1)
            for a, b in re.findall(r"block \d+ runs from (\d+) to (\d+)$", proc.stdout + proc.stderr,
                                   re.MULTILINE)]


@functools.cache
def _data(kind: str, level: int) -> bytes:
    """About 2.3 blocks of ``kind`` at ``level`` (a level-n block holds n × 100 kB after RLE1)."""
    rng = random.Random(level)
    block = level * 100_000
    if kind == "zeros":  # runs of zeros: ~51 × larger than a block
        return bytes(int(2.3 * block * 51))
    if kind == "random":
        return rng.randbytes(int(2.3 * block))
    # mixed (~2 blocks): random, zero runs with scattered edits, runs of 0x01
    edited = bytearray(block * 20)
    for _ in range(200):
        edited[rng.randrange(len(edited))] = rng.randrange(1, 256)
    return rng.randbytes(block // 2) + bytes(edited) + b"\x01" * (block * 30) + rng.randbytes(block // 3)


@functools.cache
def _compressed(kind: str, level: int) -> bytes:
    return bz2.compress(_data(kind, level), level)


def _in_thread(fn: Callable[[], object], timeout: float = 120) -> None:
    """Run ``fn`` in a thread: a deadlock fails the test instead of hanging it."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "deadlock"
    if errors:
        raise errors[0]


def _decode_parallel(stream: bytes, *, sparse: bool, workers: int = 2,
                     budget: int = bzp.BUDGET, reserve: int = bzp.RESERVE,
                     step: Callable[[int], int] = lambda i: 1 << 20) -> tuple[bytes, int]:
    """The output of ``stream`` decoded by a ParallelReader, and the peak of bytes buffered."""
    layout = _split(stream)
    out = bytearray()
    group = bzp.DecoderGroup(workers, budget=budget, reserve=reserve)

    def decode() -> None:
        with group:
            reader = group.open(_reader(stream), layout, "test", sparse=sparse)
            i = 0
            while True:
                try:
                    run = reader.read(step(i))
                except bzp.ParallelDecodeError as exc:
                    assert "no output after its last block" in str(exc)
                    break
                if isinstance(run, int):
                    assert run > 0
                    out.extend(bytes(run))
                else:
                    assert run
                    out.extend(run)
                i += 1

    _in_thread(decode)
    return bytes(out), group.peak_buffered


# --- the splitter ------------------------------------------------------------------------------


@pytest.mark.parametrize("tool", ["python", "bzip2"])
@pytest.mark.parametrize(("kind", "level"), [
    ("zeros", 1), ("zeros", 5), ("random", 1), ("random", 5), ("random", 9), ("mixed", 1),
    ("mixed", 3), ("mixed", 9),
])
def test_splitter_finds_exactly_the_blocks(tmp_path: Path, tool: str, kind: str, level: int) -> None:
    data = _data(kind, level)
    if tool == "python":
        stream = _compressed(kind, level)
    else:
        stream = subprocess.run(["bzip2", f"-{level}", "-c"], input=data, capture_output=True,
                                check=True, timeout=120).stdout
    layout = _split(stream)
    assert layout.level == level
    assert len(layout.blocks) >= 2
    assert [(b.start, b.end) for b in layout.blocks] == _recovered_blocks(tmp_path, stream)
    assert layout.consistent
    # every block alone decodes to its share of the data, in order
    pieces = [bz2.decompress(bzp.block_stream(_reader(stream), layout.level, block))
              for block in layout.blocks]
    assert b"".join(pieces) == data


def test_splitter_finds_a_magic_at_every_bit_shift() -> None:
    # A stream whose blocks start at all 8 bit offsets of a byte (random blocks end anywhere).
    rng = random.Random(11)
    data = b"".join(rng.randbytes(rng.randrange(80_000, 100_000)) for _ in range(24))
    stream = bz2.compress(data, 1)
    layout = _split(stream)
    assert {b.start % 8 for b in layout.blocks[1:]} == set(range(8))
    assert layout.consistent
    assert b"".join(bz2.decompress(bzp.block_stream(_reader(stream), 1, b)) for b in layout.blocks) == data


def test_splitter_reads_in_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    # Blocks straddling the window edges are found once each, with tiny windows.
    stream = _compressed("random", 1)
    expected = _split(stream)
    monkeypatch.setattr(bzp, "SCAN_WINDOW", 4099)
    reads: list[int] = []

    def read_at(offset: int, n: int) -> bytes:
        reads.append(n)
        return stream[offset : offset + n]

    assert bzp.split_stream(read_at, len(stream)) == expected
    assert max(reads) <= 4099 + bzp._OVERLAP


def test_splitter_refuses_what_it_cannot_split() -> None:
    stream = _compressed("random", 1)
    layout = _split(stream)
    assert bzp.split_stream(_reader(b""), 0) is None
    assert bzp.split_stream(_reader(b"BZh0" + stream[4:]), len(stream)) is None  # bad level
    assert bzp.split_stream(_reader(b"XZh9" + stream[4:]), len(stream)) is None  # not bzip2
    cut = stream[: layout.blocks[-1].end // 8]  # truncated: no end-of-stream marker
    assert bzp.split_stream(_reader(cut), len(cut)) is None
    shifted = stream[:4] + b"\x00" + stream[4:]  # first block not right after the header
    assert bzp.split_stream(_reader(shifted), len(shifted)) is None
    # a hostile stream made of block magics is refused quickly (bounded work)
    hostile = b"BZh9" + bzp.BLOCK_MAGIC.to_bytes(6, "big") * (bzp.MAX_BLOCKS + 10)
    examined: list[int] = []  # pattern hits each scan examined
    find = bzp._find

    def counting_find(buf: bytes, patterns: list[tuple[int, bytes, int]], magic: int, limit: int,
                      found: list[int], budget: list[int]) -> None:
        before = budget[0]
        try:
            find(buf, patterns, magic, limit, found, budget)
        finally:
            examined.append(before - max(budget[0], 0))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bzp, "_find", counting_find)
        assert bzp.split_stream(_reader(hostile), len(hostile)) is None
    assert 0 < sum(examined) <= 4 * bzp.MAX_BLOCKS  # bounded work: the scan's budget of pattern hits


def test_empty_and_one_block_streams() -> None:
    empty = bz2.compress(b"")
    layout = _split(empty)
    assert layout.blocks == [] and layout.consistent
    one = bz2.compress(b"hello" * 1000)
    layout = _split(one)
    assert len(layout.blocks) == 1 and layout.consistent
    assert layout.stored_crc == layout.blocks[0].crc


def test_combined_crc_is_the_one_bzip2_stores() -> None:
    stream = bz2.compress(random.Random(4).randbytes(600_000), 1)
    layout = _split(stream)
    assert len(layout.blocks) > 5
    assert bzp.combine_crcs([b.crc for b in layout.blocks]) == layout.stored_crc
    assert bzp.combine_crcs([b.crc for b in layout.blocks[::-1]]) != layout.stored_crc


# --- the parallel decoder ------------------------------------------------------------------------


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize(("kind", "level"), [("zeros", 1), ("random", 2), ("mixed", 1), ("mixed", 9)])
def test_parallel_decode_equals_bz2_decompress(kind: str, level: int, workers: int, sparse: bool) -> None:
    stream = _compressed(kind, level)
    rng = random.Random(workers)
    out, _ = _decode_parallel(stream, sparse=sparse, workers=workers,
                              step=lambda i: rng.choice([1, 7, 4096, 1 << 17, 1 << 22]))
    assert out == bz2.decompress(stream)


def test_sparse_runs() -> None:
    rng = random.Random(12)
    chunks = [bytes(bzp.CHUNK), rng.randbytes(bzp.CHUNK), bytes(1000), b"\x01" * 777, bytes(5000) + b"\x02"]
    for _ in range(200):
        chunk = bytearray(bzp.CHUNK)
        for _ in range(rng.randrange(40)):
            pos = rng.randrange(len(chunk))
            k = min(rng.randrange(1, 3000), len(chunk) - pos)
            chunk[pos : pos + k] = rng.randbytes(k)
        assert len(chunk) == bzp.CHUNK
        chunks.append(bytes(chunk))
    for chunk in chunks:
        runs, literal = bzp._sparse_runs(chunk)
        assert b"".join(bytes(r) if isinstance(r, int) else r for r in runs) == chunk
        assert literal == sum(len(r) for r in runs if isinstance(r, bytes))
        assert all(r > 0 for r in runs if isinstance(r, int))
        assert all(r != bytes(len(r)) for r in runs if isinstance(r, bytes))  # literals hold a non-zero
        kinds = [isinstance(r, int) for r in runs]
        assert all(a != b for a, b in itertools.pairwise(kinds))  # runs alternate
    assert bzp._sparse_runs(bytes(bzp.CHUNK)) == ([bzp.CHUNK], 0)
    one_edit = bytearray(bzp.CHUNK)
    one_edit[70_000] = 5
    runs, literal = bzp._sparse_runs(bytes(one_edit))
    assert literal == 256 and len(runs) == 3  # a scattered edit costs one 256-byte piece
    dense = rng.randbytes(bzp.CHUNK)
    assert bzp._sparse_runs(dense) == ([dense], bzp.CHUNK)  # a dense chunk stays one piece


def test_budget_bounds_what_workers_buffer_ahead() -> None:
    # ~4.6 blocks of 0x01 runs (level 1: ~5 MB per block): nothing compresses to ints here.
    data = b"\x01" * (23 * MB)
    stream = bz2.compress(data, 1)
    budget, reserve = 1 << 20, 1 << 18

    def slow(i: int) -> int:
        if i % 64 == 0:
            time.sleep(0.002)  # a consumer slower than the decoders
        return 1 << 16

    out, peak = _decode_parallel(stream, sparse=True, workers=3, budget=budget, reserve=reserve,
                                 step=slow)
    assert out == data
    assert peak <= budget + reserve + bzp.CHUNK
    assert peak > budget // 2  # the workers did decode ahead, up to the cap


def test_a_worker_starts_the_next_block_while_the_reader_holds_a_decoded_head() -> None:
    # Block 1's decoder is held (its bytes are not handed out); block 0, the head, is decoded
    # and not read. The worker that decoded block 0 must start block 2 now, not wait for
    # block 1 to finish or for the reader to drain block 0 (it did wait, before issue 24).
    data = random.Random(4).randbytes(450_000)  # level 1: ~100 kB blocks, 5 of them
    stream = bz2.compress(data, 1)
    layout = _split(stream)
    assert len(layout.blocks) >= 3
    first_of = [block.start // 8 for block in layout.blocks]
    release, asked_for_block_2 = threading.Event(), threading.Event()

    def read_at(offset: int, n: int) -> bytes:
        if offset == first_of[1]:
            release.wait(60)
        if offset == first_of[2]:
            asked_for_block_2.set()
        return stream[offset : offset + n]

    out = bytearray()
    with bzp.DecoderGroup(2) as group:
        reader = group.open(read_at, layout, "diff", sparse=False)
        try:
            started = asked_for_block_2.wait(30)
        finally:
            release.set()
        while len(out) < len(data):
            run = reader.read(1 << 16)
            out += bytes(run) if isinstance(run, int) else run
    assert started
    assert out == data


def test_two_streams_share_a_small_budget_without_deadlock() -> None:
    # Two readers of one group read alternately (as diff and extra are): all progress.
    a = bz2.compress(b"\x02" * (12 * MB) + random.Random(1).randbytes(300_000), 1)
    b = bz2.compress(random.Random(2).randbytes(500_000) + b"\x03" * (9 * MB), 1)
    result: dict[str, bytes] = {}

    def run() -> None:
        outs = [bytearray(), bytearray()]
        with bzp.DecoderGroup(3, budget=1 << 18, reserve=1 << 17) as group:
            readers = [group.open(_reader(s), _split(s), name, sparse=True)
                       for s, name in ((a, "a"), (b, "b"))]
            live = [0, 1]
            rng = random.Random(3)
            while live:
                k = rng.choice(live)
                try:
                    run = readers[k].read(rng.choice([100, 1 << 16, 1 << 20]))
                except bzp.ParallelDecodeError:
                    live.remove(k)
                    continue
                outs[k] += bytes(run) if isinstance(run, int) else run
        result["a"], result["b"] = bytes(outs[0]), bytes(outs[1])

    _in_thread(run)
    assert result == {"a": bz2.decompress(a), "b": bz2.decompress(b)}


def test_a_corrupt_block_fails_only_when_reached() -> None:
    data = random.Random(5).randbytes(400_000)
    stream = bytearray(bz2.compress(data, 1))
    layout = _split(bytes(stream))
    bad = layout.blocks[2]
    bit = (bad.start + bad.end) // 2
    stream[bit // 8] ^= 0x10
    good = b"".join(bz2.decompress(bzp.block_stream(_reader(bytes(stream)), 1, b)) for b in layout.blocks[:2])
    out = bytearray()
    with bzp.DecoderGroup(2) as group:
        reader = group.open(_reader(bytes(stream)), layout, "diff", sparse=False)
        with pytest.raises(bzp.ParallelDecodeError,
                           match=f"diff stream: block 3 of {len(layout.blocks)} failed to decode"):
            while True:
                run = reader.read(1 << 16)
                out += bytes(run) if isinstance(run, int) else run
    assert bytes(out) == good == data[: len(good)]  # the blocks before it were given


def test_closing_stops_workers_decoding_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = bz2.compress(bytes(60 * MB), 1)  # 12 blocks of zeros
    group = bzp.DecoderGroup(2)
    after_stop: list[int] = []  # output chunks the workers made once close() was called
    sparse_runs = bzp._sparse_runs

    def counting(chunk: bytes) -> tuple[list[bzp.Run], int]:
        if group.stopped:
            after_stop.append(len(chunk))
        return sparse_runs(chunk)

    monkeypatch.setattr(bzp, "_sparse_runs", counting)
    reader = group.open(_reader(stream), _split(stream), "diff", sparse=True)
    assert reader.read(10) == 10
    group.close()
    assert len(after_stop) <= 2  # each of the two workers stopped within one output chunk
    assert not any(t.is_alive() for t in threading.enumerate() if t.name.startswith("bz2-diff"))


# --- the bsdiff applier --------------------------------------------------------------------------


@pytest.fixture
def two_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parallel decoding with 2 workers, whatever this machine has."""
    monkeypatch.setenv("DORAS_ORAS_BZ2_WORKERS", "2")


@pytest.fixture
def restarts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the restarts of the result's writer (a parallel decoding that failed)."""
    from doras_oras.layout import BlobWriter

    calls: list[int] = []
    original = BlobWriter.restart

    def restart(self: BlobWriter) -> None:
        calls.append(self.offset)
        original(self)

    monkeypatch.setattr(BlobWriter, "restart", restart)
    return calls


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the streams decoded in parallel."""
    names: list[str] = []
    original = bzp.DecoderGroup.open

    def open_(self: bzp.DecoderGroup, read_at: bzp.ReadAt, layout: bzp.Bz2Layout, name: str, *,
              sparse: bool) -> bzp.ParallelReader:
        names.append(name)
        return original(self, read_at, layout, name, sparse=sparse)

    monkeypatch.setattr(bzp.DecoderGroup, "open", open_)
    return names


def _go_shape(tmp_path: Path, size: int, edits: int, seed: int = 1) -> tuple[Path, Path, bytes]:
    """old, patch (one triple (size, 0, 0), a diff stream of zeros with edits), new."""
    rng = random.Random(seed)
    old = rng.randbytes(size)
    diff = bytearray(size)
    for _ in range(edits):
        diff[rng.randrange(size)] = rng.randrange(1, 256)
    new = add_bytes_int(old, bytes(diff))
    dstream = bz2.compress(bytes(diff), 1)  # level 1: a block per ~5 MB of zeros
    head, tail = go_patch_frame(size, len(dstream))
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "patch").write_bytes(head + dstream + tail)
    return tmp_path / "old", tmp_path / "patch", new


def _apply(tmp_path: Path, old: Path, patch: Path, **kw: object) -> tuple[str, int]:
    out_dir = tmp_path / "out"
    out_dir.mkdir(exist_ok=True)
    with open(patch, "rb") as fh:
        return apply_file(DeltaAlgorithm.BSDIFF, old, fh, out_dir / "new", **kw)  # type: ignore[arg-type]


def _stream_span(patch: bytes, which: str) -> tuple[int, int]:
    header = read_header(patch)
    diff_start = HEADER_SIZE + header.ctrl_len
    extra_start = diff_start + header.diff_len
    return {"diff": (diff_start, extra_start), "extra": (extra_start, len(patch))}[which]


def test_go_shaped_patch_is_decoded_in_parallel(tmp_path: Path, two_cpus: None, restarts: list[int],
                                               opened: list[str]) -> None:
    old, patch, new = _go_shape(tmp_path, 16 * MB, 300)
    digest, size = _apply(tmp_path, old, patch, expected_size=len(new))
    assert (tmp_path / "out" / "new").read_bytes() == new
    assert (digest, size) == ("sha256:" + hashlib.sha256(new).hexdigest(), len(new))
    assert opened == ["diff"]  # the diff stream in parallel; the empty extra stream not
    assert restarts == []


def test_parallel_and_sequential_agree_on_every_path(tmp_path: Path, two_cpus: None) -> None:
    old, patch, new = _go_shape(tmp_path, 12 * MB, 500, seed=2)
    outs = []
    for parallel in (True, False):
        for threaded in (True, False):
            sink = _Sink()
            assert apply_bsdiff(old, patch, sink, parallel=parallel, threaded=threaded,
                                use_numpy=False) == len(new)
            outs.append(sink.digest())
    assert outs == [hashlib.sha256(new).hexdigest()] * 4


class _Sink:
    def __init__(self) -> None:
        self.hasher = hashlib.sha256()

    def write(self, data: bytes | bytearray) -> int:
        self.hasher.update(data)
        return len(data)

    def digest(self) -> str:
        return self.hasher.hexdigest()


def _forge_boundary(monkeypatch: pytest.MonkeyPatch, *, consistent: bool) -> list[int]:
    """Make the splitter cut one block in two at a false boundary (recorded in the list)."""
    original = bzp.split_stream
    forged: list[int] = []

    def split(read_at: bzp.ReadAt, length: int) -> bzp.Bz2Layout | None:
        layout = original(read_at, length)
        if layout is None or len(layout.blocks) < 2:
            return layout
        blocks = list(layout.blocks)
        victim = blocks[1]
        cut = victim.start + (victim.end - victim.start) // 2
        fake_crc = 0x12345678
        blocks[1:2] = [bzp.Bz2Block(victim.start, cut, victim.crc), bzp.Bz2Block(cut, victim.end, fake_crc)]
        combined = bzp.combine_crcs([b.crc for b in blocks])
        forged.append(cut)
        return bzp.Bz2Layout(layout.level, blocks, combined if consistent else layout.stored_crc, combined)

    monkeypatch.setattr(bsdiff_mod, "split_stream", split)
    return forged


def test_false_boundary_caught_by_the_stream_crc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                two_cpus: None, restarts: list[int],
                                                opened: list[str]) -> None:
    # A magic found by chance inside a block: the recomputed stream CRC differs from the
    # stored one, so the stream is decoded sequentially from the start.
    forged = _forge_boundary(monkeypatch, consistent=False)
    old, patch, new = _go_shape(tmp_path, 16 * MB, 200, seed=3)
    _apply(tmp_path, old, patch)
    assert (tmp_path / "out" / "new").read_bytes() == new
    assert forged and opened == [] and restarts == []


def test_false_boundary_past_the_crc_check_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     two_cpus: None, restarts: list[int],
                                                     opened: list[str]) -> None:
    # Even a false boundary whose CRCs agree (a forged one) gives the right result: the block
    # cut in two fails to decode, and the patch is applied again sequentially.
    forged = _forge_boundary(monkeypatch, consistent=True)
    old, patch, new = _go_shape(tmp_path, 16 * MB, 200, seed=4)
    expected = "sha256:" + hashlib.sha256(new).hexdigest()
    assert _apply(tmp_path, old, patch, expected_digest=expected) == (expected, len(new))
    assert (tmp_path / "out" / "new").read_bytes() == new
    assert forged and opened == ["diff"]
    assert len(restarts) == 1 and restarts[0] > 0  # output had been written, then discarded
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["new"]


def test_false_boundary_without_restart_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   two_cpus: None) -> None:
    _forge_boundary(monkeypatch, consistent=True)
    old, patch, new = _go_shape(tmp_path, 16 * MB, 200, seed=4)
    with pytest.raises(CorruptDeltaError, match=r"failed to decode.*in parallel"):
        apply_bsdiff(old, patch, _Sink(), parallel=True)
    assert apply_bsdiff(old, patch, _Sink(), parallel=None) == len(new)  # no restart: sequential


def test_flipped_bit_in_a_middle_block_is_corrupt(tmp_path: Path, two_cpus: None,
                                                 restarts: list[int]) -> None:
    size = 2 * MB + 500_000
    rng = random.Random(6)
    old = rng.randbytes(size)
    diff = rng.randbytes(size)  # 3 blocks at level 9
    dstream = bytearray(bz2.compress(diff, 9))
    layout = _split(bytes(dstream))
    assert len(layout.blocks) == 3
    middle = layout.blocks[1]
    bit = (middle.start + middle.end) // 2
    dstream[bit // 8] ^= 1 << (7 - bit % 8)
    (tmp_path / "old").write_bytes(old)
    head, tail = go_patch_frame(size, len(dstream))
    (tmp_path / "patch").write_bytes(head + dstream + tail)
    with pytest.raises(CorruptDeltaError, match="diff stream: invalid bzip2 data"):
        _apply(tmp_path, tmp_path / "old", tmp_path / "patch")
    assert list((tmp_path / "out").iterdir()) == []
    assert len(restarts) == 1  # parallel first, then the sequential run that reports it


def test_wrong_stored_stream_crc_is_corrupt(tmp_path: Path, two_cpus: None, restarts: list[int],
                                           opened: list[str]) -> None:
    old, patch, _new = _go_shape(tmp_path, 16 * MB, 100, seed=7)
    data = bytearray(patch.read_bytes())
    start, end = _stream_span(bytes(data), "diff")
    layout = _split(bytes(data[start:end]))
    crc_bit = layout.blocks[-1].end + 48 + 5  # a bit of the stored stream CRC
    data[start + crc_bit // 8] ^= 1 << (7 - crc_bit % 8)
    patch.write_bytes(bytes(data))
    with pytest.raises(CorruptDeltaError, match=r"diff stream: invalid bzip2 data: .*stream CRC"):
        _apply(tmp_path, old, patch)
    assert list((tmp_path / "out").iterdir()) == []
    assert opened == [] and restarts == []  # never decoded in parallel


def test_truncated_multiblock_stream_is_corrupt(tmp_path: Path, two_cpus: None, opened: list[str]) -> None:
    old, patch, _new = _go_shape(tmp_path, 16 * MB, 100, seed=8)
    data = patch.read_bytes()
    start, end = _stream_span(data, "diff")
    layout = _split(data[start:end])
    cut = start + layout.blocks[-1].start // 8 + 3  # inside the last block of the diff stream
    header = read_header(data)
    truncated = bsdiff_header(header.ctrl_len, cut - start, header.new_size) + data[HEADER_SIZE:cut]
    patch.write_bytes(truncated)
    with pytest.raises(CorruptDeltaError, match="diff stream"):
        _apply(tmp_path, old, patch)
    assert list((tmp_path / "out").iterdir()) == []
    assert opened == []


def _real_ish_pair() -> tuple[bytes, bytes]:
    """2 MB of this system's programs, and a new version: small value changes every 16 bytes
    (as relocated addresses), a 1 MB insertion of random bytes, a deletion."""
    programs = sorted(p for p in glob.glob("/usr/bin/*") if os.path.isfile(p) and not os.path.islink(p))
    blob = bytearray()
    for path in programs:
        blob += Path(path).read_bytes()
        if len(blob) >= 7 * MB:
            break
    old = bytes(blob[5 * MB : 7 * MB])
    new = bytearray(old)
    for i in range(13, len(new), 16):
        new[i : i + 3] = bytes((b + k) & 0xFF for k, b in enumerate(new[i : i + 3], 1))
    new[600_000:600_000] = random.Random(9).randbytes(MB)
    del new[2_000_000:2_050_000]
    return old, bytes(new)


def test_debian_bsdiff_patch_applies_identically_in_parallel(tmp_path: Path, two_cpus: None,
                                                            restarts: list[int],
                                                            opened: list[str]) -> None:
    old, new = _real_ish_pair()
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    subprocess.run(["bsdiff", str(tmp_path / "old"), str(tmp_path / "new"), str(tmp_path / "patch")],
                   check=True, timeout=120)
    patch = (tmp_path / "patch").read_bytes()
    for which in ("diff", "extra"):
        start, end = _stream_span(patch, which)
        assert len(_split(patch[start:end]).blocks) >= 2, which
    assert _apply(tmp_path, tmp_path / "old", tmp_path / "patch", expected_size=len(new))[1] == len(new)
    assert (tmp_path / "out" / "new").read_bytes() == new
    assert opened == ["diff", "extra"] and restarts == []


def test_one_block_streams_get_one_worker(tmp_path: Path, two_cpus: None, opened: list[str]) -> None:
    import bsdiff4

    rng = random.Random(10)
    old = rng.randbytes(200_000)
    new = old[:50_000] + rng.randbytes(30_000) + old[50_000:]
    (tmp_path / "old").write_bytes(old)
    patch = bsdiff4.diff(old, new)
    (tmp_path / "patch").write_bytes(patch)
    for which in ("diff", "extra"):
        start, end = _stream_span(patch, which)
        assert len(_split(patch[start:end]).blocks) == 1, which
    _apply(tmp_path, tmp_path / "old", tmp_path / "patch")
    assert (tmp_path / "out" / "new").read_bytes() == new
    assert opened == ["diff", "extra"]  # each decoded by a worker, overlapping the adds


# --- memory --------------------------------------------------------------------------------------

_RSS_CHILD = r"""
import json, os, sys
from doras_oras.algorithms import DeltaAlgorithm
from doras_oras.codecs import _bz2parallel as bzp
from tests._codec_support import apply_file
from doras_oras.codecs._addmod import add_bytes_int

peaks, opened = [], []
close, open_ = bzp.DecoderGroup.close, bzp.DecoderGroup.open
def closing(self):
    close(self)
    peaks.append(self.peak_buffered)
def opening(self, *args, **kw):
    opened.append(args[2])
    return open_(self, *args, **kw)
bzp.DecoderGroup.close, bzp.DecoderGroup.open = closing, opening
old, patch, out, size = sys.argv[1:5]
with open(patch, "rb") as fh:
    digest, n = apply_file(DeltaAlgorithm.BSDIFF, old, fh, out, expected_size=int(size))
with open("/proc/self/status") as fh:
    hwm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
print(json.dumps({"hwm": hwm, "peaks": peaks, "opened": opened, "digest": digest}))
"""


def test_non_zero_blocks_stay_within_the_memory_cap(tmp_path: Path) -> None:
    # Each level-9 block of 0x01 runs expands to ~46 MB of non-zero diff bytes: nothing is
    # compacted to zero runs, so what workers decode ahead is held by the budget.
    size = 100 * MB  # 2.2 blocks
    dstream = bz2.compress(b"\x01" * size, 9)
    assert len(_split(dstream).blocks) == 3
    head, tail = go_patch_frame(size, len(dstream))
    (tmp_path / "patch").write_bytes(head + dstream + tail)
    (tmp_path / "old").write_bytes(b"")  # reads past the end of old are zero: new = diff
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), DORAS_ORAS_NO_NUMPY="1", DORAS_ORAS_BZ2_WORKERS="2")
    proc = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(tmp_path / "old"), str(tmp_path / "patch"),
                           str(tmp_path / "new"), str(size)], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["opened"] == ["diff"]
    expected = hashlib.sha256(b"\x01" * size).hexdigest()
    assert result["digest"] == "sha256:" + expected
    (peak,) = result["peaks"]
    assert bzp.BUDGET // 2 < peak <= bzp.BUDGET + bzp.RESERVE + bzp.CHUNK
    print(f"peak buffered {peak / (1 << 20):.1f} MiB, peak RSS {result['hwm'] / (1 << 20):.1f} MiB")
    assert result["hwm"] < RSS_BOUND


def test_worker_count_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, opened: list[str]) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    nothing = tmp_path / "no-cgroup"
    monkeypatch.setattr(bzp, "CGROUP_CPU_FILES", (nothing / "cpu.max", (nothing / "q", nothing / "p")))
    monkeypatch.delenv("DORAS_ORAS_BZ2_WORKERS", raising=False)
    assert bzp.decoder_count() == bzp.MAX_WORKERS
    most = bzp.MAX_WORKERS
    for setting, count in (("3", 3), ("1", 1), ("64", most), ("0", most), ("x", most), ("", most)):
        monkeypatch.setenv("DORAS_ORAS_BZ2_WORKERS", setting)
        assert bzp.decoder_count() == count, setting
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    monkeypatch.delenv("DORAS_ORAS_BZ2_WORKERS")
    assert bzp.decoder_count() == 1
    # one usable CPU (or DORAS_ORAS_BZ2_WORKERS=1): apply_delta decodes sequentially
    old, patch, new = _go_shape(tmp_path, 12 * MB, 100, seed=13)
    _apply(tmp_path, old, patch)
    assert (tmp_path / "out" / "new").read_bytes() == new
    assert opened == []
    monkeypatch.setenv("DORAS_ORAS_BZ2_WORKERS", "2")
    _apply(tmp_path, old, patch)
    assert (tmp_path / "out" / "new").read_bytes() == new
    assert opened == ["diff"]


@pytest.mark.parametrize(("v2", "v1", "cpus"), [
    ("max 100000\n", None, 8),  # cgroup v2, no limit
    ("100000 100000\n", None, 1),  # docker run --cpus 1
    ("150000 100000\n", None, 2),  # 1.5 CPUs: rounded up
    ("5000 100000\n", None, 1),  # a small share still decodes
    ("1600000 100000\n", None, 8),  # more quota than CPUs: the affinity decides
    (None, ("200000", "100000"), 2),  # cgroup v1
    (None, ("-1", "100000"), 8),  # cgroup v1, no limit
    ("garbage\n", None, 8),  # unreadable: the affinity decides
    (None, None, 8),  # no cgroup files at all
])
def test_usable_cpus_follow_the_cgroup_quota(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                             v2: str | None, v1: tuple[str, str] | None, cpus: int) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    files = (tmp_path / "cpu.max", (tmp_path / "cpu.cfs_quota_us", tmp_path / "cpu.cfs_period_us"))
    if v2 is not None:
        files[0].write_text(v2)
    if v1 is not None:
        files[1][0].write_text(v1[0])
        files[1][1].write_text(v1[1])
    assert bzp.usable_cpus(files) == cpus
    monkeypatch.setattr(bzp, "CGROUP_CPU_FILES", files)
    monkeypatch.delenv("DORAS_ORAS_BZ2_WORKERS", raising=False)
    assert bzp.decoder_count() == min(cpus, bzp.MAX_WORKERS)


def test_numpy_is_never_switched_on_while_decoding_in_parallel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                               opened: list[str]) -> None:
    """Parallel decoders and numpy's import together would pass the 48 MiB bound of a dense apply."""
    from doras_oras.codecs import _addmod

    asked: list[bool | None] = []
    real = _addmod.select_adder

    def select(use_numpy: bool | None = None) -> _addmod.AddFn:
        asked.append(use_numpy)
        return real(False)  # the result does not depend on the adder; numpy stays unloaded

    monkeypatch.setattr(_addmod, "select_adder", select)
    monkeypatch.setattr(_addmod, "NUMPY_AFTER", 0)  # any add would switch
    monkeypatch.delenv("DORAS_ORAS_NO_NUMPY", raising=False)
    old, patch, new = _go_shape(tmp_path, 12 * MB, 400, seed=21)
    monkeypatch.setenv("DORAS_ORAS_BZ2_WORKERS", "2")
    _apply(tmp_path, old, patch)
    assert (tmp_path / "out" / "new").read_bytes() == new
    assert opened == ["diff"] and asked == []
    monkeypatch.setenv("DORAS_ORAS_BZ2_WORKERS", "1")  # sequential: the adaptive switch still works
    _apply(tmp_path, old, patch)
    assert (tmp_path / "out" / "new").read_bytes() == new
    assert asked == [None]
