"""The deltas the test server builds, compared with the recorded ones case by case,
and the life cycle of a delta: dummy while building, 202 then 200, reuse, failure."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import zstandard
from server_helpers import (
    CASES,
    ask,
    ask_until_ready,
    case_dir,
    exchange,
    get_blob,
    get_manifest,
    replay_query,
    unique_repo,
)
from tardiff_apply import apply as tardiff_apply

from doras_oras.testing.pytest_plugin import REGISTRY_PASSWORD, REGISTRY_USER, DorasServerFactory
from doras_oras.testing.registry import RegistryServer
from doras_oras.testing.server import DorasServer
from doras_oras.testing.vectors import doras_vectors, localize, push_recorded

SUFFIX = {"application/bsdiff": "bsdiff", "application/bsdiff+gzip": "bsdiff_gzip",
          "application/bsdiff+zstd": "bsdiff_zstd", "application/tardiff": "tardiff"}


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _normalized(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest without what must differ: the delta layer's digest/size and the created time."""
    out = json.loads(json.dumps(manifest))
    for layer in out["layers"]:
        layer["digest"], layer["size"] = "X", 0
    out["annotations"]["org.opencontainers.image.created"] = "T"
    return out


def _apply(media_type: str, delta: bytes, from_layer: bytes, tmp_path: Path) -> bytes:
    """Apply a delta blob with the reference tools: Debian bspatch, or the test tar-diff applier."""
    if media_type == "application/tardiff":
        return tardiff_apply(from_layer, delta)
    if media_type.endswith("+gzip"):
        delta = gzip.decompress(delta)
    elif media_type.endswith("+zstd"):
        delta = zstandard.ZstdDecompressor().decompressobj().decompress(delta)
    assert delta[:8] == b"BSDIFF40"
    (tmp_path / "old").write_bytes(from_layer)
    (tmp_path / "patch").write_bytes(delta)
    subprocess.run(["bspatch", str(tmp_path / "old"), str(tmp_path / "new"), str(tmp_path / "patch")],
                   check=True, timeout=60)
    return (tmp_path / "new").read_bytes()


@pytest.mark.parametrize("case", CASES)
def test_recorded_case(case: str, doras_server: DorasServer, oci_registry: RegistryServer,
                       tmp_path: Path) -> None:
    host, url = oci_registry.host, oci_registry.url
    recorded = exchange(case)
    repo = unique_repo(case.replace("+", "-"))
    digests = push_recorded(url, case_dir(case), repo)
    assert digests == {"from_digest": recorded["from_manifest_digest"],
                       "to_digest": recorded["to_manifest_digest"]}
    query = replay_query(recorded["request"], host, repo)

    response, _ = ask_until_ready(doras_server.url, query)
    want = recorded["response"]
    assert response.status_code == want["status"] == 200
    assert response.headers["Content-Type"] == want["content_type"]
    delta_name, delta_digest = response.json()["delta_image"].split("@")
    assert delta_name == f"{host}/{repo}"
    # Byte for byte the recorded body, but for the host, the repository and the delta's digest.
    want_text = localize(want["body"], host).replace(f"{host}/{case_repo(recorded)}@", f"{host}/{repo}@")
    assert response.text == want_text.replace(recorded["delta_manifest_digest"], delta_digest)

    # The tag scheme: _delta-sha256(FROMHEX + TOHEX + SUFFIX) names the same manifest.
    recorded_manifest = json.loads((case_dir(case) / "delta.manifest.json").read_bytes())
    media_type = recorded_manifest["layers"][0]["mediaType"]
    seed = (recorded["from_manifest_digest"][7:] + recorded["to_manifest_digest"][7:] + SUFFIX[media_type])
    tag = "_delta-" + hashlib.sha256(seed.encode()).hexdigest()
    manifest_bytes = get_manifest(url, repo, tag)
    assert _sha256(manifest_bytes) == delta_digest

    # The manifest: byte-identical to the recorded one except layer digest/size and created time.
    manifest = json.loads(manifest_bytes)
    recorded_local = json.loads(localize(json.dumps(recorded_manifest), host).replace(
        f"{host}/{case_repo(recorded)}@", f"{host}/{repo}@"))
    assert _normalized(manifest) == _normalized(recorded_local)
    assert list(manifest) == list(recorded_manifest)
    assert json.dumps(manifest, separators=(",", ":")).encode() == manifest_bytes  # compact
    assert time.strftime("%Y-%m-%dT", time.gmtime()) in manifest["annotations"][
        "org.opencontainers.image.created"]

    # The delta applies with the reference tools and gives the target.
    layer = manifest["layers"][0]
    delta = get_blob(url, repo, layer["digest"])
    assert (len(delta), _sha256(delta)) == (layer["size"], layer["digest"])
    from_layer = (case_dir(case) / "from.layer").read_bytes()
    to_layer = (case_dir(case) / "to.layer").read_bytes()
    result = _apply(media_type, delta, from_layer, tmp_path)
    if media_type == "application/tardiff":
        assert result == gzip.decompress(to_layer)
        to_annotations = json.loads((case_dir(case) / "to.manifest.json").read_bytes())["layers"][0][
            "annotations"]
        if "io.deis.oras.content.digest" in to_annotations:
            assert _sha256(result) == to_annotations["io.deis.oras.content.digest"]
    else:
        assert result == to_layer
    assert doras_server.builds == 1 and not doras_server.build_errors


