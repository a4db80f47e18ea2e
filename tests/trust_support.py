"""Helpers of the trust tests: a SignatureSource over plain requests, the cosign and oras CLIs.

The production registry adapter comes with the pull integration (phase 2);
:class:`RequestsSource` is the smallest honest one: it sends the Accept
header, streams with a cap, answers ``None`` on 404 and raises otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from doras_oras.descriptor import Descriptor
from doras_oras.errors import BodyTooLargeError, RegistryError
from doras_oras.reference import Reference
from doras_oras.testing.registry import find_tool
from doras_oras.trust import FetchedManifest, TrustedKey, load_public_key

ACCEPT = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])
PASSWORD = "trust-test-password"


def unique(name: str) -> str:
    """A repository of its own in the session registry."""
    return f"trust/{name}-{uuid.uuid4().hex[:8]}"


class RequestsSource:
    """A :class:`doras_oras.trust.SignatureSource` for a plain-HTTP registry on loopback."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.requests: list[str] = []

    def _get(self, path: str, *, accept: str | None, max_bytes: int, params: dict[str, str] | None = None) -> tuple[bytes, str] | None:
        self.requests.append(path)
        headers = {"Accept": accept} if accept else {}
        with self.session.get(self.base_url + path, headers=headers, params=params, stream=True, timeout=30) as answer:
            if answer.status_code == 404:
                return None
            if answer.status_code != 200:
                raise RegistryError(f"GET {path}: HTTP {answer.status_code}", status=answer.status_code)
            body = bytearray()
            for chunk in answer.iter_content(64 * 1024):
                body += chunk
                if len(body) > max_bytes:
                    raise BodyTooLargeError(f"GET {path}: body over {max_bytes} bytes")
            return bytes(body), answer.headers.get("Content-Type", "")

    def fetch_manifest(self, repository: Reference, reference: str, *, max_bytes: int) -> FetchedManifest | None:
        got = self._get(f"/v2/{repository.repository}/manifests/{reference}", accept=ACCEPT, max_bytes=max_bytes)
        return None if got is None else FetchedManifest(body=got[0], content_type=got[1])

    def fetch_referrers(
        self, repository: Reference, digest: str, *, artifact_type: str | None, max_bytes: int
    ) -> FetchedManifest | None:
        params = {"artifactType": artifact_type} if artifact_type else None
        got = self._get(f"/v2/{repository.repository}/referrers/{digest}", accept=None, max_bytes=max_bytes, params=params)
        return None if got is None else FetchedManifest(body=got[0], content_type=got[1])

    def fetch_blob(self, repository: Reference, descriptor: Descriptor, *, max_bytes: int) -> bytes | None:
        got = self._get(f"/v2/{repository.repository}/blobs/{descriptor.digest}", accept=None, max_bytes=max_bytes)
        return None if got is None else got[0]


def run(*args: str, env: dict[str, str] | None = None, check: bool = True, cwd: Path | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}\n{proc.stdout}")
    return proc


