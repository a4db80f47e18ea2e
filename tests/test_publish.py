"""publish-delta against the real registry (issue #23 part 2): the delta is built here, stored as a
Doras server stores it, found in the registry with no server, and served by a Doras server at once."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from doras_oras.algorithms import Compression, DeltaAlgorithm, Patch, delta_tag
from doras_oras.cli.main import main
from doras_oras.codecs import apply_delta
from doras_oras.descriptor import (
    ANNOTATION_CREATED,
    EMPTY_JSON,
    OCI_EMPTY,
    OCI_LAYER_TAR,
    Descriptor,
)
from doras_oras.edgeapi import EdgeClient
from doras_oras.errors import (
    ArtifactTooLargeError,
    DeltaExistsError,
    PublishError,
    RegistryAuthError,
)
from doras_oras.publish import previous_versions, publish_delta, publish_from_last
from doras_oras.publish.encode import pack_manifest
from doras_oras.publish.push import RegistryWriter
from doras_oras.reference import Reference
from doras_oras.registry_client import RegistryClient
from doras_oras.stored_deltas import find_stored_delta
from doras_oras.testing.pytest_plugin import REGISTRY_PASSWORD, REGISTRY_USER, DorasServerFactory
from doras_oras.testing.registry import RegistryServer
from doras_oras.testing.server import DorasServer
from doras_oras.testing.vectors import doras_vectors, push_recorded
from tests.cli_support import on_terminal
from tests.publish_support import ALL, pushed
from tests.pull_support import edit, unique


def layer_of(client: RegistryClient, ref: Reference) -> Descriptor:
    return Descriptor.from_json(client.fetch_parsed(ref).document["layers"][0])


def blob(client: RegistryClient, ref: Reference, layer: Descriptor) -> bytes:
    with client.open_blob(ref, layer) as stream:
        data: bytes = stream.read()
    return data


def applied(client: RegistryClient, from_ref: Reference, algorithm: DeltaAlgorithm, delta_layer: Descriptor,
            tmp_path: Path) -> bytes:
    """The found delta applied to the base layer, as a device would."""
    base = tmp_path / "base"
    base.write_bytes(blob(client, from_ref, layer_of(client, from_ref)))
    out = io.BytesIO()
    with base.open("rb") as stream:
        apply_delta(algorithm, stream, io.BytesIO(blob(client, from_ref, delta_layer)), out)
    return out.getvalue()


@pytest.mark.parametrize("vector", ["bsdiff", "gzip-layer-bsdiff+zstd", "tardiff-doras-dir"])
def test_a_published_bsdiff_delta_is_found_without_a_server_and_gives_the_target(
        oci_registry: RegistryServer, tmp_path: Path, vector: str) -> None:
    """A file (oras CLI), a gzipped file and a directory without a content digest (doras-cli): bsdiff."""
    from_ref, to_ref = pushed(oci_registry, vector)
    with RegistryClient(plain_http=True) as client:
        result = publish_delta(client, from_ref, to_ref)
        found = find_stored_delta(client, from_ref, to_ref, ALL)
        assert found is not None and result.status == "pushed"
        assert found.algorithm is DeltaAlgorithm.BSDIFF_ZSTD and found.layer.digest == result.layer.digest
        assert found.manifest_ref.digest == result.manifest.digest
        target = layer_of(client, to_ref)
        assert applied(client, from_ref, found.algorithm, found.layer, tmp_path) == blob(client, to_ref, target)


def test_the_stored_manifest_has_the_shape_the_doras_server_writes(oci_registry: RegistryServer) -> None:
    """Same keys, artifactType, config, layer media type and title, annotations as the recording."""
    from_ref, to_ref = pushed(oci_registry, "bsdiff")
    recorded = json.loads((doras_vectors() / "bsdiff" / "delta.manifest.json").read_bytes())
    with RegistryClient(plain_http=True) as client:
        result = publish_delta(client, from_ref, to_ref, compression=Compression.NONE)
        ours = client.fetch_parsed(to_ref.with_tag(result.tag)).document
    assert result.tag == delta_tag(from_ref.digest or "", to_ref.digest or "", DeltaAlgorithm.BSDIFF)
    assert list(ours) == list(recorded)
    assert {k: ours[k] for k in ("schemaVersion", "mediaType", "artifactType", "config")} == {
        k: recorded[k] for k in ("schemaVersion", "mediaType", "artifactType", "config")}
    layer, recorded_layer = ours["layers"][0], recorded["layers"][0]
    assert (layer["mediaType"], layer["annotations"]) == (recorded_layer["mediaType"], recorded_layer["annotations"])
    assert list(ours["annotations"]) == list(recorded["annotations"])
    assert ours["annotations"]["com.unbasical.doras.delta.from"] == str(from_ref)
    assert ours["annotations"]["com.unbasical.doras.delta.to"] == str(to_ref)


def test_a_directory_gets_a_tardiff_verified_by_the_content_digest(oci_registry: RegistryServer,
                                                                   tmp_path: Path) -> None:
    from_ref, to_ref = pushed(oci_registry, "tardiff-oras-dir")
    with RegistryClient(plain_http=True) as client:
        result = publish_delta(client, from_ref, to_ref)
        found = find_stored_delta(client, from_ref, to_ref, ALL)
        assert result.algorithm is DeltaAlgorithm.TARDIFF
        assert found is not None and found.algorithm is DeltaAlgorithm.TARDIFF
        tar = applied(client, from_ref, found.algorithm, found.layer, tmp_path)
        target = layer_of(client, to_ref)
    assert "sha256:" + hashlib.sha256(tar).hexdigest() == target.annotations["io.deis.oras.content.digest"]


def test_no_tardiff_without_the_content_digest(oci_registry: RegistryServer) -> None:
    """doras-cli pushes directories without io.deis.oras.content.digest: no client could verify a tar-diff."""
    from_ref, to_ref = pushed(oci_registry, "tardiff-doras-dir")
    with RegistryClient(plain_http=True) as client:
        with pytest.raises(PublishError, match=r"io\.deis\.oras\.content\.digest"):
            publish_delta(client, from_ref, to_ref, patch=Patch.TARDIFF)
        assert publish_delta(client, from_ref, to_ref).algorithm is DeltaAlgorithm.BSDIFF_ZSTD


def test_the_doras_server_answers_with_a_published_delta_at_once(oci_registry: RegistryServer,
                                                                  doras_server: DorasServer) -> None:
    """A Doras server asked for the pair reuses the published delta: 200 naming it, nothing built."""
    from_ref, to_ref = pushed(oci_registry, "bsdiff")
    with RegistryClient(plain_http=True) as client:
        result = publish_delta(client, from_ref, to_ref)
    with EdgeClient(doras_server.url, True, None) as edge:
        response, exists = edge.read_delta_async(str(from_ref), str(to_ref), ["bsdiff", "zstd"])
    assert exists and response is not None
    assert response.delta_ref.digest == result.manifest.digest and doras_server.builds == 0


def test_a_delta_built_by_the_server_is_found_too(oci_registry: RegistryServer, doras_server: DorasServer,
                                                  tmp_path: Path) -> None:
    from_ref, to_ref = pushed(oci_registry, "bsdiff")
    with EdgeClient(doras_server.url, True, None) as edge:
        response = edge.read_delta(str(from_ref), str(to_ref), ["bsdiff", "gzip"])
    with RegistryClient(plain_http=True) as client:
        found = find_stored_delta(client, from_ref, to_ref, ALL)
        assert found is not None and found.algorithm is DeltaAlgorithm.BSDIFF_GZIP
        assert found.manifest_ref.digest == response.delta_ref.digest
        target = layer_of(client, to_ref)
        assert applied(client, from_ref, found.algorithm, found.layer, tmp_path) == blob(client, to_ref, target)


def test_publishing_again_sends_nothing(oci_registry: RegistryServer) -> None:
    from_ref, to_ref = pushed(oci_registry, "bsdiff")
    with RegistryClient(plain_http=True) as client:
        first = publish_delta(client, from_ref, to_ref)
        again = publish_delta(client, from_ref, to_ref)
    assert (again.status, again.bytes_sent, again.manifest.digest) == ("exists", 0, first.manifest.digest)


def _plant_other(client: RegistryClient, from_ref: Reference, to_ref: Reference, tag: str) -> str:
    """Another bsdiff+zstd delta for the pair under ``tag`` (as another writer might store); its layer digest."""
    writer = RegistryWriter(client)
    writer.push_blob(to_ref, EMPTY_JSON, OCI_EMPTY)
    layer = writer.push_blob(to_ref, b"\x28\xb5\x2f\xfd another writer's delta")
    body = pack_manifest([{"mediaType": "application/bsdiff+zstd", "digest": layer.digest, "size": layer.size,
                           "annotations": {"org.opencontainers.image.title": "delta.bsdiff.zstd"}}],
                         {"com.unbasical.doras.delta.from": str(from_ref),
                          "com.unbasical.doras.delta.to": str(to_ref), ANNOTATION_CREATED: "2026-01-01T00:00:00Z"})
    writer.push_manifest(to_ref, tag, body)
    return layer.digest


def test_a_different_stored_delta_is_kept_unless_forced(oci_registry: RegistryServer) -> None:
    from_ref, to_ref = pushed(oci_registry, "bsdiff")
    tag = delta_tag(from_ref.digest or "", to_ref.digest or "", DeltaAlgorithm.BSDIFF_ZSTD)
    with RegistryClient(plain_http=True) as client:
        other = _plant_other(client, from_ref, to_ref, tag)
        with pytest.raises(DeltaExistsError, match="force=True"):
            publish_delta(client, from_ref, to_ref)
        assert layer_of(client, to_ref.with_tag(tag)).digest == other  # untouched
        forced = publish_delta(client, from_ref, to_ref, force=True)
        assert forced.status == "replaced" and layer_of(client, to_ref.with_tag(tag)).digest == forced.layer.digest


def test_layers_over_the_bound_are_refused_before_anything_is_read(oci_registry: RegistryServer) -> None:
    from_ref, to_ref = pushed(oci_registry, "bsdiff")
    with RegistryClient(plain_http=True) as client:
        before = client.bytes_received
        with pytest.raises(ArtifactTooLargeError, match="131072 bytes, over the 100000 byte bound"):
            publish_delta(client, from_ref, to_ref, max_size=100_000)
        manifests_only = client.bytes_received - before
        assert manifests_only < 4096
        assert find_stored_delta(client, from_ref, to_ref, ALL) is None


def test_publishing_needs_write_credentials(oci_registry_auth: RegistryServer) -> None:
    """Basic auth on every write (POST, PUT, HEAD); without credentials, a clear auth error."""
    import requests

    repo = unique("pub-auth")
    session = requests.Session()
    session.auth = (REGISTRY_USER, REGISTRY_PASSWORD)
    digests = push_recorded(oci_registry_auth.url, doras_vectors() / "bsdiff", repo, session=session)
    base = Reference(oci_registry_auth.host, repo)
    from_ref, to_ref = base.with_digest(digests["from_digest"]), base.with_digest(digests["to_digest"])
    with RegistryClient(plain_http=True, allow_insecure_auth=True,
                        credentials=(REGISTRY_USER, REGISTRY_PASSWORD)) as client:
        assert publish_delta(client, from_ref, to_ref).status == "pushed"
        assert find_stored_delta(client, from_ref, to_ref, ALL) is not None
    with RegistryClient(plain_http=True) as anonymous, pytest.raises(RegistryAuthError):
        publish_delta(anonymous, from_ref, to_ref)


# --- --from-last ---------------------------------------------------------------------------------------


def _push_version(client: RegistryClient, repo: Reference, tag: str, data: bytes, created: str) -> Reference:
    writer = RegistryWriter(client)
    writer.push_blob(repo, EMPTY_JSON, OCI_EMPTY)
    layer = writer.push_blob(repo, data)
    body = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.unknown.artifact.v1",
        "config": {"mediaType": OCI_EMPTY, "digest": "sha256:" + hashlib.sha256(b"{}").hexdigest(), "size": 2},
        "layers": [{"mediaType": OCI_LAYER_TAR, "digest": layer.digest, "size": layer.size,
                    "annotations": {"org.opencontainers.image.title": "fw.bin"}}],
        "annotations": {ANNOTATION_CREATED: created}}).encode()
    return repo.with_digest(writer.push_manifest(repo, tag, body).digest)


def _versions(registry: RegistryServer, client: RegistryClient) -> tuple[Reference, list[Reference]]:
    """v1..v4 (v3 also tagged 'stable'), created a day apart, pushed out of order; a cosign-like tag."""
    repo = Reference(registry.host, unique("pub-last"))
    data = bytes(range(256)) * 64
    refs = {}
    for n, day in ((3, 3), (1, 1), (4, 4), (2, 2)):
        data_n = edit(data, n, seed=n)
        refs[n] = _push_version(client, repo, f"v{n}", data_n, f"2026-03-0{day}T10:00:00Z")
    writer = RegistryWriter(client)
    writer.push_manifest(repo, "stable", client.fetch_parsed(refs[3]).body)
    writer.push_manifest(repo, f"sha256-{'a' * 64}.sig", client.fetch_parsed(refs[2]).body)
    return refs[4].with_tag("v4"), [refs[3], refs[2], refs[1]]


def test_previous_versions_are_ordered_by_creation(oci_registry: RegistryServer) -> None:
    with RegistryClient(plain_http=True) as client:
        target, older = _versions(oci_registry, client)
        assert [r.digest for r in previous_versions(client, target, 2)] == [r.digest for r in older[:2]]
        assert [r.digest for r in previous_versions(client, target, 10)] == [r.digest for r in older]


def test_from_last_publishes_a_delta_from_each_previous_version(oci_registry: RegistryServer) -> None:
    with RegistryClient(plain_http=True) as client:
        target, older = _versions(oci_registry, client)
        done, failed = publish_from_last(client, target, 2)
        assert failed == [] and [d.status for d in done] == ["pushed", "pushed"]
        to_ref = target.with_digest(client.resolve(target).digest)
        assert [find_stored_delta(client, base, to_ref, ALL) is not None for base in older] == [True, True, False]
        # the deltas just published are tags now; a second run skips them and finds the same versions
        assert [r.digest for r in previous_versions(client, target, 2)] == [r.digest for r in older[:2]]


# --- the command ---------------------------------------------------------------------------------------


def test_the_command_prints_one_json_object(oci_registry: RegistryServer, capsys: pytest.CaptureFixture[str]) -> None:
    from_ref, to_ref = pushed(oci_registry, "bsdiff")
    code = main(["publish-delta", "--from", str(from_ref), "--to",
                 str(to_ref), "--plain-http", "--compression", "gzip", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["status"] == "pushed" and out["algorithm"] == "bsdiff+gzip"
    assert out["tag"] == delta_tag(from_ref.digest or "", to_ref.digest or "", DeltaAlgorithm.BSDIFF_GZIP)


def test_the_command_names_force_when_a_different_delta_is_stored(
        oci_registry: RegistryServer, capsys: pytest.CaptureFixture[str]) -> None:
    from_ref, to_ref = pushed(oci_registry, "bsdiff")
    tag = delta_tag(from_ref.digest or "", to_ref.digest or "", DeltaAlgorithm.BSDIFF_ZSTD)
    with RegistryClient(plain_http=True) as client:
        _plant_other(client, from_ref, to_ref, tag)
    code = main(["publish-delta", "--from", str(from_ref), "--to", str(to_ref), "--plain-http", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert (code, out["error"], out["fix"]) == (1, "DeltaExistsError", "overwrite-delta")
    assert "--force" in out["message"] and "force=True" not in out["message"]


def test_tardiff_takes_no_compression(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["publish-delta", "--from", "127.0.0.1:1/r:v1", "--to", "127.0.0.1:1/r:v2", "--algorithm",
                 "tardiff", "--compression", "zstd"])
    assert code == 2 and "takes no --compression" in capsys.readouterr().err


def test_a_tar_that_is_no_tar_is_a_clear_error() -> None:
    """tar-diff over a layer that is no tar archive: an error naming it, not a traceback."""
    from doras_oras.errors import InvalidArgumentError
    from doras_oras.publish import build_delta

    good = io.BytesIO()
    with tarfile.open(fileobj=good, mode="w") as tar:
        info = tarfile.TarInfo("a")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(InvalidArgumentError, match="not a tar"):
        build_delta(good.getvalue(), b"\x00garbage" * 100, DeltaAlgorithm.TARDIFF)


def test_progress_is_drawn_on_a_terminal_only(oci_registry: RegistryServer) -> None:
    """Bars for reading and pushing, the build spinner, on a terminal's stderr; nothing with --json."""
    from_ref, to_ref = pushed(oci_registry, "bsdiff")
    code, out, err = on_terminal("publish-delta", "--from", str(from_ref), "--to", str(to_ref), "--plain-http")
    assert code == 0 and out.startswith("published: bsdiff+zstd delta")
    assert "base [" in err and "target [" in err and "pushing [" in err
    again_code, _out, again_err = on_terminal("publish-delta", "--from", str(from_ref), "--to", str(to_ref),
                                              "--plain-http", "--json", "--compression", "gzip")
    assert again_code == 0 and "[" not in again_err


