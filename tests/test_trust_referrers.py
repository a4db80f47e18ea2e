"""The referrers API path and the caps, on a hand-made registry serving real cosign output.

Debian's docker-registry 2.8 answers 404 to ``/v2/<name>/referrers/<digest>``
(cosign then writes the referrers tag schema, see test_trust_cosign.py). Here
a real ``cosign sign --registry-referrers-mode oci-1-1`` signature, made on
the real registry, is served by :class:`FakeRegistry` through the referrers
API, next to faults no real registry makes: a 100,000-entry answer, a
signature blob over 1 MiB (declared, or sent although the descriptor says
less).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from doras_oras import errors
from doras_oras.reference import Reference
from doras_oras.testing.registry import RegistryServer, find_tool
from doras_oras.trust import (
    MAX_MANIFEST_BYTES,
    MAX_REFERRERS,
    MAX_SIGNATURE_BLOB_BYTES,
    SIGNATURE_ARTIFACT_TYPE,
    referrers_tag,
    signature_tag,
    verify_signature,
)
from tests.trust_fake_registry import FakeRegistry
from tests.trust_support import (
    Cosign,
    KeyPair,
    RequestsSource,
    generate_cosign_key,
    get_manifest,
    manifest_json,
    oras_push,
    unique,
)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
REPO = "fleet/app"


@dataclass
class Signed:
    """A real artifact and its real oci-1-1 signature: all the bytes."""

    target_body: bytes
    digest: str
    signature_body: bytes
    signature_digest: str
    blobs: dict[str, bytes]
    key: KeyPair
    signed_name: str = ""
    """``host/repository`` the payload names (where it was signed, on the real registry)."""


@pytest.fixture(scope="module")
def signed(oci_registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> Signed:
    cosign = Cosign(binary=find_tool("cosign"), home=tmp_path_factory.mktemp("cosign-home"))
    key = generate_cosign_key(cosign, tmp_path_factory.mktemp("key"))
    # The payload names the repository it was signed in: sign in a repository named like REPO's.
    repo = unique("api") + "/" + REPO
    digest = oras_push(oci_registry.host, f"{repo}:v1", tmp_path_factory.mktemp("push"), "a.txt", b"api path\n")
    cosign.sign(key.private, f"{oci_registry.host}/{repo}@{digest}", oci11=True)
    target_body, _ = get_manifest(oci_registry.url, repo, digest)
    index = manifest_json(get_manifest(oci_registry.url, repo, referrers_tag(digest))[0])
    signature_digest = index["manifests"][0]["digest"]  # type: ignore[index]
    signature_body, _ = get_manifest(oci_registry.url, repo, signature_digest)
    manifest = manifest_json(signature_body)
    blobs = {}
    for descriptor in [manifest["config"], *manifest["layers"]]:  # type: ignore[list-item]
        blobs[descriptor["digest"]] = requests.get(
            f"{oci_registry.url}/v2/{repo}/blobs/{descriptor['digest']}", timeout=30).content
    return Signed(target_body, digest, signature_body, signature_digest, blobs, key,
                  signed_name=f"{oci_registry.host}/{repo}")


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    with FakeRegistry() as registry:
        yield registry


def serve(fake: FakeRegistry, signed: Signed, repo: str, *, referrers: list[dict[str, object]] | None = None,
          via_api: bool = True) -> Reference:
    """Load the signed artifact into ``fake`` under ``repo``; referrers through the API or the tag."""
    content = fake.content
    content.add_manifest(repo, signed.target_body, OCI_MANIFEST, "v1")
    content.add_manifest(repo, signed.signature_body, OCI_MANIFEST)
    for digest, data in signed.blobs.items():
        content.add_blob(repo, data, digest=digest)
    entry = {"mediaType": OCI_MANIFEST, "digest": signed.signature_digest, "size": len(signed.signature_body),
             "artifactType": SIGNATURE_ARTIFACT_TYPE}
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                        "manifests": [*(referrers or []), entry]}).encode()
    if via_api:
        content.referrers[(repo, signed.digest)] = index
    else:
        content.add_manifest(repo, index, OCI_INDEX, referrers_tag(signed.digest))
    return Reference.parse(f"{fake.host}/{repo}@{signed.digest}")


def signed_repo(signed: Signed) -> str:
    """The repository path the payload names (docker-reference minus the real registry's host)."""
    return signed.signed_name.split("/", 1)[1]


def test_referrers_api_path_with_real_cosign_output(fake: FakeRegistry, signed: Signed) -> None:
    # The payload names the real registry's host, so verify against that name through the fake's bytes.
    repo = signed_repo(signed)
    serve(fake, signed, repo, referrers=[
        {"mediaType": OCI_MANIFEST, "digest": "sha256:" + "1" * 64, "size": 10,
         "artifactType": "application/spdx+json"},  # another referrer: filtered out, never fetched
    ])
    target = Reference.parse(f"{signed.signed_name}@{signed.digest}")
    result = verify_signature(RequestsSource(fake.url), target, [signed.key.trusted])
    assert (result.found_via, result.location) == ("referrers-api", "referrers API")
    assert result.signature_manifest.digest == signed.signature_digest
    paths = fake.content.requests
    assert f"/v2/{repo}/referrers/{signed.digest}?artifactType=" + SIGNATURE_ARTIFACT_TYPE.replace("/", "%2F").replace("+", "%2B") in paths
    assert not any(referrers_tag(signed.digest) == p.rsplit("/", 1)[-1] for p in paths)  # no tag fallback
    assert not any("1111111111" in p for p in paths)


def test_referrers_tag_fallback_when_the_api_is_absent(fake: FakeRegistry, signed: Signed) -> None:
    repo = signed_repo(signed)
    serve(fake, signed, repo, via_api=False)
    target = Reference.parse(f"{signed.signed_name}@{signed.digest}")
    result = verify_signature(RequestsSource(fake.url), target, [signed.key.trusted])
    assert result.found_via == "referrers-tag"
    assert f"/v2/{repo}/manifests/{signature_tag(signed.digest)}" in fake.content.requests


def test_hundred_thousand_referrers_refused_unread(fake: FakeRegistry, signed: Signed) -> None:
    repo = signed_repo(signed)
    flood = [{"mediaType": OCI_MANIFEST, "digest": f"sha256:{i:064x}", "size": 500,
              "artifactType": SIGNATURE_ARTIFACT_TYPE} for i in range(100_000)]
    serve(fake, signed, repo, referrers=flood)
    body = fake.content.referrers[(repo, signed.digest)]
    assert len(body) > MAX_MANIFEST_BYTES
    target = Reference.parse(f"{signed.signed_name}@{signed.digest}")
    with pytest.raises(errors.SignatureLimitError, match=r"referrers answer.*over 4194304 bytes"):
        verify_signature(RequestsSource(fake.url), target, [signed.key.trusted])
    assert not any("/manifests/sha256:000000" in p for p in fake.content.requests)


def test_referrer_entries_over_the_cap_refused_without_fetching_any(fake: FakeRegistry, signed: Signed) -> None:
    repo = signed_repo(signed)
    flood = [{"mediaType": OCI_MANIFEST, "digest": f"sha256:{i:064x}", "size": 1}
             for i in range(MAX_REFERRERS)]  # + the real one: one over the cap, well under 4 MiB
    serve(fake, signed, repo, referrers=flood)
    assert len(fake.content.referrers[(repo, signed.digest)]) < MAX_MANIFEST_BYTES
    target = Reference.parse(f"{signed.signed_name}@{signed.digest}")
    with pytest.raises(errors.SignatureLimitError, match=f"{MAX_REFERRERS + 1} entries, over the cap"):
        verify_signature(RequestsSource(fake.url), target, [signed.key.trusted])
    assert not any(f"/manifests/{signed.signature_digest}" in p for p in fake.content.requests)


def test_exactly_the_cap_of_entries_is_still_read(fake: FakeRegistry, signed: Signed) -> None:
    repo = signed_repo(signed)
    flood = [{"mediaType": OCI_MANIFEST, "digest": f"sha256:{i:064x}", "size": 1}
             for i in range(MAX_REFERRERS - 1)]
    serve(fake, signed, repo, referrers=flood)
    target = Reference.parse(f"{signed.signed_name}@{signed.digest}")
    assert verify_signature(RequestsSource(fake.url), target, [signed.key.trusted]).found_via == "referrers-api"


def _with_big_layer(fake: FakeRegistry, signed: Signed, repo: str, *, declared: int, sent: int) -> Reference:
    """The real signature manifest with its layer's size declared as ``declared``, ``sent`` bytes served."""
    manifest = manifest_json(signed.signature_body)
    layer = manifest["layers"][0]  # type: ignore[index]
    layer["size"] = declared
    body = json.dumps(manifest).encode()
    tampered = Signed(signed.target_body, signed.digest, body, "sha256:" + hashlib.sha256(body).hexdigest(),
                      dict(signed.blobs), signed.key, signed.signed_name)
    tampered.blobs[layer["digest"]] = b" " * sent
    return serve(fake, tampered, repo)


def test_signature_blob_declared_over_one_mebibyte_is_not_fetched(fake: FakeRegistry, signed: Signed) -> None:
    repo = signed_repo(signed)
    _with_big_layer(fake, signed, repo, declared=MAX_SIGNATURE_BLOB_BYTES + 1, sent=MAX_SIGNATURE_BLOB_BYTES + 1)
    target = Reference.parse(f"{signed.signed_name}@{signed.digest}")
    with pytest.raises(errors.SignatureLimitError, match="declared size 1048577 over the 1048576-byte cap"):
        verify_signature(RequestsSource(fake.url), target, [signed.key.trusted])
    assert not any("/blobs/" in p for p in fake.content.requests)


def test_signature_blob_sent_over_one_mebibyte_is_cut(fake: FakeRegistry, signed: Signed) -> None:
    repo = signed_repo(signed)
    manifest = manifest_json(signed.signature_body)
    size = manifest["layers"][0]["size"]  # type: ignore[index]
    _with_big_layer(fake, signed, repo, declared=size, sent=8 * MAX_SIGNATURE_BLOB_BYTES)
    target = Reference.parse(f"{signed.signed_name}@{signed.digest}")
    with pytest.raises(errors.SignatureLimitError, match="over 1048576 bytes"):
        verify_signature(RequestsSource(fake.url), target, [signed.key.trusted])


def test_referrer_whose_subject_is_another_digest_is_refused(fake: FakeRegistry, signed: Signed, tmp_path: Path) -> None:
    """A referrers answer listing a real signature manifest of another image."""
    repo = signed_repo(signed)
    other_body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                             "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                                        "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
                                        "size": 2}, "layers": []}).encode()
    other = fake.content.add_manifest(repo, other_body, OCI_MANIFEST, "other")
    serve(fake, signed, repo)
    fake.content.referrers[(repo, other)] = fake.content.referrers.pop((repo, signed.digest))
    target = Reference.parse(f"{signed.signed_name}@{other}")
    with pytest.raises(errors.MalformedSignatureError, match=f"its subject is not {other}"):
        verify_signature(RequestsSource(fake.url), target, [signed.key.trusted])


def test_referrers_api_error_status_is_not_taken_for_absent(signed: Signed, tmp_path: Path) -> None:
    """Only 404 means "no referrers API"; a 500 aborts verification (the source raises)."""

    class Broken(RequestsSource):
        def fetch_referrers(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
            raise errors.RegistryError("GET referrers: HTTP 500", status=500)

    with FakeRegistry() as registry:
        repo = signed_repo(signed)
        serve(registry, signed, repo, via_api=False)
        target = Reference.parse(f"{signed.signed_name}@{signed.digest}")
        with pytest.raises(errors.RegistryError):
            verify_signature(Broken(registry.url), target, [signed.key.trusted])
        assert not any(p.endswith("/manifests/" + referrers_tag(signed.digest)) for p in registry.content.requests)
