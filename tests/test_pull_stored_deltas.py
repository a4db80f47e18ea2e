"""The pull finds deltas stored in the registry (issue #23 part 1, wired into the pull): with no Doras
server at all, before the server is asked, when the server is down; a bad one falls back; off on request."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from doras_oras import DeltaRegistry, PullResult
from doras_oras.algorithms import DeltaAlgorithm, delta_tag
from doras_oras.cli.main import main
from doras_oras.descriptor import EMPTY_JSON, OCI_EMPTY
from doras_oras.publish import publish_delta
from doras_oras.publish.encode import build_delta, delta_manifest
from doras_oras.publish.push import RegistryWriter
from doras_oras.reference import Reference
from doras_oras.registry_client import RegistryClient
from doras_oras.testing.faultproxy import FaultProxy
from doras_oras.testing.pytest_plugin import DorasServerFactory
from doras_oras.testing.registry import RegistryServer
from doras_oras.testing.server import DorasServer
from tests.pull_support import (
    check_layout,
    edit,
    layer_of,
    manifest_of,
    oras_push_file,
    payload,
    unique,
)

SIZE = 1 << 20


def free_port() -> int:
    """A loopback port nothing listens on (a Doras server that is down)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def behind(server: DorasServer, proxy: FaultProxy) -> DorasServer:
    """Let ``server`` accept references that name the registry by the proxy's host."""
    own = server._is_our_registry
    server._is_our_registry = lambda host: host == proxy.host or own(host)  # type: ignore[method-assign]
    return server


@dataclass
class Bed:
    """v1 and v2 of a 1 MiB file (2,000 scattered 8-byte edits), v1 pulled into ``layout`` through
    ``proxy`` (a counting proxy in front of the registry: references name the registry by its host)."""

    registry: RegistryServer
    proxy: FaultProxy
    repo: str
    layout: Path
    v1: Reference
    v2: Reference
    v2_manifest: bytes

    def pull(self, server_url: str | None = None, **options: object) -> PullResult:
        return DeltaRegistry(insecure=True).pull_delta(f"{self.proxy.host}/{self.repo}:v2", self.layout,
                                                       doras_url=server_url, **options)  # type: ignore[arg-type]

    def publish(self, **options: object) -> None:
        with RegistryClient(plain_http=True) as client:
            publish_delta(client, self.v1, self.v2, **options)  # type: ignore[arg-type]

    def delta_tag_requests(self) -> list[tuple[str, int | None]]:
        self.proxy.wait_idle()
        return [(r.method, r.status) for r in self.proxy.requests("/manifests/_delta-")]


@pytest.fixture
def bed(oci_registry: RegistryServer, tmp_path: Path) -> Iterator[Bed]:
    repo = unique("stored")
    old = payload(SIZE, 1)
    oras_push_file(oci_registry.host, f"{repo}:v1", tmp_path / "w1", "firmware.bin", old)
    oras_push_file(oci_registry.host, f"{repo}:v2", tmp_path / "w2", "firmware.bin", edit(old, 2000, 2))
    v2_manifest, v2_digest = manifest_of(oci_registry, repo, "v2")
    v1_digest = manifest_of(oci_registry, repo, "v1")[1]
    base = Reference(oci_registry.host, repo)
    with FaultProxy(oci_registry.url) as proxy:
        layout = tmp_path / "L"
        first = DeltaRegistry(insecure=True).pull_delta(f"{proxy.host}/{repo}:v1", layout, doras_url=None)
        assert first.status == "full"
        proxy.wait_idle()
        proxy.reset_counters()
        yield Bed(oci_registry, proxy, repo, layout, base.with_digest(v1_digest), base.with_digest(v2_digest),
                  v2_manifest)


def test_a_published_delta_is_used_with_no_doras_server(bed: Bed) -> None:
    bed.publish()
    result = bed.pull()
    assert (result.status, result.reason_code, result.delta_source) == ("delta", "patched", "registry"), result
    assert result.algorithm == "bsdiff+zstd" and result.verified
    assert result.full_size is not None and result.bytes_received < result.full_size / 10
    check_layout(bed.layout, "v2", manifest=bed.v2_manifest)


def test_a_stored_delta_means_no_doras_conversation(bed: Bed, doras_server_factory: DorasServerFactory) -> None:
    bed.publish()
    server = doras_server_factory()
    with FaultProxy(server.url) as doras_proxy:
        result = bed.pull(doras_proxy.url)
        doras_proxy.wait_idle()
        assert doras_proxy.requests() == []
    assert (result.status, result.delta_source) == ("delta", "registry"), result
    check_layout(bed.layout, "v2", manifest=bed.v2_manifest)


