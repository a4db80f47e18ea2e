"""Fixtures shared by several test modules (the real peers come from the doras_oras pytest plugin)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from token_registry import JWTIssuer, TokenRegistry

from doras_oras.testing.faultproxy import FaultProxy
from doras_oras.testing.registry import RegistryServer, make_tls


@pytest.fixture
def proxy(oci_registry: RegistryServer) -> Iterator[FaultProxy]:
    """A fault-injecting proxy in front of the session's registry (no faults until added)."""
    with FaultProxy(oci_registry.url) as p:
        yield p


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenRegistry]:
    """The real registry with ``auth: token`` and its token server, per test module."""
    keys = make_tls(tmp_path_factory.mktemp("jwt"))
    issuer = JWTIssuer(keys)
    issuer.start()
    try:
        with TokenRegistry(issuer) as registry:
            yield registry
    finally:
        issuer.server.shutdown()
        issuer.server.server_close()
