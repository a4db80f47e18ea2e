"""pytest plugin of doras-oras (entry point ``pytest11``): real peers as fixtures.

Fixtures:

- ``oci_registry``: a session-wide ``docker-registry`` on 127.0.0.1 (plain HTTP);
- ``oci_registry_auth``: one with htpasswd basic auth (user ``doras``, password ``s3cret``);
- ``oci_registry_tls``: one serving HTTPS with a fresh CA (``.ca_file``);
- ``oras_cli``: path of the oras CLI binary (v1.3.6 from scripts/bootstrap.sh);
- ``doras_server``: a Doras-compatible server (:class:`DorasServer`) in front of
  ``oci_registry``, function scope (a fresh server per test: its counters
  ``builds``/``build_errors`` and knobs belong to that test; starting one costs
  a thread, the registry stays session-wide);
- ``doras_server_factory``: a function ``make(registry=None, **options)`` that
  starts more servers for the test (options of :class:`DorasServer`, e.g.
  ``require_client_auth=True``, ``build_delay_s=0.5``, ``fail_builds=True``;
  ``registry`` defaults to ``oci_registry``, may be ``oci_registry_auth`` or
  ``oci_registry_tls``, whose CA file is then passed on); all are stopped at
  the end of the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from .registry import RegistryServer, find_tool

if TYPE_CHECKING:
    from .server import DorasServer

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


DorasServerFactory = Callable[..., "DorasServer"]


@pytest.fixture
def doras_server_factory(oci_registry: RegistryServer) -> Iterator[DorasServerFactory]:
    started: list[DorasServer] = []

    from .server import DorasServer  # imported here: the plugin must load without bsdiff4

    def make(registry: RegistryServer | None = None, **options: Any) -> DorasServer:
        target = registry or oci_registry
        if target.ca_file is not None:
            options.setdefault("ca_file", target.ca_file)
        server = DorasServer(target.url, **options).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def doras_server(doras_server_factory: DorasServerFactory) -> DorasServer:
    return doras_server_factory()