def test_a_stored_delta_is_used_when_the_server_is_down(bed: Bed) -> None:
    bed.publish()
    result = bed.pull(f"http://127.0.0.1:{free_port()}")
    assert (result.status, result.delta_source) == ("delta", "registry"), result
    check_layout(bed.layout, "v2", manifest=bed.v2_manifest)


def test_a_delta_named_by_the_server_says_so(bed: Bed, doras_server_factory: DorasServerFactory) -> None:
    """Nothing stored for the pair: the probe misses, the server builds and names the delta."""
    server = behind(doras_server_factory(), bed.proxy)
    result = bed.pull(server.url)
    assert (result.status, result.delta_source) == ("delta", "server"), result
    assert result.reason == "patched the stored image with a delta from the Doras server"


def test_a_planted_delta_that_does_not_give_the_target_falls_back_and_says_why(bed: Bed) -> None:
    """A writer of the repository stores, for this pair, a well-formed bsdiff+zstd delta to other bytes of
    the target's size: it decodes, its result fails the target layer's digest, a verified full pull follows."""
    layer, v1_blob = layer_of(bed.registry, bed.repo, "v1")
    v2_layer, v2_blob = layer_of(bed.registry, bed.repo, "v2")
    forged = build_delta(v1_blob, edit(v2_blob, 5, 99), DeltaAlgorithm.BSDIFF_ZSTD)
    with RegistryClient(plain_http=True) as client:
        writer = RegistryWriter(client)
        writer.push_blob(bed.v2, EMPTY_JSON, OCI_EMPTY)
        blob = writer.push_blob(bed.v2, forged)
        tag = delta_tag(bed.v1.digest or "", bed.v2.digest or "", DeltaAlgorithm.BSDIFF_ZSTD)
        writer.push_manifest(bed.v2, tag, delta_manifest(DeltaAlgorithm.BSDIFF_ZSTD, blob.digest, blob.size,
                                                         from_image=str(bed.v1), to_image=str(bed.v2)))
    result = bed.pull()
    assert (result.status, result.reason_code) == ("full", "delta-failed"), result
    assert "stored in the registry" in result.reason and f"expected {v2_layer['digest']}" in result.reason
    assert result.stored_digest == bed.v2.digest and result.verified and result.delta_source is None
    check_layout(bed.layout, "v2", manifest=bed.v2_manifest)
    assert json.loads(check_layout(bed.layout, "v1"))["layers"][0]["digest"] == layer["digest"]


def test_the_probe_sends_one_head_per_usable_kind(bed: Bed) -> None:
    """Nothing stored, no server: a file base accepts bsdiff with zstd, gzip or none (no tar-diff: the target
    has no content digest), so three HEADs, then the full pull for the reason no-server."""
    result = bed.pull()
    assert (result.status, result.reason_code) == ("full", "no-server"), result
    assert bed.delta_tag_requests() == [("HEAD", 404)] * 3


def test_no_registry_deltas_asks_the_server_without_a_request_for_a_delta_tag(
        bed: Bed, doras_server_factory: DorasServerFactory) -> None:
    """A delta is stored, but the probe is off: the server is asked (it names the stored delta by digest)."""
    bed.publish()
    server = behind(doras_server_factory(), bed.proxy)
    result = bed.pull(server.url, registry_deltas=False)
    assert (result.status, result.delta_source) == ("delta", "server"), result
    assert bed.delta_tag_requests() == []


def test_the_command_says_where_the_delta_came_from(bed: Bed, capsys: pytest.CaptureFixture[str]) -> None:
    bed.publish()
    code = main(["pull", f"{bed.proxy.host}/{bed.repo}:v2", "--oci-layout", str(bed.layout), "--plain-http",
                 "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and (summary["status"], summary["delta_source"]) == ("delta", "registry"), summary


def test_the_command_turns_the_probe_off(bed: Bed, capsys: pytest.CaptureFixture[str]) -> None:
    bed.publish()
    code = main(["pull", f"{bed.proxy.host}/{bed.repo}:v2", "--oci-layout", str(bed.layout), "--plain-http",
                 "--no-registry-deltas", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and (summary["status"], summary["reason_code"]) == ("full", "no-server"), summary
    assert bed.delta_tag_requests() == []
