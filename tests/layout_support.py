"""Helpers of the layout/pull tests: the shared vectors, tiny real images, tool runners."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

from doras_oras.descriptor import OCI_LAYER_TAR, OCI_MANIFEST, Descriptor
from doras_oras.layout import OCILayout
from doras_oras.testing.registry import find_tool
from doras_oras.testing.vectors import vectors_dir as vectors_dir

REPO_ROOT = Path(__file__).resolve().parents[1]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def run(*args: str, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a tool, fail with its stderr."""
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, **kwargs)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}\n{proc.stdout}")
    return proc


def cli(*args: str, timeout: float = 120, env: dict[str, str] | None = None,
        input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m doras_oras ARGS`` in a subprocess (no check)."""
    return subprocess.run(
        [sys.executable, "-m", "doras_oras", *args], capture_output=True, text=True, timeout=timeout,
        cwd=REPO_ROOT, env={**os.environ, **(env or {})}, input=input_text,
    )


def one_json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """stdout holds exactly one JSON object, on one line: it."""
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, (proc.stdout, proc.stderr)
    document: dict[str, Any] = json.loads(lines[0])
    return document


def error_json(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    """The one JSON object ``--json`` prints on stdout for a failure (and what it must hold)."""
    obj: dict[str, object] = one_json(proc)
    assert obj["status"] == "error" and obj["exit_code"] == proc.returncode != 0, obj
    assert obj["message"] and isinstance(obj["error"], str), obj
    return obj


def name_of(layout: Path, tag: str) -> str:
    """The ``ref.name`` (what ``oci:DIR:NAME`` takes) of the one image of ``layout`` at ``tag``."""
    from doras_oras.layout import OCILayout

    names = [image.ref_name for image in OCILayout.open(layout, create=False).images() if image.tag == tag]
    assert len(names) == 1 and names[0], (tag, names)
    return str(names[0])


def oras_push_file(registry_host: str, ref: str, directory: Path, name: str, data: bytes) -> None:
    """Push one file as an artifact with the real oras CLI."""
    (directory / name).write_bytes(data)
    run(find_tool("oras"), "push", "--plain-http", f"{registry_host}/{ref}", name, cwd=directory)


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def write_blob(layout: Path, data: bytes) -> dict[str, Any]:
    digest = sha256(data)
    path = layout / "blobs" / "sha256" / digest.split(":")[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": digest, "size": len(data)}


def build_container_layout(
    layout: Path, tag: str, files: dict[str, bytes], *, platforms: tuple[str, ...] = ("linux/amd64",)
) -> None:
    """A real container image (gzip tar layer + image config) in an OCI layout written by hand.

    With several platforms the tag names an image index over one image per platform
    (each with its own layer, holding the platform name in ``/platform``).
    """
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    manifests = []
    for plat in platforms:
        os_name, arch = plat.split("/")[:2]
        content = dict(files)
        if len(platforms) > 1:
            content["platform"] = plat.encode()
        tar = _tar(content)
        layer = gzip.compress(tar, mtime=0)
        config = json.dumps({
            "architecture": arch, "os": os_name,
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": [sha256(tar)]},
        }).encode()
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **write_blob(layout, config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **write_blob(layout, layer)}],
        }).encode()
        manifests.append({
            "mediaType": "application/vnd.oci.image.manifest.v1+json", **write_blob(layout, manifest),
            "platform": {"architecture": arch, "os": os_name},
        })
    if len(platforms) == 1:
        top = dict(manifests[0])
        top.pop("platform")
    else:
        index = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests,
        }).encode()
        top = {"mediaType": "application/vnd.oci.image.index.v1+json", **write_blob(layout, index)}
    top["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))


def push_layout(layout: Path, tag: str, registry_host: str, ref: str) -> None:
    """Push an image of a layout to the registry with skopeo (all platforms)."""
    run("skopeo", "copy", "--all", "--dest-tls-verify=false", f"oci:{layout}:{tag}", f"docker://{registry_host}/{ref}")


def layout_problems(path: Path) -> list[str]:
    """Independent check of a layout (no doras-oras code): files, JSON, every referenced blob's digest."""
    problems: list[str] = []
    try:
        if json.loads((path / "oci-layout").read_text()) != {"imageLayoutVersion": "1.0.0"}:
            problems.append("oci-layout content")
        index = json.loads((path / "index.json").read_text())
    except (OSError, ValueError) as exc:
        return [f"unreadable: {exc}"]
    todo = list(index.get("manifests", []))
    while todo:
        desc = todo.pop()
        algorithm, hexpart = desc["digest"].split(":")
        blob = path / "blobs" / algorithm / hexpart
        try:
            data = blob.read_bytes()
        except OSError:
            problems.append(f"missing {desc['digest']}")
            continue
        if len(data) != desc["size"] or hashlib.new(algorithm, data).hexdigest() != hexpart:
            problems.append(f"corrupt {desc['digest']}")
            continue
        if oct(blob.stat().st_mode & 0o777) != oct(0o644):
            problems.append(f"mode {oct(blob.stat().st_mode & 0o777)} of {desc['digest']}")
        if desc["mediaType"].endswith("manifest.v1+json"):
            doc = json.loads(data)
            todo += [doc["config"], *doc["layers"]]
        elif desc["mediaType"].endswith("index.v1+json"):
            todo += json.loads(data)["manifests"]
    return problems


REPO = "registry.example:5000/team/app"


def blob(data: bytes, media_type: str = OCI_LAYER_TAR) -> Descriptor:
    return Descriptor(media_type, sha256(data), len(data))


def store_image(layout: OCILayout, payload: bytes, tag: str | None, *, repo: str = REPO) -> Descriptor:
    """Ingest a config, one layer and a manifest; commit; return the manifest descriptor."""
    config = blob(b"{}", "application/vnd.oci.empty.v1+json")
    layer = blob(payload)
    body = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": config.to_json(), "layers": [layer.to_json()],
    }).encode()
    manifest = blob(body, OCI_MANIFEST)
    with layout.lock():
        layout.ingest_bytes(config, b"{}")
        layout.ingest_bytes(layer, payload)
        layout.ingest_bytes(manifest, body)
        layout.commit_image(manifest, repository=repo, tag=tag)
    return manifest
