"""A test bed of the registry-delta and fallback-policy tests: v1 and v2 of a 1 MiB file behind a
counting proxy, v1 in a layout; a planted delta; a Doras server that is down."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from doras_oras import DeltaRegistry, PullResult
from doras_oras.algorithms import DeltaAlgorithm, delta_tag
from doras_oras.descriptor import EMPTY_JSON, OCI_EMPTY
from doras_oras.publish import publish_delta
from doras_oras.publish.encode import build_delta, delta_manifest
from doras_oras.publish.push import RegistryWriter
from doras_oras.reference import Reference
from doras_oras.registry_client import RegistryClient
from doras_oras.testing.faultproxy import FaultProxy
from doras_oras.testing.registry import RegistryServer
from doras_oras.testing.server import DorasServer
from tests.pull_support import (
    edit,
    layer_of,
    manifest_of,
    oras_push_file,
    payload,
    snapshot,
    unique,
)

SIZE = 1 << 20


def free_port() -> int:
    """A loopback port nothing listens on (a Doras server that is down, a wrong port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def behind(server: DorasServer, proxy: FaultProxy) -> DorasServer:
    """Let ``server`` accept references that name the registry by the proxy's host."""
    own = server._is_our_registry
    server._is_our_registry = lambda host: host == proxy.host or own(host)  # type: ignore[method-assign]
    return server


@dataclass
class Bed:
    """v1 and v2 of a 1 MiB file (2,000 scattered 8-byte edits), v1 pulled into ``layout`` through
    ``proxy`` (a counting proxy in front of the registry: references name the registry by its host)."""

    registry: RegistryServer
    proxy: FaultProxy
    repo: str
    layout: Path
    v1: Reference
    v2: Reference
    v2_manifest: bytes

    @property
    def target(self) -> str:
        return f"{self.proxy.host}/{self.repo}:v2"

    def pull(self, server_url: str | None = None, **options: object) -> PullResult:
        return DeltaRegistry(insecure=True).pull_delta(self.target, self.layout, doras_url=server_url,
                                                       **options)  # type: ignore[arg-type]

    def publish(self) -> None:
        with RegistryClient(plain_http=True) as client:
            publish_delta(client, self.v1, self.v2)

    def plant_forged_delta(self) -> str:
        """A writer of the repository stores, for this pair, a well-formed bsdiff+zstd delta to other bytes of
        the target's size: it decodes, its result is not the target. Returns the target layer's digest."""
        _, v1_blob = layer_of(self.registry, self.repo, "v1")
        v2_layer, v2_blob = layer_of(self.registry, self.repo, "v2")
        forged = build_delta(v1_blob, edit(v2_blob, 5, 99), DeltaAlgorithm.BSDIFF_ZSTD)
        with RegistryClient(plain_http=True) as client:
            writer = RegistryWriter(client)
            writer.push_blob(self.v2, EMPTY_JSON, OCI_EMPTY)
            blob = writer.push_blob(self.v2, forged)
            tag = delta_tag(self.v1.digest or "", self.v2.digest or "", DeltaAlgorithm.BSDIFF_ZSTD)
            writer.push_manifest(self.v2, tag, delta_manifest(DeltaAlgorithm.BSDIFF_ZSTD, blob.digest, blob.size,
                                                              from_image=str(self.v1), to_image=str(self.v2)))
        return str(v2_layer["digest"])

    def delta_tag_requests(self) -> list[tuple[str, int | None]]:
        self.proxy.wait_idle()
        return [(r.method, r.status) for r in self.proxy.requests("/manifests/_delta-")]

    def blob_requests(self) -> list[str]:
        """The blobs asked of the registry since the bed was made (manifests are not blobs)."""
        self.proxy.wait_idle()
        return [r.path for r in self.proxy.requests("/blobs/")]

    def snapshot(self) -> tuple[bytes, list[str]]:
        return snapshot(self.layout)


@contextmanager
def make_bed(registry: RegistryServer, tmp_path: Path) -> Iterator[Bed]:
    repo = unique("stored")
    old = payload(SIZE, 1)
    oras_push_file(registry.host, f"{repo}:v1", tmp_path / "w1", "firmware.bin", old)
    oras_push_file(registry.host, f"{repo}:v2", tmp_path / "w2", "firmware.bin", edit(old, 2000, 2))
    v2_manifest, v2_digest = manifest_of(registry, repo, "v2")
    v1_digest = manifest_of(registry, repo, "v1")[1]
    base = Reference(registry.host, repo)
    with FaultProxy(registry.url) as proxy:
        layout = tmp_path / "L"
        first = DeltaRegistry(insecure=True).pull_delta(f"{proxy.host}/{repo}:v1", layout, doras_url=None)
        assert first.status == "full"
        proxy.wait_idle()
        proxy.reset_counters()
        yield Bed(registry, proxy, repo, layout, base.with_digest(v1_digest), base.with_digest(v2_digest),
                  v2_manifest)
