#!/usr/bin/env python3
"""Benchmark of the delta appliers (one run, figures as ratios).

    python benchmarks/bench_codecs.py [--sizes 64,1024] [--edits 2000] [--dir DIR] [--repeat N]
    python benchmarks/bench_codecs.py --patch OLD PATCH [--patch OLD PATCH ...] [--repeat N]

For each output size (MiB) it builds an old file of random bytes, a new file
with scattered edits, and a BSDIFF40 patch shaped like the Go server's: one
control triple ``(size, 0, 0)``, a diff block of zeros holding the edits, an
empty extra block (built directly: bsdiff4 is too slow at 1 GiB). It then
times, each in a child process whose peak RSS is read with ``wait4``:

* ``libbz2``: decoding the diff block only, in 64 KiB pieces (the floor of a sequential applier);
* ``ours``: ``doras_oras.codecs.apply_delta`` (verifying sha256), numpy off: the blocks
  of multi-block bzip2 streams are decoded in parallel (one worker per usable CPU, at
  most 4; the diff block of a Go server patch has one bzip2 block per ~45 MB of output);
* ``ours-seq``: the same with ``DORAS_ORAS_BZ2_WORKERS=1`` (sequential bzip2 decoding);
* ``ours-auto``: the default (numpy once 32 MiB were added, only while decoding sequentially;
  dense case only);
* ``ours+numpy``: numpy from the first add;
* ``bsdiff4``: ``bsdiff4.file_patch`` (64 MiB only: it holds the whole file);
* ``bspatch``: Debian's ``bspatch`` program.

A "dense" case (``--dense`` MiB, every byte changed: a random diff block)
compares the adders where adding is real work. Then a tar-diff apply of a tar of many files with edits (made by the
project's own simple encoder in this script: Open/Copy/Data ops).

``--repeat N`` runs every program N times, interleaved, and prints the best and the
median wall time, the largest peak RSS and the median CPU seconds (user + system, all
threads: on a machine shared with other work it moves far less than the wall time).
``--before DIR`` adds ``ours-before``: ``ours`` run from another checkout (the code
before a change), interleaved with the rest. ``--patch OLD PATCH`` (repeatable) times ``ours``,
``ours-seq`` and ``bspatch`` on existing BSDIFF40 patches instead (the result of the
first ``ours`` run is the reference the others must match).
"""

from __future__ import annotations

import argparse
import bz2
import hashlib
import io
import os
import random
import statistics
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout, as bench_pull.py does

from _measure import run_child, run_child_usage  # noqa: E402

from doras_oras.publish.bsdiff_build import go_patch_frame  # noqa: E402
from doras_oras.publish.tardiff_encoder import uvarint  # noqa: E402

MiB = 1 << 20


def make_case(work: Path, size: int, edits: int, seed: int = 1,
              dense: bool = False) -> tuple[Path, Path, Path, str]:
    """old, patch, diff-block (bz2) files and the sha256 of the new file.

    ``dense``: every byte is changed (a random diff block) instead of ``edits`` bytes.
    """
    rng = random.Random(seed)
    positions = [] if dense else sorted(rng.randrange(size) for _ in range(edits))
    old_path, patch_path, diffblock = work / "old", work / "patch", work / "diff.bz2"
    new_hash = hashlib.sha256()
    comp = bz2.BZ2Compressor(9)
    chunk = 4 * MiB
    with open(old_path, "wb") as old, open(diffblock, "wb") as dblk:
        pi = 0
        for start in range(0, size, chunk):
            n = min(chunk, size - start)
            data = rng.randbytes(n)
            old.write(data)
            diff = bytearray(rng.randbytes(n) if dense else bytes(n))
            new = bytearray(data)
            if dense:
                new = bytearray((a + b) & 0xFF for a, b in zip(data, diff, strict=True))
            while pi < len(positions) and positions[pi] < start + n:
                off = positions[pi] - start
                delta = rng.randrange(1, 256)
                diff[off] = delta
                new[off] = (new[off] + delta) & 0xFF
                pi += 1
            new_hash.update(new)
            dblk.write(comp.compress(bytes(diff)))
        dblk.write(comp.flush())
    head, tail = go_patch_frame(size, diffblock.stat().st_size)
    with open(patch_path, "wb") as p, open(diffblock, "rb") as dblk:
        p.write(head)
        while block := dblk.read(chunk):
            p.write(block)
        p.write(tail)
    return old_path, patch_path, diffblock, "sha256:" + new_hash.hexdigest()


