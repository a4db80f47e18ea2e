"""Delta pulls of the recorded doras-v0.20.2 artifacts (exact registry bytes), every delta kind."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest

from doras_oras.testing.registry import RegistryServer
from doras_oras.testing.server import DorasServer
from doras_oras.testing.vectors import doras_vectors, push_recorded
from tests.pull_support import check_layout, manifest_of, pull, snapshot, stored_layer, unique


def case(name: str) -> Path:
    return doras_vectors() / name


@pytest.mark.parametrize(("accept", "algorithm"), [
    (["bsdiff"], "bsdiff"),
    (["bsdiff", "gzip"], "bsdiff+gzip"),
    (["bsdiff", "zstd"], "bsdiff+zstd"),
    (None, "bsdiff+zstd"),
])
def test_file_pushed_by_oras_cli_bsdiff_each_compression(
    oci_registry: RegistryServer, doras_server: DorasServer, tmp_path: Path,
    accept: list[str] | None, algorithm: str,
) -> None:
    vec = case("bsdiff")
    repo = unique("vec-file")
    digests = push_recorded(oci_registry.url, vec, repo)
    layout = tmp_path / "L"
    first = pull(oci_registry, repo, "v1", layout, doras_server)
    assert (first.status, first.to_digest) == ("full", digests["from_digest"])
    result = pull(oci_registry, repo, "v2", layout, doras_server, accepted_algorithms=accept)
    assert result.status == "delta", result.reason
    assert result.algorithm == algorithm
    assert (result.from_digest, result.to_digest) == (digests["from_digest"], digests["to_digest"])
    assert result.stored_digest == digests["to_digest"] and result.verified
    # the layout holds the registry's manifest bytes and the exact registry blob
    check_layout(layout, "v2", manifest=(vec / "to.manifest.json").read_bytes())
    _layer, data = stored_layer(layout, "v2")
    assert data == (vec / "to.layer").read_bytes()
    assert result.delta_size is not None and result.bytes_received < result.full_size / 4
    check_layout(layout, "v1", manifest=(vec / "from.manifest.json").read_bytes())
    assert doras_server.builds == 1


def test_gzip_file_as_doras_cli_pushes_it(oci_registry: RegistryServer, doras_server: DorasServer,
                                          tmp_path: Path) -> None:
    vec = case("gzip-layer-bsdiff+zstd")
    repo = unique("vec-gzip")
    digests = push_recorded(oci_registry.url, vec, repo)
    layout = tmp_path / "L"
    pull(oci_registry, repo, "v1", layout, doras_server)
    result = pull(oci_registry, repo, "v2", layout, doras_server)
    assert (result.status, result.algorithm) == ("delta", "bsdiff+zstd"), result.reason
    assert result.stored_digest == digests["to_digest"]
    check_layout(layout, "v2", manifest=(vec / "to.manifest.json").read_bytes())
    assert stored_layer(layout, "v2")[1] == (vec / "to.layer").read_bytes()  # the gzip bytes, exactly


def test_directory_pushed_by_oras_cli_tardiff_stored_as_gzip(
    oci_registry: RegistryServer, doras_server: DorasServer, tmp_path: Path,
) -> None:
    vec = case("tardiff-oras-dir")
    repo = unique("vec-odir")
    digests = push_recorded(oci_registry.url, vec, repo)
    layout = tmp_path / "L"
    pull(oci_registry, repo, "v1", layout, doras_server)
    result = pull(oci_registry, repo, "v2", layout, doras_server)
    assert (result.status, result.algorithm, result.verified) == ("delta", "tardiff", True), result.reason
    assert result.to_digest == digests["to_digest"]
    assert result.stored_digest != digests["to_digest"]  # a rewritten manifest
    raw = check_layout(layout, "v2")
    registry_doc = json.loads((vec / "to.manifest.json").read_bytes())
    stored_doc = json.loads(raw)
    layer, data = stored_layer(layout, "v2")
    # a gzip of the tar the content-digest annotation names (what the oras CLI unpacks), other annotations kept
    assert gzip.decompress(data) == gzip.decompress((vec / "to.layer").read_bytes())
    content = registry_doc["layers"][0]["annotations"]["io.deis.oras.content.digest"]
    assert "sha256:" + hashlib.sha256(gzip.decompress(data)).hexdigest() == content
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert layer["size"] == len(data)
    assert layer["annotations"] == registry_doc["layers"][0]["annotations"]
    assert stored_doc["config"] == registry_doc["config"]
    # the index records the registry digest the rewritten manifest stands for
    index = json.loads((layout / "index.json").read_text())
    entry = next(m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"].endswith("/v2"))
    assert entry["digest"] == result.stored_digest
    assert entry["annotations"]["io.doras-oras.source.digest"] == digests["to_digest"]
    # pulling v2 again: up to date, recognised by the recorded registry digest
    again = pull(oci_registry, repo, "v2", layout, doras_server)
    assert again.status == "up-to-date" and again.bytes_received == 0


def test_directory_without_content_digest_bsdiff_of_compressed_blob(
    oci_registry: RegistryServer, doras_server: DorasServer, tmp_path: Path,
) -> None:
    vec = case("tardiff-doras-dir")
    repo = unique("vec-ddir")
    digests = push_recorded(oci_registry.url, vec, repo)
    layout = tmp_path / "L"
    pull(oci_registry, repo, "v1", layout, doras_server)
    result = pull(oci_registry, repo, "v2", layout, doras_server)
    # tardiff was not asked for (unverifiable): the server sent bsdiff over the gzip blobs
    assert (result.status, result.algorithm, result.verified) == ("delta", "bsdiff+zstd", True), result.reason
    assert result.stored_digest == digests["to_digest"]
    check_layout(layout, "v2", manifest=(vec / "to.manifest.json").read_bytes())
    assert stored_layer(layout, "v2")[1] == (vec / "to.layer").read_bytes()


def _tardiff_base_then_unannotated_target(registry: RegistryServer, server: DorasServer,
                                          layout: Path) -> tuple[str, dict[str, str]]:
    """v1 -> v2 (tardiff, a rewritten manifest), then v3 = a directory without content digest."""
    repo = unique("vec-unver")
    push_recorded(registry.url, case("tardiff-oras-dir"), repo)
    pull(registry, repo, "v1", layout, server)
    assert pull(registry, repo, "v2", layout, server).algorithm == "tardiff"
    third = push_recorded(registry.url, case("tardiff-doras-dir"), repo, from_tag="other", to_tag="v3")
    return repo, third


def test_tardiff_base_and_unannotated_target_is_a_full_pull(
    oci_registry: RegistryServer, doras_server: DorasServer, tmp_path: Path,
) -> None:
    layout = tmp_path / "L"
    repo, third = _tardiff_base_then_unannotated_target(oci_registry, doras_server, layout)
    builds = doras_server.builds
    result = pull(oci_registry, repo, "v3", layout, doras_server)
    assert result.status == "full"
    assert result.reason_code == "unverifiable"
    assert "io.deis.oras.content.digest" in result.reason  # the sentence names what is missing
    assert result.stored_digest == third["to_digest"]
    assert doras_server.builds == builds  # the server was not even asked
    check_layout(layout, "v3", manifest=(case("tardiff-doras-dir") / "to.manifest.json").read_bytes())
    check_layout(layout, "v2")


def test_tardiff_base_and_unannotated_target_with_allow_unverified(
    oci_registry: RegistryServer, doras_server: DorasServer, tmp_path: Path,
) -> None:
    layout = tmp_path / "L"
    repo, third = _tardiff_base_then_unannotated_target(oci_registry, doras_server, layout)
    result = pull(oci_registry, repo, "v3", layout, doras_server, allow_unverified=True)
    assert (result.status, result.algorithm, result.verified) == ("delta", "tardiff", False), result.reason
    assert result.reason_code == "patched"  # verified=False says the rest
    assert result.to_digest == third["to_digest"] and result.stored_digest != third["to_digest"]
    check_layout(layout, "v3")
    _layer, data = stored_layer(layout, "v3")
    # nothing in the registry could check it, but the test can: it is a gzip of the gunzipped target tar
    expected = gzip.decompress((case("tardiff-doras-dir") / "to.layer").read_bytes())
    assert gzip.decompress(data) == expected
    assert "sha256:" + hashlib.sha256(data).hexdigest() == _layer["digest"]


def test_narrowing_to_tardiff_alone_on_a_gzip_base_is_honoured(
    oci_registry: RegistryServer, doras_server: DorasServer, tmp_path: Path,
) -> None:
    """Only tardiff asked for a file artifact: the server answers bsdiff, which is refused -> full."""
    vec = case("bsdiff")
    repo = unique("vec-narrow")
    push_recorded(oci_registry.url, vec, repo)
    layout = tmp_path / "L"
    pull(oci_registry, repo, "v1", layout, doras_server)
    before = snapshot(layout)
    result = pull(oci_registry, repo, "v2", layout, doras_server, accepted_algorithms=["tardiff"])
    assert result.status == "full"
    assert result.reason_code == "algorithms-refused"
    assert snapshot(layout) != before
    check_layout(layout, "v2", manifest=manifest_of(oci_registry, repo, "v2")[0])
