"""One request less (issue #24): the target manifest is read with one GET, conditional on the digest
the layout holds (``If-None-Match``); the real registry (distribution 2.8) answers 304 without a body
when the tag still names it. A registry that ignores the condition costs the body once, then the
client asks it with a HEAD first. Against the real registry, through a counting proxy."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from doras_oras import DeltaRegistry, RegistryClient
from doras_oras.errors import DigestMismatchError
from doras_oras.layout import OCILayout
from doras_oras.pull import PullResult, pull_delta
from doras_oras.testing.faultproxy import FaultProxy
from doras_oras.testing.registry import RegistryServer
from doras_oras.transport import TransferPolicy
from tests.pull_support import manifest_of, oras_push_file, unique


@pytest.fixture
def proxy(oci_registry: RegistryServer) -> Iterator[FaultProxy]:
    with FaultProxy(oci_registry.url) as counting:
        yield counting


@pytest.fixture
def repo(oci_registry: RegistryServer, tmp_path: Path) -> str:
    """A repository with v1 and v2 of one small file, pushed with the oras CLI."""
    name = unique("conditional")
    oras_push_file(oci_registry.host, f"{name}:v1", tmp_path / "p1", "x.txt", b"version one\n")
    oras_push_file(oci_registry.host, f"{name}:v2", tmp_path / "p2", "x.txt", b"version two\n")
    return name


def pull(proxy: FaultProxy, ref: str, layout: Path, client: RegistryClient | None = None) -> PullResult:
    return pull_delta(client or RegistryClient(plain_http=True), f"{proxy.host}/{ref}", layout, doras_url=None)


def manifest_requests(proxy: FaultProxy, repo: str) -> list[tuple[str, int | None]]:
    """The requests for the repository's manifests, but the probes for stored deltas (``_delta-`` tags)."""
    proxy.wait_idle()
    return [(r.method, r.status) for r in proxy.requests(f"/v2/{repo}/manifests/")
            if "/manifests/_delta-" not in r.path]


def test_up_to_date_is_one_get_answered_304_without_a_body(oci_registry: RegistryServer, proxy: FaultProxy,
                                                           repo: str, tmp_path: Path) -> None:
    layout = tmp_path / "L"
    first = pull(proxy, f"{repo}:v1", layout)
    proxy.wait_idle()
    proxy.reset_counters()
    again = pull(proxy, f"{repo}:v1", layout)
    assert (again.status, again.to_digest, again.bytes_received) == ("up-to-date", first.to_digest, 0)
    assert manifest_requests(proxy, repo) == [("GET", 304)]
    assert proxy.requests()[0].headers["If-None-Match"] == f'"{first.to_digest}"'
    assert proxy.bytes_sent() == 0


def test_a_first_pull_reads_the_manifest_with_one_get(oci_registry: RegistryServer, proxy: FaultProxy,
                                                      repo: str, tmp_path: Path) -> None:
    result = pull(proxy, f"{repo}:v1", tmp_path / "L")
    assert result.status == "full"
    assert manifest_requests(proxy, repo) == [("GET", 200)]
    assert "If-None-Match" not in proxy.requests(f"/v2/{repo}/manifests/")[0].headers


def test_an_update_reads_the_new_manifest_with_the_conditional_get(oci_registry: RegistryServer,
                                                                   proxy: FaultProxy, repo: str,
                                                                   tmp_path: Path) -> None:
    layout = tmp_path / "L"
    pull(proxy, f"{repo}:v1", layout)
    proxy.wait_idle()
    proxy.reset_counters()
    body, digest = manifest_of(oci_registry, repo, "v2")
    result = pull(proxy, f"{repo}:v2", layout)
    assert (result.status, result.to_digest) == ("full", digest)
    assert manifest_requests(proxy, repo) == [("GET", 200)]  # no HEAD, no second GET of the manifest
    assert OCILayout.open(layout).read_blob(OCILayout.open(layout).get_image(f"{proxy.host}/{repo}", "v2")
                                            .descriptor) == body


