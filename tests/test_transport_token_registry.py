"""Token auth against the real docker-registry configured with ``auth: token``.

The registry trusts a throw-away CA; a small token server written here issues
RS256 JWTs signed with that CA's key (``openssl dgst -sha256 -sign``), with the
certificate in the ``x5c`` header, granting what the requested scope asks for.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from token_registry import SERVICE, TokenRegistry
from transport_helpers import Blob, download_file, push_blob, quick_policy

from doras_oras.auth import RegistryAuth
from doras_oras.errors import Fix, InsecureTransportError, RegistryAuthError
from doras_oras.transport import ByteCounter, Transport

#: The token server runs on another port of the registry's host: trusted only where the test says so.
REALM_HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def blob(token_registry: TokenRegistry) -> Blob:
    scope = "repository:transport/jwt:pull,push"
    token = token_registry.issuer.sign("alice", [scope])
    return push_blob(token_registry, "transport/jwt", os.urandom(500_000),
                     headers={"Authorization": f"Bearer {token}"})


@pytest.mark.timeout(60)
def test_real_registry_token_dance(token_registry: TokenRegistry, blob: Blob, tmp_path: Path) -> None:
    issuer = token_registry.issuer
    before = len(issuer.requests)
    auth = RegistryAuth(token_registry.host, username="alice", password="wonderland",
                        allowed_realm_hosts=[REALM_HOST])
    with Transport(policy=quick_policy(), auth=auth) as transport:
        counter = ByteCounter()
        result = download_file(transport, token_registry.url + blob.path, digest=blob.digest, size=blob.size,
                                    partial_path=tmp_path / "p", counter=counter)
        assert result.read_bytes() == blob.data
        manifest_probe = transport.head(token_registry.url + blob.path)
        assert manifest_probe.headers["Docker-Content-Digest"] == blob.digest
    assert auth.tokens_fetched == 1
    path, authorization = issuer.requests[before]
    query = parse_qs(urlsplit(path).query)
    assert query == {"service": [SERVICE], "scope": ["repository:transport/jwt:pull"]}
    assert authorization is not None and authorization.startswith("Basic ")


@pytest.mark.timeout(60)
def test_real_registry_refuses_without_a_valid_token(token_registry: TokenRegistry, blob: Blob) -> None:
    url = token_registry.url + blob.path
    with Transport(policy=quick_policy()) as transport, pytest.raises(RegistryAuthError) as caught:
        transport.get(url)  # no auth hook: the challenge cannot be answered
    assert caught.value.status == 401
    wrong = RegistryAuth(token_registry.host, username="alice", password="nope", allowed_realm_hosts=[REALM_HOST])
    with Transport(policy=quick_policy(), auth=wrong) as transport, pytest.raises(
        RegistryAuthError, match="refused the credentials"
    ):
        transport.get(url)
    # A token for another repository is not enough: the registry still says 401.
    other = token_registry.issuer.sign("alice", ["repository:someone/else:pull"])
    with Transport(policy=quick_policy()) as transport, pytest.raises(RegistryAuthError):
        transport.get(url, headers={"Authorization": f"Bearer {other}"})


@pytest.mark.timeout(60)
def test_a_realm_on_another_port_of_the_host_gets_no_credentials(token_registry: TokenRegistry, blob: Blob) -> None:
    """The realm is on 127.0.0.1 like the registry, on another port: another origin, refused."""
    issuer = token_registry.issuer
    before = len(issuer.requests)
    auth = RegistryAuth(token_registry.host, username="alice", password="wonderland")
    with Transport(policy=quick_policy(), auth=auth) as transport, pytest.raises(
        InsecureTransportError, match="not on the registry's host and port"
    ) as caught:
        transport.get(token_registry.url + blob.path)
    assert caught.value.fix is Fix.REALM_HOST
    assert issuer.requests[before:] == []  # the basic credentials never left
    assert auth.tokens_fetched == 0
