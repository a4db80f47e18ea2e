"""Full pulls over bad networks: the real docker-registry behind the fault proxy.

Drops, kill -9 and resume, 429/503 storms, stalls, a blob redirected to a
storage host, the htpasswd, TLS and token-auth registries; library and CLI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from token_registry import TokenRegistry
from transport_helpers import push_blob, quick_policy

from doras_oras.descriptor import Descriptor
from doras_oras.errors import ConnectError, RegistryError, TransferTimeoutError
from doras_oras.layout import OCILayout
from doras_oras.reference import Reference
from doras_oras.registry import DeltaRegistry
from doras_oras.testing.faultproxy import FaultProxy
from doras_oras.testing.pytest_plugin import REGISTRY_PASSWORD, REGISTRY_USER
from doras_oras.testing.registry import RegistryServer, find_tool
from tests.layout_support import (
    REPO_ROOT,
    cli,
    error_json,
    layout_problems,
    oras_push_file,
    run,
    sha256,
)

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


@pytest.mark.timeout(120)
def test_full_pull_survives_drops_mid_blob(oci_registry: RegistryServer, tmp_path: Path) -> None:
    payload = os.urandom(8 * MiB)
    blob_path, manifest_size = pushed(oci_registry, "net/drop:v1", tmp_path, payload)
    with FaultProxy(oci_registry.url) as proxy:
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

        # the CLI, through the same kind of link
        proxy.reset_counters()
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
        layout = OCILayout.open(tmp_path / "L")
        started = time.monotonic()
        result = client.pull_full(f"{proxy.host}/net/storm:v1", layout)
        elapsed = time.monotonic() - started
        assert [r.status for r in proxy.requests(manifest_path)] == [429, 429, 200]
        assert [r.status for r in proxy.requests(blob_path)] == [503, 503, 200]
        assert 4.0 <= elapsed < 15  # four Retry-After: 1 honoured
        assert result.bytes_received == manifest_size + len(payload)  # error bodies are not content
        assert layout_problems(tmp_path / "L") == []

        # a storm that does not end: a clear error after max_attempts, nothing written
        proxy.add("status", "/v2/net/storm/manifests/", status=503, retry_after="0")
        other = OCILayout.open(tmp_path / "M")
        with pytest.raises(RegistryError, match=r"503.*gave up after 3 attempts") as info:
            client.pull_full(f"{proxy.host}/net/storm:v1", other)
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
        proxy.add("stall", blob_path, after_bytes=MiB, stall_s=5, times=1)
        proxy.add("stall", blob_path, after_bytes=0, stall_s=5)
        args = ["pull", f"{proxy.host}/net/stall:v1", "--oci-layout", str(layout_dir), "--plain-http", "--json"]
        started = time.monotonic()
        proc = cli(*args, "--read-timeout", "1", "--deadline", "4", timeout=60)
        elapsed = time.monotonic() - started
        assert proc.returncode == 1 and error_json(proc)["error"] == "TransferTimeoutError"
        assert "deadline" in proc.stderr or "timed out" in proc.stderr, proc.stderr
        assert elapsed < 12
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
        proxy.add("stall", blob_path, after_bytes=1000, stall_s=5)
        client = DeltaRegistry(insecure=True, policy=quick_policy(read_timeout_s=0.5, max_attempts=2))
        layout = OCILayout.open(tmp_path / "L")
        started = time.monotonic()
        with pytest.raises(TransferTimeoutError, match="timed out"):
            client.pull_full(f"{proxy.host}/net/stall-lib:v1", layout)
        assert time.monotonic() - started < 5
        assert layout.images() == []


# --- redirects to storage, credentials ---------------------------------------------


@pytest.mark.timeout(90)
def test_blob_redirected_to_storage_host_never_sees_credentials(
    oci_registry: RegistryServer, oci_registry_auth: RegistryServer, tmp_path: Path
) -> None:
    payload = os.urandom(2 * MiB)
    (tmp_path / "data.bin").write_bytes(payload)
    run(find_tool("oras"), "push", "--plain-http", "-u", REGISTRY_USER, "-p", REGISTRY_PASSWORD,
        f"{oci_registry_auth.host}/net/redir:v1", "data.bin", cwd=tmp_path)
    # "storage": the plain registry holds the same blob at the same path
    run(find_tool("oras"), "push", "--plain-http", f"{oci_registry.host}/net/redir:v1", "data.bin", cwd=tmp_path)
    blob_path = f"/v2/net/redir/blobs/{sha256(payload)}"
    with FaultProxy(oci_registry_auth.url) as front, FaultProxy(oci_registry.url) as storage:
        front.add("redirect", blob_path, location=storage.url)
        config = tmp_path / "docker-config.json"
        import base64

        secret = base64.b64encode(f"{REGISTRY_USER}:{REGISTRY_PASSWORD}".encode()).decode()
        config.write_text(json.dumps({"auths": {front.host: {"auth": secret}}}))
        proc = cli("pull", f"{front.host}/net/redir:v1", "--oci-layout", str(tmp_path / "L"), "--plain-http",
                   "--allow-insecure-auth", "--registry-config", str(config), "--json", timeout=60)
        assert proc.returncode == 0, proc.stderr
        front.wait_idle()
        storage.wait_idle()
        [at_front] = front.requests(blob_path)
        assert at_front.status == 307 and at_front.headers.get("Authorization", "").startswith("Basic ")
        [at_storage] = storage.requests(blob_path)
        assert at_storage.status == 200
        assert all("Authorization" not in r.headers for r in storage.log)
        assert storage.bytes_sent(blob_path) == len(payload)
        assert json.loads(proc.stdout)["stored_digest"].startswith("sha256:")
    assert layout_problems(tmp_path / "L") == []

    # without the config (and no -u) the registry refuses: a clear error, nothing written
    proc = cli("pull", f"{oci_registry_auth.host}/net/redir:v1", "--oci-layout", str(tmp_path / "N"),
               "--plain-http", timeout=60)
    assert proc.returncode == 1 and "401" in proc.stderr
    assert not (tmp_path / "N").exists()  # nothing written: no empty layout left behind either


@pytest.mark.timeout(60)
def test_cli_tls_flags_are_checked(oci_registry_tls: RegistryServer, tmp_path: Path) -> None:
    assert oci_registry_tls.ca_file is not None
    (tmp_path / "f.txt").write_text("tls flags\n")
    run(find_tool("oras"), "push", "--ca-file", str(oci_registry_tls.ca_file),
        f"{oci_registry_tls.host}/net/tls:v1", "f.txt", cwd=tmp_path)
    ref = f"{oci_registry_tls.host}/net/tls:v1"
    proc = cli("pull", ref, "--oci-layout", str(tmp_path / "L"), "--ca-file", str(tmp_path / "missing.crt"))
    assert proc.returncode == 2 and "missing.crt" in proc.stderr
    proc = cli("pull", ref, "--oci-layout", str(tmp_path / "L"), "--insecure", "--ca-file",
               str(oci_registry_tls.ca_file))
    assert proc.returncode == 2 and "contradict" in proc.stderr
    proc = cli("pull", ref, "--oci-layout", str(tmp_path / "L"), "--deadline", "0")
    assert proc.returncode == 2 and "positive" in proc.stderr
    proc = cli("pull", ref, "--oci-layout", str(tmp_path / "L"))
    assert proc.returncode == 1 and "TLS" in proc.stderr
    proc = cli("pull", ref, "--oci-layout", str(tmp_path / "L"), "--ca-file", str(oci_registry_tls.ca_file),
               "--connect-timeout", "5", "--read-timeout", "5", "--deadline", "60", "--json")
    assert proc.returncode == 0, proc.stderr
    assert layout_problems(tmp_path / "L") == []


# --- token auth (the real registry with ``auth: token``) ----------------------------


def push_with_token(registry: TokenRegistry, repo: str, tag: str, layer: bytes) -> str:
    """Push a one-layer artifact with a push token; return the manifest digest."""
    headers = {"Authorization": f"Bearer {registry.issuer.sign('alice', [f'repository:{repo}:pull,push'])}"}
    push_blob(registry, repo, layer, headers=headers)
    push_blob(registry, repo, b"{}", headers=headers)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.example+type",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(b"{}"), "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(layer),
                    "size": len(layer), "annotations": {"org.opencontainers.image.title": "t.bin"}}],
    }).encode()
    response = requests.put(f"{registry.url}/v2/{repo}/manifests/{tag}", data=manifest, timeout=30,
                            headers={**headers, "Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert response.status_code == 201, response.text
    return sha256(manifest)


@pytest.mark.timeout(90)
def test_token_auth_registry_library_and_cli(token_registry: TokenRegistry, tmp_path: Path) -> None:
    layer = os.urandom(3 * MiB)
    digest = push_with_token(token_registry, "net/token", "v1", layer)
    ref = f"{token_registry.host}/net/token:v1"
    issuer = token_registry.issuer
    before = len(issuer.requests)
    client = DeltaRegistry(insecure=True, allow_insecure_auth=True, policy=quick_policy(),
                           allowed_realm_hosts=["127.0.0.1"])  # the token server's port differs
    client.auth.set_basic_auth("alice", "wonderland")
    layout = OCILayout.open(tmp_path / "L")
    assert client.resolve(ref).digest == digest  # HEAD through the token dance
    result = client.pull_full(ref, layout)
    assert result.manifest.digest == digest
    assert layout.blob_path(sha256(layer)).read_bytes() == layer
    assert layout_problems(tmp_path / "L") == []
    asked = issuer.requests[before:]
    assert asked and all((auth or "").startswith("Basic ") for _path, auth in asked)
    assert all("scope=repository%3Anet%2Ftoken%3Apull" in path for path, _auth in asked)
    assert len(asked) == 1  # one token serves the whole pull

    # the CLI: --password-stdin, and the refusal of credentials over plain HTTP without the flag
    base = ["pull", ref, "--oci-layout", str(tmp_path / "C"), "--plain-http", "-u", "alice", "--password-stdin",
            "--allow-realm-host", "127.0.0.1", "--json"]
    proc = cli(*base, input_text="wonderland\n", timeout=60)
    assert proc.returncode == 1 and "plain HTTP" in proc.stderr
    proc = cli(*base, "--allow-insecure-auth", input_text="wonderland\n", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["stored_digest"] == digest
    proc = cli("pull", ref, "--oci-layout", str(tmp_path / "W"), "--plain-http", "--allow-insecure-auth",
               "--allow-realm-host", "127.0.0.1", "-u", "alice", "--password-stdin", input_text="wrong\n", timeout=60)
    assert proc.returncode == 1 and "refused the credentials" in proc.stderr
    assert layout_problems(tmp_path / "C") == []


@pytest.mark.timeout(90)
def test_pull_takes_an_identity_token_as_oras_does(token_registry: TokenRegistry, tmp_path: Path) -> None:
    layer = os.urandom(64 * 1024)
    digest = push_with_token(token_registry, "net/identity", "v1", layer)
    ref = f"{token_registry.host}/net/identity:v1"
    before = len(token_registry.issuer.requests)
    base = ["pull", ref, "--plain-http", "--allow-insecure-auth", "--allow-realm-host", "127.0.0.1", "--json"]
    proc = cli(*base, "--oci-layout", str(tmp_path / "A"), "--identity-token-stdin", input_text="refresh-alice-1\n",
               env={"DOCKER_CONFIG": str(tmp_path / "none")}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["to_digest"] == digest
    assert [path.split("?")[0] for path, _auth in token_registry.issuer.requests[before:]] == ["POST /token"]
    wrong = cli(*base, "--oci-layout", str(tmp_path / "B"), "--identity-token", "stale",
                env={"DOCKER_CONFIG": str(tmp_path / "none")}, timeout=60)
    assert wrong.returncode == 1 and "refused the identity token" in wrong.stderr, wrong.stderr


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
