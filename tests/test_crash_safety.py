"""Crash safety: SIGKILL at random instants of a pull; a full disk; two pulls at once."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from doras_oras.errors import DiskSpaceError, LayoutError
from doras_oras.layout import OCILayout, verify_layout
from doras_oras.registry import DeltaRegistry
from doras_oras.testing.registry import RegistryServer, find_tool
from tests.layout_support import REPO_ROOT, cli, layout_problems, oras_push_file, run

HOLD_ENV = "CRASH_TEST_HOLD_BEFORE_INDEX"
"""Seconds the driver sleeps after the blobs are in place and before index.json is replaced."""

DRIVER = """
import os, sys, time
from doras_oras.layout import OCILayout, verify_layout
from doras_oras.registry import DeltaRegistry
hold = os.environ.get("CRASH_TEST_HOLD_BEFORE_INDEX")
if hold:  # the test's hook (not the library's): stop where a kill must leave the old index
    write_index = OCILayout.write_index
    def held(self, entries):
        time.sleep(float(hold))
        write_index(self, entries)
    OCILayout.write_index = held
layout = OCILayout.open(sys.argv[2])
client = DeltaRegistry(insecure=True)
client.resolve(sys.argv[1])  # warm up the connection before the timed part
print("ready", flush=True)
client.pull_full(sys.argv[1], layout)
print("done", flush=True)
"""

LAYERS = 4
LAYER_SIZE = 8 << 20


def push_multi_layer(registry: RegistryServer, ref: str, directory: Path, seed: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    names = []
    for n in range(LAYERS):
        name = f"part{n}.bin"
        (directory / name).write_bytes(rng.randbytes(LAYER_SIZE))
        names.append(name)
    run(find_tool("oras"), "push", "--plain-http", f"{registry.host}/{ref}", *names, cwd=directory)


def entries(layout_dir: Path) -> dict[str | None, str]:
    return {image.tag: image.descriptor.digest for image in OCILayout.open(layout_dir, create=False).images()}


def check_after_kill(layout_dir: Path, old_digest: str, new_digest: str) -> str:
    """The layout is valid, v1 intact, v2 absent or complete. Returns what the kill left."""
    assert layout_problems(layout_dir) == []
    layout = OCILayout.open(layout_dir)
    verify_layout(layout)
    found = entries(layout_dir)
    assert found["v1"] == old_digest
    assert found.get("v2") in (None, new_digest)
    if found.get("v2") == new_digest:
        return "committed"
    leftovers = [p for p in (layout_dir / "ingest").iterdir() if p.name != "lock"]
    blobs = len(list((layout_dir / "blobs" / "sha256").iterdir()))
    return "mid-way" if leftovers or blobs > 3 else "before"


def test_sigkill_at_random_instants_leaves_a_valid_layout(oci_registry: RegistryServer, tmp_path: Path) -> None:
    oras_push_file(oci_registry.host, "crash/app:v1", tmp_path, "small.txt", b"the old image\n")
    push_multi_layer(oci_registry, "crash/app:v2", tmp_path / "v2", seed=7)
    client = DeltaRegistry(insecure=True)
    base = tmp_path / "base"
    old_digest = client.pull_full(f"{oci_registry.host}/crash/app:v1", OCILayout.open(base)).manifest.digest
    new_digest = client.resolve(f"{oci_registry.host}/crash/app:v2").digest
    # how long does the pull take (the window the kills aim at)?
    scratch = tmp_path / "scratch"
    shutil.copytree(base, scratch)
    start = time.monotonic()
    client.pull_full(f"{oci_registry.host}/crash/app:v2", OCILayout.open(scratch))
    window = time.monotonic() - start
    ref = f"{oci_registry.host}/crash/app:v2"
    rng = random.Random(20261126)
    outcomes: Counter[str] = Counter()
    runs = 36
    for attempt in range(runs):
        layout_dir = tmp_path / f"run{attempt}"
        shutil.copytree(base, layout_dir)
        env = dict(os.environ)
        hooked = attempt % 6 == 5  # every sixth: stop between the last blob rename and index.json
        if hooked:
            env[HOLD_ENV] = "30"
        proc = subprocess.Popen([sys.executable, "-c", DRIVER, ref, str(layout_dir)], stdout=subprocess.PIPE,
                                text=True, cwd=REPO_ROOT, env=env)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            if hooked:
                deadline = time.monotonic() + 60
                blobs = layout_dir / "blobs" / "sha256"
                while len(list(blobs.iterdir())) < 3 + LAYERS + 1 and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert len(list(blobs.iterdir())) == 3 + LAYERS + 1  # every new blob renamed into place
                time.sleep(0.05)
            else:
                time.sleep(rng.uniform(0, window * 1.3))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=30)
        outcome = check_after_kill(layout_dir, old_digest, new_digest)
        if hooked:
            assert outcome == "mid-way"  # all blobs there, index.json still the old one
        outcomes[outcome] += 1
        # the next pull succeeds, and cleans what the killed one left
        result = DeltaRegistry(insecure=True).pull_full(ref, OCILayout.open(layout_dir))
        assert result.manifest.digest == new_digest
        assert entries(layout_dir) == {"v1": old_digest, "v2": new_digest}
        assert layout_problems(layout_dir) == []
        assert [p.name for p in (layout_dir / "ingest").iterdir()] == ["lock"]
        shutil.rmtree(layout_dir)
    print(f"kill outcomes over {runs} runs (pull window {window:.2f} s): {dict(outcomes)}")
    assert sum(outcomes.values()) == runs
    assert outcomes["mid-way"] >= 10


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True,
                   capture_output=True, timeout=30)


def _umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], check=False, capture_output=True, timeout=30)


def test_disk_full_keeps_the_old_index(oci_registry: RegistryServer, tmp_path: Path) -> None:
    mount = tmp_path / "small"
    _mount_tmpfs(mount, "2m")
    try:
        layout_dir = mount / "L"
        client = DeltaRegistry(insecure=True)
        oras_push_file(oci_registry.host, "full/app:v1", tmp_path, "a.txt", b"small\n")
        old = client.pull_full(f"{oci_registry.host}/full/app:v1", OCILayout.open(layout_dir)).manifest.digest
        index_before = (layout_dir / "index.json").read_bytes()
        # (a) a layer larger than the disk: refused before its first byte is asked for
        oras_push_file(oci_registry.host, "full/app:v2", tmp_path, "big.bin", os.urandom(3 << 20))
        received = client.bytes_received
        with pytest.raises(DiskSpaceError, match=r"needs \d+ bytes on the file system of .*, which has \d+ bytes free"):
            client.pull_full(f"{oci_registry.host}/full/app:v2", OCILayout.open(layout_dir))
        assert client.bytes_received - received < 4096  # the manifest only
        assert (layout_dir / "index.json").read_bytes() == index_before
        assert layout_problems(layout_dir) == []
        assert [p.name for p in (layout_dir / "ingest").iterdir()] == ["lock"]
        # (b) blobs fit, index.json does not: fill the disk to two free pages (the layer and the
        # manifest: what the free-space check asks for; the empty config is stored), so the disk fills anyway
        oras_push_file(oci_registry.host, "full/app:v3", tmp_path, "c.txt", b"tiny\n")
        stat = os.statvfs(mount)
        filler = mount / "filler"
        with filler.open("wb") as handle:
            handle.write(b"\0" * ((stat.f_bavail - 2) * stat.f_bsize))
        with pytest.raises(LayoutError, match="no space left"):
            client.pull_full(f"{oci_registry.host}/full/app:v3", OCILayout.open(layout_dir))
        assert (layout_dir / "index.json").read_bytes() == index_before
        assert entries(layout_dir) == {"v1": old}
        assert layout_problems(layout_dir) == []
        filler.unlink()
        client.pull_full(f"{oci_registry.host}/full/app:v3", OCILayout.open(layout_dir))
        assert set(entries(layout_dir)) == {"v1", "v3"}
        assert layout_problems(layout_dir) == []
    finally:
        _umount(mount)


def test_two_processes_pulling_into_one_layout(oci_registry: RegistryServer, tmp_path: Path) -> None:
    for n, tag in enumerate(("v1", "v2", "v3"), start=1):
        push_multi_layer(oci_registry, f"both/app:{tag}", tmp_path / tag, seed=n)
    layout_dir = tmp_path / "L"
    # two images at once: both pulled; the same image twice at once: the lock lets one pull it,
    # the other then finds it there (up to date, exit 3); what the layout holds: both up to date
    for round_tags, expected in ((("v1", "v2"), {(0, "full")}),
                                 (("v3", "v3"), {(0, "full"), (3, "up-to-date")}),
                                 (("v2", "v3"), {(3, "up-to-date")})):
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "doras_oras", "pull", f"{oci_registry.host}/both/app:{tag}",
                 "--oci-layout", str(layout_dir), "--plain-http", "--json"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
            )
            for tag in round_tags
        ]
        outputs = [p.communicate(timeout=120) for p in procs]
        seen = {(proc.returncode, json.loads(out)["status"]) for proc, (out, _err) in zip(procs, outputs, strict=True)}
        assert seen == expected, [err for _out, err in outputs]
        assert layout_problems(layout_dir) == []
    assert set(entries(layout_dir)) == {"v1", "v2", "v3"}
    proc = cli("pull", f"{oci_registry.host}/both/app:v1", "--oci-layout", str(layout_dir), "--plain-http", "--json")
    assert proc.returncode == 3 and json.loads(proc.stdout)["status"] == "up-to-date"
