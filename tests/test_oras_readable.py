"""Every image doras-oras stores is readable by the oras CLI and skopeo (issue #22 part 6).

For each kind of pull (full, bsdiff, tar-diff, tar-diff from a base the oras CLI wrote, tar-diff
from an earlier tar-diff result), ``oras pull --oci-layout DIR:TAG`` must write the files that
``oras pull`` from the registry writes, and so must the copy ``skopeo copy oci:`` makes of it.
Against the real registry, the test Doras server, the oras CLI and skopeo.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from doras_oras.testing.pytest_plugin import DorasServerFactory
from doras_oras.testing.registry import RegistryServer, find_tool
from tests.layout_support import cli, name_of, one_json, run
from tests.pull_support import edit, oras_pull, oras_push_dir, oras_push_file, payload, tree, unique

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
