"""The verifier's walk over signature manifests, with an in-memory source (faults by hand).

The payloads are signed here with ``cryptography`` (ECDSA P-256 over SHA-256,
as ``cosign sign`` does with a ``cosign generate-key-pair`` key); the
manifests have cosign's shape. The real-cosign cases are in test_trust_cosign.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from doras_oras import errors
from doras_oras.reference import Reference
from doras_oras.trust import (
    MAX_SIGNATURE_LAYERS,
    MAX_SIGNATURE_MANIFESTS,
    SIGNATURE_ANNOTATION,
    SIGNATURE_ARTIFACT_TYPE,
    Requirement,
    enforce,
    referrers_tag,
    signature_tag,
    verify_signature,
)
from tests.trust_memory_support import (
    CONFIG,
    DIGEST,
    NAME,
    OCI_INDEX,
    OCI_MANIFEST,
    TARGET,
    MemorySource,
    Signer,
    layer,
    legacy,
    payload,
    sha,
    signature_manifest,
)


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()


def test_good_legacy_signature(signer: Signer) -> None:
    source = legacy(signer)
    result = verify_signature(source, TARGET, [signer.key])
    assert result.key == signer.key.identity and result.found_via == "tag"
    assert set(result.blobs) == {sha(CONFIG), sha(payload())}
    assert result.to_json() == {"key": signer.key.identity.to_json(), "digest": DIGEST,
                                "signature": result.signature_manifest.digest, "found_via": "tag",
                                "location": signature_tag(DIGEST)}
    assert not any(c.startswith("referrers") for c in source.calls)


def test_index_at_the_signature_tag_is_malformed(signer: Signer) -> None:
    source = MemorySource()
    source.manifests[signature_tag(DIGEST)] = (json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                                           "manifests": []}).encode(), OCI_INDEX)
    with pytest.raises(errors.MalformedSignatureError, match="holds an index"):
        verify_signature(source, TARGET, [signer.key])


def test_media_type_differing_from_content_type_is_malformed(signer: Signer) -> None:
    source = legacy(signer)
    body, _ = source.manifests[signature_tag(DIGEST)]
    source.manifests[signature_tag(DIGEST)] = (body, OCI_INDEX)
    with pytest.raises(errors.MalformedSignatureError, match="Content-Type"):
        verify_signature(source, TARGET, [signer.key])


def test_signature_manifest_that_is_not_json(signer: Signer) -> None:
    source = MemorySource(manifests={signature_tag(DIGEST): (b"\x00garbage", OCI_MANIFEST)})
    with pytest.raises(errors.MalformedSignatureError, match="not JSON"):
        verify_signature(source, TARGET, [signer.key])


@pytest.mark.parametrize("mutate, match", [
    (lambda layers: layers[0].update(mediaType="application/octet-stream"), "not application/vnd.dev.cosign"),
    (lambda layers: layers[0]["annotations"].update({SIGNATURE_ANNOTATION: "not base64!"}), "no base64"),
    (lambda layers: layers[0].pop("annotations"), "no base64"),
    (lambda layers: layers.clear(), "no layers"),
])
def test_malformed_layers(signer: Signer, mutate: Any, match: str) -> None:
    source = MemorySource()
    data = payload()
    layers = [layer(source, data, signer.sign(data))]
    mutate(layers)
    source.manifests[signature_tag(DIGEST)] = (signature_manifest(source, layers), OCI_MANIFEST)
    with pytest.raises(errors.MalformedSignatureError, match=match):
        verify_signature(source, TARGET, [signer.key])


def test_missing_or_tampered_payload_blob(signer: Signer) -> None:
    source = legacy(signer)
    source.blobs[sha(payload())] = payload().replace(b"null", b"{}  ")
    with pytest.raises(errors.MalformedSignatureError, match="content hashes to"):
        verify_signature(source, TARGET, [signer.key])
    del source.blobs[sha(payload())]
    with pytest.raises(errors.MalformedSignatureError, match="blob not found"):
        verify_signature(source, TARGET, [signer.key])


def test_missing_config_blob_refuses_even_a_good_signature(signer: Signer) -> None:
    """The signature manifest is kept whole beside the image: every blob must be there."""
    source = legacy(signer)
    del source.blobs[sha(CONFIG)]
    with pytest.raises(errors.MalformedSignatureError, match=r"config .*blob not found"):
        verify_signature(source, TARGET, [signer.key])


def test_signed_payload_that_is_not_json_is_malformed(signer: Signer) -> None:
    with pytest.raises(errors.MalformedSignatureError, match="not JSON"):
        verify_signature(legacy(signer, b"signed, but not JSON"), TARGET, [signer.key])


def test_unverified_payload_claims_are_never_reported(signer: Signer) -> None:
    """A payload for another digest signed by an untrusted key is a bad signature, not a mismatch."""
    stranger = Signer()
    with pytest.raises(errors.SignatureInvalidError):
        verify_signature(legacy(stranger, payload(digest="sha256:" + "ee" * 32)), TARGET, [signer.key])


def test_too_many_layers(signer: Signer) -> None:
    source = MemorySource()
    data = payload()
    layers = [layer(source, data, signer.sign(data)) for _ in range(MAX_SIGNATURE_LAYERS + 1)]
    source.manifests[signature_tag(DIGEST)] = (signature_manifest(source, layers), OCI_MANIFEST)
    with pytest.raises(errors.SignatureLimitError, match="65 layers"):
        verify_signature(source, TARGET, [signer.key])


def test_the_layer_that_verifies_wins_among_bad_ones(signer: Signer) -> None:
    source = MemorySource()
    good = payload(optional={"n": "3"})
    layers = [layer(source, payload(), Signer().sign(payload())),          # another key
              layer(source, payload(digest="sha256:" + "ee" * 32), signer.sign(payload(digest="sha256:" + "ee" * 32))),
              layer(source, good, signer.sign(good))]
    source.manifests[signature_tag(DIGEST)] = (signature_manifest(source, layers), OCI_MANIFEST)
    result = verify_signature(source, TARGET, [signer.key], annotations={"n": "3"})
    assert result.layer_index == 2 and result.payload.optional == {"n": "3"}


def test_worst_failure_decides_and_all_are_listed(signer: Signer) -> None:
    source = MemorySource()
    other = payload(digest="sha256:" + "ee" * 32)
    layers = [layer(source, payload(), Signer().sign(payload())), layer(source, other, signer.sign(other))]
    source.manifests[signature_tag(DIGEST)] = (signature_manifest(source, layers), OCI_MANIFEST)
    with pytest.raises(errors.PayloadMismatchError) as info:
        verify_signature(source, TARGET, [signer.key])
    assert len(info.value.failures) == 3  # two layers + no referrers
    assert any("does not verify" in f for f in info.value.failures)
    assert info.value.reason == "payload"


def referrer_entry(body: bytes, artifact_type: str = SIGNATURE_ARTIFACT_TYPE) -> dict[str, Any]:
    return {"mediaType": OCI_MANIFEST, "digest": sha(body), "size": len(body), "artifactType": artifact_type}


def with_referrers(source: MemorySource, entries: list[dict[str, Any]]) -> MemorySource:
    source.referrers = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    return source


def test_referrers_last_signature_first(signer: Signer) -> None:
    source = MemorySource()
    bodies = []
    for n in range(3):
        data = payload(optional={"n": str(n)})
        body = signature_manifest(source, [layer(source, data, signer.sign(data))], subject=DIGEST)
        source.manifests[sha(body)] = (body, OCI_MANIFEST)
        bodies.append(body)
    with_referrers(source, [referrer_entry(b) for b in bodies])
    result = verify_signature(source, TARGET, [signer.key])
    assert result.found_via == "referrers-api" and result.payload.optional == {"n": "2"}
    assert not any(c == f"manifest {referrers_tag(DIGEST)}" for c in source.calls)


def test_too_many_signature_referrers(signer: Signer) -> None:
    source = MemorySource()
    entries = [{"mediaType": OCI_MANIFEST, "digest": f"sha256:{i:064x}", "size": 10,
                "artifactType": SIGNATURE_ARTIFACT_TYPE} for i in range(MAX_SIGNATURE_MANIFESTS + 1)]
    with pytest.raises(errors.SignatureLimitError, match="17 signature manifests"):
        verify_signature(with_referrers(source, entries), TARGET, [signer.key])
    assert not any(c.startswith("manifest sha256:") for c in source.calls)


def test_referrer_body_differing_from_its_descriptor(signer: Signer) -> None:
    source = MemorySource()
    data = payload()
    body = signature_manifest(source, [layer(source, data, signer.sign(data))], subject=DIGEST)
    source.manifests[sha(body)] = (body + b" ", OCI_MANIFEST)
    with pytest.raises(errors.MalformedSignatureError, match=r"got .* bytes, expected"):
        verify_signature(with_referrers(source, [referrer_entry(body)]), TARGET, [signer.key])


def test_referrer_listed_but_missing_and_other_artifact_types(signer: Signer) -> None:
    source = with_referrers(MemorySource(), [referrer_entry(b"{}"),
                                             referrer_entry(b"sbom", "application/spdx+json")])
    with pytest.raises(errors.SignatureNotFoundError, match="listed but not in the registry"):
        verify_signature(source, TARGET, [signer.key])
    source = with_referrers(MemorySource(), [referrer_entry(b"sbom", "application/spdx+json")])
    with pytest.raises(errors.SignatureNotFoundError, match="no entry of artifactType"):
        verify_signature(source, TARGET, [signer.key])


def test_referrers_tag_holding_a_manifest_is_malformed(signer: Signer) -> None:
    source = legacy(signer)
    body, media_type = source.manifests.pop(signature_tag(DIGEST))
    source.manifests[referrers_tag(DIGEST)] = (body, media_type)
    with pytest.raises(errors.MalformedSignatureError, match="not an image index"):
        verify_signature(source, TARGET, [signer.key])


def test_enforce(signer: Signer) -> None:
    source = legacy(signer)
    result = enforce(source, TARGET, Requirement.from_keys([signer.key]))
    assert result.required and result.signature is not None
    assert result.to_json()["signature"]["key"]["name"] == "cosign.pub"
    nothing = MemorySource()
    free = enforce(nothing, TARGET, Requirement(keys=(), rule="tools/**"))
    assert free.to_json() == {"required": False, "rule": "tools/**", "signature": None, "origin": "registry",
                              "checks": [], "order": None}
    assert nothing.calls == []
    with pytest.raises(errors.SignatureNotFoundError):
        enforce(nothing, TARGET, Requirement.from_keys([signer.key]))


def test_arguments_checked(signer: Signer) -> None:
    with pytest.raises(ValueError, match="digest"):
        verify_signature(MemorySource(), Reference.parse(f"{NAME}:v1"), [signer.key])
    with pytest.raises(ValueError, match="at least one"):
        verify_signature(MemorySource(), TARGET, [])


def test_trust_errors_are_no_other_branch() -> None:
    """Nothing that catches a fallback-worthy error may catch a trust failure by accident."""
    for cls in (errors.SignatureLimitError, errors.SignatureNotFoundError, errors.MalformedSignatureError):
        assert issubclass(cls, errors.TrustError)
        assert not issubclass(cls, (errors.LimitExceededError, errors.DocumentError, errors.TransportError,
                                    errors.VerificationError, errors.DorasServerError, ValueError))
