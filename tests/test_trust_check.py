"""How requirements combine (a policy and command-line keys: both must pass), the result's JSON, the
cache between checks, and cosign's signature config rebuilt from its layers. In memory, no server."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from doras_oras import errors
from doras_oras.descriptor import Descriptor
from doras_oras.reference import Reference
from doras_oras.trust import (
    SIMPLE_SIGNING_MEDIA_TYPE,
    CachingSource,
    Requirement,
    TrustPolicy,
    Verification,
    check,
    cosign_config,
    parse_policy,
    signature_tag,
)
from tests.trust_memory_support import (
    CONFIG,
    DIGEST,
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


@pytest.fixture(scope="module")
def second() -> Signer:
    return Signer()


def policy(rules: list[dict[str, object]], tmp_path: Path, *signers: Signer) -> TrustPolicy:
    for number, signer in enumerate(signers):
        pem = signer.key.public_key.public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
        (tmp_path / f"k{number}.pub").write_bytes(pem)
    return parse_policy({"version": 1, "rules": rules}, base_dir=tmp_path)


def two_signatures(signer: Signer, second: Signer) -> MemorySource:
    """One legacy signature manifest holding a signature by each key."""
    source = MemorySource()
    data = payload()
    layers = [layer(source, data, signer.sign(data)), layer(source, data, second.sign(data))]
    source.manifests[signature_tag(DIGEST)] = (signature_manifest(source, layers), OCI_MANIFEST)
    return source


def test_a_verification_needs_something_and_takes_three_shapes(signer: Signer, tmp_path: Path) -> None:
    with pytest.raises(errors.TrustConfigError):
        Verification()
    with pytest.raises(errors.TrustConfigError, match="without a key"):
        Verification(keys=Requirement())
    keys = Requirement.from_keys([signer.key])
    rules = policy([{"repository": "**", "keys": ["k0.pub"]}], tmp_path, signer)
    assert Verification.of(keys) == Verification(keys=keys)
    assert Verification.of(rules) == Verification(policy=rules)
    both = Verification(policy=rules, keys=keys)
    assert Verification.of(both) is both
    with pytest.raises(errors.InvalidArgumentError, match="not str"):
        Verification.of("cosign.pub")  # type: ignore[arg-type]
    first, then = both.requirements_for(TARGET)
    assert first.rule == "**" and then is keys  # the policy first


def test_policy_and_keys_both_must_pass(signer: Signer, second: Signer, tmp_path: Path) -> None:
    rules = policy([{"repository": "fleet/**", "keys": ["k0.pub"]}, {"repository": "tools/**", "keys": []}],
                   tmp_path, signer)
    only_first = legacy(signer)
    # policy (key 0) passes, the command line (key 1) does not: refused
    with pytest.raises(errors.SignatureInvalidError):
        check(only_first, TARGET, Verification(policy=rules, keys=Requirement.from_keys([second.key])))
    # a rule without keys does not waive the command line's key
    tools = Reference.parse(f"registry.example.com/tools/jq@{DIGEST}")
    with pytest.raises(errors.SignatureNotFoundError):
        check(MemorySource(), tools, Verification(policy=rules, keys=Requirement.from_keys([signer.key])))
    # a repository the policy does not list is refused whatever the command line says, before any read
    unlisted = MemorySource()
    with pytest.raises(errors.UntrustedRepositoryError):
        check(unlisted, Reference.parse(f"registry.example.com/other/x@{DIGEST}"),
              Verification(policy=rules, keys=Requirement.from_keys([signer.key])))
    assert unlisted.calls == []
    free = check(MemorySource(), tools, Verification(policy=rules))
    assert (free.required, free.rule, free.signature, free.checks) == (False, "tools/**", None, ())


def test_two_requirements_met_by_one_manifest_read_it_once(signer: Signer, second: Signer, tmp_path: Path) -> None:
    source = two_signatures(signer, second)
    rules = policy([{"repository": "fleet/**", "keys": ["k0.pub"], "annotations": {}}], tmp_path, signer)
    result = check(source, TARGET, Verification(policy=rules, keys=Requirement.from_keys([second.key])))
    assert [c.signature.key.fingerprint for c in result.checks if c.signature] == [
        signer.key.identity.fingerprint, second.key.identity.fingerprint]
    assert result.required and result.rule == "fleet/**" and result.signature == result.checks[0].signature
    assert len(result.signatures) == 1  # the same signature manifest: kept once
    assert source.calls.count(f"manifest {signature_tag(DIGEST)}") == 1
    assert len([c for c in source.calls if c.startswith("blob")]) == len(set(c for c in source.calls
                                                                              if c.startswith("blob")))
    document = result.to_json()
    assert set(document) == {"required", "rule", "signature", "origin", "checks", "order"}
    assert [c["signature"]["key"]["fingerprint"] for c in document["checks"]] == [
        signer.key.identity.fingerprint, second.key.identity.fingerprint]
    assert json.loads(json.dumps(document)) == document


def test_a_single_check_is_reported_as_itself_with_its_origin(signer: Signer) -> None:
    result = check(legacy(signer), TARGET, Verification(keys=Requirement.from_keys([signer.key])), origin="layout")
    assert result.checks == () and result.origin == "layout" and result.rule is None
    assert result.to_json()["signature"]["key"]["name"] == "cosign.pub"
    with pytest.raises(ValueError, match="digest"):
        check(legacy(signer), Reference.parse("registry.example.com/fleet/app:v1"),
              Verification(keys=Requirement.from_keys([signer.key])))


def test_the_cache_keeps_answers_and_not_found_but_not_errors() -> None:
    class Flaky(MemorySource):
        def fetch_blob(self, repository: Reference, descriptor: Descriptor, *, max_bytes: int) -> bytes | None:
            self.calls.append(f"blob {descriptor.digest}")
            if len(self.calls) == 1:
                raise errors.TransportError("dropped")
            return self.blobs.get(descriptor.digest)

    inner = Flaky()
    inner.blobs["sha256:" + "0" * 64] = b"x"
    cached = CachingSource(inner)
    wanted = Descriptor("application/octet-stream", "sha256:" + "0" * 64, 1)
    with pytest.raises(errors.TransportError):
        cached.fetch_blob(TARGET, wanted, max_bytes=10)
    assert cached.fetch_blob(TARGET, wanted, max_bytes=10) == b"x"
    assert cached.fetch_blob(TARGET, wanted, max_bytes=10) == b"x"
    assert cached.fetch_manifest(TARGET, "v1", max_bytes=10) is None
    assert cached.fetch_manifest(TARGET, "v1", max_bytes=10) is None
    assert inner.calls == [f"blob {wanted.digest}"] * 2 + ["manifest v1"]


def _layers(*digests: str) -> list[Descriptor]:
    return [Descriptor(SIMPLE_SIGNING_MEDIA_TYPE, d, 235) for d in digests]


def test_cosign_config_is_the_bytes_cosign_writes() -> None:
    """Recorded from cosign v2.6.5 on docker-registry 2.8 (one and two signatures, either mode)."""
    one = cosign_config(_layers("sha256:abb15582125936aff91dafac6962590568707ecace3ce7b41d928a1192284c0d"))
    assert "sha256:" + hashlib.sha256(one).hexdigest() == (
        "sha256:e74c4c8f36245b1fa6af6972fc8eb90284bc8e9820b6ad038fd5d7a1a6c07566")
    assert len(one) == 233
    two = cosign_config(_layers("sha256:1928d1b9f65817efae4e5b36b1135e3634e8ef4481eb2d2f2f016aa48de0648f",
                                "sha256:6ace7c3cb2cb5f7a77955de18517ab7288f6d6e10d60bd1f89d7ffaf40d266cf"))
    assert "sha256:" + hashlib.sha256(two).hexdigest() == (
        "sha256:ad8e8f374fea97dd56c4fdab9af27c8c5e53bbb89cee0918742163f1830005e2")
    assert json.loads(two)["rootfs"]["diff_ids"][1].startswith("sha256:6ace7c3c")


def test_a_config_that_is_not_cosigns_is_fetched_and_cosigns_is_rebuilt(signer: Signer) -> None:
    source = legacy(signer)  # its config is not the one cosign would derive: fetched
    keys = Verification(keys=Requirement.from_keys([signer.key]))
    check(source, TARGET, keys)
    assert f"blob {sha(CONFIG)}" in source.calls
    # a manifest with cosign's own config: rebuilt from the layers (absent from the source), kept whole
    rebuilt = MemorySource()
    data = payload()
    layers = [layer(rebuilt, data, signer.sign(data))]
    config = cosign_config([Descriptor.from_json(item) for item in layers])
    document = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": len(config),
                           "digest": sha(config)}, "layers": layers}
    rebuilt.manifests[signature_tag(DIGEST)] = (json.dumps(document).encode(), OCI_MANIFEST)
    result = check(rebuilt, TARGET, keys)
    assert result.signature is not None and result.signature.blobs[sha(config)] == config
    assert f"blob {sha(config)}" not in rebuilt.calls
