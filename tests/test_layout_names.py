"""Several repositories in one layout (issue #22 part 5): every image has a name of its own.

doras-oras names an image ``REGISTRY/REPOSITORY/TAG`` in ``org.opencontainers.image.ref.name``
(the registry's ``:`` written ``_``), so firmware and configuration at the same tag do not
collide and skopeo (``oci:DIR:NAME``) and the oras CLI (``--oci-layout DIR:NAME``) address
each one. Entries earlier versions wrote (the bare tag) and entries of oras and skopeo are
still found. Against the real registry, the test Doras server, the oras CLI and skopeo.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from doras_oras.descriptor import ANNOTATION_REF_NAME, ANNOTATION_SOURCE_REPOSITORY, Descriptor
from doras_oras.layout import ImageEntry, OCILayout, layout_name
from doras_oras.layout.index import parse_layout_name
from doras_oras.reference import Reference
from doras_oras.testing.pytest_plugin import DorasServerFactory
from doras_oras.testing.registry import RegistryServer, find_tool
from tests.layout_support import REPO, cli, one_json, run, sha256, store_image
from tests.pull_support import edit, oras_push_dir, oras_push_file, payload, tree, unique


def _entry(name: str, repository: str | None = None) -> ImageEntry:
    notes = {ANNOTATION_REF_NAME: name}
    if repository is not None:
        notes[ANNOTATION_SOURCE_REPOSITORY] = repository
    return ImageEntry(Descriptor("application/vnd.oci.image.manifest.v1+json", "sha256:" + "0" * 64, 2,
                                 annotations=notes))


def test_the_name_holds_registry_repository_and_tag() -> None:
    assert layout_name("localhost:5000/fleet/firmware", "v1") == "localhost_5000/fleet/firmware/v1"
    assert layout_name("docker.io/library/alpine", "3.19") == "docker.io/library/alpine/3.19"


_component = st.from_regex(r"\A[a-z0-9]{1,6}(?:[._-][a-z0-9]{1,4}){0,2}\Z")
_registry = st.tuples(st.from_regex(r"\A[a-z](?:[a-z0-9-]{0,7}[a-z0-9])?\.[a-z]{2,4}\Z"),
                      st.one_of(st.just(""), st.integers(1, 65535).map(lambda port: f":{port}")))
_image = st.tuples(_registry.map("".join), st.lists(_component, min_size=1, max_size=3).map("/".join),
                   st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9._-]{0,20}\Z"))


@given(_image, _image)
def test_names_are_read_back_and_differ_for_different_images(one: tuple[str, str, str],
                                                             two: tuple[str, str, str]) -> None:
    names = []
    for registry, path, tag in (one, two):
        name = layout_name(f"{registry}/{path}", tag)
        assert parse_layout_name(name) == Reference.parse(f"{registry}/{path}:{tag}")
        assert ":" not in name and "@" not in name  # what the oras CLI's DIR:NAME cannot hold
        names.append(name)
    assert (names[0] == names[1]) == (one == two)


def test_a_foreign_entry_under_that_name_belongs_to_its_repository_alone() -> None:
    """``skopeo copy ... oci:DIR:localhost_5000/fleet/fw/v1`` (or oras copy) made it: that repository's v1."""
    entry = _entry("localhost_5000/fleet/fw/v1")
    assert entry.foreign and entry.tag == "v1"
    assert entry.belongs_to("localhost:5000/fleet/fw")
    assert not entry.belongs_to("localhost:5000/fleet/conf")


def test_an_entry_of_an_earlier_version_keeps_its_bare_tag() -> None:
    entry = _entry("v1", "localhost:5000/fleet/fw")
    assert (entry.tag, entry.belongs_to("localhost:5000/fleet/fw"), entry.belongs_to("localhost:5000/x")) == (
        "v1", True, False)


def test_an_update_replaces_the_entry_of_an_earlier_version_and_no_other(tmp_path: Path) -> None:
    other = "registry.example:5000/team/other"
    layout = OCILayout.open(tmp_path / "L")
    store_image(layout, b"app one", "v1")
    store_image(layout, b"other one", "v1", repo=other)
    index = json.loads((tmp_path / "L" / "index.json").read_text())
    for entry in index["manifests"]:
        entry["annotations"][ANNOTATION_REF_NAME] = "v1"  # as earlier versions named both
    (tmp_path / "L" / "index.json").write_text(json.dumps(index))
    new = store_image(layout, b"app two", "v1")
    assert [(i.repository, i.ref_name, i.descriptor.digest == new.digest) for i in layout.images()] == [
        (other, "v1", False), (REPO, "registry.example_5000/team/app/v1", True)]


# -- against the real tools --------------------------------------------------------------------------

FILES = {"app.conf": b"mode=fleet\n" * 300, "certs/ca.pem": payload(20000, 5)}


