"""Every row of the recorded exchanges.json, replayed against the test server."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest
import requests
from server_helpers import (
    EXCHANGES,
    ask,
    ask_until_ready,
    case_dir,
    localize_quoted,
    replay_query,
    unique_repo,
)

from doras_oras.testing.pytest_plugin import DorasServerFactory
from doras_oras.testing.registry import RegistryServer
from doras_oras.testing.server import DorasServer
from doras_oras.testing.vectors import localize, push_recorded


def _check(response: requests.Response, row: dict[str, object], host: str) -> None:
    assert response.status_code == row["status"]
    assert response.headers.get("Content-Type") == row["content_type"]
    assert response.text == localize(str(row["body"]), host)


def test_ping(doras_server: DorasServer) -> None:
    response = requests.get(doras_server.url + "/api/v1/ping", timeout=10)
    _check(response, EXCHANGES["ping"], "")


def test_no_trailing_slash_redirects_301(doras_server: DorasServer, oci_registry: RegistryServer) -> None:
    row = EXCHANGES["no_trailing_slash_301"]
    raw_query = row["location"].split("?", 1)[1]
    url = f"{doras_server.url}{row['path']}?{localize_quoted(raw_query, oci_registry.host)}"
    response = requests.get(url, timeout=10, allow_redirects=False)
    assert response.status_code == 301
    assert response.headers["Content-Type"] == row["content_type"]
    assert response.headers["Location"] == localize_quoted(row["location"], oci_registry.host)
    assert response.text == localize_quoted(row["body"], oci_registry.host)


def test_redirect_escapes_the_query_as_go_does(doras_server: DorasServer) -> None:
    response = requests.get(doras_server.url + "/api/v1/delta?a=1&b=2", timeout=10, allow_redirects=False)
    assert response.headers["Location"] == "/api/v1/delta/?a=1&b=2"
    assert response.text == '<a href="/api/v1/delta/?a=1&amp;b=2">Moved Permanently</a>.\n\n'


@pytest.fixture(scope="module")
def pushed_file(oci_registry: RegistryServer) -> str:
    """The recorded oras file case (oras-file-0) in the registry under its recorded name."""
    push_recorded(oci_registry.url, case_dir("bsdiff"), "oras-file-0")
    return "oras-file-0"


@pytest.mark.parametrize(
    "row",
    ["identical_204", "missing_from_400", "missing_to_400", "from_is_tag_400",
     "other_repository_400", "unknown_repository_404"],
)
def test_recorded_answer(row: str, doras_server: DorasServer, oci_registry: RegistryServer,
                         pushed_file: str) -> None:
    recorded = EXCHANGES[row]
    response = ask(doras_server.url, replay_query(recorded["request"], oci_registry.host))
    _check(response, recorded, oci_registry.host)
    assert doras_server.builds == 0


def test_unknown_to_tag_is_400_invalid_oci_image(doras_server: DorasServer, oci_registry: RegistryServer,
                                                 pushed_file: str) -> None:
    query = replay_query(EXCHANGES["identical_204"]["request"], oci_registry.host)
    query[1] = ("to_tag", f"{oci_registry.host}/oras-file-0:nope")
    response = ask(doras_server.url, query)
    assert response.status_code == 400
    assert response.text == json.dumps(
        {"error": {"code": 400, "message": "invalid oci image", "context": query[1][1]}},
        separators=(",", ":"))


def test_auth_required_without_credentials_401(doras_server_factory: DorasServerFactory, oci_registry: RegistryServer,
                                               pushed_file: str) -> None:
    server = doras_server_factory(require_client_auth=True)
    row = EXCHANGES["auth_required_no_credentials_401"]
    query = replay_query(EXCHANGES["identical_204"]["request"], oci_registry.host)
    _check(ask(server.url, query), row, oci_registry.host)
    # Missing parameters are answered 401 too when client auth is required (as the Go server does).
    _check(ask(server.url, query[:1]), row, oci_registry.host)
    # A malformed header counts as none.
    _check(ask(server.url, query, headers={"Authorization": "Basic !!!"}), row, oci_registry.host)


@pytest.mark.parametrize("header", ["Bearer junk", "Basic " + base64.b64encode(b"user:pass").decode()])
def test_auth_required_with_any_credentials_passes_them_on(
    header: str, doras_server_factory: DorasServerFactory, oci_registry: RegistryServer
) -> None:
    server = doras_server_factory(require_client_auth=True, build_delay_s=0.3)
    repo = unique_repo("auth-any")
    push_recorded(oci_registry.url, case_dir("bsdiff"), repo)
    query = replay_query(case_dir_request("bsdiff"), oci_registry.host, repo)
    row = EXCHANGES["auth_required_with_any_credentials"]
    _check(ask(server.url, query, headers={"Authorization": header}), row, oci_registry.host)
    response, _ = ask_until_ready(server.url, query, headers={"Authorization": header})
    assert response.status_code == 200


def case_dir_request(name: str) -> list[list[str]]:
    request: list[list[str]] = json.loads((case_dir(name) / "exchange.json").read_text())["request"]
    return request


def test_incompatible_artifacts(doras_server_factory: DorasServerFactory,
                                oci_registry: RegistryServer) -> None:
    """A file artifact and an unpackable directory in one repository cannot be diffed."""
    repo = unique_repo("incompatible")
    file_digests = push_recorded(oci_registry.url, case_dir("bsdiff"), repo)
    dir_digests = push_recorded(oci_registry.url, case_dir("tardiff-oras-dir"), repo,
                                from_tag="d1", to_tag="d2")
    query = [("from_digest", f"{oci_registry.host}/{repo}@{file_digests['from_digest']}"),
             ("to_digest", f"{oci_registry.host}/{repo}@{dir_digests['to_digest']}")]
    for status in (406, 500):
        server = doras_server_factory(incompatible_status=status)
        response = ask(server.url, query)
        assert response.status_code == status
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        assert response.json() == {"error": {"code": status, "message": "artifacts are not compatible",
                                             "context": "cannot build a delta from images"}}


def test_unknown_path_is_404(doras_server: DorasServer) -> None:
    response = requests.get(doras_server.url + "/api/v2/whatever", timeout=10)
    assert response.status_code == 404
    assert response.text == "404 page not found"


def test_multi_layer_artifacts_are_not_compatible(doras_server: DorasServer, oci_registry: RegistryServer,
                                                  oras_cli: str, tmp_path: Path) -> None:
    """Only single-layer artifacts are supported: two files per artifact cannot be diffed."""
    repo = unique_repo("multi")
    ref = f"{oci_registry.host}/{repo}"
    for tag in ("v1", "v2"):
        (tmp_path / "a.txt").write_text(f"a {tag}\n")
        (tmp_path / "b.txt").write_text(f"b {tag}\n")
        subprocess.run([oras_cli, "push", "--plain-http", f"{ref}:{tag}", "a.txt", "b.txt"],
                       cwd=tmp_path, check=True, capture_output=True, timeout=60)
    head = requests.head(f"{oci_registry.url}/v2/{repo}/manifests/v1", timeout=10,
                         headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    query = [("from_digest", f"{ref}@{head.headers['Docker-Content-Digest']}"), ("to_tag", f"{ref}:v2")]
    response = ask(doras_server.url, query)
    assert response.status_code == 406
    assert response.text == ('{"error":{"code":406,"message":"artifacts are not compatible",'
                             '"context":"cannot build a delta from images"}}')
    # Nothing was stored under any delta tag.
    tags = requests.get(f"{oci_registry.url}/v2/{repo}/tags/list", timeout=10).json()["tags"]
    assert sorted(tags) == ["v1", "v2"]
