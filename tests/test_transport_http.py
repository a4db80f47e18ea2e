"""GETs against the real registries: retries, redirects, TLS, plain-http refusal."""

from __future__ import annotations

from pathlib import Path

import pytest
from transport_helpers import Blob, Sleeps, download_file, quick_policy, random_blob

from doras_oras.auth import RegistryAuth
from doras_oras.errors import (
    BodyTooLargeError,
    ConnectError,
    InsecureTransportError,
    InvalidArgumentError,
    RegistryAuthError,
    RegistryError,
    TransferTimeoutError,
)
from doras_oras.registry_client import RegistryClient
from doras_oras.testing.faultproxy import FaultProxy
from doras_oras.testing.pytest_plugin import REGISTRY_PASSWORD, REGISTRY_USER
from doras_oras.testing.registry import RegistryServer, make_tls
from doras_oras.transport import ByteCounter, TransferPolicy, Transport

SIZE = 256 * 1024


@pytest.fixture(scope="module")
def blob(oci_registry: RegistryServer) -> Blob:
    return random_blob(oci_registry, "transport/http", SIZE)


# --- retries ---------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("status", [429, 500, 503])
def test_storm_with_retry_after_is_retried_then_succeeds(
    proxy: FaultProxy, blob: Blob, status: int
) -> None:
    proxy.add("status", blob.path, status=status, retry_after="0", times=2)
    proxy.add("status", blob.path, status=status, retry_after="30", times=1)
    sleeps = Sleeps()
    with Transport(policy=quick_policy(max_attempts=4), sleep=sleeps) as transport:
        response = transport.get(proxy.url + blob.path)
    assert response.content == blob.data
    assert [r.status for r in proxy.requests(blob.path)] == [status, status, status, 200]
    # Retry-After honoured (it replaces the computed wait), and capped at retry_after_max_s
    # (0.2): the 30 s became 0.2 s.
    assert len(sleeps) == 3 and sleeps[2] == pytest.approx(0.2)
    assert list(sleeps)[:2] == [0.0, 0.0]


@pytest.mark.timeout(30)
def test_retry_after_of_one_second_is_the_one_wait(proxy: FaultProxy, blob: Blob) -> None:
    proxy.add("status", blob.path, status=503, retry_after="1", times=1)
    sleeps = Sleeps()
    with Transport(policy=quick_policy(retry_after_max_s=5.0), sleep=sleeps) as transport:
        assert transport.get(proxy.url + blob.path).content == blob.data
    assert sleeps == [1.0]
    assert [r.status for r in proxy.requests(blob.path)] == [503, 200]


@pytest.mark.timeout(30)
def test_endless_storm_gives_a_clear_error_after_max_attempts(proxy: FaultProxy, blob: Blob) -> None:
    proxy.add("status", blob.path, status=429, retry_after="1")
    sleeps = Sleeps()
    with Transport(policy=quick_policy(max_attempts=3), sleep=sleeps) as transport, pytest.raises(
        RegistryError, match=r"answered 429.*gave up after 3 attempts"
    ) as caught:
        transport.get(proxy.url + blob.path)
    assert caught.value.status == 429
    assert len(proxy.requests(blob.path)) == 3 and len(sleeps) == 2


@pytest.mark.timeout(30)
def test_an_endless_429_costs_a_resolve_one_retry_budget(proxy: FaultProxy) -> None:
    """Issue #20: HEAD then GET of a resolve share one budget (was 5 HEADs + 5 GETs, 480 s of waits)."""
    proxy.add("status", "/v2/transport/storm/manifests/", status=429, retry_after="3600")
    policy = TransferPolicy(allow_http=True)  # the defaults: 5 attempts, Retry-After capped at 60 s
    now = [0.0]
    sleeps = Sleeps()

    def sleep(seconds: float) -> None:
        sleeps(seconds)
        now[0] += seconds

    with RegistryClient(plain_http=True, policy=policy) as client:
        client.transport = Transport(client.session, client.policy, sleep=sleep, clock=lambda: now[0])
        with pytest.raises(RegistryError, match=r"answered 429.*gave up after 5 attempts"):
            client.resolve(f"{proxy.host}/transport/storm:v1")
    assert [r.method for r in proxy.requests("/v2/transport/storm/")] == ["HEAD"] * policy.max_attempts
    assert sum(sleeps) == (policy.max_attempts - 1) * policy.retry_after_max_s == 240.0


