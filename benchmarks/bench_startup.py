#!/usr/bin/env python3
"""Start-up benchmark (issue #24): an up-to-date poll, ``--version`` and the floors, interleaved.

    python benchmarks/bench_startup.py [--repeat 30] [--baseline DIR] [--json]

Test bed on 127.0.0.1: the real registry (``docker-registry``) holding a small
file artifact pushed with the oras CLI; a layout that already holds it (pulled
once by the command). Then, ``--repeat`` rounds, each running every command
once in turn (so that a busy moment hits all of them alike):

* ``python -c pass`` and ``python -c 'import requests'`` (the floor: the HTTP
  stack the poll needs, imported by the same interpreter);
* ``doras-oras pull REF --oci-layout L --plain-http`` (exit 3, up to date) and
  ``doras-oras --version``, with this checkout, and with ``--baseline DIR``
  (another checkout, e.g. ``git worktree add /tmp/base <commit>``) too.

Every run is a fresh interpreter started the way the console script starts
(``from doras_oras.cli import run; run()``), with the checkout first on
``PYTHONPATH`` (run in a scratch directory, not in a checkout) and its bytecode compiled beforehand (as ``pip install`` does,
whatever ``PYTHONDONTWRITEBYTECODE`` says). Wall time from the parent
(``time.perf_counter`` around ``subprocess.run``). Best and median per row, and
each row over the floor and over the baseline's same row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from doras_oras.testing.registry import RegistryServer, find_tool  # noqa: E402

RUN = "from doras_oras.cli import run; run()"


def timed(argv: list[str], env: dict[str, str], expect: int, cwd: Path) -> float:
    """Wall seconds of ``argv``, run in ``cwd`` (not a checkout: ``python -c`` puts it first on sys.path)."""
    started = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          timeout=120)
    wall = time.perf_counter() - started
    if proc.returncode != expect:
        raise RuntimeError(f"{' '.join(argv[:6])} ... exited {proc.returncode}: {proc.stderr[-2000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--baseline", type=Path, help="another checkout to measure side by side")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    trees = {"this": ROOT, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    for tree in trees.values():
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "doras_oras")], check=True,
                       capture_output=True)
    base_env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp, RegistryServer() as registry:
        work = Path(tmp)
        (work / "x.txt").write_bytes(b"a small update\n" * 64)
        ref = f"{registry.host}/bench/startup:v1"
        subprocess.run([find_tool("oras"), "push", "--plain-http", ref, "x.txt"], cwd=work, check=True,
                       capture_output=True)
        rows: dict[str, tuple[list[str], dict[str, str], int]] = {
            "python -c pass": ([py, "-c", "pass"], base_env, 0),
            "python -c 'import requests'": ([py, "-c", "import requests"], base_env, 0),
        }
        for name, tree in trees.items():
            env = {**base_env, "PYTHONPATH": str(tree)}
            layout = work / f"L-{name}"
            timed([py, "-c", RUN, "pull", ref, "--oci-layout", str(layout), "--plain-http"], env, 0, work)
            rows[f"{name}: up-to-date poll"] = (
                [py, "-c", RUN, "pull", ref, "--oci-layout", str(layout), "--plain-http"], env, 3)
            rows[f"{name}: --version"] = ([py, "-c", RUN, "--version"], env, 0)
        times: dict[str, list[float]] = {row: [] for row in rows}
        for _ in range(args.repeat):
            for row, (argv, env, expect) in rows.items():
                times[row].append(timed(argv, env, expect, work))
    floor = min(times["python -c 'import requests'"])
    report = []
    for row, values in times.items():
        best, median = min(values), statistics.median(values)
        entry = {"row": row, "best_s": round(best, 4), "median_s": round(median, 4),
                 "best_over_requests": round(best / floor, 2)}
        if row.startswith("this: ") and "baseline" in trees:
            other = times[row.replace("this: ", "baseline: ")]
            entry["best_over_baseline"] = round(best / min(other), 2)
            entry["median_over_baseline"] = round(median / statistics.median(other), 2)
        report.append(entry)
    if args.json:
        print(json.dumps({"repeat": args.repeat, "rows": report}, indent=1))
        return
    print(f"{'row':36s} {'best ms':>8s} {'median ms':>10s} {'best/requests':>14s} {'vs baseline':>18s}")
    for entry in report:
        versus = (f"{entry['best_over_baseline']:.2f} / {entry['median_over_baseline']:.2f}"
                  if "best_over_baseline" in entry else "")
        print(f"{entry['row']:36s} {entry['best_s'] * 1000:8.1f} {entry['median_s'] * 1000:10.1f} "
              f"{entry['best_over_requests']:14.2f} {versus:>18s}")


if __name__ == "__main__":
    main()
