"""pytest plugin of doras-oras (entry point ``pytest11``): real peers as fixtures.

Fixtures:

- ``oci_registry``: a session-wide ``docker-registry`` on 127.0.0.1 (plain HTTP);
- ``oci_registry_auth``: one with htpasswd basic auth (user ``doras``, password ``s3cret``);
- ``oci_registry_tls``: one serving HTTPS with a fresh CA (``.ca_file``);
- ``oras_cli``: path of the oras CLI binary (v1.3.6 from scripts/bootstrap.sh);
- ``signing_key``: a session-wide ECDSA P-256 key pair of the test bed
  (:class:`~doras_oras.testing.signing.SigningKey`; ``.public_path`` is the
  ``cosign.pub`` to verify with);
- ``sign_artifact``: ``sign_artifact(repository, digest, *, annotations=None,
  mode="tag"|"referrers", key=signing_key, registry=oci_registry)`` signs an
  artifact as ``cosign sign --key --tlog-upload=false`` does
  (:func:`doras_oras.testing.signing.sign`); returns the signature manifest digest;
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
    from .signing import SigningKey

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


@pytest.fixture(scope="session")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    from .signing import SigningKey  # imported here: cryptography loads only for tests that sign

    return SigningKey.generate(tmp_path_factory.mktemp("testbed-key"))


SignArtifact = Callable[..., str]


@pytest.fixture
def sign_artifact(oci_registry: RegistryServer, signing_key: SigningKey) -> SignArtifact:
    from .signing import sign

    def sign_it(repository: str, digest: str, *, annotations: dict[str, str] | None = None, mode: str = "tag",
                key: SigningKey | None = None, registry: RegistryServer | None = None,
                docker_reference: str | None = None) -> str:
        target = registry or oci_registry
        auth = (target.username, target.password or "") if target.username else None
        return sign(target.url, repository, digest, key or signing_key, annotations=annotations, mode=mode,
                    docker_reference=docker_reference, auth=auth,
                    ca_file=str(target.ca_file) if target.ca_file else None)

    return sign_it
