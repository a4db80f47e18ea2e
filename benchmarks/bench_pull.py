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
scheme), our full pull (no ``--server``, ``--no-registry-deltas``),
oras-py ``Layout.pull_from_registry``, ``skopeo copy`` and ``oras copy
--to-oci-layout``. Bytes are the response bodies counted by the proxies
(registry + Doras server), requests are counted by the proxies too. Each
result is checked (the v2 layer is in the layout). The ``trust`` part of the
report is what verification adds: ``ours-delta+verify`` minus ``ours-delta``
in requests, bytes and wall time (medians, with their spreads, with ``--repeat``).
``--quick`` runs small sizes (for CI). ``probe_miss`` (text: a ``#`` line per case) is
what looking for a delta stored in the registry costs when none is: requests, wire bytes
(headers included) and wall time of the probe alone, on an open connection.

``--go-doras-cli PATH --go-doras-server PATH``: side by side with the real Go
client and server (issue 24). The registry speaks TLS (the test bed's CA), the
Go server runs in front of it (``SSL_CERT_FILE`` = the CA, no client auth) and
both clients go through the same two counting proxies; the Go server reads the
registry through the registry's proxy too (it uses the names the client sent),
and those connections are recognised by their owner (its PID, via
``/proc/net/tcp`` and ``/proc/PID/fd``) and not counted. Defaults there: sizes
4,16,64,256 MiB, no tree, no slow link, ``--repeat 5``; tools ``ours-delta``
(``--ca-file``) and ``go-delta`` (``doras-cli pull`` into copies of its output
and state directories holding v1), interleaved; the report gives ours / Go from
the same run: wall (best and median), bytes, requests, peak RSS, CPU time.
``--before DIR`` adds ``ours-before``: ``ours-delta`` run from another checkout (a ``git
worktree`` of the code before a change), interleaved with the rest; the report then also
gives this checkout over that one (wall, CPU) from the same run.
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
import threading
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
from _measure import run_child, run_child_usage  # noqa: E402

from doras_oras.descriptor import (  # noqa: E402
    ANNOTATION_CREATED,
    ANNOTATION_DELTA_FROM,
    ANNOTATION_DELTA_TO,
    ANNOTATION_TITLE,
)
from doras_oras.publish.bsdiff_build import go_patch_frame  # noqa: E402
from doras_oras.testing.faultproxy import FaultProxy  # noqa: E402
from doras_oras.testing.registry import RegistryServer, find_tool, free_port  # noqa: E402
from doras_oras.testing.server import Algorithm, DorasServer, delta_tag, pack_manifest  # noqa: E402
from doras_oras.testing.signing import SigningKey, sign  # noqa: E402

MiB = 1 << 20
RSS_TARGET = 48 * MiB

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


def _peer_inode(peer_port: int, local_port: int) -> int | None:
    """The socket inode of the loopback TCP connection from ``peer_port`` to ``local_port``."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                if (int(fields[1].rsplit(":", 1)[1], 16) == peer_port
                        and int(fields[2].rsplit(":", 1)[1], 16) == local_port):
                    return int(fields[9])
    return None


def _owns_socket(pid: int, inode: int) -> bool:
    wanted = f"socket:[{inode}]"
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in os.listdir(fd_dir):
        try:
            if os.readlink(fd_dir / fd) == wanted:
                return True
        except OSError:
            continue
    return False


class ClientProxy(FaultProxy):
    """A counting proxy that leaves out the connections of ``ignored_pid`` (the Go Doras server,
    which reads the registry under the name the client gave it, i.e. through this proxy)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ignored_pid: int | None = None
        self._local = threading.local()
        self._ignored: set[int] = set()

    def _serve(self, handler: Any, record: Any, fault: Any) -> None:
        inode = _peer_inode(handler.client_address[1], self.port) if self.ignored_pid else None
        ignored = inode is not None and _owns_socket(self.ignored_pid or 0, inode)
        self._local.ignored = ignored
        if ignored:
            with self._lock:
                self._ignored.add(id(record))
        super()._serve(handler, record, fault)

    def _count(self, record: Any, n: int) -> None:
        if not getattr(self._local, "ignored", False):
            super()._count(record, n)

    def requests(self, pattern: str = ".*") -> list[Any]:
        return [r for r in super().requests(pattern) if id(r) not in self._ignored]

    def reset_counters(self) -> None:
        super().reset_counters()
        with self._lock:
            self._ignored.clear()

    def server_requests(self) -> int:
        """Requests of the ignored process since the last reset."""
        with self._lock:
            return len(self._ignored)


@dataclass
class GoPeer:
    """The real Go client and server (``--go-doras-cli``, ``--go-doras-server``)."""

    cli: Path
    server: Path
    env: dict[str, str]  # for both: the registry's CA, an empty docker config
    proc: subprocess.Popen[bytes] | None = None


@contextmanager
def go_server(peer: GoPeer, work: Path) -> Iterator[str]:
    """Run the Go Doras server on a free loopback port; yield its URL."""
    port = free_port()
    env = {**peer.env, "DORAS_HOST": "127.0.0.1", "DORAS_HTTP_PORT": str(port),
           "DORAS_REQUIRE_CLIENT_AUTH": "false", "DORAS_LOG_LEVEL": "warn"}
    url = f"http://127.0.0.1:{port}"
    with open(work / "go-doras-server.log", "wb") as log:
        peer.proc = subprocess.Popen([str(peer.server)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(url + "/api/v1/ping", timeout=1):
                    break
            except OSError:
                if peer.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the Go doras-server did not start: "
                                     + (work / "go-doras-server.log").read_text()[-2000:]) from None
                time.sleep(0.05)
        yield url
    finally:
        peer.proc.terminate()
        try:
            peer.proc.wait(10)
        except subprocess.TimeoutExpired:
            peer.proc.kill()
            peer.proc.wait()


class BenchDoras(DorasServer):
    """The test server, reading the registry directly while clients name the registry's proxy."""

    def __init__(self, registry_url: str, proxy_host: str, ca_file: Path | None = None) -> None:
        super().__init__(registry_url, plain_http=ca_file is None, ca_file=ca_file)
        self.proxy_host = proxy_host

    def _is_our_registry(self, host: str) -> bool:
        return host == self.proxy_host or super()._is_our_registry(host)


@dataclass
class Bed:
    """The running test bed: registry, Doras server and a counting proxy in front of each."""

    registry: RegistryServer
    reg_proxy: ClientProxy
    doras: BenchDoras
    doras_proxy: FaultProxy
    work: Path
    key: SigningKey
    go: GoPeer | None = None
    before: Path | None = None
    """``--before``: the other checkout ``ours-before`` runs from."""

    @property
    def tls_args(self) -> list[str]:
        """How our CLI and the oras CLI reach the registry's proxy."""
        ca = self.registry.ca_file
        return ["--ca-file", str(ca)] if ca else ["--plain-http"]

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

    def wire(self) -> list[str]:
        """The counted requests since the last reset: method, path (query cut), status, body bytes."""
        return [f"{r.method} {r.path.split('?', 1)[0]} {r.status} {r.body_bytes}"
                for proxy in (self.doras_proxy, self.reg_proxy) for r in proxy.requests()]


@contextmanager
def test_bed(work: Path, go: tuple[Path, Path] | None = None) -> Iterator[Bed]:
    """Plain HTTP registry and our test server; with ``go`` (client, server): a TLS registry and
    the Go server in front of it, read through the same proxy as the clients (not counted)."""
    with ExitStack() as stack:
        registry = stack.enter_context(RegistryServer(workdir=work / "registry", tls=go is not None))
        tls = None
        if registry.ca_file:
            tls_dir = registry.ca_file.parent
            tls = (tls_dir / "server.crt", tls_dir / "server.key")
        reg_proxy = stack.enter_context(ClientProxy(registry.url, tls=tls, upstream_ca=registry.ca_file))
        doras = BenchDoras(registry.url, reg_proxy.host, registry.ca_file)
        peer = None
        if go is None:
            stack.enter_context(doras)
            doras_url = doras.url
        else:  # ``doras`` only reads the registry for the test bed (it is not started)
            (work / "docker-config.json").write_text("{}")
            peer = GoPeer(go[0], go[1], {**os.environ, "SSL_CERT_FILE": str(registry.ca_file),
                                         "DOCKER_CONFIG_FILE_PATH": str(work / "docker-config.json")})
            doras_url = stack.enter_context(go_server(peer, work))
            assert peer.proc is not None
            reg_proxy.ignored_pid = peer.proc.pid
        doras_proxy = stack.enter_context(FaultProxy(doras_url))
        yield Bed(registry, reg_proxy, doras, doras_proxy, work, SigningKey.generate(work / "signing-key"), peer)


def oras_push(bed: Bed, ref: str, directory: Path, name: str) -> None:
    """Push ``directory/name`` (a file or a directory) with the oras CLI, as users do."""
    subprocess.run([find_tool("oras"), "push", *bed.tls_args, ref, name],
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
    wire: list[str] = field(default_factory=list)
    """With the Go peers: each counted request, ``METHOD path status body-bytes`` (first run)."""
    cpus: list[float] = field(default_factory=list)
    """CPU seconds (user + system) of each run."""


def prepare_case(bed: Bed, case: Case, kind: str, size: int, edits: int, files: int) -> None:
    """Push v1 and v2, make the delta ready, and a layout template holding v1 (pulled by us)."""
    work = bed.work / case.name
    work.mkdir()
    t0 = time.perf_counter()
    if kind == "bin":
        v1, v2, delta = make_binary_case(work, size, edits, seed=len(case.name) + size)
        oras_push(bed, f"{bed.registry.host}/{case.repo}:v1", v1.parent, v1.name)
        oras_push(bed, f"{bed.registry.host}/{case.repo}:v2", v2.parent, v2.name)
        shutil.rmtree(work / "v1")
        shutil.rmtree(work / "v2")
    else:
        t1, t2 = make_tree_case(work, files, 0.01, seed=7)
        oras_push(bed, f"{bed.registry.host}/{case.repo}:v1", t1.parent, t1.name)
        oras_push(bed, f"{bed.registry.host}/{case.repo}:v2", t2.parent, t2.name)
    case.v1_digest, _ = manifest_of(bed, case.repo, "v1")
    case.v2_digest, v2_manifest = manifest_of(bed, case.repo, "v2")
    if bed.go is None:  # as cosign sign --key --tlog-upload=false would, for the name clients pull under
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
                    "--oci-layout", str(case.template), *bed.tls_args, "--json"],
                   check=True, capture_output=True, timeout=600, cwd=ROOT)
    if bed.go is not None:  # the Go client's output and state directories holding v1 (a full pull)
        out, state = go_dirs(bed)
        run_child(go_argv(bed, case, "v1"), output=bed.work / "go-v1.txt", env=bed.go.env, timeout_s=600)
        shutil.move(out, work / "go-out-v1")
        shutil.move(state, work / "go-state-v1")
    print(f"# {case.name}: v2 layer {case.size:,} bytes, delta {case.delta_size:,} bytes, "
          f"prepared in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)


def _wire_bytes(response: Any) -> int:
    """Bytes of one exchange as HTTP/1.1 puts them on the wire (request and response lines, headers,
    bodies), rebuilt from what ``requests`` sent and received."""
    request = response.request
    up = len(f"{request.method} {request.path_url} HTTP/1.1\r\n") + 2 + len(request.body or b"")
    up += sum(len(k) + len(v) + 4 for k, v in request.headers.items())
    down = len(f"HTTP/1.1 {response.status_code} {response.reason}\r\n") + 2 + len(response.content or b"")
    down += sum(len(k) + len(v) + 4 for k, v in response.headers.items())
    return up + down


def probe_miss(bed: Bed, case: Case, repeat: int) -> dict[str, Any]:
    """What the pull's look for a stored delta costs when nothing is stored (issue 23): the pair
    v2 -> v1 (never published), the algorithms the pull accepts for this case (a file: bsdiff with
    zstd, gzip, none; a directory with a content digest: tar-diff too), on the connection the pull
    has open (the target resolved first, as a pull does). Requests, wire bytes both ways, wall time."""
    import requests

    from doras_oras.descriptor import Descriptor
    from doras_oras.plan import choose_accepted
    from doras_oras.reference import Reference
    from doras_oras.registry_client import RegistryClient
    from doras_oras.stored_deltas import find_stored_delta

    wire: list[int] = []
    session = requests.Session()
    session.hooks["response"].append(lambda r, *_a, **_k: wire.append(_wire_bytes(r)))
    ref = Reference(bed.host, case.repo)
    ca = bed.registry.ca_file
    accepted = choose_accepted(base_is_registry_blob=True, target_layer=Descriptor.from_json(case.v2_layer),
                               allow_unverified=False).accepted
    walls: list[float] = []
    heads: list[float] = []  # one HEAD of the target, for scale: the registry's latency on this machine
    with RegistryClient(plain_http=ca is None, tls_verify=str(ca) if ca else True, session=session) as client:
        client.resolve(ref.with_tag("v2"))
        for _ in range(max(repeat, 5)):
            started = time.perf_counter()
            client.resolve(ref.with_tag("v2"))
            heads.append(time.perf_counter() - started)
            wire.clear()
            started = time.perf_counter()
            found = find_stored_delta(client, ref.with_digest(case.v2_digest), ref.with_digest(case.v1_digest),
                                      accepted)
            walls.append(time.perf_counter() - started)
            if found is not None:
                raise SystemExit(f"{case.name}: a delta v2 -> v1 is stored; the miss is not measured")
    return {"case": case.name, "requests": len(wire), "wire_bytes": sum(wire), "body_bytes": client.bytes_received,
            "wall_ms_best": round(min(walls) * 1000, 2), "wall_ms_median": round(statistics.median(walls) * 1000, 2),
            "one_head_ms_median": round(statistics.median(heads) * 1000, 2)}


def tool_argv(tool: str, bed: Bed, case: Case, layout: Path) -> list[str]:
    ref = f"{bed.host}/{case.repo}:v2"
    py = sys.executable
    if tool in ("ours-delta", "ours-delta+np", "ours-delta+verify", "ours-before"):
        verify = ["--verify-key", str(bed.key.public_path)] if tool == "ours-delta+verify" else []
        # -P: the package comes from PYTHONPATH (this checkout, or --before's), not the working directory
        return [py, "-P", "-m", "doras_oras", "pull", ref, "--oci-layout", str(layout), *bed.tls_args,
                "--server", bed.doras_proxy.url, "--json", *verify]
    if tool == "ours-full":
        return [py, "-m", "doras_oras", "pull", ref, "--oci-layout", str(layout), "--plain-http", "--json",
                "--no-registry-deltas"]  # the delta planted for the server would be found in the registry
    if tool == "oras-py":
        return [py, str(Path(__file__).resolve()), "--child", "oras-py", bed.host, ref, str(layout), "v2"]
    if tool == "skopeo":
        return ["skopeo", "copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{layout}:v2"]
    if tool == "oras-cli":
        return [find_tool("oras"), "copy", "--from-plain-http", ref, "--to-oci-layout", f"{layout}:v2"]
    raise ValueError(tool)


def go_dirs(bed: Bed) -> tuple[Path, Path]:
    """The Go client's output and state directories (its state names the output's absolute path,
    so every run uses the same two paths)."""
    return bed.work / "go-out", bed.work / "go-state"


def go_argv(bed: Bed, case: Case, tag: str) -> list[str]:
    assert bed.go is not None
    out, state = go_dirs(bed)
    return [str(bed.go.cli), "--remote", bed.doras_proxy.url, "--log-level", "warn", "pull",
            "--output", str(out), "--internal-dir", str(state), f"{bed.host}/{case.repo}:{tag}"]


def run_go(bed: Bed, case: Case, link: str, timeout_s: float) -> Row:
    """The Go client's delta pull of v2 into its output directory holding v1; checked by digest."""
    assert bed.go is not None
    out, state = go_dirs(bed)
    for path in (out, state):
        shutil.rmtree(path, ignore_errors=True)
    work = bed.work / case.name
    shutil.copytree(work / "go-out-v1", out)
    shutil.copytree(work / "go-state-v1", state)
    bed.reset()
    log = bed.work / f"out-{case.name}-go.txt"
    wall, rss, cpu = run_child_usage(go_argv(bed, case, "v2"), output=log, env=bed.go.env, timeout_s=timeout_s)
    received, sent = bed.received(), bed.requests()
    title = case.v2_layer["annotations"][ANNOTATION_TITLE]
    h = hashlib.sha256()
    with open(out / title, "rb") as fh:
        while chunk := fh.read(4 * MiB):
            h.update(chunk)
    if "sha256:" + h.hexdigest() != case.v2_layer["digest"]:
        raise RuntimeError(f"go-delta on {case.name}: wrong {title} after the pull")
    delta_asks = len(bed.doras_proxy.requests("/api/v1/delta"))
    detail = f"delta; {delta_asks} delta request(s); server's own registry requests {bed.reg_proxy.server_requests()}"
    row = Row(case.name, link, "go-delta", received, round(wall, 3), rss, detail, requests=sent, wire=bed.wire(),
              cpus=[round(cpu, 3)])
    print(f"# {case.name:<7} {link:<9} go-delta          {received:>12,} B {sent:>4} req {wall:8.2f} s "
          f"{rss / MiB:7.1f} MiB  {detail}", file=sys.stderr, flush=True)
    return row


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
    if tool == "ours-before":
        env["PYTHONPATH"] = str(bed.before)
    bed.reset()
    wall, rss, cpu = run_child_usage(tool_argv(tool, bed, case, layout), output=output, env=env,
                                     timeout_s=timeout_s)
    received = bed.received()
    sent = bed.requests()
    detail = check_result(tool, case, layout, output)
    shutil.rmtree(layout)
    row = Row(case.name, link, tool, received, round(wall, 3), rss, detail, requests=sent,
              wire=bed.wire() if bed.go is not None else [], cpus=[round(cpu, 3)])
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
               first.detail, [r.wall_s for r in runs], max(r.requests for r in runs), first.wire,
               [c for r in runs for c in r.cpus])


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


# The targets of issue 24: our delta pull's wall time over the Go client's, by size (MiB).
WALL_TARGETS = {4: 1.0, 64: 0.5, 256: 0.33}


def side_by_side(rows: list[Row]) -> list[dict[str, Any]]:
    """Our delta pull over the Go client's (``go-delta``), per case, from the same run:
    wall (best and median of the interleaved repeats), wire bytes and peak RSS."""
    out = []
    for go in (r for r in rows if r.tool == "go-delta"):
        ours = next(r for r in rows if (r.case, r.link, r.tool) == (go.case, go.link, "ours-delta"))
        ours_best, go_best = min(ours.walls or [ours.wall_s]), min(go.walls or [go.wall_s])
        mib = int(go.case.removeprefix("bin")) if go.case.startswith("bin") else None
        target = WALL_TARGETS.get(mib) if mib is not None else None
        entry: dict[str, Any] = {
            "case": go.case, "link": go.link, "repeats": len(ours.walls) or 1,
            "ours_best_s": ours_best, "go_best_s": go_best, "best_x": round(ours_best / go_best, 2),
            "ours_median_s": ours.wall_s, "go_median_s": go.wall_s, "median_x": round(ours.wall_s / go.wall_s, 2),
            "ours_bytes": ours.bytes_received, "go_bytes": go.bytes_received,
            "bytes_x": round(ours.bytes_received / max(1, go.bytes_received), 3),
            "ours_requests": ours.requests, "go_requests": go.requests,
            "ours_rss_mib": round(ours.peak_rss / MiB, 1), "go_rss_mib": round(go.peak_rss / MiB, 1),
            "rss_x": round(ours.peak_rss / go.peak_rss, 2),
            "ours_cpu_median_s": round(statistics.median(ours.cpus), 3) if ours.cpus else None,
            "go_cpu_median_s": round(statistics.median(go.cpus), 3) if go.cpus else None,
            "wall_target_x": target,
            **before_figures(rows, ours),
            "wall_target_met": None if target is None else ours.wall_s / go.wall_s <= target,
            "bytes_target_met": ours.bytes_received <= go.bytes_received,
            "rss_target_met": ours.peak_rss <= RSS_TARGET,
        }
        out.append(entry)
    return out


def before_figures(rows: list[Row], ours: Row) -> dict[str, Any]:
    """With ``--before``: this checkout's delta pull over the other's (``ours-before``), same run."""
    before = next((r for r in rows if (r.case, r.link, r.tool) == (ours.case, ours.link, "ours-before")), None)
    if before is None:
        return {}
    best = min(before.walls or [before.wall_s])
    cpu = round(statistics.median(before.cpus), 3) if before.cpus else None
    return {"before_best_s": best, "before_median_s": before.wall_s, "before_cpu_median_s": cpu,
            "after_over_before_best_x": round(min(ours.walls or [ours.wall_s]) / best, 2),
            "after_over_before_median_x": round(ours.wall_s / before.wall_s, 2),
            "after_over_before_cpu_x": round(statistics.median(ours.cpus) / cpu, 2) if cpu and ours.cpus else None}


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
    for row in rows:
        if row.wire:
            print(f"# wire, {row.case} {row.tool}: " + "; ".join(row.wire))
    for g in side_by_side(rows):
        target = "" if g["wall_target_x"] is None else f", target <= {g['wall_target_x']}: {g['wall_target_met']}"
        print(f"# ours / Go, {g['case']} (n={g['repeats']}): wall best {g['ours_best_s']:.2f} / "
              f"{g['go_best_s']:.2f} s = {g['best_x']}x, median {g['ours_median_s']:.2f} / "
              f"{g['go_median_s']:.2f} s = {g['median_x']}x{target}; wire {g['ours_bytes']:,} / "
              f"{g['go_bytes']:,} B = {g['bytes_x']}x ({g['ours_requests']} / {g['go_requests']} requests); "
              f"peak RSS {g['ours_rss_mib']} / {g['go_rss_mib']} MiB = {g['rss_x']}x "
              f"(target ours <= {RSS_TARGET // MiB} MiB: {g['rss_target_met']}); "
              f"CPU (user + system) median {g['ours_cpu_median_s']} / {g['go_cpu_median_s']} s")
        if "before_best_s" in g:
            print(f"# this checkout / --before, {g['case']}: wall best {g['ours_best_s']:.2f} / "
                  f"{g['before_best_s']:.2f} s = {g['after_over_before_best_x']}x, median {g['ours_median_s']:.2f} / "
                  f"{g['before_median_s']:.2f} s = {g['after_over_before_median_x']}x; CPU median "
                  f"{g['ours_cpu_median_s']} / {g['before_cpu_median_s']} s = {g['after_over_before_cpu_x']}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (2 MiB binary, 200 files)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--rate-mbit", type=float, help="the slow link, Mbit/s (default 10; with the Go "
                        "peers 0; 0: none)")
    parser.add_argument("--sizes", help="binary sizes in MiB, comma-separated (default 64,256; quick: 2; "
                        "with the Go peers 4,16,64,256)")
    parser.add_argument("--files", type=int, help="files of the tree case (default 2000; quick: 200; 0: none; "
                        "with the Go peers 0)")
    parser.add_argument("--tools", help="tools to run, comma-separated (default: all; with the Go peers "
                        "ours-delta)")
    parser.add_argument("--repeat", type=int, metavar="N",
                        help="run each delta pull, and each loopback pull, N times: median wall time, "
                             "largest peak RSS (default 1; with the Go peers 5)")
    parser.add_argument("--go-doras-cli", type=Path, metavar="PATH",
                        help="the Go doras-cli: a TLS registry, the Go server (--go-doras-server) in front, "
                             "and the Go client's delta pull (go-delta) interleaved with ours")
    parser.add_argument("--go-doras-server", type=Path, metavar="PATH", help="the Go doras-server")
    parser.add_argument("--slow-full-max-mib", type=float, default=1e9,
                        help="on the slow link, run the full pulls only for layers up to this size")
    parser.add_argument("--before", type=Path, metavar="DIR",
                        help="with the Go peers: also run our delta pull from the checkout DIR (ours-before), "
                             "interleaved")
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
    if (args.go_doras_cli is None) != (args.go_doras_server is None):
        raise SystemExit("--go-doras-cli and --go-doras-server go together")
    go = None if args.go_doras_cli is None else (args.go_doras_cli.resolve(), args.go_doras_server.resolve())
    default_sizes = "2" if args.quick else ("4,16,64,256" if go else "64,256")
    sizes = [int(s) for s in (args.sizes or default_sizes).split(",") if s]
    files = args.files if args.files is not None else (200 if args.quick else 0 if go else 2000)
    tools = [t for t in (args.tools or ("ours-delta" if go else ",".join(TOOLS))).split(",") if t]
    if "ours-delta" not in tools or any(t not in TOOLS for t in tools):
        raise SystemExit(f"--tools: choose from {', '.join(TOOLS)}, with ours-delta")
    if go:
        if any(not t.startswith("ours-delta") or t == "ours-delta+verify" for t in tools) or files:
            raise SystemExit("with the Go peers: the binary cases and our delta pulls (no full pulls, "
                             "no tree, no --verify-key: v2 is not signed there)")
        tools.append("go-delta")
        if args.before is not None:
            tools.insert(0, "ours-before")
    elif args.before is not None:
        raise SystemExit("--before goes with the Go peers")
    repeat = args.repeat or (5 if go else 1)
    rate_mbit = args.rate_mbit if args.rate_mbit is not None else (0 if go else 10.0)
    edits = 200 if args.quick else 2000
    links: list[tuple[str, float | None]] = [("loopback", None)]
    if rate_mbit:
        links.append((f"{rate_mbit:g}Mbit/s", rate_mbit * 1e6 / 8))
    # a SIGTERM unwinds the test bed (stops the registry, removes the work dir)
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    # As installed by pip (which compiles bytecode), whatever PYTHONDONTWRITEBYTECODE says:
    # a child that compiles the package from source on every run pays ~0.15 s more.
    for checkout in (ROOT, *([args.before.resolve()] if args.before else [])):
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(checkout / "doras_oras")], check=True,
                       capture_output=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-pull-") as tmp, test_bed(Path(tmp), go) as bed:
        bed.before = args.before.resolve() if args.before else None
        cases = [Case(f"bin{s}", f"bench/bin{s}", s * MiB) for s in sizes]
        kinds = ["bin"] * len(cases)
        if files:
            cases.append(Case("tree", "bench/tree", 0))
            kinds.append("tree")
        for case, kind in zip(cases, kinds, strict=True):
            prepare_case(bed, case, kind, case.size, edits, files)
        misses = [probe_miss(bed, case, repeat) for case in cases]
        builds_before = bed.doras.builds
        rows: list[Row] = []
        for link, rate in links:
            bed.set_rate(rate)
            for case in cases:
                chosen = [t for t in tools
                          if not (rate and not t.startswith("ours-delta") and case.size > args.slow_full_max_mib * MiB)]
                timeout = 120 + (case.size / rate * 1.5 if rate else 60)
                reps = {t: repeat if (not rate or t.endswith("-delta") or "-delta+" in t) else 1
                        for t in chosen}
                runs: dict[str, list[Row]] = {t: [] for t in chosen}
                # repeats interleaved (tool A, B, C, A, B, C, ...): a drift of the machine's load
                # shows in every tool's spread instead of biasing one tool's median
                for rep in range(max(reps.values(), default=0)):
                    for tool in chosen:
                        if rep < reps[tool]:
                            runs[tool].append(run_go(bed, case, link, timeout) if tool == "go-delta"
                                              else run_tool(bed, case, tool, link, timeout))
                rows.extend(combine(runs[tool]) for tool in chosen)
        if bed.doras.builds != builds_before:
            raise SystemExit("the server built deltas during the timed runs")
    total = time.perf_counter() - started
    case_info = [{"name": c.name, "layer_size": c.size, "delta_size": c.delta_size,
                  "v1": c.v1_digest, "v2": c.v2_digest} for c in cases]
    if args.json:
        print(json.dumps({"rows": [asdict(r) for r in rows], "ratios": ratios(rows),
                          "trust": trust_overhead(rows), "go": side_by_side(rows), "cases": case_info,
                          "probe_miss": misses,
                          "total_s": round(total, 1)}))
    else:
        print_table(rows, case_info)
        for miss in misses:
            print(f"# {miss['case']}: a registry-delta probe that misses: {miss['requests']} requests, "
                  f"{miss['wire_bytes']} B on the wire ({miss['body_bytes']} B of bodies), "
                  f"{miss['wall_ms_best']} ms best, {miss['wall_ms_median']} ms median "
                  f"(one HEAD of the target: {miss['one_head_ms_median']} ms median)")
        print(f"# total {total:.0f} s")


if __name__ == "__main__":
    main()
