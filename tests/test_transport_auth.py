"""Bearer-token auth: the token dance, renewal, realm checks, docker config credentials."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest
from token_gate import TokenGate
from transport_helpers import Blob, download_file, quick_policy, random_blob

from doras_oras.auth import CONFIG_CAP, TOKEN_BODY_CAP, RegistryAuth, parse_challenge
from doras_oras.errors import BodyTooLargeError, InsecureTransportError, RegistryAuthError
from doras_oras.testing.pytest_plugin import REGISTRY_PASSWORD, REGISTRY_USER
from doras_oras.testing.registry import RegistryServer, make_tls
from doras_oras.transport import ByteCounter, Transport

USERS = {"alice": "wonderland"}


@pytest.fixture(scope="module")
def blob(oci_registry: RegistryServer) -> Blob:
    return random_blob(oci_registry, "transport/token", 300_000)


@pytest.mark.timeout(30)
def test_token_dance_with_basic_credentials(oci_registry: RegistryServer, blob: Blob, tmp_path: Path) -> None:
    with TokenGate(oci_registry.url, users=USERS) as gate:
        auth = RegistryAuth(gate.host, username="alice", password="wonderland")
        with Transport(policy=quick_policy(), auth=auth) as transport:
            counter = ByteCounter()
            result = download_file(transport, gate.url + blob.path, digest=blob.digest, size=blob.size,
                                        partial_path=tmp_path / "p", counter=counter)
            assert result.read_bytes() == blob.data
            # A second request reuses the token.
            assert transport.get(gate.url + blob.path).content == blob.data
        assert auth.tokens_fetched == 1
        tokens = gate.token_requests()
        assert len(tokens) == 1 and tokens[0].authorization == "Basic " + base64.b64encode(
            b"alice:wonderland").decode()
        assert "scope=repository%3Atransport%2Ftoken%3Apull" in tokens[0].path
        blob_requests = [s for s in gate.seen if s.path == blob.path]
        assert [s.status for s in blob_requests] == [401, 200, 200]
        assert blob_requests[0].authorization is None
        assert all((s.authorization or "").startswith("Bearer tok-1-") for s in blob_requests[1:])


@pytest.mark.timeout(30)
def test_a_token_answer_over_the_cap_is_refused(oci_registry: RegistryServer, blob: Blob) -> None:
    with TokenGate(oci_registry.url, users=USERS) as gate:
        gate.token_padding = TOKEN_BODY_CAP  # the whole answer is just over 1 MiB
        auth = RegistryAuth(gate.host, username="alice", password="wonderland")
        with Transport(policy=quick_policy(), auth=auth) as transport, \
                pytest.raises(BodyTooLargeError, match=r"/token"):
            transport.get(gate.url + blob.path)
        assert auth.tokens_fetched == 0
        assert not any((s.authorization or "").startswith("Bearer ") for s in gate.seen)
        gate.token_padding = TOKEN_BODY_CAP - 1024  # just under: accepted
        with Transport(policy=quick_policy(), auth=auth) as transport:
            assert transport.get(gate.url + blob.path).content == blob.data
        assert auth.tokens_fetched == 1


@pytest.mark.timeout(30)
def test_anonymous_token(oci_registry: RegistryServer, blob: Blob) -> None:
    with TokenGate(oci_registry.url, anonymous=True) as gate:
        auth = RegistryAuth(gate.host)
        with Transport(policy=quick_policy(), auth=auth) as transport:
            assert transport.get(gate.url + blob.path).content == blob.data
        assert [t.authorization for t in gate.token_requests()] == [None]


@pytest.mark.timeout(30)
def test_expired_token_is_renewed_once(oci_registry: RegistryServer, blob: Blob) -> None:
    with TokenGate(oci_registry.url, users=USERS) as gate:
        auth = RegistryAuth(gate.host, username="alice", password="wonderland")
        with Transport(policy=quick_policy(), auth=auth) as transport:
            assert transport.get(gate.url + blob.path).content == blob.data
            gate.expire_all()  # the token expires mid-pull
            assert transport.get(gate.url + blob.path).content == blob.data
            assert auth.tokens_fetched == 2
            # A registry that refuses even a fresh token: one renewal, then a clear error.
            gate.reject_all = True
            with pytest.raises(RegistryAuthError) as caught:
                transport.get(gate.url + blob.path)
            assert caught.value.status == 401
        assert auth.tokens_fetched == 3 and len(gate.token_requests()) == 3


@pytest.mark.timeout(30)
def test_wrong_password_at_the_token_server(oci_registry: RegistryServer, blob: Blob) -> None:
    with TokenGate(oci_registry.url, users=USERS) as gate:
        auth = RegistryAuth(gate.host, username="alice", password="looking-glass")
        with Transport(policy=quick_policy(), auth=auth) as transport, pytest.raises(
            RegistryAuthError, match="refused the credentials"
        ) as caught:
            transport.get(gate.url + blob.path)
        assert "looking-glass" not in str(caught.value)
        assert len(gate.token_requests()) == 1


@pytest.mark.timeout(30)
def test_realm_on_another_host_is_refused_unless_allowed(oci_registry: RegistryServer, blob: Blob) -> None:
    with TokenGate(oci_registry.url, users=USERS) as gate:
        gate.realm = f"http://localhost:{gate.port}/token"
        auth = RegistryAuth(gate.host, username="alice", password="wonderland")
        with Transport(policy=quick_policy(), auth=auth) as transport, pytest.raises(
            InsecureTransportError, match="not on the registry's host"
        ):
            transport.get(gate.url + blob.path)
        assert gate.token_requests() == []
        trusting = RegistryAuth(gate.host, username="alice", password="wonderland",
                                allowed_realm_hosts=[f"localhost:{gate.port}"])
        with Transport(policy=quick_policy(), auth=trusting) as transport:
            assert transport.get(gate.url + blob.path).content == blob.data
        assert len(gate.token_requests()) == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("allow_http", [False, True])
def test_plain_http_realm_of_a_tls_registry_is_refused(
    oci_registry: RegistryServer, blob: Blob, tmp_path: Path, allow_http: bool
) -> None:
    tls = make_tls(tmp_path / "tls")
    with TokenGate(oci_registry.url, users=USERS, tls=(tls.server_cert, tls.server_key)) as gate, \
            TokenGate(oci_registry.url, users=USERS) as plain_token_server:
        gate.realm = plain_token_server.realm  # http://127.0.0.1:PORT/token
        auth = RegistryAuth(gate.host, username="alice", password="wonderland")
        policy = quick_policy(allow_http=allow_http)
        with Transport(policy=policy, verify=tls.ca_cert, auth=auth) as transport, pytest.raises(
            InsecureTransportError, match=r"plain.http"
        ):
            transport.get(gate.url + blob.path)
        assert plain_token_server.seen == []
        # Over https the same dance works.
        gate.realm = f"{gate.url}/token"
        with Transport(policy=policy, verify=tls.ca_cert, auth=auth) as transport:
            assert transport.get(gate.url + blob.path).content == blob.data


def test_parse_challenge() -> None:
    scheme, params = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:a/b:pull,push"'
    )
    assert scheme == "bearer"
    assert params == {"realm": "https://auth.example/token", "service": "registry.example",
                      "scope": "repository:a/b:pull,push"}
    assert parse_challenge('Basic realm="x"') == ("basic", {"realm": "x"})


@pytest.mark.timeout(30)
def test_credentials_from_docker_config_and_helper(
    oci_registry_auth: RegistryServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no user config leaks in
    creds = (REGISTRY_USER, REGISTRY_PASSWORD)
    blob = random_blob(oci_registry_auth, "transport/config", 10_000, auth=creds)
    url = oci_registry_auth.url + blob.path
    inline = tmp_path / "inline.json"
    token = base64.b64encode(f"{REGISTRY_USER}:{REGISTRY_PASSWORD}".encode()).decode()
    inline.write_text(json.dumps({"auths": {oci_registry_auth.host: {"auth": token}}}))
    auth = RegistryAuth.from_docker_config(oci_registry_auth.host, configs=[str(inline)])
    assert auth.username == REGISTRY_USER and auth.has_credentials
    with Transport(policy=quick_policy(), auth=auth) as transport:
        assert transport.get(url).content == blob.data

    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-doras-test"
    helper.write_text(
        "#!/bin/sh\nread host\n"
        f"[ \"$host\" = \"{oci_registry_auth.host}\" ] || exit 1\n"
        f"printf '{{\"Username\":\"{REGISTRY_USER}\",\"Secret\":\"{REGISTRY_PASSWORD}\"}}'\n"
    )
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    helped = tmp_path / "helper.json"
    helped.write_text(json.dumps({"credHelpers": {oci_registry_auth.host: "doras-test"}}))
    auth = RegistryAuth.from_docker_config(oci_registry_auth.host, configs=[str(helped)])
    assert auth.password == REGISTRY_PASSWORD
    with Transport(policy=quick_policy(), auth=auth) as transport:
        assert transport.get(url).content == blob.data
    nobody = RegistryAuth.from_docker_config("other.example:5000", configs=[str(helped)])
    assert not nobody.has_credentials


def test_a_docker_config_over_the_cap_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no user config leaks in
    token = base64.b64encode(b"alice:wonderland").decode()
    entry = {"auths": {"registry.example:5000": {"auth": token}}}
    small, big = tmp_path / "small.json", tmp_path / "big.json"
    small.write_text(json.dumps(entry))
    big.write_text(json.dumps({**entry, "filler": "x" * CONFIG_CAP}))  # a valid JSON object, too large
    assert RegistryAuth.from_docker_config("registry.example:5000", configs=[str(small)]).has_credentials
    with caplog.at_level("WARNING", logger="doras_oras.auth"):
        auth = RegistryAuth.from_docker_config("registry.example:5000", configs=[str(big)])
    assert not auth.has_credentials
    assert "under 4 MiB" in caplog.text
