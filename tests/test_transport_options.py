"""Transport options used by the Doras API client: error answers handed over, retry statuses, same-host redirects."""

from __future__ import annotations

import pytest
from transport_helpers import Blob, Sleeps, quick_policy, random_blob

from doras_oras.errors import InsecureTransportError, RegistryError
from doras_oras.testing.faultproxy import FaultProxy
from doras_oras.testing.registry import RegistryServer
from doras_oras.transport import TransferPolicy, Transport


@pytest.fixture(scope="module")
def blob(oci_registry: RegistryServer) -> Blob:
    return random_blob(oci_registry, "transport/options", 100_000)


@pytest.mark.timeout(30)
def test_error_answers_are_handed_over_when_asked(proxy: FaultProxy, blob: Blob) -> None:
    sleeps = Sleeps()
    with Transport(policy=quick_policy(max_attempts=3), sleep=sleeps) as transport:
        # not retried: returned at once, body unread
        missing = transport.get(proxy.url + "/v2/transport/options/blobs/sha256:" + "0" * 64, stream=True,
                                raise_for_status=False)
        assert missing.status_code == 404 and b"BLOB_UNKNOWN" in missing.content
        # retried, then the answer
        proxy.add("status", blob.path, status=503, retry_after="2", times=2)
        ok = transport.get(proxy.url + blob.path, raise_for_status=False)
        assert ok.status_code == 200 and ok.content == blob.data
        assert len(sleeps) == 2 and all(s == pytest.approx(0.2) for s in sleeps)  # Retry-After 2, capped by the policy
        # a storm: the last 503 is handed over with its body once attempts run out
        proxy.add("status", blob.path, status=503, body=b'{"error":"busy"}')
        last = transport.get(proxy.url + blob.path, stream=True, raise_for_status=False)
        assert last.status_code == 503 and last.content == b'{"error":"busy"}'
        last.close()
    assert [r.status for r in proxy.requests(blob.path)] == [503, 503, 200, 503, 503, 503]


@pytest.mark.timeout(30)
def test_retry_statuses_are_a_policy_choice(proxy: FaultProxy, blob: Blob) -> None:
    proxy.add("status", blob.path, status=500, times=1)
    with Transport(policy=quick_policy(retry_statuses=frozenset({503}))) as transport, pytest.raises(
        RegistryError, match="answered 500"
    ) as info:
        transport.get(proxy.url + blob.path)
    assert info.value.status == 500 and len(proxy.requests(blob.path)) == 1
    proxy.add("status", blob.path, status=500, times=1)
    with Transport(policy=quick_policy()) as transport:  # the default retries 500
        assert transport.get(proxy.url + blob.path).content == blob.data
    with pytest.raises(ValueError, match="retry_statuses"):
        TransferPolicy(retry_statuses=frozenset({200}))


@pytest.mark.timeout(30)
def test_same_host_redirects_only_when_asked(oci_registry: RegistryServer, proxy: FaultProxy, blob: Blob) -> None:
    with FaultProxy(oci_registry.url) as other:
        proxy.add("redirect", blob.path, location=other.url)
        policy = quick_policy(cross_host_redirects=False)
        with Transport(policy=policy) as transport, pytest.raises(InsecureTransportError, match="another host"):
            transport.get(proxy.url + blob.path)
        assert other.requests() == []
        # a redirect on the same host and port is still followed
        proxy.clear()
        proxy.add("redirect", blob.path, location=proxy.url, times=1)
        with Transport(policy=policy) as transport:
            assert transport.get(proxy.url + blob.path).content == blob.data
