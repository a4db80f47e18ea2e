"""The layout lock guards the install transaction only, never the wait for the Doras server (#21)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from doras_oras.cli import EXIT_INTERRUPTED, EXIT_UP_TO_DATE
from doras_oras.testing.faultproxy import FaultProxy
from doras_oras.testing.pytest_plugin import DorasServerFactory
from doras_oras.testing.registry import RegistryServer
from tests.layout_support import REPO_ROOT, cli
from tests.pull_support import edit, oras_push_file, payload, unique


def test_an_up_to_date_poll_of_another_repository_runs_while_a_pull_waits_for_the_server(
        oci_registry: RegistryServer, doras_server_factory: DorasServerFactory, tmp_path: Path) -> None:
    """One pull waits for a delta (the server answers 202); a poll of another repository of the
    same layout, with ``--lock-timeout 0``, is answered up to date meanwhile."""
    host = oci_registry.host
    waiting, other = unique("lock-wait"), unique("lock-other")
    v1 = payload(40_000, 21)
    oras_push_file(host, f"{waiting}:v1", tmp_path / "p1", "x.bin", v1)
    oras_push_file(host, f"{waiting}:v2", tmp_path / "p2", "x.bin", edit(v1, 6, 22))
    oras_push_file(host, f"{other}:v1", tmp_path / "p3", "y.bin", payload(30_000, 23))
    layout = tmp_path / "L"
    for ref in (f"{host}/{waiting}:v1", f"{host}/{other}:v1"):
        assert cli("pull", ref, "--oci-layout", str(layout), "--plain-http").returncode == 0
    server = doras_server_factory(build_delay_s=60)  # every answer a 202 for longer than this test
    with FaultProxy(server.url) as front:
        proc = subprocess.Popen([sys.executable, "-m", "doras_oras", "pull", f"{host}/{waiting}:v2", "--oci-layout",
                                 str(layout), "--plain-http", "--server", front.url, "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
        try:
            deadline = time.monotonic() + 30
            while len(front.requests("/api/v1/delta/")) < 2 and time.monotonic() < deadline:  # polling: a 202 seen
                time.sleep(0.05)
            assert len(front.requests("/api/v1/delta/")) >= 2, "the pull never asked the server twice"
            poll = cli("pull", f"{host}/{other}:v1", "--oci-layout", str(layout), "--plain-http",
                       "--lock-timeout", "0", "--json")
            assert proc.poll() is None, "the waiting pull ended before the poll was made"
        finally:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=30)
    assert poll.returncode == EXIT_UP_TO_DATE, poll.stderr
    assert json.loads(poll.stdout)["status"] == "up-to-date"
    assert proc.returncode == EXIT_INTERRUPTED


def test_an_up_to_date_poll_takes_no_lock(oci_registry: RegistryServer, tmp_path: Path) -> None:
    """An up-to-date poll writes nothing, so it reads the layout without its lock: answered up to date
    (one conditional GET) while another process holds the lock, with ``--lock-timeout 0``."""
    from doras_oras.layout import OCILayout

    name = unique("lock-held")
    oras_push_file(oci_registry.host, f"{name}:v1", tmp_path / "p", "x.bin", payload(20_000, 31))
    layout = tmp_path / "L"
    ref = f"{oci_registry.host}/{name}:v1"
    assert cli("pull", ref, "--oci-layout", str(layout), "--plain-http").returncode == 0
    with OCILayout.open(layout).lock(timeout=5):
        poll = cli("pull", ref, "--oci-layout", str(layout), "--plain-http", "--lock-timeout", "0", "--json")
    assert poll.returncode == EXIT_UP_TO_DATE, poll.stderr
