"""The fault proxy forwards repeated request header fields (skopeo sends several ``Accept`` lines)."""

from __future__ import annotations

import http.client
import subprocess
from pathlib import Path

from doras_oras.testing.faultproxy import FaultProxy
from doras_oras.testing.registry import RegistryServer

OCI = "application/vnd.oci.image.manifest.v1+json"
DOCKER = "application/vnd.docker.distribution.manifest.v2+json"


def test_repeated_accept_lines_reach_the_registry(oci_registry: RegistryServer, oras_cli: str,
                                                  tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello\n")
    subprocess.run([oras_cli, "push", "--plain-http", f"{oci_registry.host}/hdr/a:v1", "a.txt"],
                   cwd=tmp_path, check=True, capture_output=True, timeout=60)
    with FaultProxy(oci_registry.url) as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
        conn.putrequest("GET", "/v2/hdr/a/manifests/v1")
        conn.putheader("Accept", OCI)  # the OCI manifest is accepted only by the first line
        conn.putheader("Accept", DOCKER)
        conn.endheaders()
        response = conn.getresponse()
        body = response.read()
        conn.close()
        assert response.status == 200, body
        assert response.getheader("Content-Type") == OCI
        assert proxy.requests("/manifests/")[0].headers["Accept"] == f"{OCI}, {DOCKER}"
