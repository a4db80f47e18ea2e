"""Up to date, async, timeouts, limits and wire bytes of the delta-aware pull (counted by proxies)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from doras_oras import DeltaRegistry, OCILayout, PullResult
from doras_oras.edgeapi import EdgeClient
from doras_oras.errors import (
    ArtifactTooLargeError,
    BudgetExceededError,
    DorasOrasError,
    RegistryError,
)
from doras_oras.testing.faultproxy import FaultProxy
from doras_oras.testing.pytest_plugin import DorasServerFactory
from doras_oras.testing.registry import RegistryServer
from doras_oras.testing.server import DorasServer
from tests.pull_support import (
    behind,
    check_layout,
    edit,
    manifest_of,
    oras_push_file,
    payload,
    snapshot,
    unique,
)


@pytest.fixture
def registry_proxy(oci_registry: RegistryServer) -> Iterator[FaultProxy]:
    """A counting proxy (no faults) in front of the registry; clients name the registry by its host."""
    with FaultProxy(oci_registry.url) as proxy:
        yield proxy


def pull(host: str, repo: str, tag: str, layout: Path, server_url: str | None, **options: object) -> PullResult:
    return DeltaRegistry(insecure=True).pull_delta(f"{host}/{repo}:{tag}", layout, doras_url=server_url,
                                                   **options)


def two_versions(registry: RegistryServer, tmp_path: Path, size: int = 64 << 10, edits: int = 20) -> tuple[str, bytes]:
    """A file artifact v1, v2 pushed with the oras CLI; returns the repository and v2's manifest."""
    repo = unique("modes")
    old = payload(size, 1)
    oras_push_file(registry.host, f"{repo}:v1", tmp_path / "push1", "data.bin", old)
    oras_push_file(registry.host, f"{repo}:v2", tmp_path / "push2", "data.bin", edit(old, edits, 2))
    return repo, manifest_of(registry, repo, "v2")[0]


def test_wire_bytes_of_a_delta_pull(oci_registry: RegistryServer, doras_server: DorasServer,
                                    registry_proxy: FaultProxy, tmp_path: Path) -> None:
    repo, v2_manifest = two_versions(oci_registry, tmp_path, size=1 << 20, edits=2000)
    server = behind(doras_server, registry_proxy)
    layout = tmp_path / "L"
    v1 = pull(registry_proxy.host, repo, "v1", layout, None)
    registry_proxy.wait_idle()
    assert v1.status == "full" and v1.bytes_received == registry_proxy.bytes_sent()
    # the delta is built beforehand (a device asks when it is ready)
    with EdgeClient(server.url, allow_http=True) as edge:
        ref = f"{registry_proxy.host}/{repo}"
        edge.read_delta_async(f"{ref}@{v1.to_digest}", f"{ref}:v2")
    server.wait_idle(60)
    with FaultProxy(server.url) as doras_proxy:
        registry_proxy.reset_counters()
        # the server's path: the delta it built is in the registry too (the probe is measured apart)
        result = pull(registry_proxy.host, repo, "v2", layout, doras_proxy.url, registry_deltas=False)
        registry_proxy.wait_idle()
        doras_proxy.wait_idle()
        doras_bytes = doras_proxy.bytes_sent()
        doras_requests = [(r.method, r.status) for r in doras_proxy.requests()]
    assert result.status == "delta" and result.algorithm == "bsdiff+zstd", result.reason
    assert doras_requests == [("GET", 200)]
    delta_manifest = [r for r in registry_proxy.requests("/manifests/sha256:") if r.method == "GET"]
    paid = result.delta_size + len(v2_manifest) + sum(r.body_bytes for r in delta_manifest)
    wire = registry_proxy.bytes_sent() + doras_bytes
    assert wire <= 1.02 * paid, (wire, paid)
    assert result.bytes_received == wire  # the result counts what crossed the wire
    assert result.bytes_received < result.full_size / 5
    # every blob and manifest was fetched once
    gets = [r.path for r in registry_proxy.requests() if r.method == "GET"]
    assert len(gets) == len(set(gets)) == 3  # target manifest, delta manifest, delta blob
    check_layout(layout, "v2", manifest=v2_manifest)


def test_full_pull_fetches_the_manifest_once(oci_registry: RegistryServer, registry_proxy: FaultProxy,
                                             tmp_path: Path) -> None:
    repo, v2_manifest = two_versions(oci_registry, tmp_path)
    layout = tmp_path / "L"
    result = pull(registry_proxy.host, repo, "v2", layout, None)
    registry_proxy.wait_idle()
    gets = [r.path for r in registry_proxy.requests() if r.method == "GET"]
    assert len(gets) == len(set(gets)) == 2  # the manifest and the layer (the empty config is inline)
    assert result.bytes_received == registry_proxy.bytes_sent()
    assert result.bytes_received == result.full_size - 2  # all but the inline config
    check_layout(layout, "v2", manifest=v2_manifest)


