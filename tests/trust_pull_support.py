"""The test bed of the verified pulls: the real registry behind a counting proxy, the Doras test
server, the test bed's signer and the real cosign CLI.

Clients (doras-oras, cosign, the oras CLI for reading) name the registry by the proxy's host, so
every request of a pull is seen (``bed.proxy.requests()``); artifacts are pushed straight to the
registry with the oras CLI and signed for the proxy's name (the name the devices pull under).
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from doras_oras.registry_client import RegistryClient
from doras_oras.testing.faultproxy import FaultProxy, RequestRecord
from doras_oras.testing.registry import RegistryServer, find_tool
from doras_oras.testing.server import DorasServer
from doras_oras.testing.signing import SigningKey, sign
from tests.layout_support import cli
from tests.pull_support import oras_push_dir, oras_push_file
from tests.trust_support import Cosign

ACCEPT = ("application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, "
          "application/vnd.docker.distribution.manifest.v2+json")


class ProxiedDoras(DorasServer):
    """The test server, reading the registry directly while clients name the registry's proxy."""

    def __init__(self, registry_url: str, proxy_host: str, **options: Any) -> None:
        super().__init__(registry_url, **options)
        self.proxy_host = proxy_host

    def _is_our_registry(self, host: str) -> bool:
        return host == self.proxy_host or super()._is_our_registry(host)


@dataclass
class TrustBed:
    registry: RegistryServer
    proxy: FaultProxy
    server: ProxiedDoras
    key: SigningKey
    other: SigningKey
    cosign: Cosign
    work: Path
    counter: list[int] = field(default_factory=lambda: [0])

    @property
    def host(self) -> str:
        """The registry as devices name it (the proxy)."""
        return self.proxy.host

    def repo(self, name: str) -> str:
        return f"trust-pull/{name}-{uuid.uuid4().hex[:8]}"

    def _dir(self) -> Path:
        self.counter[0] += 1
        path = self.work / f"w{self.counter[0]}"
        path.mkdir(parents=True)
        return path

    def digest(self, repo: str, ref: str) -> str:
        answer = requests.head(f"{self.registry.url}/v2/{repo}/manifests/{ref}", headers={"Accept": ACCEPT},
                               timeout=10)
        answer.raise_for_status()
        return answer.headers["Docker-Content-Digest"]

    def push_file(self, repo: str, tag: str, data: bytes, name: str = "app.bin") -> str:
        oras_push_file(self.registry.host, f"{repo}:{tag}", self._dir(), name, data)
        return self.digest(repo, tag)

    def push_dir(self, repo: str, tag: str, files: dict[str, bytes]) -> str:
        oras_push_dir(self.registry.host, f"{repo}:{tag}", self._dir(), "tree", files)
        return self.digest(repo, tag)

    def sign(self, repo: str, digest: str, key: SigningKey | None = None, *, mode: str = "tag",
             annotations: dict[str, str] | None = None, reference: str | None = None) -> str:
        """Sign with the test bed's signer, for the name devices pull under (the proxy's)."""
        return sign(self.registry.url, repo, digest, key or self.key, mode=mode, annotations=annotations,
                    docker_reference=reference or f"{self.host}/{repo}")

    def cosign_sign(self, key: Path, repo: str, digest: str, *, oci11: bool = False,
                    annotations: dict[str, str] | None = None) -> None:
        """The real ``cosign sign --key --tlog-upload=false``, through the proxy."""
        self.cosign.sign(key, f"{self.host}/{repo}@{digest}", oci11=oci11, annotations=annotations)

    def client(self) -> RegistryClient:
        return RegistryClient(plain_http=True)

    def pull_cli(self, ref: str, layout: Path, *args: str, server: bool = True) -> subprocess.CompletedProcess[str]:
        extra = ["--server", self.server.url] if server else []
        return cli("pull", ref, "--oci-layout", str(layout), "--plain-http", "--json", *extra, *args)

    def signature_requests(self) -> list[RequestRecord]:
        return [r for r in self.proxy.requests() if ".sig" in r.path or "/referrers/" in r.path
                or "/manifests/sha256-" in r.path]

    def blob_requests(self) -> list[RequestRecord]:
        return [r for r in self.proxy.requests() if "/blobs/" in r.path]


@contextmanager
def trust_bed(work: Path, cosign_binary: str | None = None) -> Iterator[TrustBed]:
    with ExitStack() as stack:
        registry = stack.enter_context(RegistryServer(workdir=work / "registry"))
        proxy = stack.enter_context(FaultProxy(registry.url))
        server = stack.enter_context(ProxiedDoras(registry.url, proxy.host))
        cosign = Cosign(binary=cosign_binary or find_tool("cosign"), home=work / "cosign-home")
        cosign.home.mkdir()
        yield TrustBed(registry=registry, proxy=proxy, server=server, key=SigningKey.generate(work / "key-a"),
                       other=SigningKey.generate(work / "key-b"), cosign=cosign, work=work / "data")



def layout_state(layout: Path) -> dict[str, bytes]:
    """Every file of the layout outside ``ingest/`` (equal states: nothing was written)."""
    return {str(p.relative_to(layout)): p.read_bytes() for p in sorted(layout.rglob("*"))
            if p.is_file() and "ingest" not in p.relative_to(layout).parts}


def copy_layout(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target
