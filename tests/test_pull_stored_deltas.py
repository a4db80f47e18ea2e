"""The pull finds deltas stored in the registry (issue #23 part 1, wired into the pull): with no Doras
server at all, before the server is asked, when the server is down; a bad one falls back; off on request."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from doras_oras.cli.main import main
from doras_oras.testing.faultproxy import FaultProxy
from doras_oras.testing.pytest_plugin import DorasServerFactory
from doras_oras.testing.registry import RegistryServer
from tests.delta_bed import Bed, behind, free_port, make_bed
from tests.pull_support import check_layout


@pytest.fixture
def bed(oci_registry: RegistryServer, tmp_path: Path) -> Iterator[Bed]:
    with make_bed(oci_registry, tmp_path) as made:
        yield made


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
    """A well-formed delta stored for the pair decodes, but its result fails the target layer's digest:
    a verified full pull follows, and the reason says which delta and what it gave."""
    target_layer = bed.plant_forged_delta()
    v1_before = check_layout(bed.layout, "v1")
    result = bed.pull()
    assert (result.status, result.reason_code) == ("full", "delta-failed"), result
    assert "stored in the registry" in result.reason and f"expected {target_layer}" in result.reason
    assert result.stored_digest == bed.v2.digest and result.verified and result.delta_source is None
    check_layout(bed.layout, "v2", manifest=bed.v2_manifest)
    assert check_layout(bed.layout, "v1") == v1_before


def test_the_probe_sends_one_head_per_usable_kind(bed: Bed) -> None:
    """Nothing stored, no server: a file base accepts bsdiff with zstd, gzip or none (no tar-diff: the target
    has no content digest), so three HEADs (no body), then the full pull for the reason no-server."""
    result = bed.pull()
    assert (result.status, result.reason_code) == ("full", "no-server"), result
    assert bed.delta_tag_requests() == [("HEAD", 404)] * 3


def test_a_stored_delta_is_found_with_a_head_and_one_get(bed: Bed) -> None:
    """The first kind tried is there: its HEAD answers 200, then one GET reads the manifest; no other tag is asked."""
    bed.publish()
    result = bed.pull()
    assert (result.status, result.delta_source) == ("delta", "registry"), result
    assert bed.delta_tag_requests() == [("HEAD", 200), ("GET", 200)]


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