def case_repo(recorded: dict[str, Any]) -> str:
    ref: str = recorded["request"][0][1]
    return ref.split("/", 1)[1].split("@")[0]


def _push_file_case(registry: RegistryServer, **kwargs: Any) -> tuple[str, list[tuple[str, str]]]:
    repo = unique_repo("cycle")
    push_recorded(registry.url, case_dir("bsdiff+zstd"), repo, **kwargs)
    return repo, replay_query(exchange("bsdiff+zstd")["request"], registry.host, repo)


def test_202_then_200_with_dummy_while_building_and_reuse(
    doras_server_factory: DorasServerFactory, oci_registry: RegistryServer
) -> None:
    server = doras_server_factory(build_delay_s=1.0)
    repo, query = _push_file_case(oci_registry)
    first = ask(server.url, query)
    assert (first.status_code, first.text, first.headers.get("Content-Type")) == (202, "", None)

    # While building, the tag holds the dummy manifest, shaped as recorded.
    recorded = exchange("bsdiff+zstd")
    seed = recorded["from_manifest_digest"][7:] + recorded["to_manifest_digest"][7:] + "bsdiff_zstd"
    tag = "_delta-" + hashlib.sha256(seed.encode()).hexdigest()
    dummy_bytes = get_manifest(oci_registry.url, repo, tag)
    dummy = json.loads(dummy_bytes)
    recorded_dummy = json.loads((doras_vectors() / "dummy.manifest.json").read_bytes())
    assert list(dummy) == list(recorded_dummy)
    assert list(dummy["annotations"]) == list(recorded_dummy["annotations"])
    for key in ("com.unbasical.doras.delta.from", "com.unbasical.doras.delta.to",
                "org.opencontainers.image.created"):
        recorded_dummy["annotations"][key] = dummy["annotations"][key]
    assert dummy == recorded_dummy
    assert json.dumps(dummy, separators=(",", ":")).encode() == dummy_bytes
    assert dummy["annotations"]["com.unbasical.doras.delta.from"] == \
        f"{oci_registry.host}/{repo}@{recorded['from_manifest_digest']}"

    assert ask(server.url, query).status_code == 202  # still building
    response, accepted = ask_until_ready(server.url, query)
    assert response.status_code == 200 and accepted >= 1
    assert server.builds == 1

    # The tag now holds the delta; a second request reuses it without a build.
    delta_image = response.json()["delta_image"]
    again = ask(server.url, query)
    assert again.status_code == 200 and again.json()["delta_image"] == delta_image
    other = doras_server_factory()  # a fresh server finds the stored delta in the registry
    assert ask(other.url, query).json()["delta_image"] == delta_image
    server.wait_idle()
    assert server.builds == 1 and other.builds == 0