def run_repeated(argv: list[str], env: dict[str, str], repeat: int,
                 before: Callable[[], None] = lambda: None) -> tuple[float, float, int]:
    """Best and median wall seconds and the largest peak RSS of ``repeat`` runs."""
    walls, peak = [], 0
    for _ in range(repeat):
        before()
        wall, rss = run_child(argv, env=env)
        walls.append(wall)
        peak = max(peak, rss)
    return min(walls), statistics.median(walls), peak


def child(mode: str, args: list[str]) -> None:
    if mode == "libbz2":
        dec = bz2.BZ2Decompressor()
        with open(args[0], "rb") as fh:
            data = b""
            while not dec.eof:
                if dec.needs_input:
                    data = fh.read(1 << 16)
                    if not data:
                        break
                else:
                    data = b""
                dec.decompress(data, 1 << 16)  # 64 KiB pieces: libbz2's fastest here (512 KiB: ~25 % slower)
    elif mode in ("ours", "ours-seq", "ours-auto", "ours+numpy"):
        old, patch, out, digest = args
        use_numpy = {"ours": False, "ours-seq": False, "ours-auto": None, "ours+numpy": True}[mode]
        _apply_file("bsdiff", old, patch, out, digest or None, use_numpy=use_numpy)
    elif mode == "bsdiff4":
        import bsdiff4

        bsdiff4.file_patch(args[0], args[2], args[1])
    elif mode == "tardiff":
        base, delta, out, digest = args
        _apply_file("tardiff", base, delta, out, digest)
    else:
        raise SystemExit(f"unknown child mode {mode}")


def _apply_file(name: str, base: str, delta: str, out: str, digest: str | None, **options: Any) -> None:
    """What ``doras-oras apply`` does: the codec writes into the project's blob writer, which
    hashes while writing, checks the digest, fsyncs and renames."""
    from doras_oras.algorithms import DeltaAlgorithm
    from doras_oras.codecs import apply_delta
    from doras_oras.layout import BlobWriter

    target = Path(out)
    with open(base, "rb") as base_fh, open(delta, "rb") as delta_fh, \
            BlobWriter.temporary(target.parent, digest=digest, what="delta output") as writer:
        apply_delta(DeltaAlgorithm(name), base_fh, delta_fh, writer, **options)
        writer.commit(target)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(MiB):
            h.update(block)
    return "sha256:" + h.hexdigest()


