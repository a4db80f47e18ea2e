"""Pulls over bad networks: the real docker-registry behind the fault proxy.

Drops, kill -9 and resume, 429/503 storms, stalls, a lost delta blob, progress reports;
library and CLI. Credentials, TLS and token auth are in test_pull_auth.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from transport_helpers import Sleeps, quick_policy

from doras_oras.descriptor import Descriptor
from doras_oras.edgeapi import EdgeClient
from doras_oras.errors import ConnectError, RegistryError, TransferTimeoutError
from doras_oras.layout import OCILayout
from doras_oras.reference import Reference
from doras_oras.registry import DeltaRegistry
from doras_oras.testing.faultproxy import FaultProxy
from doras_oras.testing.registry import RegistryServer
from doras_oras.testing.server import DorasServer
from doras_oras.testing.vectors import doras_vectors, push_recorded
from tests.layout_support import (
    REPO_ROOT,
    cli,
    error_json,
    layout_problems,
    oras_push_file,
    sha256,
)
from tests.pull_support import behind, check_layout, snapshot, unique

MiB = 1 << 20
CHUNK = 64 * 1024


def pushed(registry: RegistryServer, ref: str, tmp_path: Path, payload: bytes, name: str = "data.bin") -> tuple[str, int]:
    """Push ``payload`` as a one-file artifact with the oras CLI; return (blob path suffix, manifest size)."""
    work = tmp_path / ("push-" + ref.replace("/", "-").replace(":", "-"))
    work.mkdir(exist_ok=True)
    oras_push_file(registry.host, ref, work, name, payload)
    repo = ref.rpartition(":")[0]
    manifest = DeltaRegistry(insecure=True).fetch_parsed(f"{registry.host}/{ref}")
    return f"/v2/{repo}/blobs/{sha256(payload)}", manifest.descriptor.size


def ranges(proxy: FaultProxy, path: str) -> list[str | None]:
    return [r.headers.get("Range") for r in proxy.requests(path) if r.method == "GET"]


def only_lock(layout_dir: Path) -> list[str]:
    return sorted(p.name for p in (layout_dir / "ingest").iterdir())


# --- drops ---------------------------------------------------------------------


@dataclass
class Dropping:
    """An 8 MiB one-file artifact pushed with the oras CLI, behind a fault proxy."""

    payload: bytes
    blob_path: str
    manifest_size: int
    proxy: FaultProxy


@pytest.fixture
def dropping(oci_registry: RegistryServer, tmp_path: Path) -> Iterator[Dropping]:
    payload = os.urandom(8 * MiB)
    blob_path, manifest_size = pushed(oci_registry, "net/drop:v1", tmp_path, payload)
    with FaultProxy(oci_registry.url) as proxy:
        yield Dropping(payload, blob_path, manifest_size, proxy)


@pytest.mark.timeout(120)
def test_full_pull_survives_drops_mid_blob(dropping: Dropping, tmp_path: Path) -> None:
    payload, blob_path, manifest_size, proxy = (dropping.payload, dropping.blob_path, dropping.manifest_size,
                                                dropping.proxy)
    proxy.add("drop", blob_path, after_bytes=1 * MiB, times=3)
    client = DeltaRegistry(insecure=True, policy=quick_policy())
    layout = OCILayout.open(tmp_path / "L")
    result = client.pull_full(f"{proxy.host}/net/drop:v1", layout)
    proxy.wait_idle()
    assert layout_problems(tmp_path / "L") == []
    assert layout.blob_path(sha256(payload)).read_bytes() == payload
    drops = 3
    assert len(payload) + manifest_size <= result.bytes_received <= len(payload) + manifest_size + drops * CHUNK
    assert ranges(proxy, blob_path) == [None, f"bytes={MiB}-", f"bytes={2 * MiB}-", f"bytes={3 * MiB}-"]
    assert proxy.bytes_sent(blob_path) == len(payload)  # nothing sent twice
    assert only_lock(tmp_path / "L") == ["lock"]


@pytest.mark.timeout(120)
def test_cli_pull_survives_drops_mid_blob(dropping: Dropping, tmp_path: Path) -> None:
    payload, blob_path, manifest_size, proxy = (dropping.payload, dropping.blob_path, dropping.manifest_size,
                                                dropping.proxy)
    proxy.add("drop", blob_path, after_bytes=3 * MiB, times=2)
    proc = cli("pull", f"{proxy.host}/net/drop:v1", "--oci-layout", str(tmp_path / "C"), "--plain-http",
               "--json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    proxy.wait_idle()
    # what the client counted is what crossed the wire (the CLI may read the manifest twice)
    assert summary["bytes_received"] == proxy.bytes_sent()
    assert proxy.bytes_sent(blob_path) == len(payload) <= summary["bytes_received"] - manifest_size
    assert ranges(proxy, blob_path) == [None, f"bytes={3 * MiB}-", f"bytes={6 * MiB}-"]
    assert layout_problems(tmp_path / "C") == []


# --- kill -9 and resume -------------------------------------------------------------


@pytest.mark.timeout(180)
def test_cli_killed_mid_blob_resumes_with_range(oci_registry: RegistryServer, tmp_path: Path) -> None:
    size = 64 * MiB
    payload = os.urandom(size)
    blob_path, manifest_size = pushed(oci_registry, "net/kill:v1", tmp_path, payload)
    layout_dir = tmp_path / "L"
    partial = layout_dir / "ingest" / f"sha256-{sha256(payload).split(':')[1]}.partial"
    with FaultProxy(oci_registry.url) as proxy:
        proxy.add("rate", blob_path, bytes_per_s=8 * MiB, times=1)
        args = ["pull", f"{proxy.host}/net/kill:v1", "--oci-layout", str(layout_dir), "--plain-http", "--json"]
        child = subprocess.Popen([sys.executable, "-m", "doras_oras", *args], cwd=REPO_ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            while not (partial.exists() and partial.stat().st_size >= 16 * MiB):
                assert child.poll() is None, child.communicate()
                assert time.monotonic() < deadline, "the pull did not get to 16 MiB"
                time.sleep(0.02)
            child.send_signal(signal.SIGKILL)
        finally:
            child.kill()
            child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL
        kept = partial.stat().st_size
        assert 16 * MiB <= kept < size
        sidecar = json.loads(partial.with_name(partial.name + ".meta").read_text())
        assert sidecar == {"digest": sha256(payload), "size": size}
        assert layout_problems(layout_dir) == [] and OCILayout.open(layout_dir).images() == []
        proxy.wait_idle()
        first_sent = proxy.bytes_sent(blob_path)
        # what the killed process had received but not written: at most what was in flight
        assert kept <= first_sent <= kept + 4 * MiB
        print(f"killed at {kept} bytes on disk; the proxy had sent {first_sent} ({first_sent - kept} in flight)")

        proxy.reset_counters()
        proc = cli(*args, timeout=120)
        assert proc.returncode == 0, proc.stderr
        summary = json.loads(proc.stdout)
        proxy.wait_idle()
        assert ranges(proxy, blob_path) == [f"bytes={kept}-"]
        # nothing fetched twice: the blob's missing bytes only, and the count is what crossed the wire
        assert proxy.bytes_sent(blob_path) == size - kept
        assert summary["bytes_received"] == proxy.bytes_sent()
        assert summary["bytes_received"] - (size - kept) in (manifest_size, 2 * manifest_size)
    assert layout_problems(layout_dir) == []
    assert OCILayout.open(layout_dir).blob_path(sha256(payload)).read_bytes() == payload
    assert only_lock(layout_dir) == ["lock"]  # partial and sidecar gone


# --- 429/503 storms -----------------------------------------------------------------


@pytest.mark.timeout(60)
def test_429_and_503_storms_are_waited_out_with_retry_after(oci_registry: RegistryServer, tmp_path: Path) -> None:
    payload = os.urandom(MiB)
    blob_path, manifest_size = pushed(oci_registry, "net/storm:v1", tmp_path, payload)
    manifest_path = "/v2/net/storm/manifests/v1"
    with FaultProxy(oci_registry.url) as proxy:
        proxy.add("status", manifest_path, status=429, retry_after="1", times=2)
        proxy.add("status", blob_path, status=503, retry_after="1", times=2)
        client = DeltaRegistry(insecure=True, policy=quick_policy(retry_after_max_s=5.0, max_attempts=3))
        sleeps = Sleeps()
        client.transport._sleep = sleeps  # the waits, recorded instead of slept
        layout = OCILayout.open(tmp_path / "L")
        result = client.pull_full(f"{proxy.host}/net/storm:v1", layout)
        assert [r.status for r in proxy.requests(manifest_path)] == [429, 429, 200]
        assert [r.status for r in proxy.requests(blob_path)] == [503, 503, 200]
        assert sleeps == [1.0] * 4  # four Retry-After: 1 honoured
        assert result.bytes_received == manifest_size + len(payload)  # error bodies are not content
        assert layout_problems(tmp_path / "L") == []


@pytest.mark.timeout(60)
def test_a_storm_that_does_not_end_is_a_clear_error_after_max_attempts_and_writes_nothing(
    oci_registry: RegistryServer, tmp_path: Path
) -> None:
    pushed(oci_registry, "net/storm-endless:v1", tmp_path, os.urandom(MiB))
    with FaultProxy(oci_registry.url) as proxy:
        proxy.add("status", "/v2/net/storm-endless/manifests/", status=503, retry_after="0")
        client = DeltaRegistry(insecure=True, policy=quick_policy(retry_after_max_s=5.0, max_attempts=3))
        other = OCILayout.open(tmp_path / "M")
        with pytest.raises(RegistryError, match=r"503.*gave up after 3 attempts") as info:
            client.pull_full(f"{proxy.host}/net/storm-endless:v1", other)
        assert info.value.status == 503
        assert other.images() == [] and only_lock(tmp_path / "M") == ["lock"]


# --- stalls -------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_stall_is_a_quick_clear_timeout_and_the_next_pull_resumes(
    oci_registry: RegistryServer, tmp_path: Path
) -> None:
    payload = os.urandom(4 * MiB)
    blob_path, _ = pushed(oci_registry, "net/stall:v1", tmp_path, payload)
    layout_dir = tmp_path / "L"
    with FaultProxy(oci_registry.url) as proxy:
        # stalls that outlast the test (300 s): only the client's timeouts can end the pull
        proxy.add("stall", blob_path, after_bytes=MiB, times=1)
        proxy.add("stall", blob_path, after_bytes=0)
        args = ["pull", f"{proxy.host}/net/stall:v1", "--oci-layout", str(layout_dir), "--plain-http", "--json"]
        proc = cli(*args, "--read-timeout", "1", "--deadline", "4", timeout=60)
        assert proc.returncode == 1 and error_json(proc)["error"] == "TransferTimeoutError"
        assert "deadline" in proc.stderr or "timed out" in proc.stderr, proc.stderr
        assert layout_problems(layout_dir) == [] and OCILayout.open(layout_dir).images() == []
        partial = layout_dir / "ingest" / f"sha256-{sha256(payload).split(':')[1]}.partial"
        assert partial.stat().st_size == MiB

        proxy.clear()
        proxy.reset_counters()
        proc = cli(*args, timeout=60)
        assert proc.returncode == 0, proc.stderr
        proxy.wait_idle()
        assert ranges(proxy, blob_path) == [f"bytes={MiB}-"]
        assert proxy.bytes_sent(blob_path) == len(payload) - MiB
        assert json.loads(proc.stdout)["bytes_received"] == proxy.bytes_sent()
    assert layout_problems(layout_dir) == []
    assert only_lock(layout_dir) == ["lock"]


@pytest.mark.timeout(60)
def test_library_stall_raises_transfer_timeout(oci_registry: RegistryServer, tmp_path: Path) -> None:
    payload = os.urandom(MiB)
    blob_path, _ = pushed(oci_registry, "net/stall-lib:v1", tmp_path, payload)
    with FaultProxy(oci_registry.url) as proxy:
        proxy.add("stall", blob_path, after_bytes=1000)  # outlasts the test: only the read timeout ends it
        client = DeltaRegistry(insecure=True, policy=quick_policy(read_timeout_s=0.5, max_attempts=2))
        sleeps = Sleeps()
        client.transport._sleep = sleeps
        layout = OCILayout.open(tmp_path / "L")
        with pytest.raises(TransferTimeoutError, match="timed out"):
            client.pull_full(f"{proxy.host}/net/stall-lib:v1", layout)
        assert len(sleeps) == 1 and len(proxy.requests(blob_path)) == 2  # two attempts, one short wait
        assert layout.images() == []


@pytest.mark.timeout(60)
def test_a_resumed_download_reports_progress_from_its_offset(oci_registry: RegistryServer, tmp_path: Path) -> None:
    payload = os.urandom(2 * MiB)
    blob_path, _ = pushed(oci_registry, "net/progress:v1", tmp_path, payload)
    descriptor = Descriptor(media_type="application/octet-stream", digest=sha256(payload), size=len(payload))
    target = tmp_path / "blob.partial"
    with FaultProxy(oci_registry.url) as proxy:
        proxy.add("drop", blob_path, after_bytes=700_000, times=1)
        ref = Reference.parse(f"{proxy.host}/net/progress:v1")
        with pytest.raises(ConnectError):
            DeltaRegistry(insecure=True, policy=quick_policy(max_attempts=1)).download_to(ref, descriptor, target)
        seen: list[int] = []
        DeltaRegistry(insecure=True, policy=quick_policy()).client.download_to(ref, descriptor, target,
                                                                                on_progress=seen.append)
    assert seen and seen[0] > 700_000 and seen[-1] == len(payload)  # the bar starts where the file was


@pytest.mark.timeout(60)
def test_download_to_keeps_a_blob_out_of_blobs_and_resumes(oci_registry: RegistryServer, tmp_path: Path) -> None:
    payload = os.urandom(2 * MiB)
    blob_path, _ = pushed(oci_registry, "net/delta:v1", tmp_path, payload)
    descriptor = Descriptor(media_type="application/bsdiff+zstd", digest=sha256(payload), size=len(payload))
    layout = OCILayout.open(tmp_path / "L")
    target = layout.partial_path(descriptor)
    with FaultProxy(oci_registry.url) as proxy:
        proxy.add("drop", blob_path, after_bytes=700_000, times=1)
        ref = Reference.parse(f"{proxy.host}/net/delta:v1")
        cut = DeltaRegistry(insecure=True, policy=quick_policy(max_attempts=1))
        with pytest.raises(ConnectError):
            cut.download_to(ref, descriptor, target)
        assert target.stat().st_size == 700_000 and cut.bytes_received == 700_000
        client = DeltaRegistry(insecure=True, policy=quick_policy())
        assert client.download_to(ref, descriptor, target) == target
        proxy.wait_idle()
        assert ranges(proxy, blob_path) == [None, "bytes=700000-"]
        assert client.bytes_received == len(payload) - 700_000
    assert target.read_bytes() == payload
    assert not layout.blob_path(descriptor.digest).exists()
    assert not target.with_name(target.name + ".meta").exists()
    with layout.lock():  # a complete download is kept until used (it is not in blobs/)
        pass
    assert target.exists()
    # and the layout variant puts it into blobs/
    with layout.lock():
        assert client.download_blob(ref, descriptor, layout) == layout.blob_path(descriptor.digest)
    assert not target.exists() and layout.blob_path(descriptor.digest).read_bytes() == payload


@pytest.mark.timeout(60)
def test_pull_full_reuses_a_manifest_already_fetched(oci_registry: RegistryServer, tmp_path: Path) -> None:
    payload = os.urandom(300_000)
    _, manifest_size = pushed(oci_registry, "net/once:v1", tmp_path, payload)
    client = DeltaRegistry(insecure=True)
    parsed = client.fetch_parsed(f"{oci_registry.host}/net/once:v1")
    result = client.pull_full(f"{oci_registry.host}/net/once:v1", OCILayout.open(tmp_path / "L"), parsed=parsed)
    assert result.manifest.digest == parsed.descriptor.digest
    assert result.bytes_received == len(payload)  # the manifest was not fetched again
    assert client.bytes_received == len(payload) + manifest_size
    assert layout_problems(tmp_path / "L") == []
    with pytest.raises(ValueError, match="names another"):
        client.pull_full(f"{oci_registry.host}/net/once@{sha256(b'x')}", OCILayout.open(tmp_path / "L"),
                         parsed=parsed)


# --- the delta-aware pull: a lost delta blob, progress reports -------------------------


def test_lost_delta_blob_falls_back_and_a_failing_full_pull_changes_nothing(
    oci_registry: RegistryServer, doras_server: DorasServer, tmp_path: Path,
) -> None:
    vec = doras_vectors() / "bsdiff"
    repo = unique("lost")
    digests = push_recorded(oci_registry.url, vec, repo)
    target_layer = json.loads((vec / "to.manifest.json").read_bytes())["layers"][0]["digest"]
    with FaultProxy(oci_registry.url) as proxy:
        server = behind(doras_server, proxy)
        layout = tmp_path / "L"
        client = DeltaRegistry(insecure=True)
        ref = f"{proxy.host}/{repo}"
        client.pull_delta(f"{ref}:v1", layout, doras_url=server.url)
        with EdgeClient(server.url, allow_http=True) as edge:
            answer = edge.read_delta(f"{ref}@{digests['from_digest']}", f"{ref}:v2", ["bsdiff", "zstd"])
        delta_manifest = json.loads(requests.get(
            f"{oci_registry.url}/v2/{repo}/manifests/{answer.delta_image.digest}",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}, timeout=10).content)
        delta_blob = delta_manifest["layers"][0]["digest"]
        proxy.add("status", path=f"/blobs/{delta_blob}$", status=404, body=b'{"errors":[]}')
        # the delta blob is gone (and the target layer too): an error, nothing written
        layer_fault = proxy.add("status", path=f"/blobs/{target_layer}$", status=404, body=b'{"errors":[]}')
        before = snapshot(layout)
        with pytest.raises(RegistryError, match="404"):
            client.pull_delta(f"{ref}:v2", layout, doras_url=server.url)
        assert layer_fault.applied == 1
        assert snapshot(layout) == before
        check_layout(layout, "v1", manifest=(vec / "from.manifest.json").read_bytes())
        # the target layer is back: the lost delta means a full pull
        proxy.faults.remove(layer_fault)
        result = client.pull_delta(f"{ref}:v2", layout, doras_url=server.url)
    assert result.status == "full"
    assert result.reason_code == "delta-download-failed" and "404" in result.reason
    check_layout(layout, "v2", manifest=(vec / "to.manifest.json").read_bytes())
    check_layout(layout, "v1", manifest=(vec / "from.manifest.json").read_bytes())


def test_progress_reports(oci_registry: RegistryServer, doras_server: DorasServer, tmp_path: Path) -> None:
    repo = unique("progress")
    push_recorded(oci_registry.url, doras_vectors() / "bsdiff+gzip", repo)
    client = DeltaRegistry(insecure=True)
    layout = tmp_path / "L"
    client.pull_delta(f"{oci_registry.host}/{repo}:v1", layout, doras_url=doras_server.url)
    seen: list[tuple[str, int, int]] = []
    result = client.pull_delta(f"{oci_registry.host}/{repo}:v2", layout, doras_url=doras_server.url,
                               progress=lambda phase, done, total: seen.append((phase, done, total)))
    assert result.status == "delta" and result.delta_size
    deltas = [s for s in seen if s[0] == "delta"]
    assert deltas[-1] == ("delta", result.delta_size, result.delta_size)
    assert [d[1] for d in deltas] == sorted(d[1] for d in deltas)
    size = (doras_vectors() / "bsdiff+gzip" / "to.layer").stat().st_size
    assert seen[-1] == ("apply", size, size)