def test_a_servers_placeholder_is_replaced(oci_registry: RegistryServer,
                                           doras_server_factory: DorasServerFactory) -> None:
    """A server whose build failed left its placeholder under the tag: the published delta takes its place."""
    server = doras_server_factory(fail_builds=True)
    from_ref, to_ref = pushed(oci_registry, "bsdiff")
    with EdgeClient(server.url, True, None) as edge:
        assert edge.read_delta_async(str(from_ref), str(to_ref), ["bsdiff", "zstd"])[0] is None
    with RegistryClient(plain_http=True) as client:
        result = publish_delta(client, from_ref, to_ref)
        found = find_stored_delta(client, from_ref, to_ref, ALL)
    assert result.status == "replaced" and found is not None and found.layer.digest == result.layer.digest


def test_the_self_check_refuses_a_delta_to_another_target(oci_registry: RegistryServer) -> None:
    """The self-check: a delta to another target is refused, of the same size (the digest) or not (the size)."""
    from doras_oras.publish.deltas import check_delta
    from doras_oras.publish.encode import build_delta

    from_ref, to_ref = pushed(oci_registry, "bsdiff")
    with RegistryClient(plain_http=True) as client:
        base_layer, target_layer = layer_of(client, from_ref), layer_of(client, to_ref)
        old = blob(client, from_ref, base_layer)
        new = blob(client, to_ref, target_layer)
        same_size = build_delta(old, edit(new, 3, seed=5), DeltaAlgorithm.BSDIFF_ZSTD)
        with pytest.raises(PublishError, match="not the target's"):
            check_delta(DeltaAlgorithm.BSDIFF_ZSTD, old, same_size, target_layer)
        other_size = build_delta(old, edit(old, 3, seed=5), DeltaAlgorithm.BSDIFF_ZSTD)
        with pytest.raises(PublishError, match="does not apply to the base"):
            check_delta(DeltaAlgorithm.BSDIFF_ZSTD, old, other_size, target_layer)
        check_delta(DeltaAlgorithm.BSDIFF_ZSTD, old, build_delta(old, new, DeltaAlgorithm.BSDIFF_ZSTD), target_layer)
