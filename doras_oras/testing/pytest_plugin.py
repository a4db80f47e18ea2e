"""pytest plugin of doras-oras (entry point ``pytest11``): real peers as fixtures.

Fixtures:

- ``oci_registry``: a session-wide ``docker-registry`` on 127.0.0.1 (plain HTTP);
- ``oci_registry_auth``: one with htpasswd basic auth (user ``doras``, password ``s3cret``);
- ``oci_registry_tls``: one serving HTTPS with a fresh CA (``.ca_file``);
- ``oras_cli``: path of the oras CLI binary (v1.3.6 from scripts/bootstrap.sh).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .registry import RegistryServer, find_tool

REGISTRY_USER = "doras"
REGISTRY_PASSWORD = "s3cret"


@pytest.fixture(scope="session")
def oci_registry() -> Iterator[RegistryServer]:
    with RegistryServer() as server:
        yield server


@pytest.fixture(scope="session")
def oci_registry_auth() -> Iterator[RegistryServer]:
    with RegistryServer(username=REGISTRY_USER, password=REGISTRY_PASSWORD) as server:
        yield server


@pytest.fixture(scope="session")
def oci_registry_tls() -> Iterator[RegistryServer]:
    with RegistryServer(tls=True) as server:
        yield server


@pytest.fixture(scope="session")
def oras_cli() -> str:
    return find_tool("oras")
