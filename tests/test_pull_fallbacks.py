"""Every fallback of the delta-aware pull ends in a verified full pull, the old image intact."""

from __future__ import annotations

import gzip
import json
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from doras_oras import DeltaRegistry, PullResult
from doras_oras.layout import OCILayout
from doras_oras.testing.faultproxy import FaultProxy
from doras_oras.testing.pytest_plugin import DorasServerFactory
from doras_oras.testing.registry import RegistryServer
from doras_oras.testing.server import Algorithm, DorasServer, delta_tag, pack_manifest
from doras_oras.testing.vectors import doras_vectors, push_recorded
from tests.layout_support import layout_problems, name_of, run
from tests.pull_support import check_layout, manifest_of, pull, stored_layer, unique


@dataclass
class Bed:
    registry: RegistryServer
    repo: str
    layout: Path
    v1: bytes
    v2: bytes
    from_digest: str
    to_digest: str


def prepared(registry: RegistryServer, tmp_path: Path, vector: str = "bsdiff",
             server: DorasServer | None = None) -> Bed:
    """A recorded pair pushed as v1/v2, v1 pulled into a fresh layout."""
    vec = doras_vectors() / vector
    repo = unique("fb")
    digests = push_recorded(registry.url, vec, repo)
    layout = tmp_path / "L"
    first = pull(registry, repo, "v1", layout, server)
    assert first.status == "full"
    return Bed(registry, repo, layout, (vec / "from.manifest.json").read_bytes(),
               (vec / "to.manifest.json").read_bytes(), digests["from_digest"], digests["to_digest"])


