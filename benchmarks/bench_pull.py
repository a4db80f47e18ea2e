#!/usr/bin/env python3
"""Benchmark of the delta-aware pull against full pulls (one run, figures as ratios).

    python benchmarks/bench_pull.py [--quick] [--json] [--rate-mbit 10] [--dir DIR]

Test bed on 127.0.0.1: the real registry (``docker-registry``), the project's
Doras-compatible server, and one counting :class:`FaultProxy` in front of
each (a ``rate`` fault on both emulates the slow link). Cases (v1 -> v2):

* ``bin64`` / ``bin256``: a 64 / 256 MiB random binary with 2,000 scattered
  8-byte edits, pushed with the oras CLI. The delta is planted before timing,
  shaped as the Go server makes it (BSDIFF40, one control triple
  ``(newsize, 0, 0)``, a diff block of zeros holding the edits, an empty
  extra block, bzip2 blocks, then zstd) under the server's tag and manifest
  shape; a real request must then answer 200 with the planted manifest;
* ``tree``: a directory of 2,000 files with 1 % changed, pushed with the oras
  CLI (tar+gzip with content digest); the server builds the tar-diff before timing.

Each tool pulls v2 into a copy of a layout already holding v1, in a child
process (wall time and peak RSS from ``wait4`` of a small launcher): our
delta pull (``doras-oras pull --server``; ``ours-delta`` without numpy, as the
runtime dependencies install it, ``ours-delta+np`` with the test extra's
numpy allowed, ``ours-delta+verify`` as ``ours-delta`` with ``--verify-key``:
v2 carries a cosign signature made by the test bed's signer, legacy tag
scheme), our full pull (no ``--server``),
oras-py ``Layout.pull_from_registry``, ``skopeo copy`` and ``oras copy
--to-oci-layout``. Bytes are the response bodies counted by the proxies
(registry + Doras server), requests are counted by the proxies too. Each
result is checked (the v2 layer is in the layout). The ``trust`` part of the
report is what verification adds: ``ours-delta+verify`` minus ``ours-delta``
in requests, bytes and wall time (medians, with their spreads, with ``--repeat``).
``--quick`` runs small sizes (for CI).
"""

from __future__ import annotations

import argparse
import bz2
import datetime as dt
import hashlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import zstandard  # noqa: E402
from _measure import run_child  # noqa: E402

from doras_oras.descriptor import (  # noqa: E402
    ANNOTATION_CREATED,
    ANNOTATION_DELTA_FROM,
    ANNOTATION_DELTA_TO,
    ANNOTATION_TITLE,
)
from doras_oras.publish.bsdiff_build import go_patch_frame  # noqa: E402
from doras_oras.testing.faultproxy import FaultProxy  # noqa: E402
from doras_oras.testing.registry import RegistryServer, find_tool  # noqa: E402
from doras_oras.testing.server import Algorithm, DorasServer, delta_tag, pack_manifest  # noqa: E402
from doras_oras.testing.signing import SigningKey, sign  # noqa: E402

MiB = 1 << 20
RSS_TARGET = 64 * MiB

# Facts measured for the Go client (doras-cli pull, TLS registry), from issue 6.
GO_FACTS: dict[str, dict[str, Any]] = {
    "bin64": {"wall_loopback_s": 1.25, "wall_slow_s": 1.14, "bytes": 32501, "delta_blob": 27188,
              "rss_mb": (176, 255)},
    "bin256": {"wall_loopback_s": 3.11, "rss_mb": (868, 868)},
}

TOOLS = ("ours-delta", "ours-delta+np", "ours-delta+verify", "ours-full", "oras-py", "skopeo", "oras-cli")


# --------------------------------------------------------------------------- data


