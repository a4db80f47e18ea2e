"""What doras-oras stores is what the real tools read and write (issue #22 part 6).

Every image doras-oras stores is readable by the oras CLI and skopeo.

For each kind of pull (full, bsdiff, tar-diff, tar-diff from a base the oras CLI wrote, tar-diff
from an earlier tar-diff result), ``oras pull --oci-layout DIR:TAG`` must write the files that
``oras pull`` from the registry writes, and so must the copy ``skopeo copy oci:`` makes of it.
A chain v1 -> v4 of file and directory updates pushed with the oras CLI: the files written from every
stored version equal ``oras pull``'s.
Against the real registry, the test Doras server, the oras CLI and skopeo.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from doras_oras import DeltaRegistry, OCILayout
from doras_oras.extract import extract_image
from doras_oras.layout import verify_layout
from doras_oras.testing.pytest_plugin import DorasServerFactory
from doras_oras.testing.registry import RegistryServer, find_tool
from doras_oras.testing.server import DorasServer
from tests.layout_support import cli, name_of, one_json, run
from tests.pull_support import (
    check_layout,
    edit,
    manifest_of,
    oras_pull,
    oras_push_dir,
    oras_push_file,
    payload,
    tree,
    unique,
)

#: kind -> (what the repository holds, what the layout starts from, the status/algorithm of the last pull)
KINDS = {
    "full": ("dir", None, ("full", None)),
    "bsdiff": ("file", "doras", ("delta", "bsdiff+zstd")),
    "tardiff": ("dir", "doras", ("delta", "tardiff")),
    "tardiff-foreign-base": ("dir", "oras", ("delta", "tardiff")),
    "tardiff-of-tardiff": ("dir", "doras-tardiff", ("delta", "tardiff")),
}


def _push(host: str, repo: str, what: str, workdir: Path) -> None:
    """v1, v2, v3 of one file (``x.bin``) or one directory (``tree``)."""
    data = payload(40000, 41)
    files = {"a.txt": b"alpha\n" * 300, "deep/b.bin": data}
    for n, tag in enumerate(("v1", "v2", "v3")):
        data = edit(data, 4, 42 + n) if n else data
        if what == "file":
            oras_push_file(host, f"{repo}:{tag}", workdir / tag, "x.bin", data)
        else:
            oras_push_dir(host, f"{repo}:{tag}", workdir / tag, "tree", {**files, "deep/b.bin": data})


def _tools_read(layout: Path, tag: str, expected: dict[str, bytes], workdir: Path) -> None:
    """``oras pull --oci-layout`` writes ``expected``, from the layout and from skopeo's copy of it."""
    oras = find_tool("oras")
    out = workdir / f"oras-{tag}"
    name = name_of(layout, tag)
    run(oras, "pull", "--oci-layout", f"{layout}:{name}", "-o", str(out))
    assert tree(out) == expected
    copy = workdir / f"skopeo-{tag}"
    run("skopeo", "copy", f"oci:{layout}:{name}", f"oci:{copy}:{tag}")
    out2 = workdir / f"oras-skopeo-{tag}"
    run(oras, "pull", "--oci-layout", f"{copy}:{tag}", "-o", str(out2))
    assert tree(out2) == expected


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_oras_cli_reads_every_kind_of_pull(oci_registry: RegistryServer, doras_server_factory: DorasServerFactory,
                                           tmp_path: Path, kind: str) -> None:
    what, start, (status, algorithm) = KINDS[kind]
    host, repo = oci_registry.host, unique(f"readable-{kind}")
    _push(host, repo, what, tmp_path / "push")
    server = doras_server_factory()
    layout = tmp_path / "L"
    common = ["--oci-layout", str(layout), "--plain-http", "--server", server.url, "--json"]
    target = "v2"
    if start == "oras":
        run(find_tool("oras"), "copy", "--from-plain-http", f"{host}/{repo}:v1", "--to-oci-layout", f"{layout}:v1")
    elif start is not None:
        assert cli("pull", f"{host}/{repo}:v1", *common).returncode == 0
        if start == "doras-tardiff":
            assert one_json(cli("pull", f"{host}/{repo}:v2", *common))["algorithm"] == "tardiff"
            target = "v3"
    proc = cli("pull", f"{host}/{repo}:{target}", *common)
    assert proc.returncode == 0, proc.stderr
    result = one_json(proc)
    assert (result["status"], result["algorithm"]) == (status, algorithm), result
    oras_pull(host, f"{repo}:{target}", tmp_path / "reference")
    expected = tree(tmp_path / "reference")
    assert expected
    _tools_read(layout, target, expected, tmp_path)
    out = tmp_path / "ours"
    assert cli("pull", f"{host}/{repo}:{target}", *common, "-o", str(out)).returncode == 3
    assert tree(out) == expected  # doras-oras' own extraction of the stored image


