"""Hostile and malformed deltas: a clear error, no output left, bounded memory.

Every case is applied by ``apply_delta`` in one child process; before each
case the child resets its peak RSS (``/proc/self/clear_refs``) and reads
``VmHWM`` after it, so each case's own peak is checked against ``RSS_BOUND``.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import zstandard

from tests._codec_support import (
    REPO_ROOT,
    RSS_BOUND,
    bsdiff_header,
    make_bsdiff,
    make_tardiff,
    offtout,
    tardiff_op,
    uvarint,
)

_CHILD = r"""
import json, os, sys, traceback
from doras_oras.algorithms import DeltaAlgorithm
from tests._codec_support import apply_file

def hwm():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")

results = []
for case in json.load(sys.stdin):
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    out = case["output"]
    try:
        with open(case["delta"], "rb") as delta:
            apply_file(DeltaAlgorithm(case["algorithm"]), case["base"], delta, out,
                        expected_size=case.get("expected_size"),
                        expected_digest=case.get("expected_digest"))
        error = None
    except Exception as exc:
        error = [type(exc).__name__, str(exc)]
    results.append({"name": case["name"], "error": error, "hwm": hwm(),
                    "left": sorted(os.listdir(os.path.dirname(out)))})
json.dump(results, sys.stdout)
"""

OLD = bytes(range(256)) * 16  # 4 KiB base for bsdiff


def _bsdiff_cases() -> list[tuple[str, bytes, dict[str, Any], str]]:
    """(name, patch, extra case fields, expected message fragment)."""
    good = make_bsdiff([(100, 10, 5)], bytes(100), b"0123456789", 110)
    long_extra = make_bsdiff([(0, 5000, 0)], b"", os.urandom(5000), 5000)
    huge = 1_200_000_000
    ctrl = bz2.compress(offtout(10) + offtout(0) + offtout(0))
    zeros_bomb = bz2.compress(bytes(64 << 20))  # 64 MiB of zeros in ~50 bytes
    cases: list[tuple[str, bytes, dict[str, Any], str]] = [
        ("wrong magic", b"BSDIFF4X" + good[8:], {}, "not a BSDIFF40 patch"),
        ("empty patch", b"", {}, "truncated"),
        ("truncated header", good[:20], {}, "truncated"),
        ("negative ctrl length", bsdiff_header(-1, 10, 10) + good[32:], {}, "negative ctrl_len"),
        ("negative diff length", bsdiff_header(10, -5, 10) + good[32:], {}, "negative diff_len"),
        ("negative new size", bsdiff_header(10, 10, -1) + good[32:], {}, "negative new_size"),
        ("huge ctrl length", bsdiff_header(1 << 62, 10, 10) + good[32:], {}, "truncated"),
        ("1.2 GB new size, tiny patch", bsdiff_header(len(ctrl), 14, huge) + ctrl + bz2.compress(b"")[:14],
         {}, "stream"),
        ("new size differs from expected", good, {"expected_size": 109}, "expected 109"),
        ("truncated control stream", good[:40], {}, "truncated"),
        ("truncated extra stream", long_extra[:-300], {}, "extra stream"),
        ("negative x", make_bsdiff([(-1, 0, 0)], b"", b"", 10), {}, "negative length"),
        ("negative y", make_bsdiff([(0, -1, 0)], b"", b"", 10), {}, "negative length"),
        ("x past new size", make_bsdiff([(11, 0, 0)], bytes(11), b"", 10), {}, "pass the new size"),
        ("y past new size", make_bsdiff([(5, 6, 0)], bytes(5), bytes(6), 10), {}, "pass the new size"),
        ("control stream ends early", make_bsdiff([(5, 0, 0)], bytes(10), b"", 10), {}, "control stream"),
        ("diff stream shorter than x", make_bsdiff([(10, 0, 0)], bytes(5), b"", 10), {}, "diff stream"),
        ("empty-triple spin", make_bsdiff([], b"", b"", 10, raw_ctrl=bytes(24 * 70000)), {},
         "empty triples"),
        ("bzip2 bomb in diff", bsdiff_header(len(ctrl), len(zeros_bomb), 10) + ctrl + zeros_bomb
         + bz2.compress(b""), {"expected_size": 10}, None),  # reads only 10 bytes: applies
        ("bzip2 bomb vs x", make_bsdiff([(64 << 20, 0, 0)], bytes(64 << 20), b"", 100), {},
         "pass the new size"),
        ("invalid bzip2 data", bsdiff_header(30, 0, 10) + b"BZh9" + os.urandom(26), {}, "bzip2"),
    ]
    return cases


def _streamed_zstd(data: bytes, window_log: int) -> bytes:
    """A zstd frame without content size, so the window descriptor is what was asked."""
    params = zstandard.ZstdCompressionParameters(window_log=window_log, compression_level=1)
    cobj = zstandard.ZstdCompressor(compression_params=params).compressobj()
    frame = cobj.compress(data) + cobj.flush()
    assert not frame[4] & 0x20, "single-segment frame"
    return frame


def _compressed_cases() -> list[tuple[str, str, bytes, dict[str, Any], str]]:
    good = make_bsdiff([(100, 10, 5)], bytes(100), b"0123456789", 110)
    zc = zstandard.ZstdCompressor()
    return [
        ("gzip garbage after member", "bsdiff+gzip", gzip.compress(good) + b"junk", {}, "garbage"),
        ("gzip truncated", "bsdiff+gzip", gzip.compress(good)[:-6], {}, "truncated"),
        ("gzip bomb", "bsdiff+gzip", gzip.compress(good + bytes(8 << 20), compresslevel=1), {"expected_size": 110},
         "exceeds"),
        ("zstd garbage after frame", "bsdiff+zstd", zc.compress(good) + b"\x00\x01\x02\x03junk", {},
         "garbage"),
        ("zstd truncated", "bsdiff+zstd", zc.compress(good)[:-3], {}, "truncated"),
        ("zstd bomb", "bsdiff+zstd", zc.compress(good + bytes(8 << 20)), {"expected_size": 110},
         "exceeds"),
        ("zstd window too large", "bsdiff+zstd",
         _streamed_zstd(good, window_log=27), {}, "too much memory"),
        ("not zstd at all", "bsdiff+zstd", b"hello world", {}, "not a zstd stream"),
    ]


def _base_tar(path: Path) -> None:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        def add(name: str, data: bytes = b"", **kw: Any) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            for key, value in kw.items():
                setattr(info, key, value)
            tf.addfile(info, io.BytesIO(data) if data else None)

        add("a", b"A" * 100)
        add("d", type=tarfile.DIRTYPE)
        add("s", type=tarfile.SYMTYPE, linkname="a")
        add("h", type=tarfile.LNKTYPE, linkname="a")
        add("f", type=tarfile.FIFOTYPE)


def _tardiff_cases() -> list[tuple[str, bytes, dict[str, Any], str]]:
    def open_op(name: bytes) -> bytes:
        return tardiff_op(1, len(name), name)

    zc = zstandard.ZstdCompressor()
    return [
        ("bad header", b"tardf2\n\x00" + zc.compress(b""), {}, "not a tar-diff"),
        ("short header", b"tard", {}, "not a tar-diff"),
        ("unknown op", make_tardiff(bytes([7, 0])), {}, "unknown op 7"),
        ("over-long varint", make_tardiff(b"\x00" + b"\x80" * 10 + b"\x01"), {}, "varint"),
        ("varint over 64 bits", make_tardiff(b"\x00" + b"\xff" * 9 + b"\x7f"), {}, "overflows"),
        ("Data size 2**63", make_tardiff(b"\x00" + uvarint(1 << 63)), {}, "out of range"),
        ("Data size 2**63-1", make_tardiff(b"\x00" + uvarint((1 << 63) - 1) + b"xx"), {},
         "ends"),
        ("Data past expected size", make_tardiff(tardiff_op(0, 1 << 40)), {"expected_size": 1000},
         "passes the expected size"),
        ("Open absolute path", make_tardiff(open_op(b"/etc/passwd")), {}, "absolute path"),
        ("Open ..", make_tardiff(open_op(b"d/../../a")), {}, "'..'"),
        ("Open NUL", make_tardiff(open_op(b"a\x00b")), {}, "NUL"),
        ("Open empty", make_tardiff(open_op(b"./")), {}, "empty path"),
        ("Open directory", make_tardiff(open_op(b"d")), {}, "directory"),
        ("Open symlink", make_tardiff(open_op(b"s")), {}, "symlink"),
        ("Open hard link", make_tardiff(open_op(b"h")), {}, "hard link"),
        ("Open fifo", make_tardiff(open_op(b"f")), {}, "not a regular file"),
        ("Open missing", make_tardiff(open_op(b"nope")), {}, "no such file"),
        ("Open huge path", make_tardiff(tardiff_op(1, 1 << 30)), {}, "limit"),
        ("Seek past end", make_tardiff(open_op(b"a") + tardiff_op(4, 101)), {}, "Seek to 101"),
        ("Copy past end", make_tardiff(open_op(b"a") + tardiff_op(4, 50) + tardiff_op(2, 51)), {},
         "passes the end"),
        ("AddData past end", make_tardiff(open_op(b"a") + tardiff_op(3, 101, bytes(101))), {},
         "passes the end"),
        ("Copy before Open", make_tardiff(tardiff_op(2, 1)), {}, "before any Open"),
        ("data after zstd frame", make_tardiff(tardiff_op(0, 1, b"x")) + b"garbage!", {}, "garbage"),
        ("truncated zstd", make_tardiff(tardiff_op(0, 5, b"hello"))[:-4], {}, "truncated"),
        ("zstd bomb", b"tardf1\n\x00" + zc.compress(open_op(b"a") + tardiff_op(4, 0) * (4 << 20)),
         {"expected_size": 100}, "exceeds"),
        ("wrong digest", make_tardiff(tardiff_op(0, 5, b"hello")),
         {"expected_digest": "sha256:" + "0" * 64}, "expected sha256:0000"),
    ]


def test_adversarial_inputs_fail_cleanly(tmp_path: Path) -> None:
    (tmp_path / "old").write_bytes(OLD)
    _base_tar(tmp_path / "base.tar")
    cases: list[dict[str, Any]] = []
    expectations: dict[str, str | None] = {}

    def add(name: str, algorithm: str, base: str, delta: bytes, fields: dict[str, Any],
            fragment: str | None) -> None:
        index = len(cases)
        out_dir = tmp_path / f"out{index}"
        out_dir.mkdir()
        (tmp_path / f"delta{index}").write_bytes(delta)
        cases.append({"name": name, "algorithm": algorithm, "base": str(tmp_path / base),
                      "delta": str(tmp_path / f"delta{index}"), "output": str(out_dir / "result"),
                      **fields})
        expectations[name] = fragment

    for name, patch, fields, fragment in _bsdiff_cases():
        add(f"bsdiff: {name}", "bsdiff", "old", patch, fields, fragment)
    for name, algorithm, patch, fields, fragment in _compressed_cases():
        add(f"{algorithm}: {name}", algorithm, "old", patch, fields, fragment)
    for name, delta, fields, fragment in _tardiff_cases():
        add(f"tardiff: {name}", "tardiff", "base.tar", delta, fields, fragment)
    assert len(expectations) == len(cases), "case names must be unique"

    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), DORAS_ORAS_NO_NUMPY="1")
    proc = subprocess.run([sys.executable, "-c", _CHILD], input=json.dumps(cases), env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    assert [r["name"] for r in results] == [c["name"] for c in cases]
    failures = []
    for result in results:
        fragment = expectations[result["name"]]
        if fragment is None:  # a case that must apply
            ok = result["error"] is None and result["left"] == ["result"]
        else:
            ok = (result["error"] is not None and fragment in result["error"][1]
                  and result["error"][0] in ("CorruptDeltaError", "DigestMismatchError",
                                             "SizeMismatchError")
                  and result["left"] == [])
        if not ok or result["hwm"] > RSS_BOUND:
            failures.append(result)
    assert not failures, json.dumps(failures, indent=1)
    peak = max(r["hwm"] for r in results)
    print(f"largest peak RSS of a case: {peak / (1 << 20):.1f} MiB (bound {RSS_BOUND >> 20} MiB)")


@pytest.mark.parametrize("payload", [b"", b"BSDI", b"\x00" * 8])
def test_unrecognised_magic_is_rejected(payload: bytes) -> None:
    from doras_oras.codecs import DeltaAlgorithm
    from doras_oras.errors import CorruptDeltaError

    with pytest.raises(CorruptDeltaError, match="unrecognised delta"):
        DeltaAlgorithm.detect(payload)