@pytest.fixture
def fleet(oci_registry: RegistryServer, tmp_path: Path) -> dict[tuple[str, str], dict[str, bytes]]:
    """Firmware (a file) and configuration (a directory) at v1 and v2, pushed with the oras CLI.

    Returns what ``oras pull`` writes for each ``(repository, tag)`` (``registry/repository``).
    """
    host = oci_registry.host
    firmware, config = unique("firmware"), unique("config")
    f1 = payload(80000, 21)
    f2 = edit(f1, 5, 22)
    c2 = {**FILES, "certs/ca.pem": edit(FILES["certs/ca.pem"], 3, 23)}
    oras_push_file(host, f"{firmware}:v1", tmp_path / "f1", "fw.bin", f1)
    oras_push_file(host, f"{firmware}:v2", tmp_path / "f2", "fw.bin", f2)
    oras_push_dir(host, f"{config}:v1", tmp_path / "c1", "conf", FILES)
    oras_push_dir(host, f"{config}:v2", tmp_path / "c2", "conf", c2)
    conf = {f"conf/{k}": v for k, v in FILES.items()}
    conf2 = {f"conf/{k}": v for k, v in c2.items()}
    return {(f"{host}/{firmware}", "v1"): {"fw.bin": f1}, (f"{host}/{firmware}", "v2"): {"fw.bin": f2},
            (f"{host}/{config}", "v1"): conf, (f"{host}/{config}", "v2"): conf2}


def _pull(ref: str, layout: Path, server: str, *extra: str) -> dict[str, object]:
    proc = cli("pull", ref, "--oci-layout", str(layout), "--plain-http", "--server", server, "--json", *extra)
    assert proc.returncode in (0, 3), proc.stderr
    return one_json(proc)


def test_two_repositories_at_one_tag_are_each_read_by_skopeo_and_oras(
        fleet: dict[tuple[str, str], dict[str, bytes]], doras_server_factory: DorasServerFactory,
        tmp_path: Path) -> None:
    server = doras_server_factory().url
    layout = tmp_path / "L"
    for tag, status in (("v1", "full"), ("v2", "delta")):  # v2 comes as a delta of v1 (bsdiff, tar-diff)
        for repository, _tag in [key for key in fleet if key[1] == tag]:
            assert _pull(f"{repository}:{tag}", layout, server)["status"] == status, (repository, tag)
    rows = one_json(cli("list", "--oci-layout", str(layout), "--json"))["images"]
    assert len(rows) == 4
    for row in rows:
        repository, tag = row["repository"], row["tag"]
        name = f"{repository.replace(':', '_')}/{tag}"
        assert row["name"] == name
        raw = run("skopeo", "inspect", "--raw", f"oci:{layout}:{name}").stdout.encode()
        assert sha256(raw) == row["digest"], name  # this image, not the other repository's of that tag
        out = tmp_path / "out" / sha256(name.encode())[7:19]
        run(find_tool("oras"), "pull", "--oci-layout", f"{layout}:{name}", "-o", str(out))
        assert tree(out) == fleet[(repository, tag)], name


def test_list_shows_each_name_in_text(fleet: dict[tuple[str, str], dict[str, bytes]],
                                      doras_server_factory: DorasServerFactory, tmp_path: Path) -> None:
    server = doras_server_factory().url
    layout = tmp_path / "L"
    v1 = [repository for repository, tag in fleet if tag == "v1"]
    for repository in v1:
        _pull(f"{repository}:v1", layout, server)
    header, *lines = cli("list", "--oci-layout", str(layout)).stdout.splitlines()
    assert header.split()[-1] == "NAME"
    assert [line.split()[-1] for line in lines] == [f"{r.replace(':', '_')}/v1" for r in v1]


def test_a_layout_of_an_earlier_version_still_serves(fleet: dict[tuple[str, str], dict[str, bytes]],
                                                     doras_server_factory: DorasServerFactory,
                                                     tmp_path: Path) -> None:
    """Entries named by the bare tag (what doras-oras wrote before) are up to date and delta bases."""
    server = doras_server_factory().url
    layout = tmp_path / "L"
    v1 = [repository for repository, tag in fleet if tag == "v1"]
    for repository in v1:
        _pull(f"{repository}:v1", layout, server)
    index = json.loads((layout / "index.json").read_text())
    for entry in index["manifests"]:
        entry["annotations"][ANNOTATION_REF_NAME] = "v1"  # both repositories, one bare tag
    (layout / "index.json").write_text(json.dumps(index))
    held = {image.repository: image.source_digest for image in OCILayout.open(layout, create=False).images()}
    for repository in v1:
        assert _pull(f"{repository}:v1", layout, server)["status"] == "up-to-date"
    for repository in v1:
        result = _pull(f"{repository}:v2", layout, server)
        assert (result["status"], result["from_digest"]) == ("delta", held[repository]), result
    names = {(image.repository, image.tag): image.ref_name for image in OCILayout.open(layout, create=False).images()}
    assert names == {**{(r, "v1"): "v1" for r in v1}, **{(r, "v2"): f"{r.replace(':', '_')}/v2" for r in v1}}
