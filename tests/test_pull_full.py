"""Verified full pull from the real registry; the layout read by skopeo, the oras CLI, oras-py, umoci."""

from __future__ import annotations

import json
from pathlib import Path

import oras.layout
import pytest
import requests

from doras_oras.descriptor import ANNOTATION_SOURCE_DIGEST, ANNOTATION_SOURCE_REPOSITORY
from doras_oras.errors import (
    ImageNotFoundError,
    InsecureTransportError,
    RegistryAuthError,
    RegistryError,
    TransportError,
)
from doras_oras.layout import ANNOTATION_SOURCE_INDEX, OCILayout, gc
from doras_oras.reference import Reference
from doras_oras.registry import DeltaRegistry
from doras_oras.testing.pytest_plugin import REGISTRY_PASSWORD, REGISTRY_USER
from doras_oras.testing.registry import RegistryServer, find_tool
from tests.layout_support import (
    build_container_layout,
    cli,
    layout_problems,
    oras_push_file,
    push_layout,
    run,
    sha256,
)

ACCEPT = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"


def registry_manifest(registry: RegistryServer, repo: str, tag: str) -> tuple[bytes, str]:
    response = requests.get(f"{registry.url}/v2/{repo}/manifests/{tag}", headers={"Accept": ACCEPT}, timeout=10)
    response.raise_for_status()
    return response.content, response.headers["Docker-Content-Digest"]


def test_full_pull_of_an_oras_artifact_is_read_by_every_tool(oci_registry: RegistryServer, tmp_path: Path) -> None:
    payload = bytes(range(256)) * 4000
    oras_push_file(oci_registry.host, "pull/art:v1", tmp_path, "data.bin", payload)
    body, digest = registry_manifest(oci_registry, "pull/art", "v1")
    client = DeltaRegistry(insecure=True)
    ref = Reference.parse(f"{oci_registry.host}/pull/art:v1")
    assert client.resolve(ref).digest == digest
    assert client.fetch_manifest(ref) == (body, "application/vnd.oci.image.manifest.v1+json")
    layout_dir = tmp_path / "L"
    layout = OCILayout.open(layout_dir)
    result = client.pull_full(ref, layout)
    assert result.manifest.digest == digest
    assert result.blobs_fetched == 2 and result.blobs_reused == 0
    assert result.bytes_received == len(payload) + len(body)  # the empty config came inline
    assert layout_problems(layout_dir) == []
    entry = layout.get_image(ref.name, "v1")
    assert entry.descriptor.annotations[ANNOTATION_SOURCE_REPOSITORY] == ref.name
    assert entry.descriptor.annotations[ANNOTATION_SOURCE_DIGEST] == digest
    assert layout.blob_path(digest).read_bytes() == body  # the registry's bytes, unchanged
    name = f"127.0.0.1_{oci_registry.port}/pull/art/v1"  # registry/repository/tag, the port's ':' as '_'
    assert entry.ref_name == name

    # skopeo reads it by that name and copies it back: same manifest digest
    raw = run("skopeo", "inspect", "--raw", f"oci:{layout_dir}:{name}").stdout
    assert raw.encode() == body
    run("skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout_dir}:{name}",
        f"docker://{oci_registry.host}/copied/by-skopeo:v1")
    assert registry_manifest(oci_registry, "copied/by-skopeo", "v1")[1] == digest
    # the oras CLI too
    run(find_tool("oras"), "copy", "--to-plain-http", "--from-oci-layout", f"{layout_dir}:{name}",
        f"{oci_registry.host}/copied/by-oras:v1")
    assert registry_manifest(oci_registry, "copied/by-oras", "v1")[1] == digest
    # and oras-py
    reader = oras.layout.Layout(str(layout_dir))
    reader.validate()
    document = json.loads(body)
    assert set(reader.get_ordered_blobs(name)) == {digest, document["config"]["digest"], document["layers"][0]["digest"]}

    # a second pull fetches no blob again
    again = client.pull_full(ref, layout)
    assert (again.blobs_fetched, again.blobs_reused) == (0, 2)
    assert again.bytes_received == len(body)


