"""Helpers of the delta-aware pull tests: artifacts pushed with the oras CLI, layout checks."""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path
from typing import Any

import requests

from doras_oras import DeltaRegistry, PullResult
from doras_oras.layout import OCILayout, verify_layout
from doras_oras.testing.faultproxy import FaultProxy
from doras_oras.testing.registry import RegistryServer, find_tool
from doras_oras.testing.server import DorasServer
from tests.layout_support import layout_problems, name_of, run

ACCEPT = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"


def unique(name: str) -> str:
    """A repository name of its own (the session registry keeps every test's deltas)."""
    return f"pull/{name}-{uuid.uuid4().hex[:8]}"


def payload(size: int, seed: int) -> bytes:
    """Deterministic, poorly compressible bytes."""
    return random.Random(seed).randbytes(size)


def edit(data: bytes, edits: int, seed: int) -> bytes:
    """``data`` with ``edits`` scattered 8-byte changes."""
    rng = random.Random(seed)
    out = bytearray(data)
    for _ in range(edits):
        at = rng.randrange(0, max(1, len(out) - 8))
        out[at:at + 8] = rng.randbytes(8)
    return bytes(out)


def oras_push_file(host: str, ref: str, workdir: Path, name: str, data: bytes) -> None:
    """Push one file with the oras CLI (an uncompressed ``tar`` layer titled ``name``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / name).write_bytes(data)
    run(find_tool("oras"), "push", "--plain-http", f"{host}/{ref}", name, cwd=workdir)


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def oras_push_dir(host: str, ref: str, workdir: Path, name: str, files: dict[str, bytes]) -> None:
    """Push a directory with the oras CLI (tar+gzip, unpack and content-digest annotations)."""
    import shutil

    root = workdir / name
    if root.exists():
        shutil.rmtree(root)
    write_tree(root, files)
    run(find_tool("oras"), "push", "--plain-http", f"{host}/{ref}", name, cwd=workdir)


def oras_pull(host: str, ref: str, output: Path) -> None:
    """What users get from ``oras pull`` (the reference extraction)."""
    output.mkdir(parents=True, exist_ok=True)
    run(find_tool("oras"), "pull", "--plain-http", "-o", str(output), f"{host}/{ref}")


def tree(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` by relative path (hidden temp files would show up)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def manifest_of(registry: RegistryServer, repo: str, ref: str) -> tuple[bytes, str]:
    """The registry's manifest bytes and digest."""
    response = requests.get(f"{registry.url}/v2/{repo}/manifests/{ref}", headers={"Accept": ACCEPT},
                            timeout=10)
    response.raise_for_status()
    return response.content, response.headers["Docker-Content-Digest"]


def layer_of(registry: RegistryServer, repo: str, ref: str) -> tuple[dict[str, object], bytes]:
    """The single layer descriptor of ``repo:ref`` and its blob."""
    body, _ = manifest_of(registry, repo, ref)
    layer = json.loads(body)["layers"][0]
    blob = requests.get(f"{registry.url}/v2/{repo}/blobs/{layer['digest']}", timeout=10)
    blob.raise_for_status()
    return layer, blob.content


def snapshot(layout_dir: Path) -> tuple[bytes, list[str]]:
    """``index.json`` bytes and the blob names: equal snapshots mean nothing was written."""
    blobs = sorted(p.name for p in (layout_dir / "blobs" / "sha256").iterdir())
    return (layout_dir / "index.json").read_bytes(), blobs


def check_layout(layout_dir: Path, tag: str, *, manifest: bytes | None = None) -> bytes:
    """The layout is valid (independent check, ``OCILayout.verify``, skopeo); return ``tag``'s manifest.

    With ``manifest``, skopeo must read exactly those bytes for ``tag``.
    """
    assert layout_problems(layout_dir) == []
    verify_layout(OCILayout.open(layout_dir, create=False))
    raw = run("skopeo", "inspect", "--raw", f"oci:{layout_dir}:{name_of(layout_dir, tag)}").stdout.encode()
    if manifest is not None:
        assert raw == manifest
    return raw


def stored_layer(layout_dir: Path, tag: str) -> tuple[dict[str, object], bytes]:
    """The single layer descriptor of the layout's ``tag`` and its stored bytes."""
    raw = run("skopeo", "inspect", "--raw", f"oci:{layout_dir}:{name_of(layout_dir, tag)}").stdout
    layer = json.loads(raw)["layers"][0]
    data = (layout_dir / "blobs" / "sha256" / str(layer["digest"]).split(":")[1]).read_bytes()
    return layer, data


def pull(registry: RegistryServer, repo: str, tag: str, layout: Path, server: DorasServer | None,
         **options: Any) -> PullResult:
    client = DeltaRegistry(insecure=True)
    return client.pull_delta(f"{registry.host}/{repo}:{tag}", layout,
                             doras_url=server.url if server else None, **options)


def behind(server: DorasServer, registry_proxy: FaultProxy) -> DorasServer:
    """Let ``server`` accept references that name the registry by the proxy's host."""
    own = server._is_our_registry
    server._is_our_registry = lambda host: host == registry_proxy.host or own(host)  # type: ignore[method-assign]
    return server