@pytest.mark.timeout(30)
def test_retry_wait_that_would_pass_the_deadline_stops_early(proxy: FaultProxy, blob: Blob) -> None:
    proxy.add("status", blob.path, status=503, retry_after="3")
    sleeps = Sleeps()
    policy = quick_policy(retry_after_max_s=60.0, deadline_s=1.0, max_attempts=10)
    with Transport(policy=policy, sleep=sleeps) as transport, pytest.raises(TransferTimeoutError, match="deadline"):
        transport.get(proxy.url + blob.path)
    assert sleeps == []  # the 3 s wait was never begun
    assert len(proxy.requests(blob.path)) == 1


@pytest.mark.timeout(30)
def test_client_errors_are_not_retried_and_bodies_are_capped_and_redacted(proxy: FaultProxy) -> None:
    secret = b'{"error":"nope","token":"s3cr3t-token","hint":"Authorization: Bearer abc.def.ghi"}'
    proxy.add("status", "/v2/x/", status=400, body=secret + b" " * (200 * 1024))
    with Transport(policy=quick_policy()) as transport, pytest.raises(RegistryError) as caught:
        transport.get(proxy.url + "/v2/x/manifests/latest")
    message = str(caught.value)
    assert caught.value.status == 400 and "answered 400" in message
    assert "s3cr3t-token" not in message and "abc.def.ghi" not in message
    assert "[REDACTED]" in message and len(message) < 1000
    assert len(proxy.requests("/v2/x/")) == 1


@pytest.mark.timeout(30)
def test_unknown_blob_is_a_404_registry_error(proxy: FaultProxy, blob: Blob) -> None:
    missing = blob.path.replace(blob.digest, "sha256:" + "0" * 64)
    with Transport(policy=quick_policy()) as transport, pytest.raises(RegistryError) as caught:
        transport.get(proxy.url + missing)
    assert caught.value.status == 404 and len(proxy.requests(missing)) == 1


@pytest.mark.timeout(30)
def test_get_bytes_refuses_bodies_over_the_cap(proxy: FaultProxy, blob: Blob) -> None:
    with Transport(policy=quick_policy()) as transport:
        body, response = transport.get_bytes(proxy.url + blob.path, max_bytes=SIZE)
        assert body == blob.data and response.status_code == 200
        with pytest.raises(BodyTooLargeError, match="cap"):
            transport.get_bytes(proxy.url + blob.path, max_bytes=SIZE - 1)


@pytest.mark.timeout(30)
def test_connection_refused_is_a_connect_error(blob: Blob) -> None:
    with FaultProxy("http://127.0.0.1:9") as dead:
        url = dead.url
    with Transport(policy=quick_policy(max_attempts=2)) as transport, pytest.raises(ConnectError):
        transport.get(url + blob.path)