def test_full_pull_of_a_container_index_by_platform_with_umoci(oci_registry: RegistryServer, tmp_path: Path) -> None:
    build_container_layout(tmp_path / "src", "v1", {"hello.txt": b"hello from a container\n"},
                           platforms=("linux/amd64", "linux/arm64"))
    push_layout(tmp_path / "src", "v1", oci_registry.host, "pull/img:v1")
    index_body, index_digest = registry_manifest(oci_registry, "pull/img", "v1")
    client = DeltaRegistry(insecure=True)
    layout = OCILayout.open(tmp_path / "L")
    ref = f"{oci_registry.host}/pull/img:v1"
    result = client.pull_full(ref, layout, platform="linux/arm64")
    assert result.resolved.digest == index_digest
    arm = next(m for m in json.loads(index_body)["manifests"] if m["platform"]["architecture"] == "arm64")
    assert result.manifest.digest == arm["digest"]
    assert result.image.descriptor.annotations[ANNOTATION_SOURCE_INDEX] == index_digest
    assert layout_problems(tmp_path / "L") == []
    name = str(result.image.ref_name)
    run("skopeo", "inspect", f"oci:{tmp_path / 'L'}:{name}")  # a real image config: plain inspect works
    run("umoci", "unpack", "--image", f"{tmp_path / 'L'}:{name}", str(tmp_path / "bundle"))
    rootfs = tmp_path / "bundle" / "rootfs"
    assert (rootfs / "hello.txt").read_bytes() == b"hello from a container\n"
    assert (rootfs / "platform").read_bytes() == b"linux/arm64"
    with pytest.raises(ImageNotFoundError, match=r"linux/s390x.*linux/amd64, linux/arm64"):
        client.pull_full(ref, layout, platform="linux/s390x")
    with pytest.raises(ValueError, match="os/arch"):
        client.pull_full(ref, layout, platform="linux")


def test_pull_replaces_a_moved_tag_and_gc_drops_the_old_image(oci_registry: RegistryServer, tmp_path: Path) -> None:
    client = DeltaRegistry(insecure=True)
    layout = OCILayout.open(tmp_path / "L")
    ref = f"{oci_registry.host}/pull/moving:latest"
    digests = []
    for n in range(3):
        oras_push_file(oci_registry.host, "pull/moving:latest", tmp_path, "f.txt", f"version {n}\n".encode() * 1000)
        digests.append(client.pull_full(ref, layout).manifest.digest)
        assert [i.descriptor.digest for i in layout.images()] == [digests[-1]]
    assert len(set(digests)) == 3
    blobs = tmp_path / "L" / "blobs" / "sha256"
    assert len(list(blobs.iterdir())) == 1 + 3 * 2  # shared empty config, 3 layers, 3 manifests
    with layout.lock():
        gc(layout, keep=1)
    assert sorted(p.name for p in blobs.iterdir()) == sorted(
        {digests[-1].split(":")[1], sha256(b"{}").split(":")[1],
         json.loads(layout.read_blob(layout.images()[0].descriptor))["layers"][0]["digest"].split(":")[1]}
    )
    assert layout_problems(tmp_path / "L") == []


def test_unknown_image_is_a_clear_error(oci_registry: RegistryServer, tmp_path: Path) -> None:
    layout = OCILayout.open(tmp_path / "L")
    with pytest.raises(RegistryError, match="404") as info:
        DeltaRegistry(insecure=True).pull_full(f"{oci_registry.host}/pull/none:v1", layout)
    assert info.value.status == 404
    assert layout.images() == []


def test_auth_registry_needs_credentials_and_refuses_them_in_clear(
    oci_registry_auth: RegistryServer, tmp_path: Path
) -> None:
    (tmp_path / "f.txt").write_text("secret stuff\n")
    run(find_tool("oras"), "push", "--plain-http", "-u", REGISTRY_USER, "-p", REGISTRY_PASSWORD,
        f"{oci_registry_auth.host}/auth/art:v1", "f.txt", cwd=tmp_path)
    ref = f"{oci_registry_auth.host}/auth/art:v1"
    layout = OCILayout.open(tmp_path / "L")
    with pytest.raises(RegistryAuthError):
        DeltaRegistry(insecure=True).pull_full(ref, layout)
    careful = DeltaRegistry(insecure=True)
    careful.auth.set_basic_auth(REGISTRY_USER, REGISTRY_PASSWORD)
    with pytest.raises(InsecureTransportError, match="plain HTTP"):
        careful.pull_full(ref, layout)
    wrong = DeltaRegistry(insecure=True, allow_insecure_auth=True)
    wrong.auth.set_basic_auth(REGISTRY_USER, "wrong")
    with pytest.raises(RegistryAuthError, match="401"):
        wrong.pull_full(ref, layout)
    assert layout.images() == []
    allowed = DeltaRegistry(insecure=True, allow_insecure_auth=True)
    allowed.auth.set_basic_auth(REGISTRY_USER, REGISTRY_PASSWORD)
    allowed.pull_full(ref, layout)
    assert layout_problems(tmp_path / "L") == [] and len(layout.images()) == 1