def test_failed_build_leaves_the_dummy_until_it_expires(
    doras_server_factory: DorasServerFactory, oci_registry: RegistryServer
) -> None:
    server = doras_server_factory(fail_builds=True, dummy_ttl_s=2.0)
    _, query = _push_file_case(oci_registry)
    assert ask(server.url, query).status_code == 202
    server.wait_idle(timeout=10)
    assert server.build_errors and server.builds == 0
    assert ask(server.url, query).status_code == 202  # the dummy is fresh: "someone builds"
    server.fail_builds = False
    time.sleep(3.1)  # the dummy's created time has second resolution
    response, _ = ask_until_ready(server.url, query, timeout=30)
    assert response.status_code == 200 and server.builds == 1


@pytest.mark.parametrize(
    ("case", "accepted", "media_type"),
    [
        ("bsdiff", ["tardiff"], "application/bsdiff"),  # bsdiff even when not accepted
        ("bsdiff", [], "application/bsdiff+zstd"),  # default: bsdiff, tardiff, zstd
        ("bsdiff", ["gzip", "zstd"], "application/bsdiff+zstd"),
        ("bsdiff", ["gzip"], "application/bsdiff+gzip"),
        ("tardiff-oras-dir", [], "application/tardiff"),
        ("tardiff-oras-dir", ["tardiff", "gzip"], "application/tardiff"),
        ("tardiff-oras-dir", ["bsdiff"], "application/bsdiff"),
    ],
)
def test_algorithm_choice(case: str, accepted: list[str], media_type: str, doras_server: DorasServer,
                          oci_registry: RegistryServer, tmp_path: Path) -> None:
    repo = unique_repo("algo")
    push_recorded(oci_registry.url, case_dir(case), repo)
    query = replay_query(exchange(case)["request"][:2], oci_registry.host, repo)
    query += [("accepted_algorithm", name) for name in accepted]
    response, _ = ask_until_ready(doras_server.url, query)
    delta_digest = response.json()["delta_image"].split("@")[1]
    manifest = json.loads(get_manifest(oci_registry.url, repo, delta_digest))
    layer = manifest["layers"][0]
    assert layer["mediaType"] == media_type
    delta = get_blob(oci_registry.url, repo, layer["digest"])
    from_layer = (case_dir(case) / "from.layer").read_bytes()
    to_layer = (case_dir(case) / "to.layer").read_bytes()
    want = gzip.decompress(to_layer) if media_type == "application/tardiff" else to_layer
    assert _apply(media_type, delta, from_layer, tmp_path) == want


def test_to_digest_instead_of_tag(doras_server: DorasServer, oci_registry: RegistryServer) -> None:
    repo = unique_repo("todigest")
    digests = push_recorded(oci_registry.url, case_dir("bsdiff"), repo)
    query = [("from_digest", f"{oci_registry.host}/{repo}@{digests['from_digest']}"),
             ("to_digest", f"{oci_registry.host}/{repo}@{digests['to_digest']}")]
    response, _ = ask_until_ready(doras_server.url, query)
    assert response.json()["target_image"] == f"{oci_registry.host}/{repo}@{digests['to_digest']}"
    # Both to_tag and to_digest is a bad request.
    both = ask(doras_server.url, [*query, ("to_tag", f"{oci_registry.host}/{repo}:v2")])
    assert both.status_code == 400 and both.json() == {"error": {"code": 400, "message": "bad request"}}


def test_localhost_names_the_same_registry(doras_server: DorasServer, oci_registry: RegistryServer) -> None:
    repo = unique_repo("localhost")
    push_recorded(oci_registry.url, case_dir("bsdiff"), repo)
    host = f"localhost:{oci_registry.port}"
    query = replay_query(exchange("bsdiff")["request"], host, repo)
    response, _ = ask_until_ready(doras_server.url, query)
    assert response.status_code == 200
    assert response.json()["delta_image"].startswith(f"{host}/{repo}@sha256:")


