"""EdgeClient against the project's Doras-compatible server and the real docker-registry,
with artifacts pushed by the real oras CLI."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from doras_oras.algorithms import Compression, Patch
from doras_oras.backoff import ExponentialBackoffWithJitter
from doras_oras.descriptor import digest_of
from doras_oras.edgeapi import BasicAuth, BearerAuth, EdgeClient
from doras_oras.errors import (
    BackoffExhausted,
    ConnectError,
    DorasServerError,
    ImagesIdenticalError,
    InsecureTransportError,
    InvalidReferenceError,
    NotFoundError,
    UnauthorizedError,
)
from doras_oras.reference import Reference
from doras_oras.testing.faultproxy import FaultProxy
from doras_oras.testing.pytest_plugin import REGISTRY_PASSWORD, REGISTRY_USER, DorasServerFactory
from doras_oras.testing.registry import RegistryServer
from doras_oras.testing.server import DorasServer
from doras_oras.transport import TransferPolicy
from tests.edgeapi_helpers import RequestsFetcher


def fast_backoff() -> ExponentialBackoffWithJitter:
    return ExponentialBackoffWithJitter(base_delay_s=0.02, max_delay_s=0.2, max_attempts=200)


@dataclass
class Pushed:
    repo: str
    from_ref: Reference   # registry/repo@digest of v1
    to_tag: Reference     # registry/repo:v2
    to_digest: str
    from_layer: bytes
    to_layer: bytes


def push_two_versions(registry: RegistryServer, oras: str, tmp_path: Path, *,
                      extra: tuple[str, ...] = ()) -> Pushed:
    """Push a file in two versions with the oras CLI (uncompressed layer, as users do)."""
    repo = f"edge-{uuid.uuid4().hex[:10]}"
    base = bytes(range(256)) * 400
    versions = {"v1": base, "v2": base[:50_000] + b"changed in v2" + base[50_000:]}
    flags = ["--plain-http"] if not registry.tls else ["--ca-file", str(registry.ca_file)]
    for tag, content in versions.items():
        work = tmp_path / tag
        work.mkdir()
        (work / "data.bin").write_bytes(content)
        subprocess.run([oras, "push", *flags, *extra, f"{registry.host}/{repo}:{tag}", "data.bin"],
                       cwd=work, check=True, capture_output=True, timeout=60)
    fetcher = fetcher_for(registry)
    digests = {}
    for tag in versions:
        body, _ctype = fetcher.fetch_manifest(Reference.parse(f"{registry.host}/{repo}:{tag}"))
        digests[tag] = digest_of(body)
    return Pushed(
        repo=repo,
        from_ref=Reference.parse(f"{registry.host}/{repo}@{digests['v1']}"),
        to_tag=Reference.parse(f"{registry.host}/{repo}:v2"),
        to_digest=digests["v2"],
        from_layer=versions["v1"],
        to_layer=versions["v2"],
    )


def fetcher_for(registry: RegistryServer) -> RequestsFetcher:
    auth = (REGISTRY_USER, REGISTRY_PASSWORD) if registry.username else None
    verify: bool | str = str(registry.ca_file) if registry.ca_file else True
    return RequestsFetcher(registry.url, auth=auth, verify=verify)


def client_for(server: DorasServer, **kw: object) -> EdgeClient:
    kw.setdefault("backoff", fast_backoff)
    return EdgeClient(server.url, allow_http=True, timeout_s=30, **kw)  # type: ignore[arg-type]


def bspatch(old: bytes, patch: bytes, tmp_path: Path) -> bytes:
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "patch").write_bytes(patch)
    subprocess.run(["bspatch", str(tmp_path / "old"), str(tmp_path / "new"), str(tmp_path / "patch")],
                   check=True, timeout=60)
    return (tmp_path / "new").read_bytes()


def test_202_then_200_and_the_stream_patches_v1_into_v2(
        doras_server_factory: DorasServerFactory, oci_registry: RegistryServer, oras_cli: str,
        tmp_path: Path) -> None:
    pushed = push_two_versions(oci_registry, oras_cli, tmp_path)
    server = doras_server_factory(build_delay_s=0.3)
    edge = client_for(server)
    assert edge.read_delta_async(pushed.from_ref, pushed.to_tag, ["bsdiff"]) == (None, False)
    response = edge.read_delta(pushed.from_ref, pushed.to_tag, ["bsdiff"], deadline_s=60)
    assert response.target_image.digest == pushed.to_digest
    assert response.delta_image.same_repository(pushed.to_tag)
    again, exists = edge.read_delta_async(pushed.from_ref, pushed.to_tag, ["bsdiff"])
    assert exists and again == response  # the stored delta is reused

    fetcher = fetcher_for(oci_registry)
    descriptor, algorithm, stream = edge.read_delta_as_stream(
        pushed.from_ref, pushed.to_tag, ["bsdiff"], fetcher)
    data = stream.read()
    assert (algorithm.patch, algorithm.compression) == (Patch.BSDIFF, Compression.NONE)
    assert "sha256:" + hashlib.sha256(data).hexdigest() == descriptor.digest and len(data) == descriptor.size
    assert bspatch(pushed.from_layer, data, tmp_path) == pushed.to_layer


def test_blocking_call_with_digest_to_and_zstd(doras_server: DorasServer, oci_registry: RegistryServer,
                                               oras_cli: str, tmp_path: Path) -> None:
    pushed = push_two_versions(oci_registry, oras_cli, tmp_path)
    to_digest = pushed.to_tag.with_digest(pushed.to_digest)
    edge = client_for(doras_server)
    response = edge.read_delta(pushed.from_ref, to_digest, ["bsdiff", "zstd"], deadline_s=60)
    assert response.target_image == to_digest
    descriptor, algorithm, stream = edge.read_delta_as_stream(
        pushed.from_ref, to_digest, ["bsdiff", "zstd"], fetcher_for(oci_registry))
    assert algorithm.media_type == "application/bsdiff+zstd" == descriptor.media_type
    data = stream.read()
    assert digest_of(data) == descriptor.digest


def test_bsdiff_even_when_not_accepted_is_returned_for_the_caller_to_check(
        doras_server: DorasServer, oci_registry: RegistryServer, oras_cli: str, tmp_path: Path) -> None:
    pushed = push_two_versions(oci_registry, oras_cli, tmp_path)
    _d, algorithm, stream = client_for(doras_server).read_delta_as_stream(
        pushed.from_ref, pushed.to_tag, ["tardiff", "gzip"], fetcher_for(oci_registry), deadline_s=60)
    assert (algorithm.patch, algorithm.compression) == (Patch.BSDIFF, Compression.GZIP)
    stream.read()


def test_identical_images(doras_server: DorasServer, oci_registry: RegistryServer, oras_cli: str,
                          tmp_path: Path) -> None:
    pushed = push_two_versions(oci_registry, oras_cli, tmp_path)
    with pytest.raises(ImagesIdenticalError):
        client_for(doras_server).read_delta_async(pushed.from_ref, pushed.to_tag.with_tag("v1"))
    with pytest.raises(ImagesIdenticalError):
        client_for(doras_server).read_delta(pushed.from_ref, pushed.from_ref)


def test_unknown_repository(doras_server: DorasServer, oci_registry: RegistryServer) -> None:
    digest = "sha256:" + "12" * 32
    with pytest.raises(NotFoundError) as info:
        client_for(doras_server).read_delta_async(f"{oci_registry.host}/nope@{digest}",
                                                  f"{oci_registry.host}/nope:v2")
    assert info.value.status == 404 and info.value.message == "failed to resolve"
    assert info.value.context == f"{oci_registry.host}/nope@{digest}"


def test_from_as_a_tag_refused_locally_and_by_the_server(
        doras_server: DorasServer, oci_registry: RegistryServer, oras_cli: str, tmp_path: Path) -> None:
    pushed = push_two_versions(oci_registry, oras_cli, tmp_path)
    edge = client_for(doras_server)
    from_tag = str(pushed.to_tag.with_tag("v1"))
    with pytest.raises(InvalidReferenceError, match="digest reference"):
        edge.read_delta_async(from_tag, pushed.to_tag)
    # what the server says when a client does not check
    with pytest.raises(DorasServerError) as info:
        edge._send_query([("from_digest", from_tag), ("to_tag", str(pushed.to_tag))], oci_registry.host)
    assert (info.value.status, info.value.message, info.value.context) == (400, "bad request", "expected digest")


def test_different_repositories(doras_server: DorasServer, oci_registry: RegistryServer, oras_cli: str,
                                tmp_path: Path) -> None:
    pushed = push_two_versions(oci_registry, oras_cli, tmp_path)
    with pytest.raises(DorasServerError) as info:
        client_for(doras_server).read_delta_async(pushed.from_ref, f"{oci_registry.host}/other-repo:v2")
    assert info.value.status == 400 and info.value.context == "images are not in the same repository"


def test_required_client_auth(doras_server_factory: DorasServerFactory, oci_registry: RegistryServer,
                              oras_cli: str, tmp_path: Path) -> None:
    pushed = push_two_versions(oci_registry, oras_cli, tmp_path)
    server = doras_server_factory(require_client_auth=True)
    with pytest.raises(UnauthorizedError) as info:
        client_for(server).read_delta(pushed.from_ref, pushed.to_tag)
    assert (info.value.status, info.value.message) == (401, "unauthorized")
    response = client_for(server, auth=BearerAuth("junk")).read_delta(pushed.from_ref, pushed.to_tag,
                                                                      deadline_s=60)
    assert response.target_image.digest == pushed.to_digest


def test_htpasswd_registry_with_basic_credentials_passed_through(
        doras_server_factory: DorasServerFactory, oci_registry_auth: RegistryServer, oras_cli: str,
        tmp_path: Path) -> None:
    pushed = push_two_versions(oci_registry_auth, oras_cli, tmp_path,
                               extra=("-u", REGISTRY_USER, "-p", REGISTRY_PASSWORD))
    server = doras_server_factory(registry=oci_registry_auth)
    with pytest.raises(UnauthorizedError):
        client_for(server).read_delta(pushed.from_ref, pushed.to_tag)
    with pytest.raises(UnauthorizedError):
        client_for(server, auth=BasicAuth(REGISTRY_USER, "wrong")).read_delta(pushed.from_ref, pushed.to_tag)
    edge = client_for(server, auth=(REGISTRY_USER, REGISTRY_PASSWORD))
    _d, _a, stream = edge.read_delta_as_stream(pushed.from_ref, pushed.to_tag, ["bsdiff"],
                                               fetcher_for(oci_registry_auth), deadline_s=60)
    assert bspatch(pushed.from_layer, stream.read(), tmp_path) == pushed.to_layer


def test_tls_registry_with_ca_file(doras_server_factory: DorasServerFactory,
                                   oci_registry_tls: RegistryServer, oras_cli: str, tmp_path: Path) -> None:
    pushed = push_two_versions(oci_registry_tls, oras_cli, tmp_path)
    server = doras_server_factory(registry=oci_registry_tls)
    _d, _a, stream = client_for(server).read_delta_as_stream(
        pushed.from_ref, pushed.to_tag, ["bsdiff"], fetcher_for(oci_registry_tls), deadline_s=60)
    assert bspatch(pushed.from_layer, stream.read(), tmp_path) == pushed.to_layer


def test_a_build_that_never_finishes_exhausts_the_backoff(
        doras_server_factory: DorasServerFactory, oci_registry: RegistryServer, oras_cli: str,
        tmp_path: Path) -> None:
    pushed = push_two_versions(oci_registry, oras_cli, tmp_path)
    server = doras_server_factory(fail_builds=True)
    sleeps: list[float] = []
    factory: Callable[[], ExponentialBackoffWithJitter] = lambda: ExponentialBackoffWithJitter(  # noqa: E731
        base_delay_s=0.01, max_delay_s=0.05, max_attempts=4, sleep=sleeps.append)
    with pytest.raises(BackoffExhausted, match="after 5 requests"):
        client_for(server, backoff=factory).read_delta(pushed.from_ref, pushed.to_tag)
    assert len(sleeps) == 4


def test_cli_against_the_server(doras_server: DorasServer, oci_registry: RegistryServer, oras_cli: str,
                                tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    from doras_oras.cli import main
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker"))
    pushed = push_two_versions(oci_registry, oras_cli, tmp_path)
    argv = ["delta", "--from", str(pushed.from_ref), "--to", str(pushed.to_tag), "--server",
            doras_server.url, "--json", "--accept", "bsdiff"]
    first = main([*argv, "--async"])
    out = json.loads(capsys.readouterr().out)
    assert (first, out) == (4, {"status": "pending"})
    assert main([*argv, "--timeout", "60"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "ready" and Reference.parse(out["target_image"]).digest == pushed.to_digest
    assert main(["delta", "--from", str(pushed.from_ref), "--to", str(pushed.from_ref), "--server",
                 doras_server.url]) == 3


def test_the_registry_layer_as_the_content_fetcher(doras_server: DorasServer, oci_registry: RegistryServer,
                                                   oras_cli: str, tmp_path: Path) -> None:
    from doras_oras.registry import DeltaRegistry

    pushed = push_two_versions(oci_registry, oras_cli, tmp_path)
    registry = DeltaRegistry(insecure=True)
    descriptor, algorithm, stream = client_for(doras_server).read_delta_as_stream(
        pushed.from_ref, pushed.to_tag, ["bsdiff", "gzip"], registry, deadline_s=60)
    assert algorithm.media_type == "application/bsdiff+gzip"
    assert bspatch(pushed.from_layer, gzip.decompress(stream.read()), tmp_path) == pushed.to_layer
    assert registry.bytes_received >= descriptor.size


# --- the seed's three calls, as a Go user makes them ------------------------------------------


def test_the_three_go_calls_from_url_allow_http_and_auth_alone(
        doras_server_factory: DorasServerFactory, oci_registry_auth: RegistryServer, oras_cli: str,
        tmp_path: Path) -> None:
    """``EdgeClient(url, allow_http, auth)`` and then ``ReadDeltaAsync``, ``ReadDelta`` and
    ``ReadDeltaAsStream(from, to, accepted)``, with nothing else: the client reads the delta from
    the registry itself, with its own credentials and TLS settings (no fetcher)."""
    server = doras_server_factory(registry=oci_registry_auth, require_client_auth=True, build_delay_s=0.3)
    pushed = push_two_versions(oci_registry_auth, oras_cli, tmp_path,
                               extra=("-u", REGISTRY_USER, "-p", REGISTRY_PASSWORD))
    from_image, to_image = str(pushed.from_ref), str(pushed.to_tag)
    edge = EdgeClient(server.url, True, BasicAuth(REGISTRY_USER, REGISTRY_PASSWORD))
    edge.backoff = fast_backoff
    response, exists = edge.read_delta_async(from_image, to_image, ["bsdiff", "zstd"])
    assert (response, exists) == (None, False)  # 202: being built
    ready = edge.read_delta(from_image, to_image, ["bsdiff", "zstd"])
    # the answer's fields are the strings the server sent (as the Go struct's)
    target = f"{oci_registry_auth.host}/{pushed.repo}@{pushed.to_digest}"
    assert ready.target_image == target and isinstance(ready.target_image, str)
    assert ready.to_json()["target_image"] == target
    descriptor, algorithm, stream = edge.read_delta_as_stream(from_image, to_image, ["bsdiff", "zstd"])
    with stream:
        delta = stream.read()
    assert algorithm.value == "bsdiff+zstd" and descriptor.size == len(delta)
    assert digest_of(delta) == descriptor.digest
    import zstandard

    assert bspatch(pushed.from_layer, zstandard.ZstdDecompressor().decompressobj().decompress(delta),
                   tmp_path) == pushed.to_layer
    # the registry requires basic auth (htpasswd): the client's own read of the delta manifest
    # and blob could only succeed with the credentials it was made with
    edge.close()


# EdgeClient through the transport: the Doras-compatible server behind the fault proxy.

DELTA = "/api/v1/delta/"


@dataclass
class Proxied:
    pushed: Pushed
    server: DorasServer
    proxy: FaultProxy
    edge: EdgeClient


@pytest.fixture
def proxied(doras_server_factory: DorasServerFactory, oci_registry: RegistryServer, oras_cli: str,
            tmp_path: Path) -> Iterator[Proxied]:
    """Two versions pushed with the oras CLI; a client of the test server through a fault proxy."""
    pushed = push_two_versions(oci_registry, oras_cli, tmp_path)
    server = doras_server_factory()
    with FaultProxy(server.url) as proxy:
        edge = EdgeClient(proxy.url, allow_http=True, timeout_s=10, backoff=client_for(server).backoff)
        yield Proxied(pushed, server, proxy, edge)


@pytest.mark.timeout(60)
def test_429_and_503_from_the_server_are_retried_with_retry_after(proxied: Proxied) -> None:
    pushed, proxy, edge = proxied.pushed, proxied.proxy, proxied.edge
    proxy.add("status", DELTA, status=429, retry_after="1", times=1)
    proxy.add("status", DELTA, status=503, retry_after="1", times=1)
    waits: list[float] = []
    edge.transport._sleep = waits.append  # the transport's waits, counted instead of slept
    response = edge.read_delta(pushed.from_ref, pushed.to_tag, ["bsdiff"], deadline_s=30)
    assert waits == [1.0, 1.0]  # both Retry-After: 1 honoured
    assert response.target_image.digest == pushed.to_digest
    statuses = [r.status for r in proxy.requests(DELTA)]
    assert statuses[:2] == [429, 503] and statuses[-1] == 200


@pytest.mark.timeout(60)
def test_a_503_storm_that_does_not_end_raises_the_last_answer_after_three_attempts(proxied: Proxied) -> None:
    pushed, proxy, edge = proxied.pushed, proxied.proxy, proxied.edge
    # the last answer, as the Doras client maps it
    proxy.add("status", DELTA, status=503, retry_after="0",
              body=b'{"error":{"code":503,"message":"overloaded"}}')
    with pytest.raises(DorasServerError, match="overloaded") as info:
        edge.read_delta_async(pushed.from_ref, pushed.to_tag, ["bsdiff"])
    assert info.value.status == 503
    assert len(proxy.requests(DELTA)) == 3  # the client's three attempts


@pytest.mark.timeout(60)
def test_a_500_from_the_server_is_its_final_word_and_not_retried(proxied: Proxied) -> None:
    pushed, proxy, edge = proxied.pushed, proxied.proxy, proxied.edge
    # 500 is the server's final word (e.g. incompatible artifacts)
    proxy.add("status", DELTA, status=500, body=b'{"error":{"code":500,"message":"boom"}}')
    with pytest.raises(DorasServerError, match="boom"):
        edge.read_delta_async(pushed.from_ref, pushed.to_tag, ["bsdiff"])
    assert len(proxy.requests(DELTA)) == 1


@pytest.mark.timeout(60)
def test_drops_are_retried(proxied: Proxied) -> None:
    pushed, proxy, edge = proxied.pushed, proxied.proxy, proxied.edge
    proxy.add("reset", DELTA, times=2)
    response = edge.read_delta(pushed.from_ref, pushed.to_tag, ["bsdiff"], deadline_s=30)
    assert response.target_image.digest == pushed.to_digest
    assert [r.fault for r in proxy.requests(DELTA)][:2] == ["reset", "reset"]


@pytest.mark.timeout(60)
def test_drops_that_do_not_end_give_up_after_three_attempts(proxied: Proxied) -> None:
    proxied.proxy.add("reset", DELTA)
    with pytest.raises(ConnectError, match="gave up after 3 attempts"):
        proxied.edge.read_delta_async(proxied.pushed.from_ref, proxied.pushed.to_tag, ["bsdiff"])


@pytest.mark.timeout(60)
def test_cross_host_redirects_are_refused(proxied: Proxied) -> None:
    pushed, proxy, edge = proxied.pushed, proxied.proxy, proxied.edge
    with FaultProxy(proxied.server.url) as other:
        proxy.add("redirect", DELTA, location=other.url)
        with pytest.raises(InsecureTransportError, match="another host"):
            edge.read_delta_async(pushed.from_ref, pushed.to_tag, ["bsdiff"])
        assert other.requests() == []  # the server's credentials never left for another host


@pytest.mark.timeout(60)
def test_a_callers_policy_sets_the_attempts_and_the_clients_safety_rules_stay(proxied: Proxied) -> None:
    pushed, proxy = proxied.pushed, proxied.proxy
    proxy.add("status", DELTA, status=503, retry_after="0")
    policy = TransferPolicy(max_attempts=2, wait_initial_s=0.01, allow_http=False, cross_host_redirects=True)
    strict = EdgeClient(proxy.url, allow_http=True, policy=policy)
    assert strict.policy.allow_http and not strict.policy.cross_host_redirects
    with pytest.raises(DorasServerError):
        strict.read_delta_async(pushed.from_ref, pushed.to_tag, ["bsdiff"])
    assert len(proxy.requests(DELTA)) == 2

