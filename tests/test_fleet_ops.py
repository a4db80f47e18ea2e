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
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from doras_oras.layout import OCILayout, fsck
from doras_oras.testing.faultproxy import FaultProxy
from doras_oras.testing.registry import RegistryServer
from tests.layout_support import REPO_ROOT, cli, name_of, one_json, run
from tests.pull_support import check_layout, snapshot


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


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Callable[[Path], Path]]:
    """``view(dir)``: a read-only bind mount of ``dir`` (unmounted at teardown)."""
    mounts: list[Path] = []

    def view(directory: Path) -> Path:
        target = tmp_path / f"ro{len(mounts)}"
        target.mkdir()
        subprocess.run(["mount", "--bind", str(directory), str(target)], check=True)
        mounts.append(target)
        subprocess.run(["mount", "-o", "remount,ro,bind", str(target)], check=True)
        return target

    yield view
    for target in reversed(mounts):
        subprocess.run(["umount", str(target)], check=True)


@pytest.fixture
def pulled(oci_registry: RegistryServer, versions: tuple[str, bytes, bytes], tmp_path: Path) -> tuple[str, Path]:
    """A layout holding v1 (a full pull); the reference of the repository."""
    repo, _v1, _v2 = versions
    layout = tmp_path / "L"
    proc = cli("pull", f"{oci_registry.host}/{repo}:v1", "--oci-layout", str(layout), "--plain-http")
    assert proc.returncode == 0, proc.stderr
    return f"{oci_registry.host}/{repo}", layout


def test_up_to_date_poll_on_a_read_only_layout_exits_3(pulled: tuple[str, Path],
                                                        read_only: Callable[[Path], Path]) -> None:
    repo, layout = pulled
    view = read_only(layout)
    proc = cli("pull", f"{repo}:v1", "--oci-layout", str(view), "--plain-http", "--json")
    assert proc.returncode == 3, proc.stderr
    assert one_json(proc)["status"] == "up-to-date"


def test_writes_to_a_read_only_layout_name_the_fix(pulled: tuple[str, Path],
                                                   read_only: Callable[[Path], Path]) -> None:
    """gc, fsck --repair and a pull with something to fetch: exit 1, LayoutError, fix read-only-layout."""
    repo, layout = pulled
    view = read_only(layout)
    before = snapshot(layout)
    for args in (["gc", "--keep", "0", "--force"], ["gc", "--rebuild", "--keep", "1"], ["fsck", "--repair"],
                 ["pull", f"{repo}:v2", "--plain-http"]):
        proc = cli(*args, "--oci-layout", str(view), "--json")
        assert proc.returncode == 1, (args, proc.stderr)
        error = one_json(proc)
        assert (error["error"], error["fix"]) == ("LayoutError", "read-only-layout"), (args, error)
        assert f"make {view} writable" in error["hint"] and "Traceback" not in proc.stderr
    assert snapshot(layout) == before


def _rot(layout: Path, tag: str) -> str:
    """Flip one byte of ``tag``'s layer (the size stays); return the layer's digest."""
    manifest = json.loads(run("skopeo", "inspect", "--raw", f"oci:{layout}:{name_of(layout, tag)}").stdout)
    digest = str(manifest["layers"][0]["digest"])
    path = layout / "blobs" / "sha256" / digest.split(":")[1]
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return digest


def test_fsck_names_a_rotted_image_and_changes_nothing(pulled: tuple[str, Path]) -> None:
    repo, layout = pulled
    assert cli("pull", f"{repo}:v2", "--oci-layout", str(layout), "--plain-http").returncode == 0
    assert cli("fsck", "--oci-layout", str(layout)).returncode == 0
    bad = _rot(layout, "v2")
    assert cli("pull", f"{repo}:v2", "--oci-layout", str(layout), "--plain-http").returncode == 3  # pull trusts it
    before = snapshot(layout)
    proc = cli("fsck", "--oci-layout", str(layout), "--json")
    assert proc.returncode == 1, proc.stderr
    report = one_json(proc)
    assert (report["status"], report["repaired"], report["checked_images"]) == ("damaged", False, 2)
    [damage] = report["damaged"]
    assert (damage["repository"], damage["tag"]) == (repo, "v2")
    assert [p for p in damage["problems"] if bad in p and "corrupt" in p] == damage["problems"]
    assert snapshot(layout) == before  # without --repair nothing is written or removed
    text = cli("fsck", "--oci-layout", str(layout))
    assert text.returncode == 1 and f"damaged: {repo}:v2" in text.stdout and "--repair" in text.stdout


