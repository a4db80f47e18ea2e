"""Docker Hub as every client reads it (issue #22 §8): ``docker.io`` is served by ``registry-1.docker.io``,
its one-component names are under ``library/``, and its credentials are stored under
``https://index.docker.io/v1/``. No network: the mapping is pure logic, the credentials come from a temp
docker config, and the one request is refused by the session before it leaves."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from doras_oras.errors import TransportError
from doras_oras.reference import Reference, api_host, config_key
from doras_oras.registry_client import RegistryClient
from doras_oras.transport import TransferPolicy


def test_docker_io_is_asked_at_registry_1() -> None:
    assert api_host("docker.io") == "registry-1.docker.io"
    assert api_host(Reference.parse("alpine:3").registry) == "registry-1.docker.io"


@given(st.from_regex(r"[a-z][a-z0-9]{0,10}\.(?:com|org|local)(?::[0-9]{2,5})?", fullmatch=True))
def test_other_registries_are_asked_at_their_own_host(host: str) -> None:
    if "docker.io" not in host:
        assert api_host(host) == host and config_key(host) == host


def test_a_one_component_name_on_docker_io_is_under_library() -> None:
    assert Reference.parse("docker.io/alpine:3").repository == "library/alpine"
    assert Reference.parse("docker.io/someone/app").repository == "someone/app"


class _Refuse(requests.adapters.BaseAdapter):
    """Refuses every request and remembers its URL (no network here)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def send(self, request: requests.PreparedRequest, *args: object, **kwargs: object) -> requests.Response:
        self.urls.append(str(request.url))
        raise requests.ConnectionError("no network in this test")

    def close(self) -> None:
        pass


def test_a_docker_hub_request_goes_to_registry_1() -> None:
    session = requests.Session()
    adapter = _Refuse()
    session.mount("https://", adapter)
    client = RegistryClient(session=session, policy=TransferPolicy(max_attempts=1, deadline_s=5.0))
    with pytest.raises(TransportError):
        client.resolve("docker.io/alpine:3")
    assert adapter.urls and adapter.urls[0].startswith("https://registry-1.docker.io/v2/library/alpine/manifests/3")


def test_docker_hub_credentials_are_found_under_index_docker_io(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "empty"))
    config = tmp_path / "config.json"
    secret = base64.b64encode(b"hubuser:hubpass").decode()
    config.write_text(json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": secret}}}))
    with RegistryClient(registry_configs=[config]) as client:
        assert client.credentials_for("docker.io") == ("hubuser", "hubpass")