def same_files_as_oras(registry: RegistryServer, layout_dir: Path, repo: str, tag: str, work: Path) -> None:
    """``extract_image`` of the stored ``tag`` writes what ``oras pull`` writes."""
    ours, theirs = work / f"ours-{tag}", work / f"oras-{tag}"
    for path in (ours, theirs):
        shutil.rmtree(path, ignore_errors=True)
    layout = OCILayout.open(layout_dir, create=False)
    image = layout.get_image(f"{registry.host}/{repo}", tag)
    written = extract_image(layout, image.descriptor, ours)
    oras_pull(registry.host, f"{repo}:{tag}", theirs)
    expected = tree(theirs)
    assert expected and tree(ours) == expected
    assert written


def directory_versions() -> list[dict[str, bytes]]:
    base = {f"payload/sub{n % 3}/file{n:02}.bin": payload(6000 + 97 * n, 100 + n) for n in range(12)}
    base["payload/README"] = b"version 1\n"
    v2 = dict(base)
    v2["payload/sub0/file00.bin"] = edit(base["payload/sub0/file00.bin"], 5, 7)
    v2["payload/README"] = b"version 2\n"
    v3 = dict(v2)
    v3["payload/new/added.txt"] = b"added in v3\n" * 50
    del v3["payload/sub1/file04.bin"]
    v4 = dict(v3)
    v4["payload/sub2/file05.bin"] = edit(v3["payload/sub2/file05.bin"], 3, 8) + b"grown"
    return [base, v2, v3, v4]


def test_chain_of_file_and_directory_updates(oci_registry: RegistryServer, doras_server: DorasServer,
                                             tmp_path: Path) -> None:
    host = oci_registry.host
    files_repo, dirs_repo, mixed_repo = unique("chain-file"), unique("chain-dir"), unique("chain-mixed")
    trees = directory_versions()
    data = payload(96 << 10, 9)
    for n in range(1, 5):
        oras_push_file(host, f"{files_repo}:f{n}", tmp_path / f"f{n}", "app.bin", data)
        data = edit(data, 10, n)
        oras_push_dir(host, f"{dirs_repo}:d{n}", tmp_path / f"d{n}", "payload",
                      {k.removeprefix("payload/"): v for k, v in trees[n - 1].items()})
    # the mixed repository: v1, v2 files, then v3, v4 directories
    oras_push_file(host, f"{mixed_repo}:m1", tmp_path / "m1", "thing", payload(20000, 1))
    oras_push_file(host, f"{mixed_repo}:m2", tmp_path / "m2", "thing", edit(payload(20000, 1), 3, 2))
    for n in (3, 4):
        oras_push_dir(host, f"{mixed_repo}:m{n}", tmp_path / f"m{n}", "thing",
                      {k.removeprefix("payload/"): v for k, v in trees[n - 1].items()})

    client = DeltaRegistry(insecure=True)
    layout = tmp_path / "L"
    outcomes: dict[tuple[str, int], tuple[str, str | None, bool]] = {}
    for n in range(1, 5):
        for repo, tag in ((files_repo, f"f{n}"), (dirs_repo, f"d{n}"), (mixed_repo, f"m{n}")):
            result = client.pull_delta(f"{host}/{repo}:{tag}", layout, doras_url=doras_server.url)
            outcomes[repo, n] = (result.status, result.algorithm, result.verified)
            body, digest = manifest_of(oci_registry, repo, tag)
            assert result.to_digest == digest
            if result.algorithm == "tardiff":
                check_layout(layout, tag)  # a rewritten manifest
                assert result.stored_digest != digest
            else:
                check_layout(layout, tag, manifest=body)
                assert result.stored_digest == digest
            same_files_as_oras(oci_registry, layout, repo, tag, tmp_path / "out")
    assert [outcomes[files_repo, n] for n in range(1, 5)] == [("full", None, True)] + [("delta", "bsdiff+zstd", True)] * 3
    # v2 patches the registry's gzip blob; v3 and v4 patch the stored results of the earlier tar-diffs
    assert [outcomes[dirs_repo, n] for n in range(1, 5)] == [("full", None, True)] + [("delta", "tardiff", True)] * 3
    assert [outcomes[mixed_repo, n][:2] for n in range(1, 5)] == [
        ("full", None), ("delta", "bsdiff+zstd"), ("full", None), ("delta", "tardiff")]
    layout_store = OCILayout.open(layout, create=False)
    images = verify_layout(layout_store)
    # each repository keeps its four images
    assert sorted((i.repository, i.tag) for i in images) == sorted(
        (f"{host}/{repo}", f"{prefix}{n}")
        for repo, prefix in ((files_repo, "f"), (dirs_repo, "d"), (mixed_repo, "m")) for n in range(1, 5))
    assert doras_server.builds == 3 + 3 + 2