def test_fsck_repair_drops_the_rotted_image_so_the_next_pull_fetches_it(pulled: tuple[str, Path]) -> None:
    repo, layout = pulled
    assert cli("pull", f"{repo}:v2", "--oci-layout", str(layout), "--plain-http").returncode == 0
    bad = _rot(layout, "v2")
    proc = cli("fsck", "--oci-layout", str(layout), "--repair", "--json")
    assert proc.returncode == 1, proc.stderr
    report = one_json(proc)
    assert (report.get("status"), report.get("repaired"), report.get("removed_blobs")) == ("repaired", True, 2), proc.stderr
    tags = [image.tag for image in OCILayout.open(layout, create=False).images()]
    assert tags == ["v1"]
    assert not (layout / "blobs" / "sha256" / bad.split(":")[1]).exists()
    check_layout(layout, "v1")  # v1's blobs (the config is shared with v2) are all there
    assert cli("fsck", "--oci-layout", str(layout)).returncode == 0
    again = cli("pull", f"{repo}:v2", "--oci-layout", str(layout), "--plain-http", "--json")
    assert again.returncode == 0 and one_json(again)["status"] == "full", again.stderr
    assert cli("fsck", "--oci-layout", str(layout)).returncode == 0


def test_fsck_repair_rebuilds_a_corrupt_index(pulled: tuple[str, Path]) -> None:
    _repo, layout = pulled
    (layout / "index.json").write_text('{"schemaVersion": 2, "manif')
    found = cli("fsck", "--oci-layout", str(layout), "--json")
    assert found.returncode == 1
    assert one_json(found)["index_problem"] and not one_json(found)["index_recovered"]
    assert (layout / "index.json").read_text() == '{"schemaVersion": 2, "manif'  # nothing written
    repaired = cli("fsck", "--oci-layout", str(layout), "--repair", "--json")
    assert repaired.returncode == 1
    report = one_json(repaired)
    assert (report["status"], report["index_recovered"], report["checked_images"]) == ("repaired", True, 1)
    assert (layout / "index.json.corrupt").read_text() == '{"schemaVersion": 2, "manif'
    assert cli("fsck", "--oci-layout", str(layout)).returncode == 0


def test_pull_recovers_a_corrupt_index_by_itself(pulled: tuple[str, Path]) -> None:
    """A cron job's pull does not fail on every run: index.json is rebuilt, the image found up to date."""
    repo, layout = pulled
    (layout / "index.json").write_bytes(b"\0" * 100)
    proc = cli("pull", f"{repo}:v1", "--oci-layout", str(layout), "--plain-http", "--json")
    assert proc.returncode == 3, proc.stderr
    assert "index.json" in proc.stderr  # the warning says what happened
    assert (layout / "index.json.corrupt").read_bytes() == b"\0" * 100
    check_layout(layout, "v1")


def test_fsck_library_call_hashes_each_blob_once(pulled: tuple[str, Path]) -> None:
    """``OCILayout.fsck``: two images sharing a config: 3 + 2 distinct blobs, the shared one hashed once."""
    repo, layout = pulled
    assert cli("pull", f"{repo}:v2", "--oci-layout", str(layout), "--plain-http").returncode == 0
    store = OCILayout.open(layout, create=False)
    with store.lock():
        result = fsck(store)
    assert (result.clean, result.checked_images, result.checked_blobs) == (True, 2, 5)


def test_fsck_checks_a_read_only_layout(pulled: tuple[str, Path], read_only: Callable[[Path], Path]) -> None:
    """Without --repair fsck only reads: it names the damage on a read-only layout too."""
    _repo, layout = pulled
    _rot(layout, "v1")
    view = read_only(layout)
    proc = cli("fsck", "--oci-layout", str(view), "--json")
    assert proc.returncode == 1, proc.stderr
    assert one_json(proc)["status"] == "damaged"
