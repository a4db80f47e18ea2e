"""doras-oras's verifier side by side with the real cosign CLI, on the real registry.

Every case signs (or mis-signs) an artifact pushed with the oras CLI using
``cosign sign --key K --tlog-upload=false`` (legacy tag scheme, or
``--registry-referrers-mode oci-1-1``, which Debian's docker-registry 2.8
receives through the referrers tag schema), then asks both
``cosign verify --key K --insecure-ignore-tlog`` and
:func:`doras_oras.trust.verify_signature` about the same reference. Each case
states the expected outcome; both must give it (docs/trust.md has the table).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from doras_oras import errors
from doras_oras.reference import Reference
from doras_oras.testing.registry import RegistryServer, find_tool
from doras_oras.trust import (
    SIGNATURE_ARTIFACT_TYPE,
    TrustedKey,
    VerifiedSignature,
    load_public_key,
    referrers_tag,
    signature_tag,
    verify_signature,
)
from tests.layout_support import sha256
from tests.trust_support import (
    Cosign,
    KeyPair,
    RequestsSource,
    blob_path,
    ed25519_private_pem,
    generate_cosign_key,
    get_manifest,
    import_key,
    manifest_json,
    oras_copy,
    oras_push,
    put_manifest,
    resolve,
    rsa_private_pem,
    run,
    unique,
)


@dataclass
class Keys:
    ecdsa: KeyPair
    other: KeyPair
    rsa: KeyPair
    ed25519: KeyPair
    ed25519_private: object
    p384: KeyPair


@pytest.fixture(scope="module")
def cosign(tmp_path_factory: pytest.TempPathFactory) -> Cosign:
    return Cosign(binary=find_tool("cosign"), home=tmp_path_factory.mktemp("cosign-home"))


@pytest.fixture(scope="module")
def keys(cosign: Cosign, tmp_path_factory: pytest.TempPathFactory) -> Keys:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    base = tmp_path_factory.mktemp("keys")
    ed_pem, ed_key = ed25519_private_pem()
    p384 = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return Keys(
        ecdsa=generate_cosign_key(cosign, base / "ecdsa"),
        other=generate_cosign_key(cosign, base / "other"),
        rsa=import_key(cosign, base / "rsa", rsa_private_pem()),
        ed25519=import_key(cosign, base / "ed25519", ed_pem),
        ed25519_private=ed_key,
        p384=import_key(cosign, base / "p384", p384),
    )


@dataclass
class Case:
    """What both verifiers are asked: ``ref`` (for cosign), the digest doras-oras gets, the key."""

    ref: str
    target: Reference
    key: Path
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass
class Env:
    registry: RegistryServer
    cosign: Cosign
    keys: Keys
    workdir: Path

    @property
    def host(self) -> str:
        return self.registry.host

    def push(self, repo: str, tag: str, data: bytes) -> str:
        return oras_push(self.host, f"{repo}:{tag}", self.workdir / repo.replace("/", "_") / tag, f"{tag}.txt", data)

    def case(self, repo: str, digest: str, key: KeyPair, annotations: dict[str, str] | None = None,
             ref: str | None = None) -> Case:
        return Case(ref=ref or f"{self.host}/{repo}@{digest}",
                    target=Reference.parse(f"{self.host}/{repo}@{digest}"),
                    key=key.public, annotations=dict(annotations or {}))

    def sign(self, key: KeyPair, repo: str, digest: str, **options: object) -> None:
        self.cosign.sign(key.private, f"{self.host}/{repo}@{digest}", **options)  # type: ignore[arg-type]


@pytest.fixture
def env(oci_registry: RegistryServer, cosign: Cosign, keys: Keys, tmp_path: Path) -> Env:
    return Env(registry=oci_registry, cosign=cosign, keys=keys, workdir=tmp_path)


# --- the cases: each builds the registry state and says what both must answer ---------

ACCEPT = "accept"
Expected = str | type[errors.TrustError]


def case_ecdsa_legacy(e: Env) -> tuple[Case, Expected]:
    repo = unique("ecdsa-legacy")
    digest = e.push(repo, "v1", b"ecdsa legacy\n")
    e.sign(e.keys.ecdsa, repo, digest)
    return e.case(repo, digest, e.keys.ecdsa), ACCEPT


def case_ecdsa_oci11(e: Env) -> tuple[Case, Expected]:
    repo = unique("ecdsa-oci11")
    digest = e.push(repo, "v1", b"ecdsa oci-1-1\n")
    e.sign(e.keys.ecdsa, repo, digest, oci11=True)
    return e.case(repo, digest, e.keys.ecdsa), ACCEPT


def case_rsa_legacy(e: Env) -> tuple[Case, Expected]:
    repo = unique("rsa")
    digest = e.push(repo, "v1", b"rsa\n")
    e.sign(e.keys.rsa, repo, digest)
    return e.case(repo, digest, e.keys.rsa), ACCEPT


def case_rsa_oci11(e: Env) -> tuple[Case, Expected]:
    repo = unique("rsa-oci11")
    digest = e.push(repo, "v1", b"rsa oci-1-1\n")
    e.sign(e.keys.rsa, repo, digest, oci11=True)
    return e.case(repo, digest, e.keys.rsa), ACCEPT


def case_ed25519_cosign_sign(e: Env) -> tuple[Case, Expected]:
    # cosign sign v2.6.5 signs Ed25519 keys with Ed25519ph; cosign verify --key checks pure Ed25519.
    repo = unique("ed25519ph")
    digest = e.push(repo, "v1", b"ed25519 by cosign sign\n")
    e.sign(e.keys.ed25519, repo, digest)
    return e.case(repo, digest, e.keys.ed25519), errors.SignatureInvalidError


def case_ed25519_pure_attached(e: Env) -> tuple[Case, Expected]:
    # A pure Ed25519 signature over cosign's own payload, attached with cosign attach signature.
    repo = unique("ed25519")
    digest = e.push(repo, "v1", b"ed25519 pure\n")
    ref = f"{e.host}/{repo}@{digest}"
    payload = e.cosign("generate", "--allow-insecure-registry", "--allow-http-registry", ref).stdout.encode()
    payload = payload.rstrip(b"\n")
    signature = e.keys.ed25519_private.sign(payload)  # type: ignore[attr-defined]
    (e.workdir / "payload.json").write_bytes(payload)
    (e.workdir / "sig.b64").write_bytes(base64.b64encode(signature))
    e.cosign("attach", "signature", "--allow-insecure-registry", "--allow-http-registry",
             "--payload", str(e.workdir / "payload.json"), "--signature", str(e.workdir / "sig.b64"), ref)
    return e.case(repo, digest, e.keys.ed25519), ACCEPT


def case_p384_cosign_sign(e: Env) -> tuple[Case, Expected]:
    # cosign sign signs P-384 over SHA-384; cosign verify --key checks SHA-256 unless told otherwise.
    repo = unique("p384")
    digest = e.push(repo, "v1", b"p384\n")
    e.sign(e.keys.p384, repo, digest)
    return e.case(repo, digest, e.keys.p384), errors.SignatureInvalidError


def case_wrong_key(e: Env) -> tuple[Case, Expected]:
    repo = unique("wrong-key")
    digest = e.push(repo, "v1", b"signed by another key\n")
    e.sign(e.keys.other, repo, digest)
    return e.case(repo, digest, e.keys.ecdsa), errors.SignatureInvalidError


def case_wrong_key_oci11(e: Env) -> tuple[Case, Expected]:
    repo = unique("wrong-key-oci11")
    digest = e.push(repo, "v1", b"signed by another key, oci-1-1\n")
    e.sign(e.keys.other, repo, digest, oci11=True)
    return e.case(repo, digest, e.keys.ecdsa), errors.SignatureInvalidError


def case_unsigned(e: Env) -> tuple[Case, Expected]:
    repo = unique("unsigned")
    digest = e.push(repo, "v1", b"nobody signed this\n")
    return e.case(repo, digest, e.keys.ecdsa), errors.SignatureNotFoundError


def case_signature_copied(e: Env) -> tuple[Case, Expected]:
    # The signature manifest of image A put under B's signature tag: the payload names A.
    repo = unique("copied")
    signed = e.push(repo, "a", b"image a\n")
    other = e.push(repo, "b", b"image b\n")
    e.sign(e.keys.ecdsa, repo, signed)
    oras_copy(f"{e.host}/{repo}:{signature_tag(signed)}", f"{e.host}/{repo}:{signature_tag(other)}")
    return e.case(repo, other, e.keys.ecdsa), errors.PayloadMismatchError


def case_signature_copied_oci11(e: Env) -> tuple[Case, Expected]:
    # A's referrers index put under B's referrers tag: the manifest's subject (and payload) name A.
    repo = unique("copied-oci11")
    signed = e.push(repo, "a", b"image a, oci-1-1\n")
    other = e.push(repo, "b", b"image b, oci-1-1\n")
    e.sign(e.keys.ecdsa, repo, signed, oci11=True)
    oras_copy(f"{e.host}/{repo}:{referrers_tag(signed)}", f"{e.host}/{repo}:{referrers_tag(other)}")
    return e.case(repo, other, e.keys.ecdsa), errors.MalformedSignatureError


def case_moved_tag(e: Env) -> tuple[Case, Expected]:
    # v1 was signed, then re-pointed at an unsigned digest: what the tag names now is unsigned.
    repo = unique("moved")
    signed = e.push(repo, "v1", b"signed v1\n")
    e.sign(e.keys.ecdsa, repo, signed)
    e.push(repo, "v1", b"unsigned replacement\n")
    now = resolve(e.host, f"{repo}:v1")
    assert now != signed
    return e.case(repo, now, e.keys.ecdsa, ref=f"{e.host}/{repo}:v1"), errors.SignatureNotFoundError


def case_tampered_payload(e: Env) -> tuple[Case, Expected]:
    # The payload blob's bytes changed in the registry's storage (a hostile or rotten registry).
    repo = unique("tampered")
    digest = e.push(repo, "v1", b"tampered payload\n")
    e.sign(e.keys.ecdsa, repo, digest)
    manifest = manifest_json(get_manifest(e.registry.url, repo, signature_tag(digest))[0])
    layer = manifest["layers"][0]  # type: ignore[index]
    path = blob_path(e.registry.storage, layer["digest"])
    data = path.read_bytes()
    assert b'"optional":null' in data
    path.write_bytes(data.replace(b'"optional":null', b'"optional":{}  '))
    return e.case(repo, digest, e.keys.ecdsa), errors.MalformedSignatureError


def case_malformed_manifest(e: Env) -> tuple[Case, Expected]:
    # The signature tag holds a manifest whose layer carries no signature annotation.
    repo = unique("malformed")
    digest = e.push(repo, "v1", b"malformed signature\n")
    e.sign(e.keys.ecdsa, repo, digest)
    body, media_type = get_manifest(e.registry.url, repo, signature_tag(digest))
    manifest = manifest_json(body)
    del manifest["layers"][0]["annotations"]  # type: ignore[index]
    put_manifest(e.registry.url, repo, signature_tag(digest), json.dumps(manifest).encode(), media_type)
    return e.case(repo, digest, e.keys.ecdsa), errors.MalformedSignatureError


def case_annotation_present(e: Env) -> tuple[Case, Expected]:
    repo = unique("annotated")
    digest = e.push(repo, "v1", b"annotated\n")
    e.sign(e.keys.ecdsa, repo, digest, annotations={"channel": "stable", "build": "42"})
    return e.case(repo, digest, e.keys.ecdsa, {"channel": "stable"}), ACCEPT


def case_annotation_absent(e: Env) -> tuple[Case, Expected]:
    repo = unique("not-annotated")
    digest = e.push(repo, "v1", b"not annotated\n")
    e.sign(e.keys.ecdsa, repo, digest)
    return e.case(repo, digest, e.keys.ecdsa, {"channel": "stable"}), errors.AnnotationMismatchError


def case_annotation_other_value(e: Env) -> tuple[Case, Expected]:
    repo = unique("annotated-beta")
    digest = e.push(repo, "v1", b"annotated beta\n")
    e.sign(e.keys.ecdsa, repo, digest, annotations={"channel": "beta"})
    return e.case(repo, digest, e.keys.ecdsa, {"channel": "stable"}), errors.AnnotationMismatchError


def _push_index(e: Env, repo: str) -> tuple[str, list[str]]:
    children = [e.push(repo, f"p{i}", f"platform {i}\n".encode()) for i in range(2)]
    run(find_tool("oras"), "manifest", "index", "create", "--plain-http", f"{e.host}/{repo}:multi", "p0", "p1")
    return resolve(e.host, f"{repo}:multi"), children


def case_index_signed(e: Env) -> tuple[Case, Expected]:
    repo = unique("index")
    index, _ = _push_index(e, repo)
    e.sign(e.keys.ecdsa, repo, index)
    return e.case(repo, index, e.keys.ecdsa), ACCEPT


def case_index_child_unsigned(e: Env) -> tuple[Case, Expected]:
    # Signing the index digest signs the index, not (without --recursive) its manifests.
    repo = unique("index-child")
    index, children = _push_index(e, repo)
    e.sign(e.keys.ecdsa, repo, index)
    return e.case(repo, children[0], e.keys.ecdsa), errors.SignatureNotFoundError


CASES: dict[str, Callable[[Env], tuple[Case, Expected]]] = {
    name[len("case_"):]: fn for name, fn in list(globals().items()) if name.startswith("case_")
}


def ours(e: Env, case: Case) -> VerifiedSignature | errors.TrustError:
    try:
        return verify_signature(RequestsSource(e.registry.url), case.target, [load_public_key(case.key)],
                                annotations=case.annotations)
    except errors.TrustError as exc:
        return exc


@pytest.mark.parametrize("name", sorted(CASES))
def test_side_by_side_with_cosign(env: Env, name: str) -> None:
    case, expected = CASES[name](env)
    cosign_accepts, cosign_stderr = env.cosign.verify(case.key, case.ref, annotations=case.annotations)
    result = ours(env, case)
    we_accept = isinstance(result, VerifiedSignature)
    assert cosign_accepts == (expected == ACCEPT), f"cosign: {cosign_stderr}"
    assert we_accept == cosign_accepts, f"doras-oras: {result}; cosign: {cosign_stderr}"
    if expected == ACCEPT:
        assert isinstance(result, VerifiedSignature)
        assert result.digest == case.target.digest
        assert result.key.fingerprint == load_public_key(case.key).identity.fingerprint
    else:
        assert type(result) is expected, result


# --- what cosign does not check and doras-oras does --------------------------------

def test_payload_for_another_repository_cosign_accepts_we_refuse(env: Env) -> None:
    """The same image in two repositories; the signature of one copied to the other.

    cosign v2.6.5 does not compare ``critical.identity.docker-reference``; doras-oras
    refuses a signature made for another repository.
    """
    signed_repo, other_repo = unique("repo-a"), unique("repo-b")
    digest = env.push(signed_repo, "v1", b"same bytes in two repositories\n")
    # copied, not pushed again: oras push stamps a creation time (seconds), so a second push may differ
    oras_copy(f"{env.host}/{signed_repo}:v1", f"{env.host}/{other_repo}:v1")
    body, _ = get_manifest(env.registry.url, other_repo, "v1")
    assert sha256(body) == digest
    env.sign(env.keys.ecdsa, signed_repo, digest)
    oras_copy(f"{env.host}/{signed_repo}:{signature_tag(digest)}", f"{env.host}/{other_repo}:{signature_tag(digest)}")
    case = env.case(other_repo, digest, env.keys.ecdsa)
    accepted, stderr = env.cosign.verify(case.key, case.ref)
    assert accepted, stderr
    result = ours(env, case)
    assert isinstance(result, errors.PayloadMismatchError)
    assert signed_repo in str(result) and "another image" in str(result)
    # ... and in its own repository the same signature verifies.
    assert isinstance(ours(env, env.case(signed_repo, digest, env.keys.ecdsa)), VerifiedSignature)


# --- what cosign writes, and what the result carries --------------------------------

def test_oci11_mode_writes_a_referrer_and_the_referrers_tag(env: Env) -> None:
    repo = unique("oci11-shape")
    digest = env.push(repo, "v1", b"shape\n")
    env.sign(env.keys.ecdsa, repo, digest, oci11=True)
    source = RequestsSource(env.registry.url)
    target = Reference.parse(f"{env.host}/{repo}@{digest}")
    # docker-registry 2.8 has no referrers API ...
    assert source.fetch_referrers(target, digest, artifact_type=None, max_bytes=1 << 20) is None
    # ... so cosign (go-containerregistry) keeps the referrers tag schema's index
    index = manifest_json(get_manifest(env.registry.url, repo, referrers_tag(digest))[0])
    (entry,) = index["manifests"]  # type: ignore[misc]
    assert entry["artifactType"] == SIGNATURE_ARTIFACT_TYPE
    manifest = manifest_json(get_manifest(env.registry.url, repo, entry["digest"])[0])
    assert manifest["artifactType"] == SIGNATURE_ARTIFACT_TYPE
    assert manifest["config"]["mediaType"] == SIGNATURE_ARTIFACT_TYPE  # type: ignore[index]
    assert manifest["subject"]["digest"] == digest  # type: ignore[index]
    assert [layer["mediaType"] for layer in manifest["layers"]] == [  # type: ignore[attr-defined]
        "application/vnd.dev.cosign.simplesigning.v1+json"]
    # no legacy tag
    assert source.fetch_manifest(target, signature_tag(digest), max_bytes=1 << 20) is None
    result = verify_signature(source, target, [env.keys.ecdsa.trusted])
    assert (result.found_via, result.location) == ("referrers-tag", referrers_tag(digest))
    assert result.signature_manifest.digest == entry["digest"]


def test_result_carries_the_signature_manifest_and_all_its_blobs(env: Env) -> None:
    repo = unique("carry")
    digest = env.push(repo, "v1", b"carry\n")
    env.sign(env.keys.other, repo, digest)  # a first signature by a key we do not trust
    env.sign(env.keys.ecdsa, repo, digest, annotations={"n": "2"})
    source = RequestsSource(env.registry.url)
    result = verify_signature(source, Reference.parse(f"{env.host}/{repo}@{digest}"),
                              [env.keys.rsa.trusted, env.keys.ecdsa.trusted])
    body, _ = get_manifest(env.registry.url, repo, signature_tag(digest))
    assert result.manifest_body == body
    manifest = manifest_json(body)
    wanted = {manifest["config"]["digest"]} | {layer["digest"] for layer in manifest["layers"]}  # type: ignore[index,attr-defined]
    assert set(result.blobs) == wanted and len(wanted) == 3
    for blob_digest, data in result.blobs.items():
        assert blob_digest == "sha256:" + __import__("hashlib").sha256(data).hexdigest()
    assert result.layer_index == 1
    assert result.key.name == "cosign.pub" and result.payload.optional == {"n": "2"}
    assert (result.found_via, result.location) == ("tag", signature_tag(digest))
    assert result.to_json()["key"]["fingerprint"] == env.keys.ecdsa.trusted.identity.fingerprint


def test_any_one_of_several_keys_suffices_and_is_reported(env: Env) -> None:
    repo = unique("several")
    digest = env.push(repo, "v1", b"several keys\n")
    env.sign(env.keys.rsa, repo, digest)
    target = Reference.parse(f"{env.host}/{repo}@{digest}")
    keys: list[TrustedKey] = [env.keys.ecdsa.trusted, env.keys.other.trusted, env.keys.rsa.trusted]
    result = verify_signature(RequestsSource(env.registry.url), target, keys)
    assert result.key == env.keys.rsa.trusted.identity
    assert result.key.algorithm == "rsa-2048"
    with pytest.raises(errors.SignatureInvalidError, match="does not verify"):
        verify_signature(RequestsSource(env.registry.url), target, keys[:2])


def test_legacy_signature_found_with_one_manifest_request_and_one_blob(env: Env) -> None:
    """The legacy tag is asked first; the referrers are not asked once it verified; cosign's config
    (derived from the layers) is rebuilt and checked against its digest, not fetched."""
    repo = unique("requests")
    digest = env.push(repo, "v1", b"cheap\n")
    env.sign(env.keys.ecdsa, repo, digest)
    env.sign(env.keys.other, repo, digest, annotations={"second": "signature"})
    source = RequestsSource(env.registry.url)
    result = verify_signature(source, Reference.parse(f"{env.host}/{repo}@{digest}"), [env.keys.ecdsa.trusted])
    # the payload of the signature that verified, then the other layer's (the manifest is kept whole)
    assert [p.split("/")[-2] for p in source.requests] == ["manifests", "blobs", "blobs"]
    manifest = manifest_json(result.manifest_body)
    config = manifest["config"]["digest"]  # type: ignore[index]
    assert not any(p.endswith(str(config)) for p in source.requests)
    assert set(result.blobs) == {config, *(layer["digest"] for layer in manifest["layers"])}  # type: ignore[attr-defined]
    real = __import__("requests").get(f"{env.registry.url}/v2/{repo}/blobs/{config}", timeout=10).content
    assert result.blobs[str(config)] == real  # exactly the bytes cosign wrote


def test_unsigned_error_names_every_place_looked(env: Env) -> None:
    repo = unique("unsigned-msg")
    digest = env.push(repo, "v1", b"unsigned\n")
    with pytest.raises(errors.SignatureNotFoundError) as info:
        verify_signature(RequestsSource(env.registry.url), Reference.parse(f"{env.host}/{repo}@{digest}"),
                         [env.keys.ecdsa.trusted])
    text = str(info.value)
    assert signature_tag(digest) in text and referrers_tag(digest) in text
    assert info.value.reason == "not-found" and len(info.value.failures) == 2
