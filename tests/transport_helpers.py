"""Helpers of the transport tests: push blobs with the registry's raw upload API, quick policies."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from doras_oras.testing.registry import RegistryServer
from doras_oras.transport import TransferPolicy, Transport


@dataclass(frozen=True)
class Blob:
    """A blob stored in a registry."""

    repo: str
    data: bytes
    digest: str

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def path(self) -> str:
        return f"/v2/{self.repo}/blobs/{self.digest}"


def push_blob(
    registry: RegistryServer,
    repo: str,
    data: bytes,
    *,
    auth: tuple[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Blob:
    """Upload ``data`` monolithically (POST + PUT ?digest=) and return it as a :class:`Blob`."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    verify: bool | str = str(registry.ca_file) if registry.ca_file else True
    start = requests.post(f"{registry.url}/v2/{repo}/blobs/uploads/", auth=auth, timeout=30, verify=verify,
                          headers=headers)
    assert start.status_code == 202, start.text
    location = start.headers["Location"]
    if location.startswith("/"):
        location = registry.url + location
    sep = "&" if "?" in location else "?"
    done = requests.put(
        f"{location}{sep}digest={digest}", data=data, auth=auth, timeout=60, verify=verify,
        headers={"Content-Type": "application/octet-stream", **(headers or {})},
    )
    assert done.status_code == 201, done.text
    return Blob(repo, data, digest)


def random_blob(registry: RegistryServer, repo: str, size: int, **kw: object) -> Blob:
    return push_blob(registry, repo, os.urandom(size), **kw)  # type: ignore[arg-type]


def quick_policy(**overrides: object) -> TransferPolicy:
    """A policy with small numbers so that failures surface within seconds."""
    base: dict[str, object] = {
        "connect_timeout_s": 2.0,
        "read_timeout_s": 2.0,
        "min_bytes_per_s": 0.0,
        "throughput_window_s": 1.0,
        "deadline_s": 60.0,
        "max_attempts": 4,
        "wait_initial_s": 0.01,
        "wait_max_s": 0.05,
        "retry_after_max_s": 0.2,
        "allow_http": True,
    }
    base.update(overrides)
    return TransferPolicy(**base)  # type: ignore[arg-type]


def sha256_file(path: os.PathLike[str] | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


class Sleeps(list[float]):
    """An injectable sleep that records the waits instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def download_file(transport: Transport, url: str, *, digest: str, size: int, partial_path: Path,
                  **options: Any) -> Path:
    """``transport.download`` into the project's resumable blob writer at ``partial_path``.

    What arrived before a transfer failure stays in the partial file (as a pull keeps it);
    the digest and size are checked by the writer; returns ``partial_path``.
    """
    from doras_oras.layout import BlobWriter

    with BlobWriter.partial(Path(partial_path), digest=digest, size=size) as writer:
        transport.download(url, writer, **options)
    return Path(partial_path)
