"""Bounded disk: ``max_size`` bounds what is written, unpacked bytes included; free space is checked
before the first blob byte (the layout's file system, the output directory's; a delta's scratch)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from doras_oras import DeltaRegistry
from doras_oras.errors import ArtifactTooLargeError, DiskSpaceError
from doras_oras.testing.registry import RegistryServer
from doras_oras.testing.server import DorasServer
from tests.pull_support import edit, oras_push_dir, oras_push_file, payload, tree, unique


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (the tests run as root), unmounted afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True,
                   capture_output=True, timeout=30)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False, capture_output=True, timeout=30)


def index_of(layout: Path) -> list[str]:
    return [m["digest"] for m in json.loads((layout / "index.json").read_text())["manifests"]]


def test_max_size_bounds_the_unpacked_bytes(oci_registry: RegistryServer, tmp_path: Path) -> None:
    """A directory of 4 MiB of zeros is a layer of a few KiB: under a 512 KiB bound, refused while unpacking."""
    repo = unique("bomb")
    oras_push_dir(oci_registry.host, f"{repo}:v1", tmp_path / "push", "dir", {"zeros.bin": bytes(4 << 20)})
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_bytes(b"the user's\n")
    client = DeltaRegistry(insecure=True)
    with pytest.raises(ArtifactTooLargeError, match="exceed the limit of 524288 bytes") as caught:
        client.pull_delta(f"{oci_registry.host}/{repo}:v1", tmp_path / "L", doras_url=None,
                          max_size=512 << 10, output_dir=out)
    assert caught.value.fix is not None and caught.value.fix.value == "max-size"
    assert tree(out) == {"mine.txt": b"the user's\n"} and sorted(os.listdir(out)) == ["mine.txt"]
    assert not (tmp_path / "L").exists()  # the layout this pull created is removed again


def test_output_that_cannot_fit_is_refused_before_the_download(oci_registry: RegistryServer, tmp_path: Path,
                                                               small_disk: Path) -> None:
    repo = unique("disk-out")
    oras_push_file(oci_registry.host, f"{repo}:v1", tmp_path / "push", "big.bin", os.urandom(5 << 20))
    client = DeltaRegistry(insecure=True)
    with pytest.raises(DiskSpaceError, match=f"file system of {small_disk}") as caught:
        client.pull_delta(f"{oci_registry.host}/{repo}:v1", tmp_path / "L", doras_url=None,
                          output_dir=small_disk / "out")
    assert caught.value.fix is not None and caught.value.fix.value == "disk-space"
    assert client.bytes_received < 4096  # the manifest, not a byte of the layer
    assert list(small_disk.iterdir()) == []


def delta_bed(registry: RegistryServer, server: DorasServer, tmp_path: Path, layout: Path) -> str:
    """v1 (1 MiB) pulled into ``layout``; v2 (2,000 scattered edits: a delta of ~20 KB) pushed. Returns v2's ref."""
    repo = unique("disk-delta")
    v1 = payload(1 << 20, 1)
    oras_push_file(registry.host, f"{repo}:v1", tmp_path / "p1", "app.bin", v1)
    oras_push_file(registry.host, f"{repo}:v2", tmp_path / "p2", "app.bin", edit(v1, 2000, 2))
    first = DeltaRegistry(insecure=True).pull_delta(f"{registry.host}/{repo}:v1", layout, doras_url=server.url)
    assert first.status == "full"
    return f"{registry.host}/{repo}:v2"


def leave_free(mount: Path, pages: int) -> None:
    """Fill ``mount`` until ``pages`` pages are free."""
    stat = os.statvfs(mount)
    with (mount / "filler").open("wb") as handle:
        handle.write(bytes((stat.f_bavail - pages) * stat.f_frsize))
    assert os.statvfs(mount).f_bavail == pages


def test_neither_delta_nor_full_fits_refused_before_any_blob(oci_registry: RegistryServer,
                                                             doras_server: DorasServer, tmp_path: Path,
                                                             small_disk: Path) -> None:
    """512 KiB free, the 1 MiB result does not fit: the delta is not downloaded, nor the full layer."""
    layout = small_disk / "L"
    v2 = delta_bed(oci_registry, doras_server, tmp_path, layout)
    leave_free(small_disk, 128)
    before = index_of(layout)
    client = DeltaRegistry(insecure=True)
    with pytest.raises(DiskSpaceError, match="a full pull of"):
        client.pull_delta(v2, layout, doras_url=doras_server.url)
    assert client.bytes_received < 1 << 14  # manifests, not the ~20 KB delta nor the 1 MiB layer
    assert index_of(layout) == before


def test_a_delta_that_cannot_fit_falls_back_to_a_full_pull_that_does(oci_registry: RegistryServer,
                                                                     doras_server: DorasServer, tmp_path: Path,
                                                                     small_disk: Path) -> None:
    """Room for the 1 MiB layer and a few pages, not for the delta + its spool + the result."""
    layout = small_disk / "L"
    v2 = delta_bed(oci_registry, doras_server, tmp_path, layout)
    leave_free(small_disk, 256 + 8)
    result = DeltaRegistry(insecure=True).pull_delta(v2, layout, doras_url=doras_server.url)
    assert (result.status, result.reason_code) == ("full", "delta-no-space"), result.reason
    assert result.fix is not None and result.fix.value == "disk-space"
    assert result.bytes_received < (1 << 20) + (8 << 10)  # the layer and manifests: no delta blob (~20 KB)