def test_up_to_date_costs_one_get_answered_304(oci_registry: RegistryServer, doras_server: DorasServer,
                                   registry_proxy: FaultProxy, tmp_path: Path) -> None:
    repo, _ = two_versions(oci_registry, tmp_path)
    layout = tmp_path / "L"
    first = pull(registry_proxy.host, repo, "v2", layout, doras_server.url)
    registry_proxy.wait_idle()
    registry_proxy.reset_counters()
    before = snapshot(layout)
    again = pull(registry_proxy.host, repo, "v2", layout, doras_server.url)
    registry_proxy.wait_idle()
    assert again.status == "up-to-date"
    assert (again.from_digest, again.to_digest, again.stored_digest) == (None, first.to_digest, first.to_digest)
    assert again.bytes_received == 0 and registry_proxy.bytes_sent() == 0
    assert [(r.method, r.status) for r in registry_proxy.requests()] == [("GET", 304)]
    assert snapshot(layout) == before
    assert doras_server.builds == 0


def test_async_pending_then_done(oci_registry: RegistryServer, doras_server_factory: DorasServerFactory,
                                 tmp_path: Path) -> None:
    repo, v2_manifest = two_versions(oci_registry, tmp_path)
    server = doras_server_factory(build_delay_s=1.0)
    layout = tmp_path / "L"
    pull(oci_registry.host, repo, "v1", layout, server.url)
    before = snapshot(layout)
    pending = pull(oci_registry.host, repo, "v2", layout, server.url, wait=False)
    assert (pending.status, pending.reason_code) == ("pending", "building")
    assert pending.stored_digest is None and pending.algorithm is None
    assert snapshot(layout) == before
    deadline = time.monotonic() + 30
    results = [pending]
    while results[-1].status == "pending" and time.monotonic() < deadline:
        time.sleep(0.3)
        results.append(pull(oci_registry.host, repo, "v2", layout, server.url, wait=False))
    done = results[-1]
    assert done.status == "delta", done.reason
    assert len(results) >= 3  # at least one more pending answer while the build waited
    assert server.builds == 1
    check_layout(layout, "v2", manifest=v2_manifest)


@pytest.mark.parametrize("on_timeout", ["full", "pending"])
def test_timeout_while_the_server_builds(oci_registry: RegistryServer, doras_server_factory: DorasServerFactory,
                                         tmp_path: Path, on_timeout: str) -> None:
    repo, v2_manifest = two_versions(oci_registry, tmp_path)
    server = doras_server_factory(build_delay_s=5.0)
    layout = tmp_path / "L"
    pull(oci_registry.host, repo, "v1", layout, server.url)
    before = snapshot(layout)
    result = pull(oci_registry.host, repo, "v2", layout, server.url, timeout_s=0.8, on_timeout=on_timeout)
    assert server.builds == 0  # it stopped waiting while the server still built (5 s)
    assert result.status == on_timeout
    assert result.reason_code == "delta-timeout"
    if on_timeout == "full":
        check_layout(layout, "v2", manifest=v2_manifest)
    else:
        assert snapshot(layout) == before
    assert server.builds == 0


def test_max_size_refused_before_any_blob(oci_registry: RegistryServer, doras_server: DorasServer,
                                          registry_proxy: FaultProxy, tmp_path: Path) -> None:
    repo, _ = two_versions(oci_registry, tmp_path)
    behind(doras_server, registry_proxy)
    layout = tmp_path / "L"
    v1 = pull(registry_proxy.host, repo, "v1", layout, None)
    before = snapshot(layout)
    registry_proxy.wait_idle()
    registry_proxy.reset_counters()
    with pytest.raises(ArtifactTooLargeError, match=r"declares \d+ bytes, more than the limit of 1000 bytes"):
        pull(registry_proxy.host, repo, "v2", layout, doras_server.url, max_size=1000)
    registry_proxy.wait_idle()
    assert not registry_proxy.requests("/blobs/")
    assert snapshot(layout) == before
    check_layout(layout, "v1")
    # a limit above the declared size lets it through
    ok = pull(registry_proxy.host, repo, "v2", layout, doras_server.url, max_size=v1.full_size + 1000)
    assert ok.status == "delta"


