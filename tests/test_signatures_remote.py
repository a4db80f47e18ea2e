"""The registry as a signature source (doras_oras.signatures.remote): 404 is "nothing there", every other
failure propagates; referrers ``Link`` pages followed within the caps; and, at the pull level, the faults
no real registry makes (a 100,000-entry referrers answer, signature blobs over 1 MiB) refused before any
blob of the target is fetched. The real registry where it can answer; a hand-made one for the rest."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from doras_oras import errors
from doras_oras.descriptor import EMPTY_DIGEST, Descriptor
from doras_oras.layout import OCILayout
from doras_oras.pull import pull_delta
from doras_oras.reference import Reference
from doras_oras.registry_client import RegistryClient
from doras_oras.signatures import MAX_REFERRER_PAGES, RegistrySignatureSource, next_link
from doras_oras.testing.registry import RegistryServer
from doras_oras.testing.signing import SigningKey, simple_signing_payload
from doras_oras.trust import (
    MAX_REFERRERS,
    SIGNATURE_ANNOTATION,
    SIGNATURE_ARTIFACT_TYPE,
    SIMPLE_SIGNING_MEDIA_TYPE,
    Requirement,
    cosign_config,
    load_public_key,
    signature_tag,
    verify_signature,
)
from tests.pull_support import oras_push_file, snapshot, unique
from tests.trust_fake_registry import FakeRegistry

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
REPO = "fleet/app"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return SigningKey.generate(tmp_path_factory.mktemp("key"))


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    with FakeRegistry() as registry:
        yield registry


@dataclass
class Artifact:
    ref: Reference
    digest: str
    layer: bytes


def artifact(fake: FakeRegistry) -> Artifact:
    """A one-file artifact shaped as the oras CLI pushes it, served under ``REPO:v1``."""
    layer = b"firmware v1\n" * 100
    fake.content.add_blob(REPO, layer)
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "artifactType": "application/vnd.unknown.artifact.v1",
                       "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": EMPTY_DIGEST,
                                  "size": 2, "data": base64.b64encode(b"{}").decode()},
                       "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(layer),
                                   "size": len(layer),
                                   "annotations": {"org.opencontainers.image.title": "fw.bin"}}]}).encode()
    digest = fake.content.add_manifest(REPO, body, OCI_MANIFEST, "v1")
    return Artifact(Reference.parse(f"{fake.host}/{REPO}:v1"), digest, layer)


def referrer(fake: FakeRegistry, art: Artifact, key: SigningKey, *, payload_size: int | None = None,
             served: bytes | None = None) -> dict[str, object]:
    """A cosign oci-1-1 signature of ``art`` (by ``key``), stored; its referrers index entry.

    ``payload_size`` overrides the layer's declared size; ``served`` the payload bytes sent.
    """
    data = simple_signing_payload(f"{fake.host}/{REPO}", art.digest)
    layer_d = Descriptor(SIMPLE_SIGNING_MEDIA_TYPE, sha(data), len(data))
    config = cosign_config([layer_d])
    fake.content.add_blob(REPO, served if served is not None else data, digest=sha(data))
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": SIGNATURE_ARTIFACT_TYPE, "size": len(config), "digest": sha(config)},
                       "layers": [{"mediaType": SIMPLE_SIGNING_MEDIA_TYPE, "size": payload_size or len(data),
                                   "digest": sha(data), "annotations": {SIGNATURE_ANNOTATION: key.sign_bytes(data)}}],
                       "subject": {"mediaType": OCI_MANIFEST, "size": 1, "digest": art.digest},
                       "artifactType": SIGNATURE_ARTIFACT_TYPE}).encode()
    digest = fake.content.add_manifest(REPO, body, OCI_MANIFEST)
    return {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(body), "artifactType": SIGNATURE_ARTIFACT_TYPE}


def index(entries: list[dict[str, object]]) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()


def api_path(digest: str) -> str:
    return f"/v2/{REPO}/referrers/{digest}?artifactType=application%2Fvnd.dev.cosign.artifact.sig.v1%2Bjson"


def filler(n: int, start: int = 0) -> list[dict[str, object]]:
    return [{"mediaType": OCI_MANIFEST, "digest": "sha256:" + f"{start + i:064x}", "size": 1,
             "artifactType": "application/example"} for i in range(n)]


def source() -> RegistrySignatureSource:
    return RegistrySignatureSource(RegistryClient(plain_http=True))


def test_next_link_reads_rfc8288() -> None:
    assert next_link('</v2/a/referrers/x?n=2&last=b>; rel="next"') == "/v2/a/referrers/x?n=2&last=b"
    assert next_link('<https://h/p1>; rel="prev", <https://h/p3>; rel=next') == "https://h/p3"
    assert next_link('<https://h/p>; rel="first last"') is None
    assert next_link(None) is None and next_link("") is None and next_link("garbage") is None


def test_real_registry_answers_404_as_nothing_and_counts_bytes(oci_registry: RegistryServer, tmp_path: Path) -> None:
    repo = unique("remote")
    oras_push_file(oci_registry.host, f"{repo}:v1", tmp_path, "a.txt", b"remote\n")
    client = RegistryClient(plain_http=True)
    src = RegistrySignatureSource(client)
    target = Reference.parse(f"{oci_registry.host}/{repo}:v1")
    found = src.fetch_manifest(target, "v1", max_bytes=1 << 20)
    assert found is not None and found.content_type == OCI_MANIFEST
    assert client.bytes_received == len(found.body)
    digest = sha(found.body)
    assert src.fetch_manifest(target, signature_tag(digest), max_bytes=1 << 20) is None
    assert src.fetch_referrers(target, digest, artifact_type=SIGNATURE_ARTIFACT_TYPE, max_bytes=1 << 20) is None
    assert src.fetch_blob(target, Descriptor("x/y", "sha256:" + "1" * 64, 1), max_bytes=10) is None
    with pytest.raises(errors.BodyTooLargeError):
        src.fetch_manifest(target, "v1", max_bytes=10)
    with pytest.raises(errors.InvalidArgumentError):
        src.fetch_manifest(target, "../../v2/x", max_bytes=10)


def test_referrers_pages_are_followed_and_merged(fake: FakeRegistry, key: SigningKey) -> None:
    art = artifact(fake)
    entry = referrer(fake, art, key)
    base = api_path(art.digest)
    fake.content.pages[base] = (index(filler(3)), f'<{base}&n=3&last=p1>; rel="next"', OCI_INDEX)
    fake.content.pages[f"{base}&n=3&last=p1"] = (index(filler(3, 3)), f'<http://{fake.host}{base}&last=p2>; rel="next"',
                                                OCI_INDEX)
    fake.content.pages[f"{base}&last=p2"] = (index([entry]), None, OCI_INDEX)
    answer = source().fetch_referrers(art.ref, art.digest, artifact_type=SIGNATURE_ARTIFACT_TYPE, max_bytes=1 << 20)
    assert answer is not None and answer.content_type == OCI_INDEX
    merged = json.loads(answer.body)["manifests"]
    assert len(merged) == 7 and merged[-1] == entry
    result = verify_signature(source(), art.ref.with_digest(art.digest), [load_public_key(key.public_path)])
    assert (result.found_via, result.signature_manifest.digest) == ("referrers-api", entry["digest"])


def test_a_link_off_the_registry_or_off_the_digest_is_refused(fake: FakeRegistry, key: SigningKey) -> None:
    art = artifact(fake)
    base = api_path(art.digest)
    for link in ("<http://127.0.0.1:9/v2/fleet/app/referrers/x>; rel=next",
                 f'</v2/{REPO}/referrers/sha256:{"2" * 64}>; rel="next"', '</v2/other/tags/list>; rel="next"'):
        fake.content.pages[base] = (index(filler(1)), link, OCI_INDEX)
        with pytest.raises(errors.InsecureTransportError, match="Link"):
            source().fetch_referrers(art.ref, art.digest, artifact_type=SIGNATURE_ARTIFACT_TYPE, max_bytes=1 << 20)


def test_pages_stay_within_the_caps(fake: FakeRegistry, key: SigningKey) -> None:
    art = artifact(fake)
    base = api_path(art.digest)
    # endless pages (a loop): cut at MAX_REFERRER_PAGES
    fake.content.pages[base] = (index(filler(1)), f'<{base}>; rel="next"', OCI_INDEX)
    with pytest.raises(errors.BodyTooLargeError, match="pages"):
        source().fetch_referrers(art.ref, art.digest, artifact_type=SIGNATURE_ARTIFACT_TYPE, max_bytes=1 << 20)
    assert fake.content.requests.count(base) == MAX_REFERRER_PAGES
    # all pages together over the byte cap
    fake.content.requests.clear()
    fake.content.pages[base] = (index(filler(50)), f'<{base}&p=2>; rel="next"', OCI_INDEX)
    fake.content.pages[f"{base}&p=2"] = (index(filler(50, 50)), None, OCI_INDEX)
    page = len(index(filler(50)))
    with pytest.raises(errors.BodyTooLargeError):
        source().fetch_referrers(art.ref, art.digest, artifact_type=SIGNATURE_ARTIFACT_TYPE, max_bytes=page + 100)
    # once the entries are over MAX_REFERRERS no further page is read: the verifier refuses the lot
    fake.content.requests.clear()
    fake.content.pages[base] = (index(filler(MAX_REFERRERS + 1)), f'<{base}&p=2>; rel="next"', OCI_INDEX)
    with pytest.raises(errors.SignatureLimitError, match="none looked at"):
        verify_signature(source(), art.ref.with_digest(art.digest), [load_public_key(key.public_path)])
    assert f"{base}&p=2" not in fake.content.requests
    # a next page that vanished is a registry error, not "no signature"
    fake.content.pages[base] = (index(filler(1)), f'<{base}&p=9>; rel="next"', OCI_INDEX)
    with pytest.raises(errors.RegistryError, match="404"):
        source().fetch_referrers(art.ref, art.digest, artifact_type=SIGNATURE_ARTIFACT_TYPE, max_bytes=1 << 20)


def test_a_page_that_is_not_an_index_is_refused_as_malformed(fake: FakeRegistry, key: SigningKey) -> None:
    art = artifact(fake)
    base = api_path(art.digest)
    fake.content.pages[base] = (index(filler(1)), f'<{base}&p=2>; rel="next"', OCI_INDEX)
    fake.content.pages[f"{base}&p=2"] = (b'{"manifests": "no"}', None, "application/json")
    with pytest.raises(errors.MalformedSignatureError):
        verify_signature(source(), art.ref.with_digest(art.digest), [load_public_key(key.public_path)])


def pull(art: Artifact, layout: Path, key: SigningKey) -> object:
    with RegistryClient(plain_http=True) as client:
        return pull_delta(client, art.ref, layout, doras_url=None,
                          verify=Requirement.from_keys([load_public_key(key.public_path)]))


def test_a_pull_through_the_referrers_api_keeps_the_referrer(fake: FakeRegistry, key: SigningKey,
                                                             tmp_path: Path) -> None:
    art = artifact(fake)
    entry = referrer(fake, art, key)
    fake.content.referrers[(REPO, art.digest)] = index([entry])
    result = pull(art, tmp_path / "L", key)
    assert result.trust is not None and result.trust.signature is not None
    assert result.trust.signature.found_via == "referrers-api"
    stored = OCILayout.open(tmp_path / "L").attachments()
    assert [(a.descriptor.digest, a.tag, a.descriptor.artifact_type) for a in stored] == [
        (entry["digest"], None, SIGNATURE_ARTIFACT_TYPE)]


def _refused_at_pull(fake: FakeRegistry, art: Artifact, key: SigningKey, tmp_path: Path,
                     error: type[errors.TrustError], match: str) -> None:
    layout = OCILayout.open(tmp_path / "L")
    before = snapshot(layout.root)
    fake.content.requests.clear()
    with pytest.raises(error, match=match):
        pull(art, layout.root, key)
    assert snapshot(layout.root) == before
    target_blobs = [r for r in fake.content.requests if r.endswith(sha(art.layer))]
    assert target_blobs == []  # nothing of the target but its signature
    assert [r for r in fake.content.requests if r.endswith(f"/manifests/{art.digest}")] == []


def test_a_pull_refuses_a_100000_entry_referrers_answer(fake: FakeRegistry, key: SigningKey, tmp_path: Path) -> None:
    art = artifact(fake)
    entry = referrer(fake, art, key)
    fake.content.referrers[(REPO, art.digest)] = index([*filler(100_000), entry])
    _refused_at_pull(fake, art, key, tmp_path, errors.SignatureLimitError, "cap")


def test_a_pull_refuses_signature_blobs_over_1_mib(fake: FakeRegistry, key: SigningKey, tmp_path: Path) -> None:
    art = artifact(fake)
    declared = referrer(fake, art, key, payload_size=2 << 20)
    fake.content.referrers[(REPO, art.digest)] = index([declared])
    _refused_at_pull(fake, art, key, tmp_path, errors.SignatureLimitError, "declared size")
    sent = referrer(fake, art, key, served=b"x" * ((1 << 20) + 1))
    fake.content.referrers[(REPO, art.digest)] = index([sent])
    _refused_at_pull(fake, art, key, tmp_path, errors.SignatureLimitError, "cap")


def test_a_referrers_answer_that_is_not_an_index_refuses_the_pull(fake: FakeRegistry, key: SigningKey,
                                                                   tmp_path: Path) -> None:
    """A 200 that is no index is malformed, not "no API" (a 500 fails the pull: test_pull_trust.py)."""
    art = artifact(fake)
    fake.content.pages[api_path(art.digest)] = (b"boom", None, "text/plain")
    _refused_at_pull(fake, art, key, tmp_path, errors.MalformedSignatureError, "referrers")