def make_binary_case(work: Path, size: int, edits: int, seed: int) -> tuple[Path, Path, bytes]:
    """v1 and v2 files (``edits`` scattered 8-byte edits) and the zstd'd BSDIFF40 patch v1 -> v2,
    shaped like the Go server's: one control triple, a diff block, an empty extra block."""
    rng = random.Random(seed)
    chunk = 4 * MiB
    positions = []
    for _ in range(edits):  # no edit crosses a chunk boundary
        pos = rng.randrange(size - 8)
        positions.append(pos - 8 if pos % chunk > chunk - 8 else pos)
    positions.sort()
    v1, v2 = work / "v1" / "app.bin", work / "v2" / "app.bin"
    v1.parent.mkdir(parents=True)
    v2.parent.mkdir(parents=True)
    comp = bz2.BZ2Compressor(9)
    diff_parts: list[bytes] = []
    pi = 0
    with open(v1, "wb") as old, open(v2, "wb") as new:
        for start in range(0, size, chunk):
            n = min(chunk, size - start)
            data = rng.randbytes(n)
            diff = bytearray(n)
            changed = bytearray(data)
            while pi < len(positions) and positions[pi] < start + n:
                off = positions[pi] - start
                for k in range(off, off + 8):
                    value = rng.randrange(1, 256)
                    diff[k] = value
                    changed[k] = (data[k] + value) & 0xFF
                pi += 1
            old.write(data)
            new.write(changed)
            diff_parts.append(comp.compress(bytes(diff)))
        diff_parts.append(comp.flush())
    diff_block = b"".join(diff_parts)
    head, tail = go_patch_frame(size, len(diff_block))
    patch = head + diff_block + tail
    return v1, v2, zstandard.ZstdCompressor(level=3).compress(patch)


