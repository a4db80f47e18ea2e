#!/usr/bin/env python3
"""What an up-to-date poll costs: ``doras-oras watch`` (one process) against ``doras-oras pull`` run by cron.

    python benchmarks/bench_watch.py [--polls 30] [--json]

Test bed on 127.0.0.1: the real registry serving HTTPS (a fresh CA), one
small artifact pushed with the oras CLI, and a counting TCP relay in front of
the registry (tests/tcp_relay.py: TLS records, headers and handshakes as the
peers send them). A layout already holds the image, so every poll is up to date.

* ``watch``: one agent (``--interval 0.2 --jitter 0 --json``); per poll, the CPU time
  the agent reports (``cpu_s``: ``time.process_time`` around the poll, in the
  process) and the relay's bytes and connections between two poll events;
  the first poll is left out (it opens the connection).
* ``cron``: ``doras-oras pull`` in a new process per poll; its CPU time
  (user + system, ``RUSAGE_CHILDREN``), wall time, bytes and connections.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from doras_oras.testing.registry import RegistryServer, find_tool  # noqa: E402
from tests.tcp_relay import TcpRelay  # noqa: E402
from tests.watch_support import Agent  # noqa: E402


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def bench_watch(relay: TcpRelay, ref: str, layout: Path, ca: str, polls: int) -> dict[str, Any]:
    counters: list[tuple[int, int]] = []
    cpu: list[float] = []
    with Agent(ref, "--oci-layout", str(layout), "--ca-file", ca, "--interval", "0.2", "--jitter", "0") as agent:
        for _ in range(polls + 1):
            event = agent.next(lambda e: e["event"] == "poll" and e["status"] == "up-to-date")
            cpu.append(event["cpu_s"])
            counters.append((relay.connections, relay.bytes_up + relay.bytes_down))
        agent.stop()
    wire = [b - a for (_, a), (_, b) in itertools.pairwise(counters)]
    return {"polls": polls, "cpu_ms": _summary([c * 1000 for c in cpu[1:]]), "wire_bytes": _summary(wire),
            "new_connections": counters[-1][0] - counters[0][0]}


def bench_cron(relay: TcpRelay, ref: str, layout: Path, ca: str, polls: int) -> dict[str, Any]:
    cpu: list[float] = []
    wall: list[float] = []
    wire: list[int] = []
    connections = relay.connections
    for _ in range(polls):
        relay.wait_idle()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start_bytes = relay.bytes_up + relay.bytes_down
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "doras_oras", "pull", ref, "--oci-layout", str(layout),
                               "--ca-file", ca], capture_output=True, text=True, cwd=ROOT, timeout=120)
        wall.append(time.perf_counter() - start)
        if proc.returncode != 3:
            raise RuntimeError(f"pull exited {proc.returncode}: {proc.stderr}")
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append((after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000)
        relay.wait_idle()
        wire.append(relay.bytes_up + relay.bytes_down - start_bytes)
    return {"polls": polls, "cpu_ms": _summary(cpu), "wall_ms": _summary([w * 1000 for w in wall]),
            "wire_bytes": _summary([float(w) for w in wire]), "new_connections": relay.connections - connections}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--polls", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args()
    os.environ["PATH"] = f"{ROOT / '.tools' / 'bin'}{os.pathsep}{os.environ['PATH']}"
    with tempfile.TemporaryDirectory(prefix="bench-watch-") as tmp, RegistryServer(tls=True) as registry:
        work = Path(tmp)
        assert registry.ca_file is not None
        ca = str(registry.ca_file)
        (work / "fw.bin").write_bytes(os.urandom(1 << 20))
        subprocess.run([find_tool("oras"), "push", "--ca-file", ca, f"{registry.host}/bench/fw:stable", "fw.bin"],
                       cwd=work, check=True, capture_output=True)
        with TcpRelay("127.0.0.1", registry.port) as relay:
            ref = f"{relay.host}/bench/fw:stable"
            layout = work / "L"
            subprocess.run([sys.executable, "-m", "doras_oras", "pull", ref, "--oci-layout", str(layout),
                            "--ca-file", ca], check=True, capture_output=True, cwd=ROOT)
            report = {"watch": bench_watch(relay, ref, layout, ca, options.polls),
                      "cron": bench_cron(relay, ref, layout, ca, options.polls)}
    if options.json:
        print(json.dumps(report, indent=2))
    else:
        for name, figures in report.items():
            text = ", ".join(f"{key} {value['median']:.2f} (min {value['min']:.2f}, max {value['max']:.2f})"
                             if isinstance(value, dict) else f"{key} {value}" for key, value in figures.items())
            print(f"{name}: {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
