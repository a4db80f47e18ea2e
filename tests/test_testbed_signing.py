"""The test bed signs what it publishes (doras_oras.testing.signing): what it writes is what cosign writes,
and the real ``cosign verify --key`` accepts it (and refuses it with another key), in both referrers modes;
the pytest fixture and ``python -m doras_oras.testing sign`` / ``demo --sign``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from doras_oras.descriptor import Descriptor
from doras_oras.testing.pytest_plugin import SignArtifact
from doras_oras.testing.registry import RegistryServer, find_tool
from doras_oras.testing.signing import SigningKey
from doras_oras.trust import cosign_config, referrers_tag, signature_tag
from tests.layout_support import REPO_ROOT
from tests.trust_support import (
    Cosign,
    generate_cosign_key,
    get_manifest,
    import_key,
    oras_push,
    unique,
)


@pytest.fixture(scope="module")
def cosign(tmp_path_factory: pytest.TempPathFactory) -> Cosign:
    return Cosign(binary=find_tool("cosign"), home=tmp_path_factory.mktemp("cosign-home"))


def push(registry: RegistryServer, tmp_path: Path, name: str) -> tuple[str, str]:
    repo = unique(name)
    return repo, oras_push(registry.host, f"{repo}:v1", tmp_path / repo.replace("/", "_"), "a.txt", name.encode())


@pytest.mark.parametrize("mode", ["tag", "referrers"])
def test_cosign_verify_accepts_what_the_test_bed_signs(oci_registry: RegistryServer, sign_artifact: SignArtifact,
                                                      signing_key: SigningKey, cosign: Cosign, tmp_path: Path,
                                                      mode: str) -> None:
    repo, digest = push(oci_registry, tmp_path, f"bed-{mode}")
    ref = f"{oci_registry.host}/{repo}@{digest}"
    refused, _ = cosign.verify(signing_key.public_path, ref)
    assert not refused
    sign_artifact(repo, digest, mode=mode, annotations={"channel": "stable"})
    accepted, stderr = cosign.verify(signing_key.public_path, ref, annotations={"channel": "stable"})
    assert accepted, stderr
    wrong, _ = cosign.verify(signing_key.public_path, ref, annotations={"channel": "beta"})
    assert not wrong
    other = SigningKey.generate(tmp_path / "other")
    refused_other, _ = cosign.verify(other.public_path, ref)
    assert not refused_other


def test_cosign_signs_on_top_of_the_test_bed_with_the_config_cosign_derives(
        oci_registry: RegistryServer, sign_artifact: SignArtifact, cosign: Cosign, tmp_path: Path) -> None:
    repo, digest = push(oci_registry, tmp_path, "bed-twice")
    first = SigningKey.generate(tmp_path / "k1")
    sign_artifact(repo, digest, key=first)
    second = generate_cosign_key(cosign, tmp_path / "k2")
    cosign.sign(second.private, f"{oci_registry.host}/{repo}@{digest}")
    body, _ = get_manifest(oci_registry.url, repo, signature_tag(digest))
    manifest = json.loads(body)
    assert len(manifest["layers"]) == 2  # cosign appended its layer to the test bed's
    config = requests.get(f"{oci_registry.url}/v2/{repo}/blobs/{manifest['config']['digest']}", timeout=10).content
    assert config == cosign_config([Descriptor.from_json(layer) for layer in manifest["layers"]])
    for public in (first.public_path, second.public):
        accepted, stderr = cosign.verify(public, f"{oci_registry.host}/{repo}@{digest}")
        assert accepted, stderr
    # the test bed's private key is a PEM cosign imports: devices verify cosign's signature with cosign.pub
    repo2, digest2 = push(oci_registry, tmp_path, "bed-imported")
    imported = import_key(cosign, tmp_path / "imported", first.private_path.read_bytes())
    cosign.sign(imported.private, f"{oci_registry.host}/{repo2}@{digest2}")
    accepted, stderr = cosign.verify(first.public_path, f"{oci_registry.host}/{repo2}@{digest2}")
    assert accepted, stderr


def test_referrers_mode_writes_the_referrers_tag_index(oci_registry: RegistryServer, sign_artifact: SignArtifact,
                                                      tmp_path: Path) -> None:
    repo, digest = push(oci_registry, tmp_path, "bed-referrers")
    signature = sign_artifact(repo, digest, mode="referrers")
    sign_artifact(repo, digest, mode="referrers")
    index = json.loads(get_manifest(oci_registry.url, repo, referrers_tag(digest))[0])
    assert index["manifests"][0]["digest"] == signature and len(index["manifests"]) == 2
    body, media_type = get_manifest(oci_registry.url, repo, signature)
    document = json.loads(body)
    assert media_type == "application/vnd.oci.image.manifest.v1+json"
    assert document["subject"]["digest"] == digest
    assert document["artifactType"] == document["config"]["mediaType"] == (
        "application/vnd.dev.cosign.artifact.sig.v1+json")


def test_the_sign_command_of_the_test_bed(oci_registry: RegistryServer, cosign: Cosign, tmp_path: Path) -> None:
    repo, digest = push(oci_registry, tmp_path, "bed-command")
    keys = tmp_path / "keys"
    done = subprocess.run([sys.executable, "-m", "doras_oras.testing", "sign", f"{oci_registry.host}/{repo}:v1",
                           "--key-dir", str(keys), "--plain-http", "-a", "build=42"],
                          capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["signed"] == f"{oci_registry.host}/{repo}@{digest}" and answer["mode"] == "tag"
    assert Path(answer["public_key"]) == keys / "cosign.pub"
    accepted, stderr = cosign.verify(keys / "cosign.pub", f"{oci_registry.host}/{repo}@{digest}",
                                     annotations={"build": "42"})
    assert accepted, stderr
    again = subprocess.run([sys.executable, "-m", "doras_oras.testing", "sign", f"{oci_registry.host}/{repo}@{digest}",
                            "--key-dir", str(keys), "--plain-http", "--mode", "referrers"],
                           capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["public_key"] == answer["public_key"]  # the same key, reused


def test_demo_signs_what_it_publishes_and_pulls_verified(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "doras_oras.testing", "demo", "--sign"], capture_output=True,
                          text=True, timeout=600, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("verified demo/") == 4, done.stdout
    assert done.stdout.count("2 images and 2 signature manifests, every blob matches") == 2, done.stdout  # one layout per repository