def test_a_moved_tag_installs_the_digest_of_the_body_received(oci_registry: RegistryServer, proxy: FaultProxy,
                                                              repo: str, tmp_path: Path) -> None:
    """``latest`` named v1 when pulled, v2 now: the conditional GET brings v2's bytes, and their digest
    is what the layout records (there is no second request whose answer could differ)."""
    import requests

    from doras_oras.testing.vectors import push_manifest_bytes

    layout = tmp_path / "L"
    v1_body, v1 = manifest_of(oci_registry, repo, "v1")
    v2_body, v2 = manifest_of(oci_registry, repo, "v2")
    push_manifest_bytes(requests.Session(), oci_registry.url, repo, "latest", v1_body)
    assert pull(proxy, f"{repo}:latest", layout).to_digest == v1
    push_manifest_bytes(requests.Session(), oci_registry.url, repo, "latest", v2_body)
    proxy.wait_idle()
    proxy.reset_counters()
    moved = pull(proxy, f"{repo}:latest", layout)
    assert (moved.status, moved.to_digest, moved.stored_digest) == ("full", v2, v2)
    assert proxy.requests(f"/v2/{repo}/manifests/")[0].headers["If-None-Match"] == f'"{v1}"'
    entry = OCILayout.open(layout).get_image(f"{proxy.host}/{repo}", "latest")
    assert entry.source_digest == v2


def test_a_registry_that_ignores_the_condition_is_asked_with_head_next(oci_registry: RegistryServer,
                                                                       proxy: FaultProxy, repo: str,
                                                                       tmp_path: Path) -> None:
    layout = tmp_path / "L"
    client = RegistryClient(plain_http=True)
    pull(proxy, f"{repo}:v1", layout, client)
    proxy.add("ignore_conditions")
    proxy.wait_idle()
    proxy.reset_counters()
    body, _digest = manifest_of(oci_registry, repo, "v1")
    paid = pull(proxy, f"{repo}:v1", layout, client)
    assert (paid.status, paid.bytes_received) == ("up-to-date", len(body))  # the body, once
    assert manifest_requests(proxy, repo) == [("GET", 200)]
    assert client.unconditional == {proxy.host}
    proxy.reset_counters()
    cheap = pull(proxy, f"{repo}:v1", layout, client)
    assert (cheap.status, cheap.bytes_received) == ("up-to-date", 0)
    assert manifest_requests(proxy, repo) == [("HEAD", 200)]


def test_the_facade_polls_with_the_conditional_get(oci_registry: RegistryServer, proxy: FaultProxy, repo: str,
                                                   tmp_path: Path) -> None:
    layout = tmp_path / "L"
    registry = DeltaRegistry(insecure=True)
    registry.pull_delta(f"{proxy.host}/{repo}:v2", layout, doras_url=None)
    proxy.wait_idle()
    proxy.reset_counters()
    again = registry.pull_delta(f"{proxy.host}/{repo}:v2", layout, doras_url=None)
    assert again.status == "up-to-date"
    assert manifest_requests(proxy, repo) == [("GET", 304)]
    assert json.loads((layout / "index.json").read_text())["manifests"][0]["digest"] == again.to_digest


class _Contradicting(BaseHTTPRequestHandler):
    """Answers every manifest GET ``304`` while naming another digest: no real registry does this."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(304)
        self.send_header("Docker-Content-Digest", "sha256:" + "b" * 64)
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_a_304_that_names_another_digest_is_refused() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Contradicting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = RegistryClient(plain_http=True, policy=TransferPolicy(deadline_s=10))
        with pytest.raises(DigestMismatchError, match=r"not modified from sha256:a+, but the registry says sha256:b+"):
            client.fetch_if_changed(f"127.0.0.1:{server.server_port}/app:v1", "sha256:" + "a" * 64)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