@dataclass
class Cosign:
    """The real cosign CLI (v2.6.5 from scripts/bootstrap.sh), kept away from the network and $HOME."""

    binary: str
    home: Path

    def env(self) -> dict[str, str]:
        return {
            "COSIGN_PASSWORD": PASSWORD,
            "COSIGN_EXPERIMENTAL": "1",  # needed for --registry-referrers-mode oci-1-1
            "HOME": str(self.home),
            "TUF_ROOT": str(self.home / "tuf"),
            "SIGSTORE_NO_CACHE": "1",
        }

    def __call__(self, *args: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return run(self.binary, *args, env=self.env(), check=check, cwd=cwd)

    def sign(self, key: Path, ref: str, *, oci11: bool = False, annotations: dict[str, str] | None = None,
             extra: tuple[str, ...] = ()) -> None:
        args = ["sign", "--key", str(key), "--tlog-upload=false", "--yes",
                "--allow-insecure-registry", "--allow-http-registry"]
        if oci11:
            args += ["--registry-referrers-mode", "oci-1-1"]
        for k, v in (annotations or {}).items():
            args += ["-a", f"{k}={v}"]
        self(*args, *extra, ref)

    def verify(self, key: Path, ref: str, *, annotations: dict[str, str] | None = None) -> tuple[bool, str]:
        """``cosign verify --key K --insecure-ignore-tlog``: (accepted, stderr).

        ``--experimental-oci11`` makes it look at the OCI 1.1 referrers first and
        then at the legacy tag, as doras-oras does.
        """
        args = ["verify", "--key", str(key), "--insecure-ignore-tlog=true", "--experimental-oci11",
                "--allow-insecure-registry", "--allow-http-registry"]
        for k, v in (annotations or {}).items():
            args += ["-a", f"{k}={v}"]
        proc = self(*args, ref, check=False)
        return proc.returncode == 0, proc.stderr


@dataclass
class KeyPair:
    """A cosign private key file (encrypted with PASSWORD), its public key file, the loaded key."""

    private: Path
    public: Path

    @property
    def trusted(self) -> TrustedKey:
        return load_public_key(self.public)


def generate_cosign_key(cosign: Cosign, directory: Path) -> KeyPair:
    """``cosign generate-key-pair``: ECDSA P-256."""
    directory.mkdir(parents=True, exist_ok=True)
    cosign("generate-key-pair", cwd=directory)
    return KeyPair(private=directory / "cosign.key", public=directory / "cosign.pub")


def import_key(cosign: Cosign, directory: Path, private_pem: bytes) -> KeyPair:
    """``cosign import-key-pair`` of a PEM private key (RSA, Ed25519, ECDSA)."""
    directory.mkdir(parents=True, exist_ok=True)
    source = directory / "private.pem"
    source.write_bytes(private_pem)
    cosign("import-key-pair", "--key", str(source), "--output-key-prefix", "import", cwd=directory)
    return KeyPair(private=directory / "import.key", public=directory / "import.pub")


def rsa_private_pem(bits: int = 2048) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def ed25519_private_pem() -> tuple[bytes, ed25519.Ed25519PrivateKey]:
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return pem, key


def oras_push(host: str, ref: str, workdir: Path, name: str, data: bytes) -> str:
    """Push one file with the oras CLI; the manifest digest."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / name).write_bytes(data)
    run(find_tool("oras"), "push", "--plain-http", f"{host}/{ref}", name, cwd=workdir)
    return resolve(host, ref)


def resolve(host: str, ref: str) -> str:
    return run(find_tool("oras"), "resolve", "--plain-http", f"{host}/{ref}").stdout.strip()


def oras_copy(source: str, target: str) -> None:
    """``oras cp`` between two references (of the plain-HTTP loopback registry)."""
    run(find_tool("oras"), "cp", "--from-plain-http", "--to-plain-http", source, target)


def get_manifest(base_url: str, repository: str, reference: str) -> tuple[bytes, str]:
    answer = requests.get(f"{base_url}/v2/{repository}/manifests/{reference}", headers={"Accept": ACCEPT}, timeout=30)
    answer.raise_for_status()
    return answer.content, answer.headers["Content-Type"]


def put_manifest(base_url: str, repository: str, reference: str, body: bytes, media_type: str) -> str:
    answer = requests.put(f"{base_url}/v2/{repository}/manifests/{reference}", data=body,
                          headers={"Content-Type": media_type}, timeout=30)
    assert answer.status_code == 201, answer.text
    return "sha256:" + hashlib.sha256(body).hexdigest()


def blob_path(storage: Path, digest: str) -> Path:
    """Where docker-registry's filesystem driver keeps a blob's bytes."""
    hexpart = digest.split(":", 1)[1]
    return storage / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexpart[:2] / hexpart / "data"


def manifest_json(body: bytes) -> dict[str, object]:
    document = json.loads(body)
    assert isinstance(document, dict)
    return document