# --- redirects --------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_cross_host_redirect_works_without_authorization(
    oci_registry: RegistryServer, oci_registry_auth: RegistryServer, tmp_path: Path
) -> None:
    creds = (REGISTRY_USER, REGISTRY_PASSWORD)
    blob = random_blob(oci_registry_auth, "transport/redirect", SIZE, auth=creds)
    # The "storage": the plain registry holds the same bytes under the same digest.
    from transport_helpers import push_blob

    push_blob(oci_registry, "transport/redirect", blob.data)
    with FaultProxy(oci_registry_auth.url) as front, FaultProxy(oci_registry.url, host="127.0.0.1") as storage:
        storage_url = f"http://localhost:{storage.port}"
        front.add("redirect", blob.path, location=storage_url)
        auth = RegistryAuth(front.host, username=REGISTRY_USER, password=REGISTRY_PASSWORD)
        with Transport(policy=quick_policy(), auth=auth) as transport:
            transport.get(front.url + "/v2/").close()  # the basic challenge is answered once
            counter = ByteCounter()
            result = download_file(transport,
                front.url + blob.path, digest=blob.digest, size=blob.size,
                partial_path=tmp_path / "p", counter=counter,
                headers={"Authorization": "Bearer caller-secret", "X-Trace": "1"},
            )
        assert result.read_bytes() == blob.data
        sent_front = front.requests(blob.path)
        sent_storage = storage.requests(blob.path)
        assert len(sent_front) == 1 and sent_front[0].status == 307
        assert sent_front[0].headers.get("Authorization", "").startswith("Basic ")
        assert len(sent_storage) == 1 and sent_storage[0].status == 200
        assert "Authorization" not in sent_storage[0].headers
        assert sent_storage[0].headers.get("X-Trace") == "1"


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("hops", "ok"), [(10, True), (11, False)])
def test_at_most_ten_redirects(proxy: FaultProxy, blob: Blob, hops: int, ok: bool) -> None:
    proxy.add("redirect", blob.path, location=proxy.url, times=hops)
    with Transport(policy=quick_policy()) as transport:
        if ok:
            assert transport.get(proxy.url + blob.path).content == blob.data
            assert len(proxy.requests(blob.path)) == hops + 1
        else:
            with pytest.raises(InsecureTransportError, match="more than 10 redirects"):
                transport.get(proxy.url + blob.path)
            assert len(proxy.requests(blob.path)) == 11


@pytest.mark.timeout(60)
def test_redirect_from_https_to_http_is_refused(
    oci_registry: RegistryServer, blob: Blob, tmp_path: Path
) -> None:
    tls = make_tls(tmp_path / "tls")
    with FaultProxy(oci_registry.url) as plain, FaultProxy(
        oci_registry.url, tls=(tls.server_cert, tls.server_key)
    ) as secure:
        secure.add("redirect", blob.path, location=plain.url)
        auth = RegistryAuth(secure.host, username="u", password="p")
        # Even with http allowed, https -> http is never followed.
        with Transport(policy=quick_policy(), verify=tls.ca_cert, auth=auth) as transport, pytest.raises(
            InsecureTransportError, match="from https"
        ):
            transport.get(secure.url + blob.path)
        assert len(secure.requests(blob.path)) == 1
        assert plain.requests() == []


# --- plain http and TLS -------------------------------------------------------------


@pytest.mark.timeout(30)
def test_plain_http_is_refused_unless_allowed(proxy: FaultProxy, blob: Blob, tmp_path: Path) -> None:
    auth = RegistryAuth(proxy.host, username=REGISTRY_USER, password=REGISTRY_PASSWORD)
    with Transport(policy=quick_policy(allow_http=False), auth=auth) as transport:
        with pytest.raises(InsecureTransportError, match="allows only https"):
            transport.get(proxy.url + blob.path, headers={"Authorization": "Basic eDp5"})
        with pytest.raises(InsecureTransportError):
            download_file(transport, proxy.url + blob.path, digest=blob.digest, size=blob.size,
                               partial_path=tmp_path / "p")
    assert proxy.requests() == []  # not a byte, let alone a credential, went out


@pytest.mark.timeout(60)
def test_tls_registry_with_its_ca_file(oci_registry_tls: RegistryServer, tmp_path: Path) -> None:
    assert oci_registry_tls.ca_file is not None
    blob = random_blob(oci_registry_tls, "transport/tls", SIZE)
    policy = quick_policy(allow_http=False)
    with Transport(policy=policy, verify=oci_registry_tls.ca_file) as transport:
        result = download_file(transport,
            oci_registry_tls.url + blob.path, digest=blob.digest, size=blob.size, partial_path=tmp_path / "p"
        )
    assert result.read_bytes() == blob.data
    sleeps = Sleeps()
    with Transport(policy=policy, sleep=sleeps) as transport, pytest.raises(ConnectError, match="tls_verify=PATH"):
        transport.get(oci_registry_tls.url + blob.path)
    assert sleeps == []  # a certificate failure is not retried