def make_tardiff_case(work: Path, files: int, file_size: int) -> tuple[Path, Path, str, int]:
    """A base tar, a tar-diff delta (Open + Copy/Data per file) and the new tar's digest."""
    import zstandard

    rng = random.Random(2)
    base, new = work / "base.tar", work / "new.tar"
    contents = [rng.randbytes(file_size) for _ in range(files)]
    with tarfile.open(base, "w", format=tarfile.PAX_FORMAT) as tf:
        for i, data in enumerate(contents):
            info = tarfile.TarInfo(f"dir/f{i:05d}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    # new tar: same headers, one edited byte in the middle of each file
    edited = []
    for data in contents:
        mid = len(data) // 2
        edited.append(data[:mid] + bytes([(data[mid] + 1) & 0xFF]) + data[mid + 1 :])
    with tarfile.open(new, "w", format=tarfile.PAX_FORMAT) as tf:
        for i, data in enumerate(edited):
            info = tarfile.TarInfo(f"dir/f{i:05d}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    # encode: walk the new tar; file bodies as Open/Copy/Data/Seek/Copy, the rest as Data
    new_bytes = new.read_bytes()
    ops = bytearray()
    pos = 0
    with tarfile.open(new, "r:") as tf:
        for info in tf:
            if pos < info.offset_data:
                chunk = new_bytes[pos : info.offset_data]
                ops += b"\x00" + uvarint(len(chunk)) + chunk
            name = info.name.encode()
            mid = info.size // 2
            ops += b"\x01" + uvarint(len(name)) + name
            ops += b"\x02" + uvarint(mid)
            edit = new_bytes[info.offset_data + mid : info.offset_data + mid + 1]
            ops += b"\x00" + uvarint(1) + edit
            ops += b"\x04" + uvarint(mid + 1)
            ops += b"\x02" + uvarint(info.size - mid - 1)
            pos = info.offset_data + info.size
    tail = new_bytes[pos:]
    ops += b"\x00" + uvarint(len(tail)) + tail
    delta = work / "delta.tardiff"
    delta.write_bytes(b"tardf1\n\x00" + zstandard.ZstdCompressor().compress(bytes(ops)))
    return base, delta, _sha256_file(new), len(new_bytes)


Run = tuple[str, list[str], dict[str, str]]


def time_runs(label: str, size: int, runs: list[Run], out: Path, digest: str | None, env: dict[str, str],
              repeat: int) -> str:
    """Time each run ``repeat`` times, interleaved (A, B, C, A, B, C, ...: a drift of the machine's
    load shows in every program's spread instead of biasing one), check each output against
    ``digest`` (default: the first result's), print a row per program (best, median, largest RSS).

    Returns the digest of the result.
    """
    walls: dict[str, list[float]] = {name: [] for name, _argv, _extra in runs}
    cpus: dict[str, list[float]] = {name: [] for name in walls}
    peaks: dict[str, int] = dict.fromkeys(walls, 0)
    for _ in range(repeat):
        for name, argv, extra in runs:
            out.unlink(missing_ok=True)
            wall, rss, cpu = run_child_usage(argv, env={**env, **extra})
            walls[name].append(wall)
            cpus[name].append(cpu)
            peaks[name] = max(peaks[name], rss)
            if name != "libbz2":
                got = _sha256_file(out)
                digest = digest or got
                if got != digest:
                    raise SystemExit(f"{name} produced a wrong result")
    floor = floor_cpu = None
    for name, _argv, _extra in runs:
        best, median, cpu = min(walls[name]), statistics.median(walls[name]), statistics.median(cpus[name])
        floor = floor or best
        floor_cpu = floor_cpu or cpu
        print(f"{label:<22}{name:<12}{best:8.2f}{median:8.2f}{size / MiB / best:9.0f}"
              f"{peaks[name] / MiB:14.1f}{best / floor:15.2f}{cpu:9.2f}{cpu / floor_cpu:8.2f}", flush=True)
    out.unlink(missing_ok=True)
    assert digest is not None
    return digest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="64,1024", help="output sizes in MiB (comma-separated)")
    parser.add_argument("--edits", type=int, default=2000, help="scattered one-byte edits")
    parser.add_argument("--dense", type=int, default=32, help="size of the dense case in MiB (0: none)")
    parser.add_argument("--dir", type=Path, help="work directory (default: a temp dir)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each program (best and median)")
    parser.add_argument("--patch", nargs=2, action="append", metavar=("OLD", "PATCH"), type=Path,
                        help="time existing BSDIFF40 patches instead of generated cases")
    parser.add_argument("--tools", help="programs to run, comma-separated (default: all)")
    parser.add_argument("--before", type=Path, metavar="DIR",
                        help="also run ``ours`` from the checkout DIR (ours-before), interleaved with ours")
    parser.add_argument("--no-tardiff", action="store_true", help="skip the tar-diff case")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1:])
        return
    py = sys.executable
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    me = [py, str(Path(__file__).resolve()), "--child"]
    seq = {"DORAS_ORAS_BZ2_WORKERS": "1"}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        _wall, rss = run_child(["true"], env=env)
        print(f"# launcher floor: peak RSS {rss / MiB:.1f} MiB; best and median of {args.repeat} run(s)")
        print(f"{'case':<22}{'tool':<12}{'best s':>8}{'median':>8}{'MiB/s':>9}{'peak RSS MiB':>14}"
              f"{'x libbz2 time':>15}{'CPU s':>9}{'x CPU':>8}")
        if args.patch:
            from doras_oras.codecs.bsdiff import HEADER_SIZE, read_header

            for old, patch in args.patch:
                raw = patch.read_bytes()
                header = read_header(raw)
                diffblock = work / "diff.bz2"
                start = HEADER_SIZE + header.ctrl_len
                diffblock.write_bytes(raw[start : start + header.diff_len])
                del raw
                out = work / "new"
                label = f"{patch.name} ({header.new_size / MiB:.0f} MiB)"
                time_runs(label, header.new_size, [
                    ("libbz2", [*me, "libbz2", str(diffblock)], {}),
                    ("ours", [*me, "ours", str(old), str(patch), str(out), ""], {}),
                    ("ours-seq", [*me, "ours-seq", str(old), str(patch), str(out), ""], seq),
                    ("bspatch", ["bspatch", str(old), str(out), str(patch)], {}),
                ], out, None, env, args.repeat)
                diffblock.unlink()
            return
        plan = [(int(s), False) for s in args.sizes.split(",")]
        if args.dense:
            plan.append((args.dense, True))
        for size_mib, dense in plan:
            size = size_mib * MiB
            label = f"bsdiff {size_mib} MiB" + (" dense" if dense else "")
            t0 = time.perf_counter()
            old, patch, diffblock, digest = make_case(work, size, args.edits, dense=dense)
            print(f"# {size_mib} MiB case built in {time.perf_counter() - t0:.1f} s, patch "
                  f"{patch.stat().st_size} bytes", flush=True)
            out = work / "new"
            runs: list[Run] = [
                ("libbz2", [*me, "libbz2", str(diffblock)], {}),
                ("ours", [*me, "ours", str(old), str(patch), str(out), digest], {}),
                ("ours-seq", [*me, "ours-seq", str(old), str(patch), str(out), digest], seq),
                *([("ours-auto", [*me, "ours-auto", str(old), str(patch), str(out), digest], {})]
                  if dense else []),
                ("ours+numpy", [*me, "ours+numpy", str(old), str(patch), str(out), digest], {}),
                ("bspatch", ["bspatch", str(old), str(out), str(patch)], {}),
            ]
            if size_mib <= 256 and not dense:
                runs.append(("bsdiff4", [*me, "bsdiff4", str(old), str(patch), str(out)], {}))
            if args.before:
                before = [py, str(args.before.resolve() / "benchmarks" / "bench_codecs.py"), "--child"]
                runs.insert(2, ("ours-before", [*before, "ours", str(old), str(patch), str(out), digest],
                                {"PYTHONPATH": str(args.before.resolve())}))
            if args.tools:
                chosen = args.tools.split(",")
                runs = [r for r in runs if r[0] in chosen or r[0] == "ours-before"]
            time_runs(label, size, runs, out, digest, env, args.repeat)
            for p in (old, patch, diffblock):
                p.unlink(missing_ok=True)
        if args.no_tardiff:
            return
        base, delta, digest, new_size = make_tardiff_case(work, 256, 256 * 1024)
        out = work / "new.tar"
        best, median, rss = run_repeated([*me, "tardiff", str(base), str(delta), str(out), digest], env,
                                         args.repeat)
        print(f"{f'tardiff {new_size // MiB} MiB':<22}{'ours':<12}{best:8.2f}{median:8.2f}"
              f"{new_size / MiB / best:9.0f}{rss / MiB:14.1f}{'':>15}")


if __name__ == "__main__":
    main()