def test_budget_counted_across_runs(oci_registry: RegistryServer, tmp_path: Path) -> None:
    repo, v2_manifest = two_versions(oci_registry, tmp_path)
    layout = tmp_path / "L"
    budget = (100_000, 3600.0)
    first = pull(oci_registry.host, repo, "v1", layout, None, budget=budget)
    assert first.status == "full" and 64 << 10 < first.bytes_received < 100_000
    ledger = json.loads((layout / ".doras-oras" / "downloads.json").read_text())
    assert [n for _t, n in ledger["records"]] == [first.bytes_received]
    before = snapshot(layout)
    with pytest.raises(BudgetExceededError, match=rf"needs \d+ bytes; {first.bytes_received} of the budget "
                                                  r"of 100000 bytes per 3600 s are already used"):
        pull(oci_registry.host, repo, "v2", layout, None, budget=budget)
    assert snapshot(layout) == before
    # the refused attempt fetched the target manifest, and that counts too
    ledger = json.loads((layout / ".doras-oras" / "downloads.json").read_text())
    assert [n for _t, n in ledger["records"]] == [first.bytes_received, len(v2_manifest)]
    check_layout(layout, "v1")
    # a budget whose period has passed counts nothing
    assert pull(oci_registry.host, repo, "v2", layout, None, budget=(100_000, 1e-9)).status == "full"


def test_clear_errors_change_nothing(oci_registry: RegistryServer, doras_server: DorasServer, tmp_path: Path) -> None:
    repo, _ = two_versions(oci_registry, tmp_path)
    layout = tmp_path / "L"
    pull(oci_registry.host, repo, "v1", layout, doras_server.url)
    before = snapshot(layout)
    with pytest.raises(RegistryError, match="404"):
        pull(oci_registry.host, repo, "v9", layout, doras_server.url)
    with pytest.raises(DorasOrasError, match=r"from_ref .*:v7: no such image"):
        pull(oci_registry.host, repo, "v2", layout, doras_server.url, from_ref=f"{oci_registry.host}/{repo}:v7")
    with pytest.raises(ValueError, match="not in the repository"):
        pull(oci_registry.host, repo, "v2", layout, doras_server.url, from_ref=f"{oci_registry.host}/other:v1")
    with pytest.raises(ValueError, match="unknown algorithm"):
        pull(oci_registry.host, repo, "v2", layout, doras_server.url, accepted_algorithms=["xdelta"])
    with pytest.raises(ValueError, match="on_timeout"):
        pull(oci_registry.host, repo, "v2", layout, doras_server.url, on_timeout="later")
    assert snapshot(layout) == before
    check_layout(layout, "v1")
    assert doras_server.builds == 0


def test_image_index_target_is_a_full_pull(oci_registry: RegistryServer, doras_server: DorasServer,
                                           tmp_path: Path) -> None:
    from tests.layout_support import build_container_layout, push_layout

    repo = unique("modes-index")
    for tag, text in (("v1", b"one\n"), ("v2", b"two\n")):
        build_container_layout(tmp_path / tag, tag, {"hello.txt": text}, platforms=("linux/amd64", "linux/arm64"))
        push_layout(tmp_path / tag, tag, oci_registry.host, f"{repo}:{tag}")
    layout = tmp_path / "L"
    first = pull(oci_registry.host, repo, "v1", layout, doras_server.url)
    v1_index = manifest_of(oci_registry, repo, "v1")[1]
    # --from may name the stored image by the index digest it was chosen from
    result = pull(oci_registry.host, repo, "v2", layout, doras_server.url, from_ref=f"{oci_registry.host}/{repo}@{v1_index}")
    assert result.from_digest == first.stored_digest
    assert (result.status, result.reason_code) == ("full", "index-target")
    assert result.to_digest == manifest_of(oci_registry, repo, "v2")[1]
    assert result.stored_digest != result.to_digest  # the platform's manifest
    check_layout(layout, "v2")
    assert doras_server.builds == 0
    again = pull(oci_registry.host, repo, "v2", layout, doras_server.url)
    assert again.status == "up-to-date" and again.bytes_received == 0
    assert again.stored_digest == result.stored_digest
    # the same index under another tag: up to date, the new tag keeps the index it stands for
    push_layout(tmp_path / "v2", "v2", oci_registry.host, f"{repo}:stable")
    stable = pull(oci_registry.host, repo, "stable", layout, doras_server.url)
    assert stable.status == "up-to-date"
    entry = OCILayout.open(layout).get_image(f"{oci_registry.host}/{repo}", "stable")
    assert entry.descriptor.digest == result.stored_digest
    assert entry.descriptor.annotations["io.doras-oras.source.index"] == result.to_digest
    # the same index for another platform is not up to date: that platform's manifest is pulled
    index_doc = json.loads(manifest_of(oci_registry, repo, "v2")[0])
    other = next(m for m in index_doc["manifests"] if m["digest"] != result.stored_digest)
    other_platform = f"{other['platform']['os']}/{other['platform']['architecture']}"
    moved = pull(oci_registry.host, repo, "v2", layout, doras_server.url, platform=other_platform)
    assert moved.status == "full" and moved.stored_digest == other["digest"]
    assert pull(oci_registry.host, repo, "v2", layout, doras_server.url,
                platform=other_platform).status == "up-to-date"
    entry = OCILayout.open(layout).get_image(f"{oci_registry.host}/{repo}", "v2")
    assert entry.descriptor.annotations["io.doras-oras.source.platform"] == other_platform
    # the host's platform is still held (under "stable"): up to date, and v2 names it again
    back = pull(oci_registry.host, repo, "v2", layout, doras_server.url)
    assert back.status == "up-to-date" and back.stored_digest == result.stored_digest


