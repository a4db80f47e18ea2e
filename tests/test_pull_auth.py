"""Pulls with credentials and TLS: the htpasswd, TLS and token-auth registries (the real docker-registry),
credentials passed on to the Doras server, never to a storage host; library and CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import requests
from token_registry import TokenRegistry
from transport_helpers import push_blob, quick_policy

from doras_oras import DeltaRegistry
from doras_oras.layout import OCILayout
from doras_oras.testing.faultproxy import FaultProxy
from doras_oras.testing.pytest_plugin import REGISTRY_PASSWORD, REGISTRY_USER, DorasServerFactory
from doras_oras.testing.registry import RegistryServer, find_tool
from doras_oras.testing.vectors import doras_vectors, push_recorded
from tests.layout_support import cli, error_json, layout_problems, run, sha256
from tests.pull_support import check_layout, unique

MiB = 1 << 20


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


# --- full pulls: a blob redirected to storage, TLS flags, token auth ------------------


@pytest.mark.timeout(90)
def test_blob_redirected_to_storage_host_never_sees_credentials(
    oci_registry: RegistryServer, oci_registry_auth: RegistryServer, tmp_path: Path
) -> None:
    payload = os.urandom(2 * MiB)
    (tmp_path / "data.bin").write_bytes(payload)
    run(find_tool("oras"), "push", "--plain-http", "-u", REGISTRY_USER, "-p", REGISTRY_PASSWORD,
        f"{oci_registry_auth.host}/net/redir:v1", "data.bin", cwd=tmp_path)
    # "storage": the plain registry holds the same blob at the same path
    run(find_tool("oras"), "push", "--plain-http", f"{oci_registry.host}/net/redir:v1", "data.bin", cwd=tmp_path)
    blob_path = f"/v2/net/redir/blobs/{sha256(payload)}"
    with FaultProxy(oci_registry_auth.url) as front, FaultProxy(oci_registry.url) as storage:
        front.add("redirect", blob_path, location=storage.url)
        config = tmp_path / "docker-config.json"
        import base64

        secret = base64.b64encode(f"{REGISTRY_USER}:{REGISTRY_PASSWORD}".encode()).decode()
        config.write_text(json.dumps({"auths": {front.host: {"auth": secret}}}))
        proc = cli("pull", f"{front.host}/net/redir:v1", "--oci-layout", str(tmp_path / "L"), "--plain-http",
                   "--allow-insecure-auth", "--registry-config", str(config), "--json", timeout=60)
        assert proc.returncode == 0, proc.stderr
        front.wait_idle()
        storage.wait_idle()
        [at_front] = front.requests(blob_path)
        assert at_front.status == 307 and at_front.headers.get("Authorization", "").startswith("Basic ")
        [at_storage] = storage.requests(blob_path)
        assert at_storage.status == 200
        assert all("Authorization" not in r.headers for r in storage.log)
        assert storage.bytes_sent(blob_path) == len(payload)
        assert json.loads(proc.stdout)["stored_digest"].startswith("sha256:")
    assert layout_problems(tmp_path / "L") == []


@pytest.mark.timeout(60)
def test_cli_pull_from_an_auth_registry_without_credentials_is_refused_and_writes_nothing(
    oci_registry_auth: RegistryServer, tmp_path: Path
) -> None:
    (tmp_path / "data.bin").write_bytes(os.urandom(64 * 1024))
    run(find_tool("oras"), "push", "--plain-http", "-u", REGISTRY_USER, "-p", REGISTRY_PASSWORD,
        f"{oci_registry_auth.host}/net/redir-nocreds:v1", "data.bin", cwd=tmp_path)
    # without a config (and no -u) the registry refuses: a clear error, nothing written
    proc = cli("pull", f"{oci_registry_auth.host}/net/redir-nocreds:v1", "--oci-layout", str(tmp_path / "N"),
               "--plain-http", timeout=60)
    assert proc.returncode == 1 and "401" in proc.stderr
    assert not (tmp_path / "N").exists()  # nothing written: no empty layout left behind either


@pytest.fixture
def tls_ref(oci_registry_tls: RegistryServer, tmp_path: Path) -> str:
    """A one-file artifact pushed with the oras CLI to the TLS registry (trusting its CA)."""
    assert oci_registry_tls.ca_file is not None
    (tmp_path / "f.txt").write_text("tls flags\n")
    run(find_tool("oras"), "push", "--ca-file", str(oci_registry_tls.ca_file),
        f"{oci_registry_tls.host}/net/tls:v1", "f.txt", cwd=tmp_path)
    return f"{oci_registry_tls.host}/net/tls:v1"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("case", "text"), [("missing-ca", "missing.crt"), ("insecure-and-ca", "contradict"),
                                            ("deadline-0", "positive")])
def test_cli_tls_flags_are_checked(oci_registry_tls: RegistryServer, tls_ref: str, tmp_path: Path,
                                   case: str, text: str) -> None:
    assert oci_registry_tls.ca_file is not None
    flags = {
        "missing-ca": ["--ca-file", str(tmp_path / "missing.crt")],
        "insecure-and-ca": ["--insecure", "--ca-file", str(oci_registry_tls.ca_file)],
        "deadline-0": ["--deadline", "0"],
    }[case]
    proc = cli("pull", tls_ref, "--oci-layout", str(tmp_path / "L"), *flags)
    assert proc.returncode == 2 and text in proc.stderr


@pytest.mark.timeout(60)
def test_cli_pull_of_a_tls_registry_without_its_ca_is_a_tls_error(tls_ref: str, tmp_path: Path) -> None:
    proc = cli("pull", tls_ref, "--oci-layout", str(tmp_path / "L"))
    assert proc.returncode == 1 and "TLS" in proc.stderr


@pytest.mark.timeout(60)
def test_cli_pull_of_a_tls_registry_with_its_ca_file_and_timeouts(oci_registry_tls: RegistryServer, tls_ref: str,
                                                                  tmp_path: Path) -> None:
    assert oci_registry_tls.ca_file is not None
    proc = cli("pull", tls_ref, "--oci-layout", str(tmp_path / "L"), "--ca-file", str(oci_registry_tls.ca_file),
               "--connect-timeout", "5", "--read-timeout", "5", "--deadline", "60", "--json")
    assert proc.returncode == 0, proc.stderr
    assert layout_problems(tmp_path / "L") == []


# --- token auth (the real registry with ``auth: token``) ----------------------------


def push_with_token(registry: TokenRegistry, repo: str, tag: str, layer: bytes) -> str:
    """Push a one-layer artifact with a push token; return the manifest digest."""
    headers = {"Authorization": f"Bearer {registry.issuer.sign('alice', [f'repository:{repo}:pull,push'])}"}
    push_blob(registry, repo, layer, headers=headers)
    push_blob(registry, repo, b"{}", headers=headers)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.example+type",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(b"{}"), "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(layer),
                    "size": len(layer), "annotations": {"org.opencontainers.image.title": "t.bin"}}],
    }).encode()
    response = requests.put(f"{registry.url}/v2/{repo}/manifests/{tag}", data=manifest, timeout=30,
                            headers={**headers, "Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert response.status_code == 201, response.text
    return sha256(manifest)


@pytest.fixture
def token_artifact(token_registry: TokenRegistry) -> tuple[str, str, bytes]:
    """A 3 MiB one-layer artifact in the token-auth registry: (reference, manifest digest, layer)."""
    layer = os.urandom(3 * MiB)
    digest = push_with_token(token_registry, "net/token", "v1", layer)
    return f"{token_registry.host}/net/token:v1", digest, layer


@pytest.mark.timeout(90)
def test_token_auth_registry_library(token_registry: TokenRegistry, token_artifact: tuple[str, str, bytes],
                                     tmp_path: Path) -> None:
    ref, digest, layer = token_artifact
    issuer = token_registry.issuer
    before = len(issuer.requests)
    client = DeltaRegistry(insecure=True, allow_insecure_auth=True, policy=quick_policy(),
                           allowed_realm_hosts=["127.0.0.1"])  # the token server's port differs
    client.auth.set_basic_auth("alice", "wonderland")
    layout = OCILayout.open(tmp_path / "L")
    assert client.resolve(ref).digest == digest  # HEAD through the token dance
    result = client.pull_full(ref, layout)
    assert result.manifest.digest == digest
    assert layout.blob_path(sha256(layer)).read_bytes() == layer
    assert layout_problems(tmp_path / "L") == []
    asked = issuer.requests[before:]
    assert asked and all((auth or "").startswith("Basic ") for _path, auth in asked)
    assert all("scope=repository%3Anet%2Ftoken%3Apull" in path for path, _auth in asked)
    assert len(asked) == 1  # one token serves the whole pull


def token_cli_args(ref: str, layout: Path) -> list[str]:
    """The CLI's pull of the token registry: --password-stdin, the token server's host allowed."""
    return ["pull", ref, "--oci-layout", str(layout), "--plain-http", "-u", "alice", "--password-stdin",
            "--allow-realm-host", "127.0.0.1", "--json"]


@pytest.mark.timeout(90)
def test_token_auth_cli_refuses_credentials_over_plain_http_without_the_flag(
        token_artifact: tuple[str, str, bytes], tmp_path: Path) -> None:
    proc = cli(*token_cli_args(token_artifact[0], tmp_path / "C"), input_text="wonderland\n", timeout=60)
    assert proc.returncode == 1 and "plain HTTP" in proc.stderr


@pytest.mark.timeout(90)
def test_token_auth_cli_with_password_stdin(token_artifact: tuple[str, str, bytes], tmp_path: Path) -> None:
    ref, digest, _layer = token_artifact
    proc = cli(*token_cli_args(ref, tmp_path / "C"), "--allow-insecure-auth", input_text="wonderland\n", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["stored_digest"] == digest
    assert layout_problems(tmp_path / "C") == []


@pytest.mark.timeout(90)
def test_token_auth_cli_wrong_password_is_refused(token_artifact: tuple[str, str, bytes], tmp_path: Path) -> None:
    ref = token_artifact[0]
    proc = cli("pull", ref, "--oci-layout", str(tmp_path / "W"), "--plain-http", "--allow-insecure-auth",
               "--allow-realm-host", "127.0.0.1", "-u", "alice", "--password-stdin", input_text="wrong\n", timeout=60)
    assert proc.returncode == 1 and "refused the credentials" in proc.stderr


@pytest.mark.timeout(90)
def test_pull_takes_an_identity_token_as_oras_does(token_registry: TokenRegistry, tmp_path: Path) -> None:
    layer = os.urandom(64 * 1024)
    digest = push_with_token(token_registry, "net/identity", "v1", layer)
    ref = f"{token_registry.host}/net/identity:v1"
    before = len(token_registry.issuer.requests)
    base = ["pull", ref, "--plain-http", "--allow-insecure-auth", "--allow-realm-host", "127.0.0.1", "--json"]
    proc = cli(*base, "--oci-layout", str(tmp_path / "A"), "--identity-token-stdin", input_text="refresh-alice-1\n",
               env={"DOCKER_CONFIG": str(tmp_path / "none")}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["to_digest"] == digest
    assert [path.split("?")[0] for path, _auth in token_registry.issuer.requests[before:]] == ["POST /token"]
    wrong = cli(*base, "--oci-layout", str(tmp_path / "B"), "--identity-token", "stale",
                env={"DOCKER_CONFIG": str(tmp_path / "none")}, timeout=60)
    assert wrong.returncode == 1 and "refused the identity token" in wrong.stderr, wrong.stderr
