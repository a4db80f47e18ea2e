"""``doras-oras pull`` as a user and a cron script run it (issue #15): exit codes that tell the truth, one
JSON shape, logs on stderr, the bytes counted, ``--output`` all or nothing with the layout, usage errors,
limits, and layouts of oras and skopeo as bases.

Against the real registry, the test Doras server, the oras CLI and skopeo.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from doras_oras.layout import OCILayout, verify_layout
from doras_oras.testing.pytest_plugin import DorasServerFactory
from doras_oras.testing.registry import RegistryServer, find_tool
from tests.layout_support import (
    REPO_ROOT,
    cli,
    error_json,
    layout_problems,
    name_of,
    one_json,
    run,
    sha256,
)
from tests.pull_support import (
    check_layout,
    edit,
    layer_of,
    manifest_of,
    oras_pull,
    oras_push_dir,
    oras_push_file,
    payload,
    snapshot,
    tree,
    unique,
)


def test_extraction_failure_rolls_the_commit_back(oci_registry: RegistryServer, versions: tuple[str, bytes, bytes],
                                                  doras_server_factory: DorasServerFactory, tmp_path: Path) -> None:
    """``-o`` that cannot be written: exit 1 and the layout unchanged, so the next run updates (exit 0)."""
    repo, v1, v2 = versions
    host = oci_registry.host
    server = doras_server_factory()
    layout = tmp_path / "L"
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    bad = str(blocker / "sub")  # below a file: found only when the files are written
    common = ["--oci-layout", str(layout), "--plain-http", "--json"]

    first = cli("pull", f"{host}/{repo}:v1", *common, "-o", bad)  # a full pull
    assert first.returncode == 1 and one_json(first)["error"] == "ExtractError", first.stderr
    assert f"cannot write the files to {bad}" in first.stderr
    assert not layout.exists()  # the new layout is gone again: nothing was committed
    ok = cli("pull", f"{host}/{repo}:v1", *common, "-o", str(tmp_path / "out"))
    assert ok.returncode == 0 and one_json(ok)["status"] == "full", ok.stderr
    assert tree(tmp_path / "out") == {"x.bin": v1}

    before = snapshot(layout)
    delta = cli("pull", f"{host}/{repo}:v2", *common, "--server", server.url, "-o", bad)
    assert delta.returncode == 1 and one_json(delta)["error"] == "ExtractError", delta.stderr
    assert snapshot(layout) == before  # index.json and the blobs as they were
    again = cli("pull", f"{host}/{repo}:v2", *common, "--server", server.url, "-o", str(tmp_path / "out"))
    assert again.returncode == 0, again.stderr  # "updated": the cron script restarts the app
    result = one_json(again)
    assert (result["status"], result["output"]) == ("delta", [str(tmp_path / "out" / "x.bin")])
    assert tree(tmp_path / "out") == {"x.bin": v2}
    check_layout(layout, "v2", manifest=manifest_of(oci_registry, repo, "v2")[0])
    up = cli("pull", f"{host}/{repo}:v2", *common, "-o", str(tmp_path / "out2"))
    assert up.returncode == 3 and tree(tmp_path / "out2") == {"x.bin": v2}


def test_one_json_shape_with_and_without_server(oci_registry: RegistryServer, versions: tuple[str, bytes, bytes],
                                                doras_server_factory: DorasServerFactory, tmp_path: Path) -> None:
    repo, _v1, _v2 = versions
    host = oci_registry.host
    server = doras_server_factory()
    keys = set()
    for name, extra in (("A", []), ("B", ["--server", server.url])):
        common = ["--oci-layout", str(tmp_path / name), "--plain-http", "--json", *extra]
        for tag, status, code in (("v1", "full", 0), ("v2", "delta" if extra else "full", 0), ("v2", "up-to-date", 3)):
            proc = cli("pull", f"{host}/{repo}:{tag}", *common)
            assert proc.returncode == code, proc.stderr
            result = one_json(proc)
            assert result["status"] == status, result
            keys.add(frozenset(result))
    assert len(keys) == 1, keys
    assert {"status", "reason_code", "stored_digest", "to_digest", "bytes_received", "output", "fix", "hint",
            "layout"} <= set(next(iter(keys)))


def test_up_to_date_without_server_is_exit_3_and_one_get_answered_304(oci_registry: RegistryServer, tmp_path: Path,
                                                          versions: tuple[str, bytes, bytes]) -> None:
    repo, _v1, _v2 = versions
    from doras_oras.testing.faultproxy import FaultProxy

    with FaultProxy(oci_registry.url) as proxy:
        common = ["--oci-layout", str(tmp_path / "L"), "--plain-http", "--json"]
        assert cli("pull", f"{proxy.host}/{repo}:v1", *common).returncode == 0
        proxy.wait_idle()
        seen = len(proxy.log)
        again = cli("pull", f"{proxy.host}/{repo}:v1", *common)
        assert again.returncode == 3, again.stderr
        result = one_json(again)
        assert (result["status"], result["bytes_received"]) == ("up-to-date", 0)
        proxy.wait_idle()
        assert [(r.method, r.status) for r in proxy.log[seen:]] == [("GET", 304)]  # no manifest body again


def test_bytes_are_counted_from_the_first_request_without_server(
        oci_registry: RegistryServer, versions: tuple[str, bytes, bytes], tmp_path: Path) -> None:
    repo, _v1, _v2 = versions
    body, _digest = manifest_of(oci_registry, repo, "v1")
    layer, _blob = layer_of(oci_registry, repo, "v1")
    expected = len(body) + int(str(layer["size"]))  # the manifest and the layer; the empty config is inline
    layout = tmp_path / "L"
    proc = cli("pull", f"{oci_registry.host}/{repo}:v1", "--oci-layout", str(layout), "--plain-http", "--json",
               "--max-size", "1M", "--budget", "10M/1d")
    assert proc.returncode == 0, proc.stderr
    result = one_json(proc)
    assert result["bytes_received"] == expected, (result, expected)
    ledger = json.loads((layout / ".doras-oras" / "downloads.json").read_text())
    assert [n for _t, n in ledger["records"]] == [expected]


def test_from_a_tag_or_a_digest_of_the_same_repository(oci_registry: RegistryServer, tmp_path: Path,
                                                       doras_server_factory: DorasServerFactory) -> None:
    repo = unique("from")
    host = oci_registry.host
    data = payload(40000, 21)
    for number in (1, 2, 3):
        oras_push_file(host, f"{repo}:v{number}", tmp_path / f"p{number}", "x.bin", edit(data, number * 3, number))
    server = doras_server_factory()
    layout = tmp_path / "L"
    common = ["--oci-layout", str(layout), "--plain-http", "--server", server.url, "--json"]
    assert cli("pull", f"{host}/{repo}:v1", *common).returncode == 0
    assert cli("pull", f"{host}/{repo}:v2", *common).returncode == 0
    v1_digest = manifest_of(oci_registry, repo, "v1")[1]
    for given in ("v1", v1_digest, "@" + v1_digest, f"{host}/{repo}:v1"):
        proc = cli("pull", f"{host}/{repo}:v3", *common, "--from", given)
        assert proc.returncode == 0, (given, proc.stderr)
        result = one_json(proc)
        assert (result["status"], result["from_digest"]) == ("delta", v1_digest), (given, result)
        (layout / "index.json").write_text(json.dumps(json.loads((layout / "index.json").read_text()) | {
            "manifests": [m for m in json.loads((layout / "index.json").read_text())["manifests"]
                          if not m["annotations"].get("org.opencontainers.image.ref.name", "").endswith("/v3")]}))
    missing = cli("pull", f"{host}/{repo}:v3", *common, "--from", "v0")
    assert missing.returncode == 1 and f"--from {host}/{repo}:v0: no such image" in missing.stderr


@pytest.mark.parametrize("tool", ["oras", "skopeo-tag", "skopeo-reference", "skopeo-name"])
def test_layouts_of_oras_and_skopeo_are_delta_bases(oci_registry: RegistryServer, tmp_path: Path,
                                                    versions: tuple[str, bytes, bytes], tool: str,
                                                    doras_server_factory: DorasServerFactory) -> None:
    repo, _v1, v2 = versions
    host = oci_registry.host
    layout = tmp_path / "L"
    name = {"oras": "v1", "skopeo-tag": "v1", "skopeo-reference": f"{host}/{repo}:v1",
            "skopeo-name": f"{host.replace(':', '_')}/{repo}/v1"}[tool]  # the last: the name doras-oras gives
    if tool == "oras":
        run(find_tool("oras"), "copy", "--from-plain-http", f"{host}/{repo}:v1", "--to-oci-layout", f"{layout}:v1")
    else:
        run("skopeo", "copy", "--src-tls-verify=false", f"docker://{host}/{repo}:v1", f"oci:{layout}:{name}")
    listed = cli("list", "--oci-layout", str(layout), "--json")
    [entry] = one_json(listed)["images"]
    assert (entry["tag"], entry["foreign"], entry["pulled_by"]) == ("v1", True, None)
    assert entry["repository"] == (f"{host}/{repo}" if tool in ("skopeo-reference", "skopeo-name") else None)
    server = doras_server_factory()
    common = ["--oci-layout", str(layout), "--plain-http", "--server", server.url, "--json"]
    up = cli("pull", f"{host}/{repo}:v1", *common)
    assert up.returncode == 3, up.stderr  # the layout holds v1: up to date, nothing written
    proc = cli("pull", f"{host}/{repo}:v2", *common, "-o", str(tmp_path / "out"), "--from", "v1")
    assert proc.returncode == 0, proc.stderr  # --from names the tool's image by its tag
    result = one_json(proc)
    assert (result["status"], result["from_digest"]) == ("delta", manifest_of(oci_registry, repo, "v1")[1]), result
    assert tree(tmp_path / "out") == {"x.bin": v2}
    readable(layout, "v2", manifest_of(oci_registry, repo, "v2")[0])
    run("skopeo", "inspect", "--raw", f"oci:{layout}:{name}")
    # the same tag again from the registry replaces the tool's entry (one entry per repository and tag)
    oras_push_file(host, f"{repo}:v1", tmp_path / "p3", "x.bin", edit(v2, 2, 13))
    moved = cli("pull", f"{host}/{repo}:v1", *common, "--from", "v2")
    assert moved.returncode == 0, moved.stderr
    names = [m["annotations"]["org.opencontainers.image.ref.name"]
             for m in json.loads((layout / "index.json").read_text())["manifests"]]
    named = f"{host.replace(':', '_')}/{repo}"
    assert sorted(names) == [f"{named}/v1", f"{named}/v2"], names
    readable(layout, "v1", manifest_of(oci_registry, repo, "v1")[0])


def readable(layout: Path, tag: str, manifest: bytes) -> None:
    """Valid (the modes of blobs another tool wrote are its own: oras writes 0444), skopeo reads ``tag`` by its name."""
    assert [p for p in layout_problems(layout) if not p.startswith("mode ")] == []
    verify_layout(OCILayout.open(layout, create=False))
    assert run("skopeo", "inspect", "--raw", f"oci:{layout}:{name_of(layout, tag)}").stdout.encode() == manifest


def test_list_shows_how_images_came(oci_registry: RegistryServer, versions: tuple[str, bytes, bytes],
                                    doras_server_factory: DorasServerFactory, tmp_path: Path) -> None:
    repo, _v1, _v2 = versions
    host = oci_registry.host
    server = doras_server_factory()
    layout = tmp_path / "L"
    empty = cli("list", "--oci-layout", str(tmp_path / "none"))
    assert empty.returncode == 2 and "does not exist" in empty.stderr
    for tag in ("v1", "v2"):
        assert cli("pull", f"{host}/{repo}:{tag}", "--oci-layout", str(layout), "--plain-http", "--server",
                   server.url).returncode == 0
    listed = cli("list", "--oci-layout", str(layout))
    assert listed.returncode == 0, listed.stderr
    header, first, second = listed.stdout.splitlines()
    assert header.split() == ["REPOSITORY", "TAG", "DIGEST", "SIZE", "PULLED", "NAME"]
    assert first.split()[:2] == [f"{host}/{repo}", "v1"] and " full " in first and "KiB" in first
    assert first.split()[-1] == f"{host.replace(':', '_')}/{repo}/v1"
    assert second.split()[:2] == [f"{host}/{repo}", "v2"] and "delta bsdiff+zstd" in second
    rows = one_json(cli("list", "--oci-layout", str(layout), "--json"))["images"]
    body, digest = manifest_of(oci_registry, repo, "v2")
    layer, _ = layer_of(oci_registry, repo, "v2")
    assert rows[1]["digest"] == digest and rows[1]["size"] == len(body) + int(str(layer["size"])) + 2
    assert [r["pulled_by"] for r in rows] == ["full", "delta bsdiff+zstd"]


def test_text_output_has_human_sizes(oci_registry: RegistryServer, versions: tuple[str, bytes, bytes],
                                     tmp_path: Path) -> None:
    repo, _v1, _v2 = versions
    proc = cli("pull", f"{oci_registry.host}/{repo}:v1", "--oci-layout", str(tmp_path / "L"), "--plain-http")
    assert proc.returncode == 0, proc.stderr
    assert " KiB received, 100% of a full pull (" in proc.stdout and " bytes" not in proc.stdout, proc.stdout
    gc = cli("gc", "--oci-layout", str(tmp_path / "L"), "--keep", "0", "--force")
    assert gc.returncode == 0 and "KiB freed" in gc.stdout, gc.stdout


def test_apply_refuses_what_nothing_verifies(tmp_path: Path) -> None:
    import bsdiff4

    base = payload(20000, 31)
    new = edit(base, 5, 32)
    wrong = payload(20000, 33)
    for name, data in (("base", base), ("wrong", wrong), ("delta", bsdiff4.diff(base, new))):
        (tmp_path / name).write_bytes(data)
    common = ["--delta", str(tmp_path / "delta"), "--output", str(tmp_path / "out"), "--json"]
    refused = cli("apply", "--base", str(tmp_path / "wrong"), *common)
    assert refused.returncode == 2 and "--expect-digest" in refused.stderr and "--allow-unverified" in refused.stderr
    assert not (tmp_path / "out").exists()
    checked = cli("apply", "--base", str(tmp_path / "wrong"), *common, "--expect-digest", sha256(new))
    assert checked.returncode == 1 and "expected " + sha256(new)[:15] in checked.stderr, checked.stderr
    assert not (tmp_path / "out").exists()
    loud = cli("apply", "--base", str(tmp_path / "wrong"), *common, "--allow-unverified")
    assert loud.returncode == 0 and one_json(loud)["verified"] is False
    assert "doras-oras: warning:" in loud.stderr and "NOT verified" in loud.stderr
    good = cli("apply", "--base", str(tmp_path / "base"), *common, "--expect-digest", sha256(new))
    assert good.returncode == 0 and one_json(good)["verified"] is True
    assert (tmp_path / "out").read_bytes() == new
    directory = cli("apply", "--base", str(tmp_path / "base"), "--delta", str(tmp_path / "delta"), "--output",
                    str(tmp_path), "--expect-digest", sha256(new))
    assert directory.returncode == 2 and f"--output {tmp_path} is a directory" in directory.stderr
    missing = cli("apply", "--base", str(tmp_path / "base"), "--delta", str(tmp_path / "delta"), "--output",
                  str(tmp_path / "nodir" / "out"), "--expect-digest", sha256(new))
    assert missing.returncode == 2 and f"the directory {tmp_path / 'nodir'} does not exist" in missing.stderr
    assert ".tmp" not in missing.stderr and "ingest" not in missing.stderr


def test_sigint_exits_130_and_changes_nothing(oci_registry: RegistryServer, versions: tuple[str, bytes, bytes],
                                              doras_server_factory: DorasServerFactory, tmp_path: Path) -> None:
    from doras_oras.testing.faultproxy import FaultProxy

    repo, _v1, _v2 = versions
    host = oci_registry.host
    server = doras_server_factory(build_delay_s=5)
    layout = tmp_path / "L"
    assert cli("pull", f"{host}/{repo}:v1", "--oci-layout", str(layout), "--plain-http").returncode == 0
    before = snapshot(layout)
    with FaultProxy(server.url) as front:
        proc = subprocess.Popen([sys.executable, "-m", "doras_oras", "pull", f"{host}/{repo}:v2", "--oci-layout",
                                 str(layout), "--plain-http", "--server", front.url, "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
        deadline = time.monotonic() + 30
        while not front.requests("/api/v1/delta/") and time.monotonic() < deadline:  # it waits for the delta
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "doras-oras: error: interrupted" in err and "Traceback" not in err
    assert json.loads(out)["exit_code"] == 130
    assert snapshot(layout) == before


def test_up_to_date_json_says_the_full_size_and_no_base(oci_registry: RegistryServer,
                                                        versions: tuple[str, bytes, bytes],
                                                        doras_server_factory: DorasServerFactory,
                                                        tmp_path: Path) -> None:
    """Up to date: ``full_size`` is what a full pull costs (not 0); nothing was patched, so ``from_digest``
    is null (not the target's digest), also with ``--from v1``."""
    repo, _v1, _v2 = versions
    server = doras_server_factory()
    common = ["--oci-layout", str(tmp_path / "L"), "--plain-http", "--json"]
    assert cli("pull", f"{oci_registry.host}/{repo}:v1", *common).returncode == 0
    full = one_json(cli("pull", f"{oci_registry.host}/{repo}:v2", *common))
    again = cli("pull", f"{oci_registry.host}/{repo}:v2", *common)
    assert again.returncode == 3, again.stderr
    assert (one_json(again)["full_size"], one_json(again)["from_digest"]) == (full["full_size"], None)
    assert full["full_size"] > 60000
    named = cli("pull", f"{oci_registry.host}/{repo}:v2", *common, "--server", server.url, "--from", "v1")
    assert named.returncode == 3 and one_json(named)["from_digest"] is None


def test_gc_keep_0_needs_force(oci_registry: RegistryServer, versions: tuple[str, bytes, bytes],
                               tmp_path: Path) -> None:
    repo, _v1, _v2 = versions
    layout = tmp_path / "L"
    assert cli("pull", f"{oci_registry.host}/{repo}:v1", "--oci-layout", str(layout), "--plain-http").returncode == 0
    before = snapshot(layout)
    refused = cli("gc", "--oci-layout", str(layout), "--keep", "0")
    assert refused.returncode == 2 and "add --force" in refused.stderr, refused.stderr
    assert snapshot(layout) == before  # nothing removed
    forced = cli("gc", "--oci-layout", str(layout), "--keep", "0", "--force", "--json")
    assert forced.returncode == 0 and len(one_json(forced)["removed_images"]) == 1

# ``doras-oras pull ... --server`` as a user runs it: one JSON object, exit codes, logs on stderr.

@dataclass
class CliBed:
    """A directory pushed as v1 and v2 with the oras CLI, a Doras server that builds for 0.5 s, a layout."""

    registry: RegistryServer
    host: str
    repo: str
    server_url: str
    layout: Path
    common: list[str]
    tmp_path: Path

    def pull(self, tag: str, *args: str) -> subprocess.CompletedProcess[str]:
        return cli("pull", f"{self.host}/{self.repo}:{tag}", *self.common, *args)


@pytest.fixture
def cli_bed(oci_registry: RegistryServer, doras_server_factory: DorasServerFactory, tmp_path: Path) -> CliBed:
    host = oci_registry.host
    repo = unique("cli")
    files = {"a.txt": b"alpha\n" * 200, "deep/b.bin": payload(30000, 3)}
    oras_push_dir(host, f"{repo}:v1", tmp_path / "p1", "tree", files)
    files["deep/b.bin"] = edit(files["deep/b.bin"], 4, 4)
    oras_push_dir(host, f"{repo}:v2", tmp_path / "p2", "tree", files)
    server = doras_server_factory(build_delay_s=0.5)
    layout = tmp_path / "L"
    common = ["--oci-layout", str(layout), "--server", server.url, "--plain-http", "--json"]
    return CliBed(oci_registry, host, repo, server.url, layout, common, tmp_path)


@pytest.fixture
def cli_bed_at_v1(cli_bed: CliBed) -> CliBed:
    """``cli_bed`` with v1 pulled into the layout."""
    first = cli_bed.pull("v1")
    assert first.returncode == 0, first.stderr
    return cli_bed


@pytest.fixture
def cli_bed_at_v2(cli_bed_at_v1: CliBed) -> CliBed:
    """``cli_bed`` with v1, then v2 (a delta) pulled into the layout."""
    second = cli_bed_at_v1.pull("v2")
    assert second.returncode == 0, second.stderr
    return cli_bed_at_v1


def test_cli_first_pull_is_full_with_one_json_summary_and_logs_on_stderr(cli_bed: CliBed) -> None:
    first = cli("-v", "pull", f"{cli_bed.host}/{cli_bed.repo}:v1", *cli_bed.common)
    assert first.returncode == 0, first.stderr
    summary = one_json(first)
    assert summary["status"] == "full" and summary["layout"] == str(cli_bed.layout)
    assert "doras-oras: info:" in first.stderr  # -v logs go to stderr only


def test_cli_async_pull_while_the_delta_builds_is_pending_exit_4_and_changes_nothing(cli_bed_at_v1: CliBed) -> None:
    # v2: the server builds for 0.5 s; --async reports pending (exit 4) and changes nothing
    before = snapshot(cli_bed_at_v1.layout)
    pending = cli_bed_at_v1.pull("v2", "--async")
    assert pending.returncode == 4, pending.stderr
    assert one_json(pending)["status"] == "pending"
    assert snapshot(cli_bed_at_v1.layout) == before


def test_cli_delta_pull_with_output_is_verified_and_writes_what_oras_pull_writes(cli_bed_at_v1: CliBed) -> None:
    bed = cli_bed_at_v1
    out = bed.tmp_path / "out"
    done = cli("-v", "pull", f"{bed.host}/{bed.repo}:v2", *bed.common, "--output", str(out))
    assert done.returncode == 0, done.stderr
    summary = one_json(done)
    assert (summary["status"], summary["algorithm"], summary["verified"]) == ("delta", "tardiff", True)
    assert summary["to_digest"] == manifest_of(bed.registry, bed.repo, "v2")[1]
    assert summary["bytes_received"] < summary["full_size"]
    assert summary["output"]
    oras_pull(bed.host, f"{bed.repo}:v2", bed.tmp_path / "oras-out")
    assert tree(out) == tree(bed.tmp_path / "oras-out") != {}
    check_layout(bed.layout, "v2")


def test_cli_pull_of_the_image_the_layout_holds_is_up_to_date_exit_3(cli_bed_at_v2: CliBed) -> None:
    again = cli_bed_at_v2.pull("v2")
    assert again.returncode == 3, again.stderr
    assert one_json(again)["status"] == "up-to-date"


def test_cli_pull_without_json_prints_one_line_for_people(cli_bed_at_v2: CliBed) -> None:
    bed = cli_bed_at_v2
    plain = cli("pull", f"{bed.host}/{bed.repo}:v2", "--oci-layout", str(bed.layout), "--server", bed.server_url,
                "--plain-http")
    assert plain.returncode == 3 and plain.stdout.count("\n") == 1 and "up to date" in plain.stdout


@dataclass
class ErrBed:
    """Two unrelated versions of a file pushed with the oras CLI, v1 pulled into a layout."""

    host: str
    repo: str
    server_url: str
    layout: Path
    common: list[str]
    before: tuple[bytes, list[str]]


@pytest.fixture
def err_bed(oci_registry: RegistryServer, doras_server_factory: DorasServerFactory, tmp_path: Path) -> ErrBed:
    host = oci_registry.host
    repo = unique("cli-err")
    oras_push_file(host, f"{repo}:v1", tmp_path / "p1", "x.bin", payload(5000, 1))
    oras_push_file(host, f"{repo}:v2", tmp_path / "p2", "x.bin", payload(5000, 2))
    server = doras_server_factory()
    layout = tmp_path / "L"
    common = ["--oci-layout", str(layout), "--server", server.url, "--plain-http", "--json"]
    assert cli("pull", f"{host}/{repo}:v1", *common).returncode == 0
    return ErrBed(host, repo, server.url, layout, common, snapshot(layout))


def test_cli_pull_of_a_missing_tag_exits_1_with_the_registry_error(err_bed: ErrBed) -> None:
    missing = cli("pull", f"{err_bed.host}/{err_bed.repo}:nope", *err_bed.common)
    assert missing.returncode == 1
    assert "doras-oras: error:" in missing.stderr and "404" in missing.stderr
    assert error_json(missing)["error"] == "RegistryError"
    assert snapshot(err_bed.layout) == err_bed.before


def test_cli_pull_over_max_size_is_refused_before_the_from_image_is_looked_up(err_bed: ErrBed) -> None:
    host, repo = err_bed.host, err_bed.repo
    # --from an image the layout does not hold: before that, the limit
    too_big = cli("pull", f"{host}/{repo}:v2", *err_bed.common, "--max-size", "1K", "--from", f"{host}/{repo}:v0")
    assert too_big.returncode == 1 and "more than the limit of 1024 bytes" in too_big.stderr
    assert snapshot(err_bed.layout) == err_bed.before


def test_cli_pull_from_an_image_the_layout_does_not_hold_is_a_clear_error(err_bed: ErrBed) -> None:
    host, repo = err_bed.host, err_bed.repo
    no_base = cli("pull", f"{host}/{repo}:v2", *err_bed.common, "--from", f"{host}/{repo}:v0")
    assert no_base.returncode == 1 and f"--from {host}/{repo}:v0: no such image" in no_base.stderr
    assert snapshot(err_bed.layout) == err_bed.before


@pytest.mark.parametrize(("case", "text"), [
    ("reference", "invalid"),
    ("no-layout", "--oci-layout"),
    ("accept", "invalid choice"),
    ("from-other-repository", "not in the repository"),
    ("from-bad", "doras-oras: error:"),
    ("budget", "invalid budget"),
])
def test_cli_pull_usage_errors_exit_2_and_change_nothing(err_bed: ErrBed, case: str, text: str) -> None:
    host, repo, common = err_bed.host, err_bed.repo, err_bed.common
    args = {
        "reference": ["pull", "no/such reference", *common],
        "no-layout": ["pull", f"{host}/{repo}:v1", "--server", err_bed.server_url],
        "accept": ["pull", f"{host}/{repo}:v1", *common, "--accept", "xdelta"],
        "from-other-repository": ["pull", f"{host}/{repo}:v1", *common, "--from", f"{host}/other:v1"],
        "from-bad": ["pull", f"{host}/{repo}:v1", *common, "--from", "@@bad"],
        "budget": ["pull", f"{host}/{repo}:v1", *common, "--budget", "lots"],
    }[case]
    proc = cli(*args)
    assert proc.returncode == 2, (args, proc.stderr)
    assert text in proc.stderr
    # flags argparse refuses print nothing on stdout; arguments refused later, one JSON error
    assert proc.stdout == "" or error_json(proc)["exit_code"] == 2
    assert "Traceback" not in proc.stderr
    assert snapshot(err_bed.layout) == err_bed.before


@pytest.fixture
def limits_bed(oci_registry: RegistryServer, tmp_path: Path) -> tuple[str, list[str], Path]:
    """A file v1, v2 pushed; v1 pulled under a budget of 60K/1d; returns (v2's reference, flags, layout)."""
    host = oci_registry.host
    repo = unique("cli-limits")
    data = payload(40000, 5)
    oras_push_file(host, f"{repo}:v1", tmp_path / "p1", "x.bin", data)
    oras_push_file(host, f"{repo}:v2", tmp_path / "p2", "x.bin", edit(data, 3, 6))
    layout = tmp_path / "L"
    common = ["--oci-layout", str(layout), "--plain-http", "--json"]
    assert cli("pull", f"{host}/{repo}:v1", *common, "--budget", "60K/1d").returncode == 0
    return f"{host}/{repo}:v2", common, layout


def test_cli_pull_over_budget_exits_1_and_changes_nothing(limits_bed: tuple[str, list[str], Path]) -> None:
    v2, common, layout = limits_bed
    before = snapshot(layout)
    over = cli("pull", v2, *common, "--budget", "60K/1d")
    assert over.returncode == 1 and error_json(over)["error"] == "BudgetExceededError"
    assert "budget of 61440 bytes per 86400 s" in over.stderr
    assert snapshot(layout) == before


def test_cli_pull_over_max_size_exits_1_and_changes_nothing(limits_bed: tuple[str, list[str], Path]) -> None:
    v2, common, layout = limits_bed
    before = snapshot(layout)
    big = cli("pull", v2, *common, "--max-size", "10K")
    assert big.returncode == 1 and "more than the limit of 10240 bytes" in big.stderr
    assert snapshot(layout) == before


def test_two_cli_pulls_at_once_one_delta_one_up_to_date(oci_registry: RegistryServer,
                                                        doras_server_factory: DorasServerFactory,
                                                        tmp_path: Path) -> None:
    host = oci_registry.host
    repo = unique("cli-twice")
    data = payload(50000, 8)
    oras_push_file(host, f"{repo}:v1", tmp_path / "p1", "x.bin", data)
    oras_push_file(host, f"{repo}:v2", tmp_path / "p2", "x.bin", edit(data, 5, 9))
    server = doras_server_factory(build_delay_s=0.3)
    layout = tmp_path / "L"
    common = ["--oci-layout", str(layout), "--server", server.url, "--plain-http", "--json"]
    assert cli("pull", f"{host}/{repo}:v1", *common).returncode == 0
    procs = [subprocess.Popen([sys.executable, "-m", "doras_oras", "pull", f"{host}/{repo}:v2", *common],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
             for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    codes = sorted(p.returncode for p in procs)
    statuses = sorted(json.loads(out)["status"] for out, _err in outputs)
    assert (codes, statuses) == ([0, 3], ["delta", "up-to-date"]), outputs
    check_layout(layout, "v2", manifest=manifest_of(oci_registry, repo, "v2")[0])
    assert server.builds == 1