def test_tls_registry_verified_with_its_ca(oci_registry_tls: RegistryServer, tmp_path: Path) -> None:
    assert oci_registry_tls.ca_file is not None
    (tmp_path / "f.txt").write_text("over tls\n")
    run(find_tool("oras"), "push", "--ca-file", str(oci_registry_tls.ca_file),
        f"{oci_registry_tls.host}/tls/art:v1", "f.txt", cwd=tmp_path)
    ref = f"{oci_registry_tls.host}/tls/art:v1"
    layout = OCILayout.open(tmp_path / "L")
    with pytest.raises(TransportError, match="TLS"):
        DeltaRegistry().pull_full(ref, layout)
    assert layout.images() == []
    DeltaRegistry(tls_verify=str(oci_registry_tls.ca_file)).pull_full(ref, layout)
    assert layout_problems(tmp_path / "L") == []


def test_cli_pull_and_gc(oci_registry: RegistryServer, tmp_path: Path) -> None:
    for n in (1, 2):
        oras_push_file(oci_registry.host, f"cli/art:v{n}", tmp_path, "f.txt", f"cli {n}\n".encode())
    layout_dir = tmp_path / "L"
    for n in (1, 2):
        proc = cli("pull", f"{oci_registry.host}/cli/art:v{n}", "--oci-layout", str(layout_dir),
                   "--plain-http", "--json")
        assert proc.returncode == 0, proc.stderr
        summary = json.loads(proc.stdout)
        assert summary["stored_digest"] == summary["to_digest"] == registry_manifest(
            oci_registry, "cli/art", f"v{n}")[1]
        assert (summary["status"], summary["reason_code"]) == ("full", "no-server" if n == 2 else "no-base")
        assert (summary["blobs_fetched"], summary["blobs_reused"]) == ((2, 0) if n == 1 else (1, 1))
    # what the layout holds is up to date (exit 3), without --server too
    proc = cli("pull", f"{oci_registry.host}/cli/art:v1", "--oci-layout", str(layout_dir), "--plain-http")
    assert proc.returncode == 3 and "up to date" in proc.stdout, proc.stderr
    proc = cli("pull", f"{oci_registry.host}/cli/absent:v1", "--oci-layout", str(layout_dir), "--plain-http")
    assert proc.returncode == 1 and "404" in proc.stderr
    proc = cli("pull", "Bad//Ref", "--oci-layout", str(layout_dir))
    assert proc.returncode == 2 and "invalid reference" in proc.stderr
    proc = cli("gc", "--oci-layout", str(layout_dir), "--keep", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    gc = json.loads(proc.stdout)
    assert [i["tag"] for i in gc["removed_images"]] == ["v1"]  # v2 was pulled last
    assert gc["removed_blobs"] == 2
    assert layout_problems(layout_dir) == []
    assert [i.tag for i in OCILayout.open(layout_dir).images()] == ["v2"]


def test_cli_credentials_and_tls_flags(
    oci_registry_auth: RegistryServer, oci_registry_tls: RegistryServer, tmp_path: Path
) -> None:
    (tmp_path / "f.txt").write_text("cli auth\n")
    run(find_tool("oras"), "push", "--plain-http", "-u", REGISTRY_USER, "-p", REGISTRY_PASSWORD,
        f"{oci_registry_auth.host}/cliauth/art:v1", "f.txt", cwd=tmp_path)
    ref = f"{oci_registry_auth.host}/cliauth/art:v1"
    base = ["pull", ref, "--oci-layout", str(tmp_path / "A"), "--plain-http", "-u", REGISTRY_USER,
            "--password-stdin", "--json"]
    proc = cli(*base, input_text=REGISTRY_PASSWORD + "\n")
    assert proc.returncode == 1 and "plain HTTP" in proc.stderr
    proc = cli(*base, "--allow-insecure-auth", input_text=REGISTRY_PASSWORD + "\n")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["stored_digest"].startswith("sha256:")
    proc = cli("pull", ref, "--oci-layout", str(tmp_path / "A"), "--plain-http", "-u", REGISTRY_USER)
    assert proc.returncode == 2 and "password" in proc.stderr

    assert oci_registry_tls.ca_file is not None
    run(find_tool("oras"), "push", "--ca-file", str(oci_registry_tls.ca_file),
        f"{oci_registry_tls.host}/clitls/art:v1", "f.txt", cwd=tmp_path)
    tls_ref = f"{oci_registry_tls.host}/clitls/art:v1"
    proc = cli("pull", tls_ref, "--oci-layout", str(tmp_path / "T"))
    assert proc.returncode == 1 and "TLS" in proc.stderr
    proc = cli("pull", tls_ref, "--oci-layout", str(tmp_path / "T"), "--ca-file", str(oci_registry_tls.ca_file))
    assert proc.returncode == 0, proc.stderr
    proc = cli("pull", tls_ref, "--oci-layout", str(tmp_path / "T2"), "--insecure")
    assert proc.returncode == 0, proc.stderr
    assert layout_problems(tmp_path / "T") == [] and layout_problems(tmp_path / "A") == []
