"""Finding a delta already stored in the registry, with no Doras server (issue #23 part 1, the lookup core)."""

from __future__ import annotations

import requests
from hypothesis import given
from hypothesis import strategies as st

from doras_oras.algorithms import ALGORITHM_NAMES, DeltaAlgorithm, delta_tag
from doras_oras.descriptor import ANNOTATION_CREATED, EMPTY_JSON, OCI_EMPTY
from doras_oras.edgeapi import EdgeClient
from doras_oras.publish import publish_delta
from doras_oras.publish.encode import pack_manifest
from doras_oras.publish.push import RegistryWriter
from doras_oras.reference import Reference
from doras_oras.registry_client import RegistryClient
from doras_oras.stored_deltas import candidate_algorithms, find_stored_delta
from doras_oras.testing.pytest_plugin import DorasServerFactory
from doras_oras.testing.registry import RegistryServer
from tests.publish_support import ALL, pushed


def plant(client: RegistryClient, to_ref: Reference, tag: str, media_type: str, *, from_image: str,
          to_image: str, dummy: bool = False) -> None:
    """A manifest of a writer of the repository under ``tag`` (any annotations, any layer type)."""
    writer = RegistryWriter(client)
    writer.push_blob(to_ref, EMPTY_JSON, OCI_EMPTY)
    layer = writer.push_blob(to_ref, b"\x28\xb5\x2f\xfd planted")
    annotations = {"com.unbasical.doras.delta.from": from_image, "com.unbasical.doras.delta.to": to_image,
                   ANNOTATION_CREATED: "2026-01-01T00:00:00Z"}
    if dummy:
        annotations["com.unbasical.doras.delta.dummy"] = "true"
    writer.push_manifest(to_ref, tag, pack_manifest(
        [{"mediaType": media_type, "digest": layer.digest, "size": layer.size}], annotations))


@given(st.lists(st.sampled_from(ALGORITHM_NAMES), unique=True))
def test_candidates_are_what_the_pull_accepts_in_order_of_preference(accepted: list[str]) -> None:
    order = [DeltaAlgorithm.TARDIFF, DeltaAlgorithm.BSDIFF_ZSTD, DeltaAlgorithm.BSDIFF_GZIP, DeltaAlgorithm.BSDIFF]
    found = candidate_algorithms(accepted)
    assert list(found) == [a for a in order if a.accepted_by(accepted)]


def test_nothing_stored_costs_one_head_per_candidate_and_no_body(oci_registry: RegistryServer) -> None:
    from_ref, to_ref = pushed(oci_registry, "bsdiff")
    seen: list[tuple[str, int]] = []
    session = requests.Session()
    session.hooks["response"].append(lambda r, *a, **k: seen.append((r.request.method, r.status_code)))
    with RegistryClient(plain_http=True, session=session) as client:
        assert find_stored_delta(client, from_ref, to_ref, ALL) is None
        assert client.bytes_received == 0
    assert seen == [("HEAD", 404)] * 4


def test_a_placeholder_of_a_building_server_is_skipped(oci_registry: RegistryServer,
                                                       doras_server_factory: DorasServerFactory) -> None:
    server = doras_server_factory(fail_builds=True)
    from_ref, to_ref = pushed(oci_registry, "bsdiff")
    with EdgeClient(server.url, True, None) as edge:
        response, exists = edge.read_delta_async(str(from_ref), str(to_ref), ["bsdiff", "zstd"])
    assert response is None and not exists  # 202: the dummy is stored under the bsdiff_zstd tag
    with RegistryClient(plain_http=True) as client:
        tag = delta_tag(from_ref.digest or "", to_ref.digest or "", DeltaAlgorithm.BSDIFF_ZSTD)
        assert client.manifest_exists(to_ref.with_tag(tag))
        assert find_stored_delta(client, from_ref, to_ref, ALL) is None


def test_a_delta_whose_annotations_name_another_pair_is_skipped(oci_registry: RegistryServer) -> None:
    """A writer of the repository plants, under this pair's tag, a delta that says it is for another target."""
    from_ref, to_ref = pushed(oci_registry, "bsdiff")
    other = to_ref.with_digest("sha256:" + "0" * 64)
    with RegistryClient(plain_http=True) as client:
        tag = delta_tag(from_ref.digest or "", to_ref.digest or "", DeltaAlgorithm.BSDIFF_ZSTD)
        plant(client, to_ref, tag, "application/bsdiff+zstd", from_image=str(from_ref), to_image=str(other))
        assert find_stored_delta(client, from_ref, to_ref, ALL) is None


def test_a_layer_of_another_kind_than_its_tag_is_skipped(oci_registry: RegistryServer) -> None:
    from_ref, to_ref = pushed(oci_registry, "bsdiff")
    with RegistryClient(plain_http=True) as client:
        tag = delta_tag(from_ref.digest or "", to_ref.digest or "", DeltaAlgorithm.BSDIFF_ZSTD)
        plant(client, to_ref, tag, "application/tardiff", from_image=str(from_ref), to_image=str(to_ref))
        assert find_stored_delta(client, from_ref, to_ref, ALL) is None


def test_a_bad_candidate_does_not_hide_the_next_one(oci_registry: RegistryServer) -> None:
    """A placeholder under the preferred tag; a good gzip delta under the next: the gzip one is found."""
    from_ref, to_ref = pushed(oci_registry, "bsdiff")
    with RegistryClient(plain_http=True) as client:
        zstd_tag = delta_tag(from_ref.digest or "", to_ref.digest or "", DeltaAlgorithm.BSDIFF_ZSTD)
        plant(client, to_ref, zstd_tag, "application/vnd.oci.empty.v1+json", from_image=str(from_ref),
              to_image=str(to_ref), dummy=True)
        from doras_oras.algorithms import Compression

        published = publish_delta(client, from_ref, to_ref, compression=Compression.GZIP)
        found = find_stored_delta(client, from_ref, to_ref, ALL)
    assert found is not None and found.algorithm is DeltaAlgorithm.BSDIFF_GZIP
    assert found.layer.digest == published.layer.digest


def test_only_kinds_the_pull_can_verify_are_used(oci_registry: RegistryServer) -> None:
    """A base stored as an uncompressed tar accepts only tardiff: a stored bsdiff is not used."""
    from_ref, to_ref = pushed(oci_registry, "bsdiff")
    with RegistryClient(plain_http=True) as client:
        publish_delta(client, from_ref, to_ref)
        assert find_stored_delta(client, from_ref, to_ref, ("tardiff",)) is None
        assert find_stored_delta(client, from_ref, to_ref, ("bsdiff", "zstd")) is not None


def test_the_host_in_the_annotations_may_differ(oci_registry: RegistryServer) -> None:
    """A delta stored by a writer that addressed the registry by another name (a mirror, a CDN) is found."""
    from_ref, to_ref = pushed(oci_registry, "bsdiff")
    elsewhere = Reference("registry.example:443", from_ref.repository)
    with RegistryClient(plain_http=True) as client:
        tag = delta_tag(from_ref.digest or "", to_ref.digest or "", DeltaAlgorithm.BSDIFF_ZSTD)
        plant(client, to_ref, tag, "application/bsdiff+zstd", from_image=str(elsewhere.with_digest(
            from_ref.digest or "")), to_image=str(elsewhere.with_digest(to_ref.digest or "")))
        found = find_stored_delta(client, from_ref, to_ref, ALL)
    assert found is not None and found.algorithm is DeltaAlgorithm.BSDIFF_ZSTD
