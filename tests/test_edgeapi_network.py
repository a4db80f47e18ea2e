"""EdgeClient through the transport: the Doras-compatible server behind the fault proxy."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_edgeapi_real import client_for, push_two_versions

from doras_oras.edgeapi import EdgeClient
from doras_oras.errors import ConnectError, DorasServerError, InsecureTransportError
from doras_oras.testing.faultproxy import FaultProxy
from doras_oras.testing.pytest_plugin import DorasServerFactory
from doras_oras.testing.registry import RegistryServer
from doras_oras.transport import TransferPolicy

DELTA = "/api/v1/delta/"


@pytest.mark.timeout(60)
def test_429_and_503_from_the_server_are_retried_with_retry_after(
    doras_server_factory: DorasServerFactory, oci_registry: RegistryServer, oras_cli: str, tmp_path: Path
) -> None:
    pushed = push_two_versions(oci_registry, oras_cli, tmp_path)
    server = doras_server_factory()
    with FaultProxy(server.url) as proxy:
        proxy.add("status", DELTA, status=429, retry_after="1", times=1)
        proxy.add("status", DELTA, status=503, retry_after="1", times=1)
        edge = EdgeClient(proxy.url, allow_http=True, timeout_s=10, backoff=client_for(server).backoff)
        started = time.monotonic()
        response = edge.read_delta(pushed.from_ref, pushed.to_tag, ["bsdiff"], deadline_s=30)
        assert time.monotonic() - started >= 2.0  # both Retry-After: 1 honoured
        assert response.target_image.digest == pushed.to_digest
        statuses = [r.status for r in proxy.requests(DELTA)]
        assert statuses[:2] == [429, 503] and statuses[-1] == 200

        # a storm that does not end: the last answer, as the Doras client maps it
        proxy.add("status", DELTA, status=503, retry_after="0",
                  body=b'{"error":{"code":503,"message":"overloaded"}}')
        proxy.reset_counters()
        with pytest.raises(DorasServerError, match="overloaded") as info:
            edge.read_delta_async(pushed.from_ref, pushed.to_tag, ["bsdiff"])
        assert info.value.status == 503
        assert len(proxy.requests(DELTA)) == 3  # the client's three attempts

        # 500 is the server's final word (e.g. incompatible artifacts): not retried
        proxy.clear()
        proxy.reset_counters()
        proxy.add("status", DELTA, status=500, body=b'{"error":{"code":500,"message":"boom"}}')
        with pytest.raises(DorasServerError, match="boom"):
            edge.read_delta_async(pushed.from_ref, pushed.to_tag, ["bsdiff"])
        assert len(proxy.requests(DELTA)) == 1


@pytest.mark.timeout(60)
def test_drops_are_retried_and_cross_host_redirects_refused(
    doras_server_factory: DorasServerFactory, oci_registry: RegistryServer, oras_cli: str, tmp_path: Path
) -> None:
    pushed = push_two_versions(oci_registry, oras_cli, tmp_path)
    server = doras_server_factory()
    with FaultProxy(server.url) as proxy, FaultProxy(server.url) as other:
        proxy.add("reset", DELTA, times=2)
        edge = EdgeClient(proxy.url, allow_http=True, timeout_s=10, backoff=client_for(server).backoff)
        response = edge.read_delta(pushed.from_ref, pushed.to_tag, ["bsdiff"], deadline_s=30)
        assert response.target_image.digest == pushed.to_digest
        assert [r.fault for r in proxy.requests(DELTA)][:2] == ["reset", "reset"]

        proxy.add("reset", DELTA)
        with pytest.raises(ConnectError, match="gave up after 3 attempts"):
            edge.read_delta_async(pushed.from_ref, pushed.to_tag, ["bsdiff"])

        proxy.clear()
        proxy.add("redirect", DELTA, location=other.url)
        with pytest.raises(InsecureTransportError, match="another host"):
            edge.read_delta_async(pushed.from_ref, pushed.to_tag, ["bsdiff"])
        assert other.requests() == []  # the server's credentials never left for another host

        # a caller's policy: its attempts count, the client's safety rules stay
        proxy.clear()
        proxy.reset_counters()
        proxy.add("status", DELTA, status=503, retry_after="0")
        policy = TransferPolicy(max_attempts=2, wait_initial_s=0.01, allow_http=False, cross_host_redirects=True)
        strict = EdgeClient(proxy.url, allow_http=True, policy=policy)
        assert strict.policy.allow_http and not strict.policy.cross_host_redirects
        with pytest.raises(DorasServerError):
            strict.read_delta_async(pushed.from_ref, pushed.to_tag, ["bsdiff"])
        assert len(proxy.requests(DELTA)) == 2
