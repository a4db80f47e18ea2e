"""``doras-oras pull ... --server`` as a user runs it: one JSON object, exit codes, logs on stderr."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from doras_oras.testing.pytest_plugin import DorasServerFactory
from doras_oras.testing.registry import RegistryServer
from tests.layout_support import cli, error_json, one_json
from tests.pull_support import (
    check_layout,
    edit,
    manifest_of,
    oras_pull,
    oras_push_dir,
    oras_push_file,
    payload,
    snapshot,
    tree,
    unique,
)


def test_cli_pull_exit_codes_and_json(oci_registry: RegistryServer, doras_server_factory: DorasServerFactory,
                                      tmp_path: Path) -> None:
    host = oci_registry.host
    repo = unique("cli")
    files = {"a.txt": b"alpha\n" * 200, "deep/b.bin": payload(30000, 3)}
    oras_push_dir(host, f"{repo}:v1", tmp_path / "p1", "tree", files)
    files["deep/b.bin"] = edit(files["deep/b.bin"], 4, 4)
    oras_push_dir(host, f"{repo}:v2", tmp_path / "p2", "tree", files)
    server = doras_server_factory(build_delay_s=0.5)
    layout = tmp_path / "L"
    common = ["--oci-layout", str(layout), "--server", server.url, "--plain-http", "--json"]

    first = cli("-v", "pull", f"{host}/{repo}:v1", *common)
    assert first.returncode == 0, first.stderr
    summary = one_json(first)
    assert summary["status"] == "full" and summary["layout"] == str(layout)
    assert "doras-oras: info:" in first.stderr  # -v logs go to stderr only

    # v2: the server builds for 0.5 s; --async reports pending (exit 4) and changes nothing
    before = snapshot(layout)
    pending = cli("pull", f"{host}/{repo}:v2", *common, "--async")
    assert pending.returncode == 4, pending.stderr
    assert one_json(pending)["status"] == "pending"
    assert snapshot(layout) == before

    out = tmp_path / "out"
    done = cli("-v", "pull", f"{host}/{repo}:v2", *common, "--output", str(out))
    assert done.returncode == 0, done.stderr
    summary = one_json(done)
    assert (summary["status"], summary["algorithm"], summary["verified"]) == ("delta", "tardiff", True)
    assert summary["to_digest"] == manifest_of(oci_registry, repo, "v2")[1]
    assert summary["bytes_received"] < summary["full_size"]
    assert summary["output"]
    oras_pull(host, f"{repo}:v2", tmp_path / "oras-out")
    assert tree(out) == tree(tmp_path / "oras-out") != {}
    check_layout(layout, "v2")

    again = cli("pull", f"{host}/{repo}:v2", *common)
    assert again.returncode == 3, again.stderr
    assert one_json(again)["status"] == "up-to-date"

    # without --json: one line for people
    plain = cli("pull", f"{host}/{repo}:v2", "--oci-layout", str(layout), "--server", server.url, "--plain-http")
    assert plain.returncode == 3 and plain.stdout.count("\n") == 1 and "up to date" in plain.stdout


def test_cli_pull_errors_and_usage(oci_registry: RegistryServer, doras_server_factory: DorasServerFactory,
                                   tmp_path: Path) -> None:
    host = oci_registry.host
    repo = unique("cli-err")
    oras_push_file(host, f"{repo}:v1", tmp_path / "p1", "x.bin", payload(5000, 1))
    oras_push_file(host, f"{repo}:v2", tmp_path / "p2", "x.bin", payload(5000, 2))
    server = doras_server_factory()
    layout = tmp_path / "L"
    common = ["--oci-layout", str(layout), "--server", server.url, "--plain-http", "--json"]
    assert cli("pull", f"{host}/{repo}:v1", *common).returncode == 0
    before = snapshot(layout)

    missing = cli("pull", f"{host}/{repo}:nope", *common)
    assert missing.returncode == 1
    assert "doras-oras: error:" in missing.stderr and "404" in missing.stderr
    assert error_json(missing)["error"] == "RegistryError"
    # --from an image the layout does not hold: a clear error (before that, the limit)
    too_big = cli("pull", f"{host}/{repo}:v2", *common, "--max-size", "1K", "--from", f"{host}/{repo}:v0")
    assert too_big.returncode == 1 and "more than the limit of 1024 bytes" in too_big.stderr
    no_base = cli("pull", f"{host}/{repo}:v2", *common, "--from", f"{host}/{repo}:v0")
    assert no_base.returncode == 1 and f"--from {host}/{repo}:v0: no such image" in no_base.stderr
    for args, text in (
        (["pull", "no/such reference", *common], "invalid"),
        (["pull", f"{host}/{repo}:v1", "--server", server.url], "--oci-layout"),
        (["pull", f"{host}/{repo}:v1", *common, "--accept", "xdelta"], "invalid choice"),
        (["pull", f"{host}/{repo}:v1", *common, "--from", f"{host}/other:v1"], "not in the repository"),
        (["pull", f"{host}/{repo}:v1", *common, "--from", "@@bad"], "doras-oras: error:"),
        (["pull", f"{host}/{repo}:v1", *common, "--budget", "lots"], "invalid budget"),
    ):
        proc = cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert text in proc.stderr
        # flags argparse refuses print nothing on stdout; arguments refused later, one JSON error
        assert proc.stdout == "" or error_json(proc)["exit_code"] == 2
        assert "Traceback" not in proc.stderr
    assert snapshot(layout) == before


def test_cli_limits_exit_1_and_change_nothing(oci_registry: RegistryServer, tmp_path: Path) -> None:
    host = oci_registry.host
    repo = unique("cli-limits")
    data = payload(40000, 5)
    oras_push_file(host, f"{repo}:v1", tmp_path / "p1", "x.bin", data)
    oras_push_file(host, f"{repo}:v2", tmp_path / "p2", "x.bin", edit(data, 3, 6))
    layout = tmp_path / "L"
    common = ["--oci-layout", str(layout), "--plain-http", "--json"]
    assert cli("pull", f"{host}/{repo}:v1", *common, "--budget", "60K/1d").returncode == 0
    before = snapshot(layout)
    over = cli("pull", f"{host}/{repo}:v2", *common, "--budget", "60K/1d")
    assert over.returncode == 1 and error_json(over)["error"] == "BudgetExceededError"
    assert "budget of 61440 bytes per 86400 s" in over.stderr
    big = cli("pull", f"{host}/{repo}:v2", *common, "--max-size", "10K")
    assert big.returncode == 1 and "more than the limit of 10240 bytes" in big.stderr
    assert snapshot(layout) == before


def test_two_cli_pulls_at_once_one_delta_one_up_to_date(oci_registry: RegistryServer,
                                                        doras_server_factory: DorasServerFactory,
                                                        tmp_path: Path) -> None:
    import sys

    from tests.layout_support import REPO_ROOT

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
