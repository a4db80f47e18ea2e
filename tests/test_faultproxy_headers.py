"""The fault proxy forwards repeated request header fields (skopeo sends several ``Accept`` lines)."""

from __future__ import annotations

import http.client
from pathlib import Path

from doras_oras.testing.faultproxy import FaultProxy
from doras_oras.testing.registry import RegistryServer
from tests.pull_support import oras_push_file, unique

OCI = "application/vnd.oci.image.manifest.v1+json"
DOCKER = "application/vnd.docker.distribution.manifest.v2+json"


def test_repeated_accept_lines_reach_the_registry(oci_registry: RegistryServer, proxy: FaultProxy,
                                                  tmp_path: Path) -> None:
    repo = unique("hdr")
    oras_push_file(oci_registry.host, f"{repo}:v1", tmp_path, "a.txt", b"hello\n")
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    conn.putrequest("GET", f"/v2/{repo}/manifests/v1")
    conn.putheader("Accept", OCI)  # the OCI manifest is accepted only by the first line
    conn.putheader("Accept", DOCKER)
    conn.endheaders()
    response = conn.getresponse()
    body = response.read()
    conn.close()
    assert response.status == 200, body
    assert response.getheader("Content-Type") == OCI
    assert proxy.requests("/manifests/")[0].headers["Accept"] == f"{OCI}, {DOCKER}"
