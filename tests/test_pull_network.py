"""The delta-aware pull with credentials, TLS, lost blobs, and progress reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from doras_oras import DeltaRegistry
from doras_oras.edgeapi import EdgeClient
from doras_oras.errors import RegistryError
from doras_oras.testing.faultproxy import FaultProxy
from doras_oras.testing.pytest_plugin import REGISTRY_PASSWORD, REGISTRY_USER, DorasServerFactory
from doras_oras.testing.registry import RegistryServer
from doras_oras.testing.server import DorasServer
from doras_oras.testing.vectors import doras_vectors, push_recorded
from tests.layout_support import error_json
from tests.pull_support import behind, check_layout, snapshot, unique


def test_auth_registry_credentials_reach_the_server(oci_registry_auth: RegistryServer,
                                                    doras_server_factory: DorasServerFactory,
                                                    tmp_path: Path) -> None:
    server = doras_server_factory(oci_registry_auth, require_client_auth=True)
    session = requests.Session()
    session.auth = (REGISTRY_USER, REGISTRY_PASSWORD)
    vec = doras_vectors() / "bsdiff+zstd"
    repo = unique("auth")
    digests = push_recorded(oci_registry_auth.url, vec, repo, session=session)
    client = DeltaRegistry(insecure=True, allow_insecure_auth=True)
    client.auth.set_basic_auth(REGISTRY_USER, REGISTRY_PASSWORD)
    layout = tmp_path / "L"
    host = oci_registry_auth.host
    assert client.pull_delta(f"{host}/{repo}:v1", layout, doras_url=server.url).status == "full"
    result = client.pull_delta(f"{host}/{repo}:v2", layout, doras_url=server.url)
    assert (result.status, result.algorithm) == ("delta", "bsdiff+zstd"), result.reason
    assert result.stored_digest == digests["to_digest"]
    check_layout(layout, "v2", manifest=(vec / "to.manifest.json").read_bytes())
    assert server.builds == 1


def test_auth_registry_from_the_cli(oci_registry_auth: RegistryServer, doras_server_factory: DorasServerFactory,
                                    tmp_path: Path) -> None:
    from tests.layout_support import cli

    server = doras_server_factory(oci_registry_auth, require_client_auth=True)
    session = requests.Session()
    session.auth = (REGISTRY_USER, REGISTRY_PASSWORD)
    repo = unique("auth-cli")
    push_recorded(oci_registry_auth.url, doras_vectors() / "gzip-layer-bsdiff+zstd", repo, session=session)
    base = ["--oci-layout", str(tmp_path / "L"), "--server", server.url, "--plain-http", "-u", REGISTRY_USER,
            "--password-stdin", "--json"]
    ref = f"{oci_registry_auth.host}/{repo}"
    refused = cli("pull", f"{ref}:v1", *base, input_text=REGISTRY_PASSWORD + "\n")
    assert refused.returncode == 1 and "plain" in refused.stderr
    assert error_json(refused)["error"] == "InsecureTransportError"
    for tag, status in (("v1", "full"), ("v2", "delta")):
        proc = cli("pull", f"{ref}:{tag}", *base, "--allow-insecure-auth", input_text=REGISTRY_PASSWORD + "\n")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["status"] == status
    assert server.builds == 1


def test_tls_registry(oci_registry_tls: RegistryServer, doras_server_factory: DorasServerFactory,
                      tmp_path: Path) -> None:
    assert oci_registry_tls.ca_file is not None
    server = doras_server_factory(oci_registry_tls)
    session = requests.Session()
    session.verify = str(oci_registry_tls.ca_file)
    vec = doras_vectors() / "tardiff-oras-dir"
    repo = unique("tls")
    push_recorded(oci_registry_tls.url, vec, repo, session=session)
    client = DeltaRegistry(tls_verify=str(oci_registry_tls.ca_file))
    layout = tmp_path / "L"
    client.pull_delta(f"{oci_registry_tls.host}/{repo}:v1", layout, doras_url=server.url)
    result = client.pull_delta(f"{oci_registry_tls.host}/{repo}:v2", layout, doras_url=server.url)
    assert (result.status, result.algorithm, result.verified) == ("delta", "tardiff", True), result.reason
    check_layout(layout, "v2")


def test_lost_delta_blob_falls_back_and_a_failing_full_pull_changes_nothing(
    oci_registry: RegistryServer, doras_server: DorasServer, tmp_path: Path,
) -> None:
    vec = doras_vectors() / "bsdiff"
    repo = unique("lost")
    digests = push_recorded(oci_registry.url, vec, repo)
    target_layer = json.loads((vec / "to.manifest.json").read_bytes())["layers"][0]["digest"]
    with FaultProxy(oci_registry.url) as proxy:
        server = behind(doras_server, proxy)
        layout = tmp_path / "L"
        client = DeltaRegistry(insecure=True)
        ref = f"{proxy.host}/{repo}"
        client.pull_delta(f"{ref}:v1", layout, doras_url=server.url)
        with EdgeClient(server.url, allow_http=True) as edge:
            answer = edge.read_delta(f"{ref}@{digests['from_digest']}", f"{ref}:v2", ["bsdiff", "zstd"])
        delta_manifest = json.loads(requests.get(
            f"{oci_registry.url}/v2/{repo}/manifests/{answer.delta_image.digest}",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}, timeout=10).content)
        delta_blob = delta_manifest["layers"][0]["digest"]
        proxy.add("status", path=f"/blobs/{delta_blob}$", status=404, body=b'{"errors":[]}')
        # the delta blob is gone (and the target layer too): an error, nothing written
        layer_fault = proxy.add("status", path=f"/blobs/{target_layer}$", status=404, body=b'{"errors":[]}')
        before = snapshot(layout)
        with pytest.raises(RegistryError, match="404"):
            client.pull_delta(f"{ref}:v2", layout, doras_url=server.url)
        assert layer_fault.applied == 1
        assert snapshot(layout) == before
        check_layout(layout, "v1", manifest=(vec / "from.manifest.json").read_bytes())
        # the target layer is back: the lost delta means a full pull
        proxy.faults.remove(layer_fault)
        result = client.pull_delta(f"{ref}:v2", layout, doras_url=server.url)
    assert result.status == "full"
    assert result.reason_code == "delta-download-failed" and "404" in result.reason
    check_layout(layout, "v2", manifest=(vec / "to.manifest.json").read_bytes())
    check_layout(layout, "v1", manifest=(vec / "from.manifest.json").read_bytes())


def test_progress_reports(oci_registry: RegistryServer, doras_server: DorasServer, tmp_path: Path) -> None:
    repo = unique("progress")
    push_recorded(oci_registry.url, doras_vectors() / "bsdiff+gzip", repo)
    client = DeltaRegistry(insecure=True)
    layout = tmp_path / "L"
    client.pull_delta(f"{oci_registry.host}/{repo}:v1", layout, doras_url=doras_server.url)
    seen: list[tuple[str, int, int]] = []
    result = client.pull_delta(f"{oci_registry.host}/{repo}:v2", layout, doras_url=doras_server.url,
                               progress=lambda phase, done, total: seen.append((phase, done, total)))
    assert result.status == "delta" and result.delta_size
    deltas = [s for s in seen if s[0] == "delta"]
    assert deltas[-1] == ("delta", result.delta_size, result.delta_size)
    assert [d[1] for d in deltas] == sorted(d[1] for d in deltas)
    size = (doras_vectors() / "bsdiff+gzip" / "to.layer").stat().st_size
    assert seen[-1] == ("apply", size, size)


def test_registry_config_file_from_the_cli(oci_registry_auth: RegistryServer,
                                          doras_server_factory: DorasServerFactory, tmp_path: Path) -> None:
    import base64

    from tests.layout_support import cli

    server = doras_server_factory(oci_registry_auth, require_client_auth=True)
    session = requests.Session()
    session.auth = (REGISTRY_USER, REGISTRY_PASSWORD)
    repo = unique("auth-config")
    push_recorded(oci_registry_auth.url, doras_vectors() / "bsdiff", repo, session=session)
    secret = base64.b64encode(f"{REGISTRY_USER}:{REGISTRY_PASSWORD}".encode()).decode()
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {oci_registry_auth.host: {"auth": secret}}}))
    ref = f"{oci_registry_auth.host}/{repo}"
    base = ["--oci-layout", str(tmp_path / "L"), "--server", server.url, "--plain-http",
            "--allow-insecure-auth", "--json"]
    missing = cli("pull", f"{ref}:v1", *base, "--registry-config", str(tmp_path / "nope.json"))
    assert missing.returncode == 2 and "nope.json: no such file" in missing.stderr
    for tag, status in (("v1", "full"), ("v2", "delta")):
        proc = cli("pull", f"{ref}:{tag}", *base, "--registry-config", str(config))
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["status"] == status
    assert server.builds == 1
