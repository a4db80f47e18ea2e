"""Unattended on a fleet (issue #22): a service manager's stop, read-only layouts, blobs that rot.

Against the real registry, the oras CLI and skopeo; the read-only layout is a read-only bind mount
(the tests run as root, for whom a mode alone makes nothing read-only).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from doras_oras.testing.faultproxy import FaultProxy
from doras_oras.testing.registry import RegistryServer
from tests.layout_support import REPO_ROOT, cli, one_json
from tests.pull_support import edit, oras_push_file, payload, snapshot, unique


@pytest.fixture
def versions(oci_registry: RegistryServer, tmp_path: Path) -> tuple[str, bytes, bytes]:
    """A repository with v1 and v2 of one file (``x.bin``), pushed with the oras CLI."""
    repo = unique("fleet")
    v1 = payload(60000, 21)
    v2 = edit(v1, 6, 22)
    oras_push_file(oci_registry.host, f"{repo}:v1", tmp_path / "p1", "x.bin", v1)
    oras_push_file(oci_registry.host, f"{repo}:v2", tmp_path / "p2", "x.bin", v2)
    return repo, v1, v2


def _partials(layout: Path) -> list[Path]:
    return sorted(p for p in (layout / "ingest").glob("*.partial") if p.stat().st_size > 0)


def test_sigterm_is_handled_as_sigint(oci_registry: RegistryServer, versions: tuple[str, bytes, bytes],
                                      tmp_path: Path) -> None:
    """SIGTERM mid-download: exit 143, one JSON object, index.json and blobs unchanged, the partial kept."""
    repo, _v1, _v2 = versions
    layout = tmp_path / "L"
    with FaultProxy(f"http://{oci_registry.host}") as front:
        host = urlsplit(front.url).netloc
        assert cli("pull", f"{host}/{repo}:v1", "--oci-layout", str(layout), "--plain-http").returncode == 0
        before = snapshot(layout)
        front.add("stall", r"/blobs/sha256:", after_bytes=30000, stall_s=60)
        proc = subprocess.Popen([sys.executable, "-m", "doras_oras", "pull", f"{host}/{repo}:v2", "--oci-layout",
                                 str(layout), "--plain-http", "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
        deadline = time.monotonic() + 30
        while not _partials(layout) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert _partials(layout), "the download never started"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert "doras-oras: error: terminated (SIGTERM)" in err and "Traceback" not in err
    [line] = out.splitlines()
    obj = json.loads(line)
    assert (obj["status"], obj["error"], obj["exit_code"]) == ("error", "Terminated", 143)
    assert snapshot(layout) == before
    assert _partials(layout)  # kept: the next run resumes it