def assert_full_fallback(bed: Bed, result: PullResult, code: str) -> None:
    """A verified full pull of v2 for the reason ``code``; v1 and v2 both valid in the layout."""
    assert result.status == "full", result
    assert (result.reason_code, result.fallback) == (code, code) and result.reason, result
    assert (result.from_digest, result.to_digest) == (bed.from_digest, bed.to_digest)
    assert result.stored_digest == bed.to_digest and result.verified and result.algorithm is None
    check_layout(bed.layout, "v2", manifest=bed.v2)
    check_layout(bed.layout, "v1", manifest=bed.v1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_server_unreachable(oci_registry: RegistryServer, tmp_path: Path) -> None:
    bed = prepared(oci_registry, tmp_path)
    result = pull_v2(oci_registry, bed, f"http://127.0.0.1:{free_port()}")
    assert_full_fallback(bed, result, "server-unreachable")
    assert "connection refused" in result.reason  # the cause survives


def pull_v2(registry: RegistryServer, bed: Bed, url: str, **options: object) -> PullResult:
    return DeltaRegistry(insecure=True).pull_delta(f"{registry.host}/{bed.repo}:v2", bed.layout,
                                                   doras_url=url, **options)


def test_server_stopped(oci_registry: RegistryServer, doras_server_factory: DorasServerFactory,
                        tmp_path: Path) -> None:
    server = doras_server_factory()
    bed = prepared(oci_registry, tmp_path)
    url = server.url
    server.stop()
    result = pull_v2(oci_registry, bed, url)
    assert_full_fallback(bed, result, "server-unreachable")


def test_base_image_deleted_from_registry(oci_registry: RegistryServer, doras_server: DorasServer,
                                         tmp_path: Path) -> None:
    bed = prepared(oci_registry, tmp_path)
    deleted = requests.delete(f"{oci_registry.url}/v2/{bed.repo}/manifests/{bed.from_digest}", timeout=10)
    assert deleted.status_code == 202
    result = pull(oci_registry, bed.repo, "v2", bed.layout, doras_server)
    assert_full_fallback(bed, result, "server-error")
    assert "404" in result.reason and "failed to resolve" in result.reason  # the server's words


def test_incompatible_artifacts(oci_registry: RegistryServer, doras_server: DorasServer, tmp_path: Path) -> None:
    """v1 a file, v2 a directory (the unpack annotation differs): the server refuses."""
    vec_file, vec_dir = doras_vectors() / "bsdiff", doras_vectors() / "tardiff-oras-dir"
    repo = unique("fb-incompat")
    v1 = push_recorded(oci_registry.url, vec_file, repo, from_tag="v1", to_tag="unused")
    v2 = push_recorded(oci_registry.url, vec_dir, repo, from_tag="unused-dir", to_tag="v2")
    bed = Bed(oci_registry, repo, tmp_path / "L", (vec_file / "from.manifest.json").read_bytes(),
              (vec_dir / "to.manifest.json").read_bytes(), v1["from_digest"], v2["to_digest"])
    pull(oci_registry, repo, "v1", bed.layout, doras_server)
    result = pull(oci_registry, repo, "v2", bed.layout, doras_server)
    assert_full_fallback(bed, result, "incompatible")
    assert doras_server.builds == 0


@pytest.mark.parametrize("vector", ["bsdiff", "tardiff-oras-dir"])
def test_corrupted_delta_from_server(oci_registry: RegistryServer, doras_server_factory: DorasServerFactory,
                                     tmp_path: Path, vector: str) -> None:
    """The stored delta matches its descriptor but does not give the target."""

    def tamper(delta: bytes) -> bytes:
        if delta.startswith(b"tardf1\n\0"):
            import zstandard

            ops = zstandard.ZstdDecompressor().decompressobj().decompress(delta[8:])
            # flip a byte of the last Data op's payload (the tar's end blocks)
            broken = ops[:-1] + bytes([ops[-1] ^ 0xFF])
            return delta[:8] + zstandard.ZstdCompressor().compress(broken)
        return delta[:-1] + bytes([delta[-1] ^ 0xFF])

    server = doras_server_factory(tamper_delta=tamper)
    bed = prepared(oci_registry, tmp_path, vector, server)
    result = pull(oci_registry, bed.repo, "v2", bed.layout, server, accepted_algorithms=["bsdiff", "tardiff"])
    assert_full_fallback(bed, result, "delta-failed")
    assert server.builds == 1
    assert [p.name for p in (bed.layout / "ingest").rglob("*") if p.is_file()] == ["lock"]  # no leftovers


def plant(server: DorasServer, repo: str, tag: str, layer_type: str, title: str, data: bytes,
          from_image: str, to_image: str) -> None:
    """Push a delta manifest of our own under ``tag``."""
    client = server.registry_client()
    stub = client.push_blob(repo, data)
    client.push_blob(repo, b"{}")
    layer = {"mediaType": layer_type, "digest": stub["digest"], "size": stub["size"],
             "annotations": {"org.opencontainers.image.title": title}}
    client.push_manifest(repo, tag, pack_manifest([layer], {
        "com.unbasical.doras.delta.from": from_image, "com.unbasical.doras.delta.to": to_image,
        "org.opencontainers.image.created": "2026-11-26T00:00:00Z"}))


def test_corrupted_delta_planted_under_the_delta_tag(oci_registry: RegistryServer, doras_server: DorasServer,
                                                     tmp_path: Path) -> None:
    bed = prepared(oci_registry, tmp_path)
    name = f"{oci_registry.host}/{bed.repo}"
    tag = delta_tag(bed.from_digest, bed.to_digest, Algorithm("bsdiff", "zstd"))
    plant(doras_server, bed.repo, tag, "application/bsdiff+zstd", "delta.bsdiff.zstd",
          b"\x28\xb5\x2f\xfd garbage, not a zstd frame", f"{name}@{bed.from_digest}", f"{name}@{bed.to_digest}")
    result = pull(oci_registry, bed.repo, "v2", bed.layout, doras_server)
    assert_full_fallback(bed, result, "delta-failed")
    assert doras_server.builds == 0  # the planted delta was served as it is


def test_delta_manifest_for_other_images(oci_registry: RegistryServer, doras_server: DorasServer,
                                         tmp_path: Path) -> None:
    bed = prepared(oci_registry, tmp_path)
    other = doras_vectors() / "bsdiff+gzip"
    name = f"{oci_registry.host}/{bed.repo}"
    tag = delta_tag(bed.from_digest, bed.to_digest, Algorithm("bsdiff", "zstd"))
    # a real delta of the recordings, but its manifest names other images
    plant(doras_server, bed.repo, tag, "application/bsdiff+gzip", "delta.bsdiff.gzip",
          (other / "delta.layer").read_bytes(), f"{name}@sha256:{'1' * 64}", f"{name}@{bed.to_digest}")
    result = pull(oci_registry, bed.repo, "v2", bed.layout, doras_server)
    assert_full_fallback(bed, result, "bad-delta")
    assert "com.unbasical.doras.delta.from" in result.reason  # names the annotation


def test_bsdiff_answer_when_only_tardiff_applies(oci_registry: RegistryServer, doras_server: DorasServer,
                                                 tmp_path: Path) -> None:
    """A tar-diff base (not the registry's blob) can only take tardiff; a server answering bsdiff is refused."""
    vec = doras_vectors() / "tardiff-oras-dir"
    bed = prepared(oci_registry, tmp_path, "tardiff-oras-dir", doras_server)
    assert pull(oci_registry, bed.repo, "v2", bed.layout, doras_server).algorithm == "tardiff"
    # v3: the v1 directory again, as a new manifest (another created time)
    document = json.loads((vec / "from.manifest.json").read_bytes())
    document["annotations"]["org.opencontainers.image.created"] = "2026-11-27T00:00:00Z"
    body = json.dumps(document, separators=(",", ":")).encode()
    client = doras_server.registry_client()
    client.push_manifest(bed.repo, "v3", body)
    v3_digest = manifest_of(oci_registry, bed.repo, "v3")[1]
    name = f"{oci_registry.host}/{bed.repo}"
    tag = delta_tag(bed.to_digest, v3_digest, Algorithm("tardiff", ""))
    # under the tardiff tag: a bsdiff delta, refused by its media type before any download
    plant(doras_server, bed.repo, tag, "application/bsdiff", "delta.bsdiff", b"BSDIFF40" + bytes(24),
          f"{name}@{bed.to_digest}", f"{name}@{v3_digest}")
    before_v2 = stored_layer(bed.layout, "v2")
    result = pull(oci_registry, bed.repo, "v3", bed.layout, doras_server)
    assert (result.status, result.reason_code) == ("full", "unexpected-algorithm")
    assert result.stored_digest == v3_digest
    check_layout(bed.layout, "v3", manifest=body)
    assert stored_layer(bed.layout, "v2") == before_v2
    assert stored_layer(bed.layout, "v3")[1] == (vec / "from.layer").read_bytes()
    assert gzip.decompress(stored_layer(bed.layout, "v3")[1])  # the registry's gzip blob


def test_rotted_base_layer_in_the_layout(oci_registry: RegistryServer, doras_server: DorasServer,
                                         tmp_path: Path) -> None:
    bed = prepared(oci_registry, tmp_path)
    layer = json.loads(bed.v1)["layers"][0]
    blob = bed.layout / "blobs" / "sha256" / layer["digest"].split(":")[1]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    result = pull(oci_registry, bed.repo, "v2", bed.layout, doras_server)
    # the rot is found when the patched result does not match the target (no pre-hash of the base)
    assert (result.status, result.reason_code) == ("full", "base-corrupt")
    assert result.stored_digest == bed.to_digest
    # v1 lost its rotten layer (removed when found corrupt): its entry is dropped, so the
    # layout stays valid for every reader; v2 is whole
    assert "was dropped from the layout's index" in result.reason
    assert layout_problems(bed.layout) == []
    assert [image.tag for image in OCILayout.open(bed.layout).images()] == ["v2"]
    assert run("skopeo", "inspect", "--raw", f"oci:{bed.layout}:{name_of(bed.layout, 'v2')}").stdout.encode() == bed.v2



def test_truncated_base_layer_is_refused_before_asking(oci_registry: RegistryServer,
                                                        doras_server: DorasServer, tmp_path: Path) -> None:
    """A base of the wrong size is found without hashing it, before the server is asked."""
    bed = prepared(oci_registry, tmp_path)
    layer = json.loads(bed.v1)["layers"][0]
    blob = bed.layout / "blobs" / "sha256" / layer["digest"].split(":")[1]
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes()[:-1])
    result = pull(oci_registry, bed.repo, "v2", bed.layout, doras_server)
    assert (result.status, result.reason_code) == ("full", "base-missing")
    assert doras_server.builds == 0
    assert result.stored_digest == bed.to_digest
    assert run("skopeo", "inspect", "--raw", f"oci:{bed.layout}:{name_of(bed.layout, 'v2')}").stdout.encode() == bed.v2