def test_missing_ca_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="CA file"):
        Transport(verify=tmp_path / "nope.crt")


@pytest.mark.timeout(30)
def test_basic_auth_against_the_htpasswd_registry(oci_registry_auth: RegistryServer) -> None:
    creds = (REGISTRY_USER, REGISTRY_PASSWORD)
    blob = random_blob(oci_registry_auth, "transport/basic", SIZE, auth=creds)
    url = oci_registry_auth.url + blob.path
    good = RegistryAuth(oci_registry_auth.host, username=REGISTRY_USER, password=REGISTRY_PASSWORD)
    with Transport(policy=quick_policy(), auth=good) as transport:
        assert transport.get(url).content == blob.data
    bad = RegistryAuth(oci_registry_auth.host, username=REGISTRY_USER, password="wrong")
    with Transport(policy=quick_policy(), auth=bad) as transport, pytest.raises(RegistryAuthError) as caught:
        transport.get(url)
    assert caught.value.status == 401 and "wrong" not in str(caught.value)
    with Transport(policy=quick_policy()) as transport, pytest.raises(RegistryAuthError):
        transport.get(url)


@pytest.mark.timeout(30)
def test_credentials_go_only_to_the_registry_they_belong_to(
    oci_registry_auth: RegistryServer, proxy: FaultProxy, blob: Blob
) -> None:
    auth = RegistryAuth(oci_registry_auth.host, username=REGISTRY_USER, password=REGISTRY_PASSWORD)
    with Transport(policy=quick_policy(), auth=auth) as transport:
        transport.get(oci_registry_auth.url + "/v2/").close()
        # Same transport, another server (e.g. the Doras server): no registry credentials.
        assert transport.get(proxy.url + blob.path).content == blob.data
    assert all("Authorization" not in r.headers for r in proxy.requests())


@pytest.mark.timeout(30)
def test_get_bytes_abandons_a_trickling_body(proxy: FaultProxy, blob: Blob) -> None:
    proxy.add("trickle", blob.path, interval_s=0.05)
    policy = quick_policy(min_bytes_per_s=1000.0, throughput_window_s=0.5, max_attempts=2)
    with Transport(policy=policy) as transport, pytest.raises(TransferTimeoutError, match="slower than"):
        transport.get_bytes(proxy.url + blob.path, max_bytes=SIZE)
    assert len(proxy.requests(blob.path)) == 2
    proxy.wait_idle()
    assert proxy.bytes_sent(blob.path) < 1000  # each attempt abandoned within its first windows


@pytest.mark.timeout(30)
def test_get_bytes_retries_a_cut_body(proxy: FaultProxy, blob: Blob) -> None:
    proxy.add("drop", blob.path, after_bytes=1000, times=1)
    with Transport(policy=quick_policy()) as transport:
        body, _ = transport.get_bytes(proxy.url + blob.path, max_bytes=SIZE)
    assert body == blob.data and len(proxy.requests(blob.path)) == 2


@pytest.mark.timeout(30)
def test_head_resolves_a_blob_and_retries(proxy: FaultProxy, blob: Blob) -> None:
    proxy.add("status", blob.path, status=503, times=1)
    with Transport(policy=quick_policy()) as transport:
        response = transport.head(proxy.url + blob.path)
        assert response.headers["Docker-Content-Digest"] == blob.digest
        assert int(response.headers["Content-Length"]) == blob.size
        with pytest.raises(RegistryError) as caught:
            transport.head(proxy.url + blob.path.replace(blob.digest, "sha256:" + "1" * 64))
        assert caught.value.status == 404
    assert [(r.method, r.status) for r in proxy.requests(blob.path)] == [("HEAD", 503), ("HEAD", 200)]
