"""Signature manifests kept beside an image (doras_oras.layout.attachments): one index.json write with the
image, blobs first; a failed commit leaves nothing; re-signing replaces by tag; never taken for an image;
checked by verify(); read by skopeo under their tag."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from doras_oras import errors
from doras_oras.descriptor import OCI_MANIFEST, Descriptor
from doras_oras.layout import Attachment, OCILayout, gc, verify_layout
from doras_oras.testing.signing import SigningKey, simple_signing_payload
from doras_oras.trust import (
    SIGNATURE_ANNOTATION,
    SIMPLE_SIGNING_MEDIA_TYPE,
    cosign_config,
    signature_tag,
)
from tests.layout_support import run

REPO = "registry.example.com/fleet/app"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return SigningKey.generate(tmp_path_factory.mktemp("key"))


def store_image(layout: OCILayout, text: bytes) -> Descriptor:
    layer = text * 10
    config = b"{}"
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha(config), "size": 2},
                       "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(layer),
                                   "size": len(layer)}]}).encode()
    manifest = Descriptor(OCI_MANIFEST, sha(body), len(body))
    with layout.lock():
        for data in (layer, config):
            layout.ingest_bytes(Descriptor("application/octet-stream", sha(data), len(data)), data)
        layout.ingest_bytes(manifest, body)
    return manifest


def signature(key: SigningKey, subject: str, *, extra_layers: int = 0, tag: bool = True) -> Attachment:
    data = simple_signing_payload(REPO, subject)
    layers = [{"mediaType": SIMPLE_SIGNING_MEDIA_TYPE, "size": len(data), "digest": sha(data),
               "annotations": {SIGNATURE_ANNOTATION: key.sign_bytes(data)}} for _ in range(1 + extra_layers)]
    config = cosign_config([Descriptor.from_json(item) for item in layers])
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": len(config),
                                  "digest": sha(config)}, "layers": layers}).encode()
    return Attachment(manifest=Descriptor(OCI_MANIFEST, sha(body), len(body)), body=body,
                      blobs={sha(data): data, sha(config): config}, subject=subject,
                      tag=signature_tag(subject) if tag else None)


def blob_files(root: Path) -> set[str]:
    return {p.name for p in (root / "blobs" / "sha256").iterdir()}


def test_the_image_and_its_signature_are_one_index_write_blobs_first(tmp_path: Path, key: SigningKey,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    layout = OCILayout.open(tmp_path / "L")
    image = store_image(layout, b"v1")
    sig = signature(key, image.digest)
    writes: list[list[dict[str, object]]] = []
    real = OCILayout.write_index

    def spy(self: OCILayout, entries: list[dict[str, object]]) -> None:
        for digest in [sig.manifest.digest, *sig.blobs]:  # everything is in blobs/ before the index names it
            assert self.blob_path(digest).is_file()
        writes.append(list(entries))
        real(self, entries)

    monkeypatch.setattr(OCILayout, "write_index", spy)
    with layout.lock():
        layout.commit_image(image, repository=REPO, tag="v1", attachments=[sig])
    assert len(writes) == 1
    assert [i.tag for i in layout.images()] == ["v1"]
    [kept] = layout.attachments(REPO, image.digest)
    assert (kept.tag, kept.subject, kept.repository) == (signature_tag(image.digest), image.digest, REPO)
    assert layout.find_image(REPO) is not None and layout.find_image(REPO).tag == "v1"  # type: ignore[union-attr]
    verify_layout(layout)
    raw = run("skopeo", "inspect", "--raw", f"oci:{layout.root}:{signature_tag(image.digest)}").stdout.encode()
    assert raw == sig.body


def test_a_failed_commit_leaves_no_signature_blob(tmp_path: Path, key: SigningKey,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    layout = OCILayout.open(tmp_path / "L")
    image = store_image(layout, b"v1")
    before_index = (layout.root / "index.json").read_bytes()
    before = blob_files(layout.root)

    def full_disk(self: OCILayout, entries: list[dict[str, object]]) -> None:
        raise errors.LayoutError("no space left on the device writing index.json")

    monkeypatch.setattr(OCILayout, "write_index", full_disk)
    with layout.lock(), pytest.raises(errors.LayoutError, match="no space"):
        layout.commit_image(image, repository=REPO, tag="v1", attachments=[signature(key, image.digest)])
    assert (layout.root / "index.json").read_bytes() == before_index
    assert blob_files(layout.root) == before  # the image's own blobs stay (the caller owns them)


def test_an_attachment_missing_a_blob_or_lying_about_its_bytes_is_refused(tmp_path: Path, key: SigningKey) -> None:
    layout = OCILayout.open(tmp_path / "L")
    image = store_image(layout, b"v1")
    sig = signature(key, image.digest)
    before = (blob_files(layout.root), (layout.root / "index.json").read_bytes())
    short = Attachment(manifest=sig.manifest, body=sig.body, blobs={}, subject=sig.subject, tag=sig.tag)
    with layout.lock(), pytest.raises(errors.LayoutError, match="not given"):
        layout.commit_image(image, repository=REPO, tag="v1", attachments=[short])
    assert (blob_files(layout.root), (layout.root / "index.json").read_bytes()) == before
    with pytest.raises(errors.LayoutError, match="do not match"):
        Attachment(manifest=sig.manifest, body=sig.body + b" ", blobs=sig.blobs, subject=sig.subject)
    with pytest.raises(errors.LayoutError, match="subject"):
        Attachment(manifest=sig.manifest, body=sig.body, blobs=sig.blobs, subject=sig.subject, subject_body=b"{}")
    wrong = dict(sig.blobs)
    payload = next(d for d in wrong if d != sig.manifest.digest and len(wrong[d]) > 100)
    wrong[payload] = wrong[payload][::-1]
    with layout.lock(), pytest.raises(errors.VerificationError):
        layout.commit_image(image, repository=REPO, tag="v1",
                            attachments=[Attachment(sig.manifest, sig.body, wrong, sig.subject, sig.tag)])
    assert (blob_files(layout.root), (layout.root / "index.json").read_bytes()) == before


def test_re_signing_replaces_the_tagged_signature_of_the_same_repository_only(tmp_path: Path,
                                                                              key: SigningKey) -> None:
    layout = OCILayout.open(tmp_path / "L")
    image = store_image(layout, b"v1")
    first, second = signature(key, image.digest), signature(key, image.digest, extra_layers=1)
    referrer = signature(key, image.digest, tag=False)
    with layout.lock():
        layout.commit_image(image, repository=REPO, tag="v1", attachments=[first, referrer])
        layout.commit_image(image, repository=REPO + "-mirror", tag="v1", attachments=[first])
        layout.commit_image(image, repository=REPO, tag="v1", attachments=[second])
    mine = layout.attachments(REPO)
    assert sorted((a.descriptor.digest, a.tag) for a in mine) == sorted(
        [(second.manifest.digest, signature_tag(image.digest)), (referrer.manifest.digest, None)])
    assert [a.descriptor.digest for a in layout.attachments(REPO + "-mirror")] == [first.manifest.digest]
    assert len(layout.images()) == 2
    verify_layout(layout)


def test_verify_checks_the_kept_signatures_too(tmp_path: Path, key: SigningKey) -> None:
    layout = OCILayout.open(tmp_path / "L")
    image = store_image(layout, b"v1")
    sig = signature(key, image.digest)
    with layout.lock():
        layout.commit_image(image, repository=REPO, tag="v1", attachments=[sig])
    payload = next(d for d, data in sig.blobs.items() if data.startswith(b'{"critical"'))
    layout.blob_path(payload).write_bytes(b"{}")
    with pytest.raises(errors.CorruptLayoutError, match=payload):
        verify_layout(OCILayout.open(layout.root))


def test_a_signed_index_keeps_its_bytes_while_the_signature_is_kept(tmp_path: Path, key: SigningKey) -> None:
    layout = OCILayout.open(tmp_path / "L")
    image = store_image(layout, b"v1")
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [{"mediaType": OCI_MANIFEST, "digest": image.digest, "size": image.size}]}).encode()
    sig = signature(key, sha(index))
    sig = Attachment(sig.manifest, sig.body, sig.blobs, sig.subject, sig.tag, subject_body=index)
    with layout.lock():
        layout.commit_image(image, repository=REPO, tag="v1", annotations={"io.doras-oras.source.index": sha(index)},
                            attachments=[sig])
        assert layout.blob_path(sha(index)).is_file()
        gc(layout, keep=1)
        assert layout.blob_path(sha(index)).is_file() and layout.attachments() != []
        gc(layout, keep=0)
    assert blob_files(layout.root) == set()
