"""Fixtures shared by several test modules (the real peers come from the doras_oras pytest plugin)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from token_registry import JWTIssuer, TokenRegistry

from doras_oras.testing.faultproxy import FaultProxy
from doras_oras.testing.registry import RegistryServer, make_tls
from tests.pull_support import edit, oras_push_file, payload, unique


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


@pytest.fixture
def versions(oci_registry: RegistryServer, tmp_path: Path) -> tuple[str, bytes, bytes]:
    """A repository with v1 and v2 of one file (``x.bin``: 60,000 bytes, 6 edits), pushed with the oras CLI."""
    repo = unique("versions")
    v1 = payload(60000, 11)
    v2 = edit(v1, 6, 12)
    oras_push_file(oci_registry.host, f"{repo}:v1", tmp_path / "p1", "x.bin", v1)
    oras_push_file(oci_registry.host, f"{repo}:v2", tmp_path / "p2", "x.bin", v2)
    return repo, v1, v2
