"""The progress bar and the spinner (issue #15): on a terminal's stderr only, never on stdout,
never with ``--json`` or ``--no-progress``, never into a pipe.

The terminal is a pseudo-terminal (``pty``); the peers are the real registry and the test server.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from doras_oras.testing.pytest_plugin import DorasServerFactory
from doras_oras.testing.registry import RegistryServer
from tests.cli_support import on_terminal
from tests.layout_support import cli
from tests.pull_support import edit, oras_push_file, payload, unique

BAR = "] "  # "  pulling [#####-----]  1.2 MiB / 4.0 MiB"
SPINNER = "the Doras server is building the delta"


@pytest.fixture
def repo(oci_registry: RegistryServer, tmp_path: Path) -> str:
    name = unique("progress")
    data = payload(3 << 20, 41)
    oras_push_file(oci_registry.host, f"{name}:v1", tmp_path / "p1", "x.bin", data)
    oras_push_file(oci_registry.host, f"{name}:v2", tmp_path / "p2", "x.bin", edit(data, 10, 42))
    oras_push_file(oci_registry.host, f"{name}:v3", tmp_path / "p3", "x.bin", edit(data, 10, 43))
    return f"{oci_registry.host}/{name}"


def test_a_full_pull_draws_a_bar_on_the_terminal_only(repo: str, tmp_path: Path) -> None:
    code, stdout, stderr = on_terminal("pull", f"{repo}:v1", "--oci-layout", str(tmp_path / "A"), "--plain-http")
    assert code == 0, stderr
    assert "pulling [" in stderr and BAR in stderr and "MiB / 3.0 MiB" in stderr, stderr
    assert stdout.count("\n") == 1 and "\r" not in stdout and "[#" not in stdout, stdout


@pytest.mark.parametrize("extra", [["--json"], ["--no-progress"]])
def test_no_bar_on_the_terminal_with_json_or_no_progress(repo: str, tmp_path: Path, extra: list[str]) -> None:
    code, _stdout, stderr = on_terminal("pull", f"{repo}:v1", "--oci-layout", str(tmp_path / extra[0]),
                                       "--plain-http", *extra)
    assert code == 0, stderr
    assert "[#" not in stderr and "pulling" not in stderr, (extra, stderr)


def test_nothing_on_stderr_into_a_pipe(repo: str, tmp_path: Path) -> None:
    piped = cli("pull", f"{repo}:v1", "--oci-layout", str(tmp_path / "piped"), "--plain-http")
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr


def test_no_bar_when_only_stdout_is_a_terminal(repo: str, tmp_path: Path) -> None:
    # stdout on a terminal, stderr a pipe: no bar anywhere
    code, stdout, stderr = on_terminal("pull", f"{repo}:v1", "--oci-layout", str(tmp_path / "B"), "--plain-http",
                                       stdout_tty=True, stderr_tty=False)
    assert code == 0 and "[#" not in stdout + stderr and stdout.count("\n") == 1, (stdout, stderr)


def test_a_spinner_while_the_server_builds(repo: str, tmp_path: Path,
                                           doras_server_factory: DorasServerFactory) -> None:
    server = doras_server_factory(build_delay_s=2.0)
    layout = str(tmp_path / "L")
    assert cli("pull", f"{repo}:v1", "--oci-layout", layout, "--plain-http").returncode == 0
    code, stdout, stderr = on_terminal("pull", f"{repo}:v2", "--oci-layout", layout, "--plain-http",
                                       "--server", server.url)
    assert code == 0, stderr
    assert SPINNER in stderr and " s (1 request)" in stderr, stderr
    frames = {line.split(" ", 1)[0] for line in stderr.split("\r") if SPINNER in line}
    assert len(frames) > 1, frames  # it moves between the server's answers
    assert "by delta bsdiff+zstd" in stdout and SPINNER not in stdout and "\r" not in stdout


def test_no_spinner_with_json_while_the_server_builds(repo: str, tmp_path: Path,
                                                      doras_server_factory: DorasServerFactory) -> None:
    server2 = doras_server_factory(build_delay_s=1.0)
    other = str(tmp_path / "M")
    assert cli("pull", f"{repo}:v1", "--oci-layout", other, "--plain-http").returncode == 0
    code, stdout, stderr = on_terminal("pull", f"{repo}:v3", "--oci-layout", other, "--plain-http",
                                       "--server", server2.url, "--json")
    assert code == 0 and SPINNER not in stderr and "[#" not in stderr, stderr
    result = json.loads(stdout)
    assert result["status"] == "delta"
    assert server2.delta_requests >= 2  # it did wait for the server: a 202, then the answer