def test_registry_with_basic_auth(doras_server_factory: DorasServerFactory,
                                  oci_registry_auth: RegistryServer) -> None:
    import requests

    session = requests.Session()
    session.auth = (REGISTRY_USER, REGISTRY_PASSWORD)
    repo = unique_repo("authreg")
    push_recorded(oci_registry_auth.url, case_dir("bsdiff"), repo, session=session)
    query = replay_query(exchange("bsdiff")["request"], oci_registry_auth.host, repo)
    server = doras_server_factory(oci_registry_auth)
    assert ask(server.url, query).status_code == 401  # no credentials to pass on
    wrong = ask(server.url, query, auth=(REGISTRY_USER, "wrong"))
    assert wrong.status_code == 401 and wrong.json() == {"error": {"code": 401, "message": "unauthorized"}}
    response, _ = ask_until_ready(server.url, query, auth=(REGISTRY_USER, REGISTRY_PASSWORD))
    assert response.status_code == 200
    # The server's own credentials serve clients that send none.
    own = doras_server_factory(oci_registry_auth, registry_auth=(REGISTRY_USER, REGISTRY_PASSWORD))
    assert ask(own.url, query).json() == response.json()


def test_registry_with_tls(doras_server_factory: DorasServerFactory, oci_registry_tls: RegistryServer) -> None:
    import requests

    session = requests.Session()
    session.verify = str(oci_registry_tls.ca_file)
    repo = unique_repo("tlsreg")
    push_recorded(oci_registry_tls.url, case_dir("gzip-layer-bsdiff+zstd"), repo, session=session)
    server = doras_server_factory(oci_registry_tls)
    query = replay_query(exchange("gzip-layer-bsdiff+zstd")["request"], oci_registry_tls.host, repo)
    response, _ = ask_until_ready(server.url, query)
    assert response.status_code == 200 and server.builds == 1


def test_concurrent_first_requests_build_once(doras_server_factory: DorasServerFactory,
                                              oci_registry: RegistryServer) -> None:
    from concurrent.futures import ThreadPoolExecutor

    server = doras_server_factory(build_delay_s=0.5)
    _, query = _push_file_case(oci_registry)
    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = list(pool.map(lambda _: ask(server.url, query).status_code, range(6)))
    assert statuses == [202] * 6
    response, _ = ask_until_ready(server.url, query)
    assert response.status_code == 200
    server.wait_idle()
    assert server.builds == 1 and not server.build_errors


def test_tamper_delta_stores_a_delta_that_does_not_give_the_target(
    doras_server_factory: DorasServerFactory, oci_registry: RegistryServer, tmp_path: Path
) -> None:
    def flip_last_byte(delta: bytes) -> bytes:
        return delta[:-1] + bytes([delta[-1] ^ 0xFF])

    server = doras_server_factory(tamper_delta=flip_last_byte)
    repo = unique_repo("tamper")
    push_recorded(oci_registry.url, case_dir("bsdiff"), repo)
    query = replay_query(exchange("bsdiff")["request"], oci_registry.host, repo)
    response, _ = ask_until_ready(server.url, query)
    manifest = json.loads(get_manifest(oci_registry.url, repo, response.json()["delta_image"].split("@")[1]))
    layer = manifest["layers"][0]
    delta = get_blob(oci_registry.url, repo, layer["digest"])
    assert _sha256(delta) == layer["digest"]  # consistent with its descriptor...
    from_layer = (case_dir("bsdiff") / "from.layer").read_bytes()
    to_layer = (case_dir("bsdiff") / "to.layer").read_bytes()
    try:
        result = _apply(layer["mediaType"], delta, from_layer, tmp_path)
    except subprocess.CalledProcessError:
        return  # bspatch refused it
    assert result != to_layer  # ...but not the target
