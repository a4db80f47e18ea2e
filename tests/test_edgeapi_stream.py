"""read_delta_as_stream: the recorded deltas in the real registry, and hostile delta manifests.

The Doras answers come from a hand-made server (the recorded 200 bodies, or
answers naming manifests a real server never makes); the manifests and blobs
are pushed with their exact bytes to the real docker-registry, except for
bytes no registry would store (served by a hand-made registry).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable

import pytest

from doras_oras.algorithms import Compression, DeltaAlgorithm, Patch
from doras_oras.descriptor import ANNOTATION_DELTA_FROM, ANNOTATION_DELTA_TO, digest_of
from doras_oras.edgeapi import EdgeClient, ReadDeltaResponse, check_delta_manifest
from doras_oras.errors import (
    DeltaManifestError,
    DigestMismatchError,
    MediaTypeMismatchError,
    SchemaValidationError,
    SizeMismatchError,
    UnsupportedAlgorithmError,
)
from doras_oras.reference import Reference
from doras_oras.stream import verifies, verifying_stream
from doras_oras.testing.registry import RegistryServer
from tests.edgeapi_helpers import (
    DELTA_CASES,
    FaultServer,
    Reply,
    RequestsFetcher,
    Seen,
    chunks,
    doras_vectors,
    push_blob,
    push_image,
    push_manifest,
)


def load_case(name: str) -> dict[str, bytes]:
    folder = doras_vectors() / name
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def push_case(registry: RegistryServer, case: dict[str, bytes], repository: str) -> None:
    for kind in ("from", "to", "delta"):
        manifest = case[f"{kind}.manifest.json"]
        layer = case[f"{kind}.layer"]
        push_image(registry.url, repository, manifest, {digest_of(layer): layer})


def doras_answering(body: bytes) -> FaultServer:
    return FaultServer(lambda _s: Reply(200, body))


@pytest.mark.parametrize("name", DELTA_CASES)
def test_recorded_delta_streams_from_the_real_registry(oci_registry: RegistryServer, name: str) -> None:
    case = load_case(name)
    exchange = json.loads(case["exchange.json"])
    answer = json.loads(exchange["response"]["body"])
    repository = Reference.parse(answer["delta_image"]).repository
    push_case(oci_registry, case, repository)
    query = exchange["request"]
    from_image = dict(query)["from_digest"]
    to_image = dict(query).get("to_tag") or dict(query)["to_digest"]
    accepted = [v for k, v in query if k == "accepted_algorithm"]
    fetcher = RequestsFetcher(oci_registry.url)
    with doras_answering(exchange["response"]["body"].encode()) as doras:
        edge = EdgeClient(doras.url, allow_http=True)
        descriptor, algorithm, stream = edge.read_delta_as_stream(from_image, to_image, accepted, fetcher)
        data = stream.read()
    layer = json.loads(case["delta.manifest.json"])["layers"][0]
    assert descriptor.digest == layer["digest"] and descriptor.size == layer["size"]
    assert algorithm.media_type == layer["mediaType"]
    assert data == case["delta.layer"]
    assert "sha256:" + hashlib.sha256(data).hexdigest() == exchange_layer_digest(case)
    assert [str(r) for r in fetcher.fetched] == [answer["delta_image"]]
    expected = {"application/bsdiff": (Patch.BSDIFF, Compression.NONE),
                "application/bsdiff+gzip": (Patch.BSDIFF, Compression.GZIP),
                "application/bsdiff+zstd": (Patch.BSDIFF, Compression.ZSTD),
                "application/tardiff": (Patch.TARDIFF, Compression.NONE)}[layer["mediaType"]]
    assert (algorithm.patch, algorithm.compression) == expected


def exchange_layer_digest(case: dict[str, bytes]) -> str:
    digest: str = json.loads(case["delta.manifest.json"])["layers"][0]["digest"]
    return digest


def test_algorithm_value_type() -> None:
    assert str(DeltaAlgorithm.from_media_type("application/bsdiff+zstd")) == "bsdiff+zstd"
    assert DeltaAlgorithm.TARDIFF.media_type == "application/tardiff"
    for bad in ("application/tardiff+zstd", "application/xdelta", "application/BSDIFF", ""):
        with pytest.raises(UnsupportedAlgorithmError, match="media type"):
            DeltaAlgorithm.from_media_type(bad)


# --- hostile manifests in the real registry ------------------------------------------------


def recorded(name: str = "bsdiff") -> tuple[dict[str, bytes], dict[str, object], dict[str, str]]:
    case = load_case(name)
    exchange = json.loads(case["exchange.json"])
    return case, json.loads(case["delta.manifest.json"]), json.loads(exchange["response"]["body"])


def answer_for(manifest_digest: str, target: str, repository: str = "oras-file-0") -> bytes:
    return json.dumps({"target_image": target,
                       "delta_image": f"localhost:5443/{repository}@{manifest_digest}"}).encode()


FROM = "localhost:5443/oras-file-0@sha256:c4a5c62808e303a06881dfc1d6c34949bf257dcfed9b8c512c2f8fe942b680e0"
TO_TAG = "localhost:5443/oras-file-0:v2"


def stream_with_manifest(registry: RegistryServer, manifest: dict[str, object] | bytes, layer: bytes | None,
                         target: str, to_image: str = TO_TAG) -> bytes:
    body = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    blobs = {digest_of(layer): layer} if layer is not None else {}
    digest = push_image(registry.url, "oras-file-0", body, blobs)
    with doras_answering(answer_for(digest, target)) as doras:
        edge = EdgeClient(doras.url, allow_http=True)
        _d, _a, stream = edge.read_delta_as_stream(FROM, to_image, None, RequestsFetcher(registry.url))
        return stream.read()


def test_dummy_manifest_is_refused(oci_registry: RegistryServer) -> None:
    _case, _manifest, answer = recorded()
    dummy = (doras_vectors() / "dummy.manifest.json").read_bytes()
    with pytest.raises(DeltaManifestError, match="placeholder"):
        stream_with_manifest(oci_registry, dummy, None, answer["target_image"])


@pytest.mark.parametrize("key", [ANNOTATION_DELTA_FROM, ANNOTATION_DELTA_TO])
def test_manifest_for_other_images_is_refused(oci_registry: RegistryServer, key: str) -> None:
    case, manifest, answer = recorded()
    annotations = dict(manifest["annotations"])  # type: ignore[call-overload]
    annotations[key] = "localhost:5443/oras-file-0@sha256:" + "ab" * 32
    manifest["annotations"] = annotations
    with pytest.raises(DeltaManifestError, match=f"other images: {key}"):
        stream_with_manifest(oci_registry, manifest, case["delta.layer"], answer["target_image"])


def test_manifest_without_annotations_is_refused(oci_registry: RegistryServer) -> None:
    case, manifest, answer = recorded()
    del manifest["annotations"]
    with pytest.raises(DeltaManifestError, match="lacks the annotation"):
        stream_with_manifest(oci_registry, manifest, case["delta.layer"], answer["target_image"])


def test_unknown_layer_media_type_is_refused(oci_registry: RegistryServer) -> None:
    case, manifest, answer = recorded()
    layers = manifest["layers"]
    assert isinstance(layers, list)
    layers[0] = {**layers[0], "mediaType": "application/xdelta3"}
    with pytest.raises(DeltaManifestError, match="xdelta3"):
        stream_with_manifest(oci_registry, manifest, case["delta.layer"], answer["target_image"])


def test_two_layers_are_refused(oci_registry: RegistryServer) -> None:
    case, manifest, answer = recorded()
    layers = manifest["layers"]
    assert isinstance(layers, list)
    manifest["layers"] = [layers[0], layers[0]]
    with pytest.raises(DeltaManifestError, match="2 layers"):
        stream_with_manifest(oci_registry, manifest, case["delta.layer"], answer["target_image"])


def test_answer_outside_the_repository_or_for_another_target(oci_registry: RegistryServer) -> None:
    _case, _manifest, answer = recorded()
    delta_digest = Reference.parse(answer["delta_image"]).digest
    assert delta_digest is not None
    with doras_answering(answer_for(delta_digest, answer["target_image"], "elsewhere")) as doras, \
            pytest.raises(DeltaManifestError, match="outside the requested repository"):
        EdgeClient(doras.url, allow_http=True).read_delta_as_stream(
            FROM, TO_TAG, None, RequestsFetcher(oci_registry.url))
    other_target = "localhost:5443/oras-file-0@sha256:" + "cd" * 32
    with doras_answering(json.dumps(answer).encode()) as doras, \
            pytest.raises(DeltaManifestError, match="requested sha256:cdcd"):
        EdgeClient(doras.url, allow_http=True).read_delta_as_stream(
            FROM, other_target, None, RequestsFetcher(oci_registry.url))


# --- bytes no registry stores: a hand-made registry ----------------------------------------------


def fake_registry(manifest: bytes, blob: bytes | Iterable[bytes], content_type: str) -> FaultServer:
    def handler(seen: Seen) -> Reply:
        if "/manifests/" in seen.path:
            return Reply(200, manifest, content_type=content_type)
        if "/blobs/" in seen.path:
            return Reply(200, blob, content_type="application/octet-stream")
        return Reply(404, b"{}")
    return FaultServer(handler)


@pytest.mark.parametrize("tamper, error", [
    (lambda b: b[:-1] + bytes([b[-1] ^ 1]), DigestMismatchError),
    (lambda b: b[:-10], SizeMismatchError),
])
def test_blob_bytes_that_do_not_match(tamper, error) -> None:  # type: ignore[no-untyped-def]
    case, _manifest, answer = recorded()
    body = case["delta.manifest.json"]
    with fake_registry(body, tamper(case["delta.layer"]), "application/vnd.oci.image.manifest.v1+json") as reg, \
            doras_answering(json.dumps(answer).encode()) as doras:
        _d, _a, stream = EdgeClient(doras.url, allow_http=True).read_delta_as_stream(
            FROM, TO_TAG, ["bsdiff"], RequestsFetcher(reg.url))
        with pytest.raises(error):
            stream.read()


def test_manifest_served_with_another_content_type() -> None:
    case, _manifest, answer = recorded()
    with fake_registry(case["delta.manifest.json"], case["delta.layer"],
                       "application/vnd.docker.distribution.manifest.v2+json") as reg, \
            doras_answering(json.dumps(answer).encode()) as doras, \
            pytest.raises(MediaTypeMismatchError, match="Content-Type"):
        EdgeClient(doras.url, allow_http=True).read_delta_as_stream(
            FROM, TO_TAG, None, RequestsFetcher(reg.url))


def test_check_delta_manifest_directly() -> None:
    case, manifest, answer = recorded()
    response = ReadDeltaResponse.from_json(answer)
    from_ref = Reference.parse(FROM)
    body = case["delta.manifest.json"]
    descriptor, algorithm = check_delta_manifest(body, "application/vnd.oci.image.manifest.v1+json",
                                                 response, from_ref)
    assert algorithm == DeltaAlgorithm.BSDIFF and descriptor.size == len(case["delta.layer"])
    with pytest.raises(DigestMismatchError):
        check_delta_manifest(body + b" ", "", response, from_ref)
    for bad, match in [({**manifest, "schemaVersion": 1}, "schemaVersion"), ([], "JSON object"),
                       ({**manifest, "layers": "x"}, "layers"),
                       ({**manifest, "mediaType": "application/vnd.oci.image.index.v1+json"}, "mediaType"),
                       ({**manifest, "annotations": {"a": 1}}, "annotations")]:
        raw = json.dumps(bad).encode()
        fake = ReadDeltaResponse(response.target_image,
                                 response.delta_image.with_digest(digest_of(raw)))
        with pytest.raises(SchemaValidationError, match=match):
            check_delta_manifest(raw, "", fake, from_ref)
    layers = manifest["layers"]
    assert isinstance(layers, list)
    raw = json.dumps({**manifest, "layers": [{**layers[0], "digest": "sha256:ABC"}]}).encode()
    fake = ReadDeltaResponse(response.target_image, response.delta_image.with_digest(digest_of(raw)))
    with pytest.raises(SchemaValidationError, match=r"layers\[0\]\.digest"):
        check_delta_manifest(raw, "", fake, from_ref)


def test_push_helper_keeps_digests(oci_registry: RegistryServer) -> None:
    # the vectors' exact bytes land under their recorded digests
    case = load_case("bsdiff")
    exchange = json.loads(case["exchange.json"])
    push_blob(oci_registry.url, "keep-digests", case["from.layer"])
    digest = push_image(oci_registry.url, "keep-digests", case["from.manifest.json"],
                        {digest_of(case["from.layer"]): case["from.layer"]})
    assert digest == exchange["from_manifest_digest"]
    assert push_manifest(oci_registry.url, "keep-digests", case["from.manifest.json"], "v1") == digest


def test_closing_the_stream_closes_the_blob_stream() -> None:
    case, _manifest, answer = recorded()
    opened = []

    class Recording(RequestsFetcher):
        def open_blob(self, ref, descriptor):  # type: ignore[no-untyped-def]
            stream = super().open_blob(ref, descriptor)
            opened.append(stream)
            return stream

    endless = itertools.chain([case["delta.layer"]], chunks(1 << 30))  # a source far from its end
    with fake_registry(case["delta.manifest.json"], endless,
                       "application/vnd.oci.image.manifest.v1+json") as reg, \
            doras_answering(json.dumps(answer).encode()) as doras:
        _d, _a, stream = EdgeClient(doras.url, allow_http=True).read_delta_as_stream(
            FROM, TO_TAG, None, Recording(reg.url))
        assert stream.read(10) == case["delta.layer"][:10]
        assert not opened[0].closed
        stream.close()
    assert opened[0].closed



def test_a_verifying_stream_is_not_wrapped_twice() -> None:
    """A fetcher's stream that verifies already (the registry client's) is returned as it is."""
    case, _manifest, answer = recorded()
    opened = []

    class Verifying(RequestsFetcher):
        def open_blob(self, ref, descriptor):  # type: ignore[no-untyped-def]
            stream = verifying_stream(super().open_blob(ref, descriptor), descriptor.digest, descriptor.size)
            opened.append(stream)
            return stream

    with fake_registry(case["delta.manifest.json"], [case["delta.layer"]],
                       "application/vnd.oci.image.manifest.v1+json") as reg, \
            doras_answering(json.dumps(answer).encode()) as doras:
        layer, _a, stream = EdgeClient(doras.url, allow_http=True).read_delta_as_stream(
            FROM, TO_TAG, None, Verifying(reg.url))
        assert stream is opened[0] and verifies(stream, layer.digest, layer.size)
        assert stream.read() == case["delta.layer"]
        stream.close()
