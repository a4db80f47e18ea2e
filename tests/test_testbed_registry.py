"""The registry of the test bed is the real docker-registry, in its three variants."""

from __future__ import annotations

import subprocess
from pathlib import Path

import requests

from doras_oras.testing.pytest_plugin import REGISTRY_PASSWORD, REGISTRY_USER
from doras_oras.testing.registry import RegistryServer


def test_plain_registry_answers_v2(oci_registry: RegistryServer) -> None:
    response = requests.get(oci_registry.url + "/v2/", timeout=5)
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-Api-Version"] == "registry/2.0"


def test_auth_registry_requires_basic_credentials(oci_registry_auth: RegistryServer) -> None:
    url = oci_registry_auth.url + "/v2/"
    assert requests.get(url, timeout=5).status_code == 401
    assert requests.get(url, auth=(REGISTRY_USER, "wrong"), timeout=5).status_code == 401
    assert requests.get(url, auth=(REGISTRY_USER, REGISTRY_PASSWORD), timeout=5).status_code == 200


def test_tls_registry_verifies_with_its_ca_only(oci_registry_tls: RegistryServer) -> None:
    assert oci_registry_tls.ca_file is not None
    url = oci_registry_tls.url + "/v2/"
    assert requests.get(url, timeout=5, verify=str(oci_registry_tls.ca_file)).status_code == 200
    try:
        requests.get(url, timeout=5)
    except requests.exceptions.SSLError:
        pass
    else:
        raise AssertionError("a certificate from an unknown CA was accepted")


def test_oras_cli_pushes_to_the_registry(oci_registry: RegistryServer, oras_cli: str, tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_text("hello\n")
    subprocess.run(
        [oras_cli, "push", "--plain-http", f"{oci_registry.host}/testbed/hello:v1", "hello.txt"],
        cwd=tmp_path, check=True, capture_output=True,
    )
    response = requests.get(
        f"{oci_registry.url}/v2/testbed/hello/manifests/v1",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}, timeout=5,
    )
    assert response.status_code == 200
    assert response.json()["layers"][0]["annotations"]["org.opencontainers.image.title"] == "hello.txt"