def make_tree_case(work: Path, files: int, changed_share: float, seed: int) -> tuple[Path, Path]:
    """Two directory trees ``v1/tree`` and ``v2/tree``: ``files`` files (1-16 KiB of
    text-like bytes in 20 subdirectories), ``changed_share`` of them edited in v2."""
    rng = random.Random(seed)
    words = [bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz", k=rng.randrange(2, 9))) for _ in range(4096)]
    roots = [work / "v1" / "tree", work / "v2" / "tree"]
    changed = set(rng.sample(range(files), max(1, round(files * changed_share))))
    for i in range(files):
        rel = Path(f"d{i % 20:02d}") / f"f{i:05d}.txt"
        size = rng.randrange(1024, 16 * 1024)
        body = bytearray()
        while len(body) < size:
            body += rng.choice(words) + b" "
        data = bytes(body[:size])
        for root in roots:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (roots[0] / rel).write_bytes(data)
        if i in changed:
            pos = rng.randrange(len(data) - 16)
            data = data[:pos] + b"CHANGED-" + bytes(rng.choices(b"0123456789", k=8)) + data[pos + 16:]
        (roots[1] / rel).write_bytes(data)
    for root in roots:  # fixed mtimes: the two tars differ only where the files do
        for path in root.rglob("*"):
            os.utime(path, (1_700_000_000, 1_700_000_000))
    return roots[0], roots[1]


# --------------------------------------------------------------------------- child processes

def child_oras_py(registry: str, target: str, layout: str, tag: str) -> None:
    """``--child oras-py``: oras-py's ``Layout.pull_from_registry`` (plain HTTP)."""
    import oras.provider
    from oras.layout.layout import Layout

    provider = oras.provider.Registry(hostname=registry, insecure=True)
    Layout(layout, validate=False).pull_from_registry(provider=provider, target=target, tag=tag)


# --------------------------------------------------------------------------- the test bed


class BenchDoras(DorasServer):
    """The test server, reading the registry directly while clients name the registry's proxy."""

    def __init__(self, registry_url: str, proxy_host: str) -> None:
        super().__init__(registry_url)
        self.proxy_host = proxy_host

    def _is_our_registry(self, host: str) -> bool:
        return host == self.proxy_host or super()._is_our_registry(host)


@dataclass
class Bed:
    """The running test bed: registry, Doras server and a counting proxy in front of each."""

    registry: RegistryServer
    reg_proxy: FaultProxy
    doras: BenchDoras
    doras_proxy: FaultProxy
    work: Path
    key: SigningKey

    @property
    def host(self) -> str:
        """The registry as clients name it (its proxy)."""
        return self.reg_proxy.host

    def set_rate(self, bytes_per_s: float | None) -> None:
        for proxy in (self.reg_proxy, self.doras_proxy):
            proxy.clear()
            if bytes_per_s:
                proxy.add("rate", bytes_per_s=bytes_per_s)

    def reset(self) -> None:
        for proxy in (self.reg_proxy, self.doras_proxy):
            proxy.wait_idle(60)
            proxy.reset_counters()

    def received(self) -> int:
        for proxy in (self.reg_proxy, self.doras_proxy):
            proxy.wait_idle(60)
        return self.reg_proxy.bytes_sent() + self.doras_proxy.bytes_sent()

    def requests(self) -> int:
        """Requests the client sent to the registry and the Doras server since the last reset."""
        return len(self.reg_proxy.requests()) + len(self.doras_proxy.requests())


@contextmanager
def test_bed(work: Path) -> Iterator[Bed]:
    with ExitStack() as stack:
        registry = stack.enter_context(RegistryServer(workdir=work / "registry"))
        reg_proxy = stack.enter_context(FaultProxy(registry.url))
        doras = stack.enter_context(BenchDoras(registry.url, reg_proxy.host))
        doras_proxy = stack.enter_context(FaultProxy(doras.url))
        yield Bed(registry, reg_proxy, doras, doras_proxy, work, SigningKey.generate(work / "signing-key"))


def oras_push(ref: str, directory: Path, name: str) -> None:
    """Push ``directory/name`` (a file or a directory) with the oras CLI, as users do."""
    subprocess.run([find_tool("oras"), "push", "--plain-http", ref, name],
                   cwd=directory, check=True, capture_output=True, timeout=600)


def manifest_of(bed: Bed, repo: str, ref: str) -> tuple[str, dict[str, Any]]:
    """Digest and document of a manifest, straight from the registry."""
    body, _media_type, digest = bed.doras.registry_client().fetch_manifest(repo, ref)
    return digest, json.loads(body)


def ask_delta(bed: Bed, repo: str, from_digest: str, tag: str, accepted: list[str]) -> tuple[int, dict[str, Any]]:
    """One real ``GET /api/v1/delta/`` (through the proxy), as the Go client asks it."""
    query = [("from_digest", f"{bed.host}/{repo}@{from_digest}"), ("to_tag", f"{bed.host}/{repo}:{tag}")]
    query += [("accepted_algorithm", a) for a in accepted]
    url = f"{bed.doras_proxy.url}/api/v1/delta/?{urllib.parse.urlencode(query)}"
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, (json.loads(body) if (body := response.read()) else {})
    except urllib.error.HTTPError as error:  # an error answer (a failed build): the caller says why
        with error:
            return error.code, {"error": error.read(4096).decode("utf-8", "replace")}


def plant_bsdiff(bed: Bed, repo: str, from_digest: str, to_digest: str, delta: bytes) -> str:
    """Store ``delta`` as the Doras server stores a bsdiff+zstd delta; return its manifest digest."""
    algorithm = Algorithm("bsdiff", "zstd")
    client = bed.doras.registry_client()
    stub = client.push_blob(repo, delta)
    layer = {"mediaType": algorithm.media_type, "digest": stub["digest"], "size": stub["size"],
             "annotations": {ANNOTATION_TITLE: algorithm.title}}
    created = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = pack_manifest([layer], {ANNOTATION_DELTA_FROM: f"{bed.host}/{repo}@{from_digest}",
                                   ANNOTATION_DELTA_TO: f"{bed.host}/{repo}@{to_digest}",
                                   ANNOTATION_CREATED: created})
    client.push_manifest(repo, delta_tag(from_digest, to_digest, algorithm), body)
    return "sha256:" + hashlib.sha256(body).hexdigest()


# --------------------------------------------------------------------------- cases and runs


@dataclass
class Case:
    """One v1 -> v2 update in the registry, its delta and a layout template holding v1."""

    name: str
    repo: str
    size: int  # bytes of the v2 layer blob
    v1_digest: str = ""
    v2_digest: str = ""
    v2_layer: dict[str, Any] = field(default_factory=dict)
    delta_size: int = 0
    template: Path = Path()


@dataclass
class Row:
    """The figures of one tool pulling one case over one link."""

    case: str
    link: str
    tool: str
    bytes_received: int
    wall_s: float
    peak_rss: int
    detail: str = ""
    walls: list[float] = field(default_factory=list)
    requests: int = 0
    """Requests sent to the registry and the Doras server (the largest count when repeated)."""
    """Every run's wall time when repeated (``wall_s`` is then their median)."""


def prepare_case(bed: Bed, case: Case, kind: str, size: int, edits: int, files: int) -> None:
    """Push v1 and v2, make the delta ready, and a layout template holding v1 (pulled by us)."""
    work = bed.work / case.name
    work.mkdir()
    t0 = time.perf_counter()
    if kind == "bin":
        v1, v2, delta = make_binary_case(work, size, edits, seed=len(case.name) + size)
        oras_push(f"{bed.registry.host}/{case.repo}:v1", v1.parent, v1.name)
        oras_push(f"{bed.registry.host}/{case.repo}:v2", v2.parent, v2.name)
        shutil.rmtree(work / "v1")
        shutil.rmtree(work / "v2")
    else:
        t1, t2 = make_tree_case(work, files, 0.01, seed=7)
        oras_push(f"{bed.registry.host}/{case.repo}:v1", t1.parent, t1.name)
        oras_push(f"{bed.registry.host}/{case.repo}:v2", t2.parent, t2.name)
    case.v1_digest, _ = manifest_of(bed, case.repo, "v1")
    case.v2_digest, v2_manifest = manifest_of(bed, case.repo, "v2")
    # as cosign sign --key --tlog-upload=false would, for the name clients pull under (the proxy's)
    sign(bed.registry.url, case.repo, case.v2_digest, bed.key, docker_reference=f"{bed.host}/{case.repo}")
    case.v2_layer = v2_manifest["layers"][0]
    case.size = int(case.v2_layer["size"])
    if kind == "bin":
        planted = plant_bsdiff(bed, case.repo, case.v1_digest, case.v2_digest, delta)
        status, answer = ask_delta(bed, case.repo, case.v1_digest, "v2", ["bsdiff", "gzip", "zstd"])
        if status != 200 or answer.get("delta_image") != f"{bed.host}/{case.repo}@{planted}":
            raise SystemExit(f"{case.name}: the server does not serve the planted delta: {status} {answer}")
        case.delta_size = len(delta)
    else:
        accepted = ["bsdiff", "tardiff", "gzip", "zstd"]
        status, answer = ask_delta(bed, case.repo, case.v1_digest, "v2", accepted)
        deadline = time.monotonic() + 600
        while status == 202 and time.monotonic() < deadline:  # being built: ask again
            bed.doras.wait_idle(600)
            status, answer = ask_delta(bed, case.repo, case.v1_digest, "v2", accepted)
        if status != 200:
            raise SystemExit(f"{case.name}: the server did not build the delta: {status} {answer} "
                             f"{bed.doras.build_errors}")
        delta_ref = answer["delta_image"].rsplit("@", 1)[1]
        _, delta_manifest = manifest_of(bed, case.repo, delta_ref)
        case.delta_size = int(delta_manifest["layers"][0]["size"])
    case.template = work / "layout-v1"
    subprocess.run([sys.executable, "-m", "doras_oras", "pull", f"{bed.host}/{case.repo}:v1",
                    "--oci-layout", str(case.template), "--plain-http", "--json"],
                   check=True, capture_output=True, timeout=600, cwd=ROOT)
    print(f"# {case.name}: v2 layer {case.size:,} bytes, delta {case.delta_size:,} bytes, "
          f"prepared in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)


def tool_argv(tool: str, bed: Bed, case: Case, layout: Path) -> list[str]:
    ref = f"{bed.host}/{case.repo}:v2"
    py = sys.executable
    if tool in ("ours-delta", "ours-delta+np", "ours-delta+verify"):
        verify = ["--verify-key", str(bed.key.public_path)] if tool == "ours-delta+verify" else []
        return [py, "-m", "doras_oras", "pull", ref, "--oci-layout", str(layout), "--plain-http",
                "--server", bed.doras_proxy.url, "--json", *verify]
    if tool == "ours-full":
        return [py, "-m", "doras_oras", "pull", ref, "--oci-layout", str(layout), "--plain-http", "--json"]
    if tool == "oras-py":
        return [py, str(Path(__file__).resolve()), "--child", "oras-py", bed.host, ref, str(layout), "v2"]
    if tool == "skopeo":
        return ["skopeo", "copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{layout}:v2"]
    if tool == "oras-cli":
        return [find_tool("oras"), "copy", "--from-plain-http", ref, "--to-oci-layout", f"{layout}:v2"]
    raise ValueError(tool)


def check_result(tool: str, case: Case, layout: Path, output: Path) -> str:
    """What the tool did, after checking that the layout holds v2; raises if not."""
    if tool.startswith("ours"):
        lines = [line for line in output.read_text().splitlines() if line.startswith("{")]
        result = json.loads(lines[-1])
        if tool == "ours-full":  # without --server: a full pull
            if result["status"] != "full" or result["stored_digest"] != case.v2_digest:
                raise RuntimeError(f"{tool} on {case.name}: {result}")
            return f"full; {result['blobs_fetched']} blob(s) fetched"
        if result["status"] != "delta" or result["to_digest"] != case.v2_digest:
            raise RuntimeError(f"{tool} on {case.name}: {result}")
        if (tool == "ours-delta+verify") != bool(result.get("trust")):
            raise RuntimeError(f"{tool} on {case.name}: trust {result.get('trust')}")
        what = f"{result['status']} {result['algorithm'] or ''}".strip()
        return f"{what}; pull_delta {result['duration_s']:.2f} s"
    blob = layout / "blobs" / "sha256" / case.v2_layer["digest"].split(":", 1)[1]
    h = hashlib.sha256()
    with open(blob, "rb") as fh:
        while chunk := fh.read(4 * MiB):
            h.update(chunk)
    if "sha256:" + h.hexdigest() != case.v2_layer["digest"]:
        raise RuntimeError(f"{tool} on {case.name}: wrong v2 layer in the layout")
    return "full"


def run_tool(bed: Bed, case: Case, tool: str, link: str, timeout_s: float) -> Row:
    layout = bed.work / "run-layout"
    shutil.rmtree(layout, ignore_errors=True)
    shutil.copytree(case.template, layout)
    output = bed.work / f"out-{case.name}-{link.replace('/', '_')}-{tool}.txt"
    # The runtime dependencies do not include numpy (a test extra): "ours-delta" runs as
    # installed on a device, without it; "ours-delta+np" lets the applier use numpy.
    env = dict(os.environ)
    env.pop("DORAS_ORAS_NO_NUMPY", None)
    if tool != "ours-delta+np":  # ours-delta+verify runs as ours-delta does, plus the verification
        env["DORAS_ORAS_NO_NUMPY"] = "1"
    bed.reset()
    wall, rss = run_child(tool_argv(tool, bed, case, layout), output=output, env=env, timeout_s=timeout_s)
    received = bed.received()
    sent = bed.requests()
    detail = check_result(tool, case, layout, output)
    shutil.rmtree(layout)
    row = Row(case.name, link, tool, received, round(wall, 3), rss, detail, requests=sent)
    print(f"# {case.name:<7} {link:<9} {tool:<17} {received:>12,} B {sent:>4} req {wall:8.2f} s "
          f"{rss / MiB:7.1f} MiB  {detail}", file=sys.stderr, flush=True)
    return row


def combine(runs: list[Row]) -> Row:
    """One row for repeated runs: median wall time, largest peak RSS and byte count."""
    if len(runs) == 1:
        return runs[0]
    first = runs[0]
    return Row(first.case, first.link, first.tool, max(r.bytes_received for r in runs),
               round(statistics.median(r.wall_s for r in runs), 3), max(r.peak_rss for r in runs),
               first.detail, [r.wall_s for r in runs], max(r.requests for r in runs))


# --------------------------------------------------------------------------- report


def ratios(rows: list[Row]) -> list[dict[str, Any]]:
    """For each case and link: each alternative over our delta pull (bytes, time, RSS)."""
    out = []
    for row in rows:
        ours = next(r for r in rows if r.case == row.case and r.link == row.link and r.tool == "ours-delta")
        if row.tool == "ours-delta":
            continue
        out.append({"case": row.case, "link": row.link, "vs": row.tool,
                    "bytes_x": round(row.bytes_received / max(1, ours.bytes_received), 1),
                    "time_x": round(row.wall_s / ours.wall_s, 2),
                    "rss_x": round(row.peak_rss / ours.peak_rss, 2)})
    return out


def trust_overhead(rows: list[Row]) -> list[dict[str, Any]]:
    """What ``--verify-key`` adds to our delta pull, per case and link: requests, bytes, wall time.

    ``noise_s``: the spread (max - min) of the unverified pull's repeated wall times; a time
    difference within it is noise.
    """
    out = []
    for row in rows:
        if row.tool != "ours-delta+verify":
            continue
        plain = next(r for r in rows if (r.case, r.link, r.tool) == (row.case, row.link, "ours-delta"))
        noise = round(max(plain.walls) - min(plain.walls), 3) if plain.walls else None
        out.append({"case": row.case, "link": row.link,
                    "extra_requests": row.requests - plain.requests,
                    "extra_bytes": row.bytes_received - plain.bytes_received,
                    "plain_s": plain.wall_s, "verified_s": row.wall_s,
                    "extra_s": round(row.wall_s - plain.wall_s, 3), "noise_s": noise,
                    "target_met": row.requests - plain.requests <= 2
                    and row.bytes_received - plain.bytes_received <= 3000})
    return out


def go_comparison(rows: list[Row]) -> list[dict[str, Any]]:
    """Our delta pull against the Go client's facts and the targets (half its time, ≤ its bytes,
    peak RSS ≤ 64 MiB)."""
    out = []
    for row in rows:
        if not row.tool.startswith("ours-delta") or row.case not in GO_FACTS:
            continue
        facts = GO_FACTS[row.case]
        go_wall = facts.get("wall_loopback_s" if row.link == "loopback" else "wall_slow_s")
        entry: dict[str, Any] = {"case": row.case, "link": row.link, "tool": row.tool, "ours_s": row.wall_s, "go_s": go_wall,
                                 "ours_bytes": row.bytes_received, "go_bytes": facts.get("bytes"),
                                 "ours_rss_mib": round(row.peak_rss / MiB, 1),
                                 "go_rss_mb": facts["rss_mb"]}
        entry["time_target_met"] = None if go_wall is None else row.wall_s <= go_wall / 2
        entry["bytes_target_met"] = None if not facts.get("bytes") else row.bytes_received <= facts["bytes"]
        entry["rss_target_met"] = row.peak_rss <= RSS_TARGET
        out.append(entry)
    return out


def print_table(rows: list[Row], cases: list[dict[str, Any]]) -> None:
    print(f"{'case':<8}{'link':<10}{'tool':<18}{'bytes recv':>14}{'req':>5}{'wall s':>9}{'peak RSS MiB':>14}"
          f"{'bytes x':>10}{'time x':>9}{'RSS x':>8}  what")
    rat = {(r["case"], r["link"], r["vs"]): r for r in ratios(rows)}
    for row in rows:
        r = rat.get((row.case, row.link, row.tool))
        tail = (f"{r['bytes_x']:>10}{r['time_x']:>9}{r['rss_x']:>8}" if r else f"{'1':>10}{'1':>9}{'1':>8}")
        spread = f" ({min(row.walls):.2f}-{max(row.walls):.2f} s, n={len(row.walls)})" if row.walls else ""
        print(f"{row.case:<8}{row.link:<10}{row.tool:<18}{row.bytes_received:>14,}{row.requests:>5}"
              f"{row.wall_s:>9.2f}{row.peak_rss / MiB:>14.1f}{tail}  {row.detail}{spread}")
    print("# x: the alternative's figure over our delta pull's (bytes x 1000 = a thousand times more)")
    for t in trust_overhead(rows):
        noise = "n/a" if t["noise_s"] is None else f"{t['noise_s']:.2f} s"
        print(f"# trust, {t['case']} {t['link']}: --verify-key adds {t['extra_requests']} request(s), "
              f"{t['extra_bytes']:,} B, {t['extra_s']:+.2f} s ({t['plain_s']:.2f} -> {t['verified_s']:.2f} s; "
              f"spread of the unverified runs {noise}); target <= 2 requests and 3 KB: {t['target_met']}")
    for case in cases:
        print(f"# {case['name']}: v2 layer {case['layer_size']:,} bytes, delta blob {case['delta_size']:,} bytes")
    for g in go_comparison(rows):
        go_s = "n/a" if g["go_s"] is None else f"{g['go_s']:.2f} s"
        go_b = "n/a" if g["go_bytes"] is None else f"{g['go_bytes']:,} B"
        print(f"# vs Go client, {g['case']} {g['link']} {g['tool']}: ours {g['ours_s']:.2f} s / Go {go_s} "
              f"(target half: {g['time_target_met']}), ours {g['ours_bytes']:,} B / Go {go_b} "
              f"(target: {g['bytes_target_met']}), ours {g['ours_rss_mib']} MiB / Go "
              f"{g['go_rss_mb'][0]}-{g['go_rss_mb'][1]} MB (target <= 64 MiB: {g['rss_target_met']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (2 MiB binary, 200 files)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--rate-mbit", type=float, default=10.0, help="the slow link, Mbit/s (0: none)")
    parser.add_argument("--sizes", help="binary sizes in MiB, comma-separated (default 64,256; quick: 2)")
    parser.add_argument("--files", type=int, help="files of the tree case (default 2000; quick: 200; 0: none)")
    parser.add_argument("--tools", default=",".join(TOOLS), help="tools to run, comma-separated")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="run each delta pull, and each loopback pull, N times: median wall time, "
                             "largest peak RSS")
    parser.add_argument("--slow-full-max-mib", type=float, default=1e9,
                        help="on the slow link, run the full pulls only for layers up to this size")
    parser.add_argument("--dir", type=Path, help="work directory (default: a temp dir)")
    parser.add_argument("--table-from", type=Path, metavar="JSON",
                        help="print the table of a saved --json result, run nothing")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.child[0] != "oras-py":
            raise SystemExit(f"unknown child {args.child[0]}")
        child_oras_py(*args.child[1:])
        return
    if args.table_from:
        saved = json.loads(args.table_from.read_text())
        print_table([Row(**r) for r in saved["rows"]], saved["cases"])
        print(f"# total {saved['total_s']:.0f} s")
        return
    sizes = [int(s) for s in (args.sizes or ("2" if args.quick else "64,256")).split(",") if s]
    files = args.files if args.files is not None else (200 if args.quick else 2000)
    tools = [t for t in args.tools.split(",") if t]
    if "ours-delta" not in tools or any(t not in TOOLS for t in tools):
        raise SystemExit(f"--tools: choose from {', '.join(TOOLS)}, with ours-delta")
    edits = 200 if args.quick else 2000
    links: list[tuple[str, float | None]] = [("loopback", None)]
    if args.rate_mbit:
        links.append((f"{args.rate_mbit:g}Mbit/s", args.rate_mbit * 1e6 / 8))
    # a SIGTERM unwinds the test bed (stops the registry, removes the work dir)
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    # As installed by pip (which compiles bytecode), whatever PYTHONDONTWRITEBYTECODE says:
    # a child that compiles the package from source on every run pays ~0.15 s more.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "doras_oras")], check=True,
                   capture_output=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-pull-") as tmp, test_bed(Path(tmp)) as bed:
        cases = [Case(f"bin{s}", f"bench/bin{s}", s * MiB) for s in sizes]
        kinds = ["bin"] * len(cases)
        if files:
            cases.append(Case("tree", "bench/tree", 0))
            kinds.append("tree")
        for case, kind in zip(cases, kinds, strict=True):
            prepare_case(bed, case, kind, case.size, edits, files)
        builds_before = bed.doras.builds
        rows: list[Row] = []
        for link, rate in links:
            bed.set_rate(rate)
            for case in cases:
                chosen = [t for t in tools
                          if not (rate and not t.startswith("ours-delta") and case.size > args.slow_full_max_mib * MiB)]
                timeout = 120 + (case.size / rate * 1.5 if rate else 60)
                reps = {t: args.repeat if (not rate or t.startswith("ours-delta")) else 1 for t in chosen}
                runs: dict[str, list[Row]] = {t: [] for t in chosen}
                # repeats interleaved (tool A, B, C, A, B, C, ...): a drift of the machine's load
                # shows in every tool's spread instead of biasing one tool's median
                for rep in range(max(reps.values(), default=0)):
                    for tool in chosen:
                        if rep < reps[tool]:
                            runs[tool].append(run_tool(bed, case, tool, link, timeout))
                rows.extend(combine(runs[tool]) for tool in chosen)
        if bed.doras.builds != builds_before:
            raise SystemExit("the server built deltas during the timed runs")
    total = time.perf_counter() - started
    case_info = [{"name": c.name, "layer_size": c.size, "delta_size": c.delta_size,
                  "v1": c.v1_digest, "v2": c.v2_digest} for c in cases]
    if args.json:
        print(json.dumps({"rows": [asdict(r) for r in rows], "ratios": ratios(rows),
                          "trust": trust_overhead(rows), "go": go_comparison(rows), "cases": case_info,
                          "total_s": round(total, 1)}))
    else:
        print_table(rows, case_info)
        print(f"# total {total:.0f} s")


if __name__ == "__main__":
    main()