@pytest.mark.parametrize(("status", "code"), [(200, "answer-too-large"), (500, "server-error")])
def test_an_oversized_server_answer_is_a_fallback(oci_registry: RegistryServer, doras_server: DorasServer,
                                                tmp_path: Path, status: int, code: str) -> None:
    """A 5 MiB body (over the 4 MiB JSON cap), a success or an error, never stops an update: a full pull."""
    bed = prepared(oci_registry, tmp_path)
    with FaultProxy(doras_server.url) as proxy:
        proxy.add("status", path="/api/v1/delta", status=status, body=b" " * (5 << 20))
        result = pull_v2(oci_registry, bed, proxy.url)
    assert_full_fallback(bed, result, code)


@pytest.mark.parametrize(("status", "code"), [(200, "bad-delta"), (500, "server-error")])
def test_a_deeply_nested_server_answer_is_a_fallback(oci_registry: RegistryServer, doras_server: DorasServer,
                                                    tmp_path: Path, status: int, code: str) -> None:
    """JSON nested 20,000 deep (20 KB, under every cap) is more than Python's parser takes: a fallback."""
    bed = prepared(oci_registry, tmp_path)
    with FaultProxy(doras_server.url) as proxy:
        proxy.add("status", path="/api/v1/delta", status=status, body=b"[" * 20_000 + b"]" * 20_000)
        result = pull_v2(oci_registry, bed, proxy.url)
    assert_full_fallback(bed, result, code)