def test_going_back_to_a_version_the_layout_holds(oci_registry: RegistryServer, doras_server: DorasServer,
                                                  tmp_path: Path) -> None:
    """A rollback to v1 (by tag, by digest, or a tag moved back) costs a manifest GET, no delta."""
    from doras_oras.testing.vectors import doras_vectors, push_manifest_bytes, push_recorded

    vec = doras_vectors() / "bsdiff+zstd"
    repo = unique("rollback")
    digests = push_recorded(oci_registry.url, vec, repo)
    layout = tmp_path / "L"
    host = oci_registry.host
    pull(host, repo, "v1", layout, doras_server.url)
    assert pull(host, repo, "v2", layout, doras_server.url).status == "delta"
    before = snapshot(layout)
    back = pull(host, repo, "v1", layout, doras_server.url)
    assert (back.status, back.stored_digest, back.bytes_received) == ("up-to-date", digests["from_digest"], 0)
    by_digest = DeltaRegistry(insecure=True).pull_delta(f"{host}/{repo}@{digests['from_digest']}", layout,
                                                        doras_url=doras_server.url)
    assert by_digest.status == "up-to-date"
    assert snapshot(layout) == before
    # "latest" moved back to v1: recorded as a new tag of the stored v1
    import requests

    push_manifest_bytes(requests.Session(), oci_registry.url, repo, "latest", (vec / "from.manifest.json").read_bytes())
    latest = pull(host, repo, "latest", layout, doras_server.url)
    assert (latest.status, latest.stored_digest) == ("up-to-date", digests["from_digest"])
    check_layout(layout, "latest", manifest=(vec / "from.manifest.json").read_bytes())
    assert doras_server.builds == 1


def test_failing_builds_end_in_a_full_pull_at_the_deadline(oci_registry: RegistryServer,
                                                           doras_server_factory: DorasServerFactory,
                                                           tmp_path: Path) -> None:
    repo, v2_manifest = two_versions(oci_registry, tmp_path)
    server = doras_server_factory(fail_builds=True)
    layout = tmp_path / "L"
    pull(oci_registry.host, repo, "v1", layout, server.url)
    result = pull(oci_registry.host, repo, "v2", layout, server.url, timeout_s=1.0)
    assert (result.status, result.reason_code) == ("full", "delta-timeout")
    assert server.build_errors and server.builds == 0
    check_layout(layout, "v2", manifest=v2_manifest)


def test_a_failed_commit_after_a_delta_leaves_nothing_in_blobs(oci_registry: RegistryServer,
                                                               doras_server: DorasServer, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The delta's output and the manifest go again when index.json cannot be written (a full disk)."""
    repo, _ = two_versions(oci_registry, tmp_path)
    layout = tmp_path / "L"
    assert pull(oci_registry.host, repo, "v1", layout, None).status == "full"
    before = snapshot(layout)
    real = OCILayout.write_index

    def full_disk(self: OCILayout, entries: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(OCILayout, "write_index", full_disk)
    asked = doras_server.delta_requests
    with pytest.raises(OSError, match="No space left"):
        pull(oci_registry.host, repo, "v2", layout, doras_server.url)
    assert doras_server.delta_requests > asked  # the delta path ran up to the commit
    assert snapshot(layout) == before
    monkeypatch.setattr(OCILayout, "write_index", real)
    assert pull(oci_registry.host, repo, "v2", layout, doras_server.url).status == "delta"
    check_layout(layout, "v2")
