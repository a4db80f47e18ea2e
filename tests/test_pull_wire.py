"""What a delta pull puts on the wire, counted below TLS by a TCP relay.

Issue 6's byte target ("no more bytes than the Go client: reuse connections,
fetch nothing twice") is checked elsewhere on response bodies; here the whole
TLS stream is counted (handshake, certificates, session tickets, headers),
as a packet capture would, against the real TLS registry.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import requests

from doras_oras import DeltaRegistry
from doras_oras.testing.pytest_plugin import REGISTRY_PASSWORD, REGISTRY_USER, DorasServerFactory
from doras_oras.testing.registry import RegistryServer
from doras_oras.testing.vectors import doras_vectors, push_recorded
from tests.pull_support import check_layout, unique
from tests.tcp_relay import TcpRelay

#: Issue 6: the Go client received 32,501 bytes for a delta blob of 27,188, so 5,313 bytes
#: of everything else (manifests, the Doras answer, headers, TLS).
GO_OVERHEAD_BYTES = 32_501 - 27_188


def test_delta_pull_over_tls_opens_one_connection_per_peer_and_sends_little_else(
    oci_registry_tls: RegistryServer, doras_server_factory: DorasServerFactory, tmp_path: Path,
) -> None:
    ca = str(oci_registry_tls.ca_file)
    server = doras_server_factory(oci_registry_tls)
    vec = doras_vectors() / "bsdiff+zstd"
    repo = unique("wire")
    session = requests.Session()
    session.verify = ca
    push_recorded(oci_registry_tls.url, vec, repo, session=session)
    layout = tmp_path / "L"
    with TcpRelay("127.0.0.1", oci_registry_tls.port) as registry, \
            TcpRelay("127.0.0.1", server.port) as doras:
        own = server._is_our_registry  # the server must accept the relay's name for its registry
        server._is_our_registry = lambda host: host == registry.host or own(host)  # type: ignore[method-assign]
        doras_url = f"http://{doras.host}"
        first = DeltaRegistry(tls_verify=ca)
        assert first.pull_delta(f"{registry.host}/{repo}:v1", layout, doras_url=doras_url).status == "full"
        shutil.copytree(layout, tmp_path / "warm")  # a first device makes the server build the delta
        warm = first.pull_delta(f"{registry.host}/{repo}:v2", tmp_path / "warm", doras_url=doras_url)
        assert warm.status == "delta", warm.reason
        first.session.close()
        registry.reset()
        doras.reset()

        client = DeltaRegistry(tls_verify=ca)  # as a new process would
        result = client.pull_delta(f"{registry.host}/{repo}:v2", layout, doras_url=doras_url)
        client.session.close()
        registry.wait_idle()
        doras.wait_idle()

    assert (result.status, result.algorithm) == ("delta", "bsdiff+zstd"), result.reason
    check_layout(layout, "v2", manifest=(vec / "to.manifest.json").read_bytes())
    # One TLS connection to the registry carries the HEAD, both manifests and the delta
    # blob (one handshake); one connection to the Doras server.
    assert (registry.connections, doras.connections) == (1, 1)
    # Everything beyond the delta blob, handshake included, is less than the Go client's.
    received = registry.bytes_down + doras.bytes_down
    delta_blob = result.delta_size
    assert delta_blob is not None and result.bytes_received > delta_blob
    assert received > result.bytes_received  # the relay saw the TLS stream, not just the bodies
    assert received - delta_blob < GO_OVERHEAD_BYTES, (received, delta_blob, result.bytes_received)
    # What the client sent: four requests on one connection and one to the server.
    assert registry.bytes_up + doras.bytes_up < 4096


def test_auth_challenges_keep_the_connection(oci_registry_auth: RegistryServer,
                                                           tmp_path: Path) -> None:
    # The registry answers 401 with a small body before credentials are sent; reading that
    # body (instead of closing the response unread) keeps the connection for the retry.
    vec = doras_vectors() / "bsdiff"
    repo = unique("wire-auth")
    session = requests.Session()
    session.auth = (REGISTRY_USER, REGISTRY_PASSWORD)
    push_recorded(oci_registry_auth.url, vec, repo, session=session)
    with TcpRelay("127.0.0.1", oci_registry_auth.port) as registry:
        client = DeltaRegistry(insecure=True, allow_insecure_auth=True)
        client.auth.set_basic_auth(REGISTRY_USER, REGISTRY_PASSWORD)
        result = client.pull_delta(f"{registry.host}/{repo}:v1", tmp_path / "L", doras_url=None)
        client.session.close()
        registry.wait_idle()
    assert result.status == "full"
    check_layout(tmp_path / "L", "v1", manifest=(vec / "from.manifest.json").read_bytes())
    assert registry.connections == 1
