"""An in-memory signature source and a signer for the verifier's tests (no registry).

The payloads are signed with ``cryptography`` (ECDSA P-256 over SHA-256, as ``cosign sign`` does with a
``cosign generate-key-pair`` key); the manifests have cosign's shape.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from doras_oras.descriptor import Descriptor
from doras_oras.reference import Reference
from doras_oras.trust import (
    SIGNATURE_ANNOTATION,
    SIGNATURE_ARTIFACT_TYPE,
    SIMPLE_SIGNING_MEDIA_TYPE,
    FetchedManifest,
    TrustedKey,
    parse_public_key,
    signature_tag,
)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
NAME = "registry.example.com/fleet/app"
DIGEST = "sha256:" + "ab" * 32
TARGET = Reference.parse(f"{NAME}@{DIGEST}")
CONFIG = b'{"architecture":"","os":"","rootfs":{"type":"layers","diff_ids":[]},"config":{}}'


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class MemorySource:
    manifests: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    referrers: bytes | None = None
    blobs: dict[str, bytes] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    def fetch_manifest(self, repository: Reference, reference: str, *, max_bytes: int) -> FetchedManifest | None:
        self.calls.append(f"manifest {reference}")
        got = self.manifests.get(reference)
        return None if got is None else FetchedManifest(body=got[0], content_type=got[1])

    def fetch_referrers(self, repository: Reference, digest: str, *, artifact_type: str | None,
                        max_bytes: int) -> FetchedManifest | None:
        self.calls.append(f"referrers {digest}")
        return None if self.referrers is None else FetchedManifest(self.referrers, OCI_INDEX)

    def fetch_blob(self, repository: Reference, descriptor: Descriptor, *, max_bytes: int) -> bytes | None:
        self.calls.append(f"blob {descriptor.digest}")
        return self.blobs.get(descriptor.digest)


class Signer:
    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        pem = self.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo)
        self.key: TrustedKey = parse_public_key(pem, "cosign.pub")

    def sign(self, data: bytes) -> str:
        return base64.b64encode(self.private.sign(data, ec.ECDSA(hashes.SHA256()))).decode()


def payload(digest: str = DIGEST, reference: str = NAME, optional: dict[str, str] | None = None) -> bytes:
    return json.dumps({"critical": {"identity": {"docker-reference": reference},
                                    "image": {"docker-manifest-digest": digest},
                                    "type": "cosign container image signature"},
                       "optional": optional}, separators=(",", ":")).encode()


def layer(source: MemorySource, data: bytes, signature: str | None) -> dict[str, Any]:
    source.blobs[sha(data)] = data
    out: dict[str, Any] = {"mediaType": SIMPLE_SIGNING_MEDIA_TYPE, "size": len(data), "digest": sha(data)}
    if signature is not None:
        out["annotations"] = {SIGNATURE_ANNOTATION: signature}
    return out


def signature_manifest(source: MemorySource, layers: list[dict[str, Any]], *, subject: str | None = None) -> bytes:
    source.blobs[sha(CONFIG)] = CONFIG
    document: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                           "size": len(CONFIG), "digest": sha(CONFIG)},
                                "layers": layers}
    if subject is not None:
        document["config"]["mediaType"] = SIGNATURE_ARTIFACT_TYPE
        document["subject"] = {"mediaType": OCI_MANIFEST, "size": 100, "digest": subject}
        document["artifactType"] = SIGNATURE_ARTIFACT_TYPE
    return json.dumps(document).encode()


def legacy(signer: Signer, data: bytes | None = None, **extra: Any) -> MemorySource:
    source = MemorySource()
    data = payload() if data is None else data
    body = signature_manifest(source, [layer(source, data, signer.sign(data))], **extra)
    source.manifests[signature_tag(DIGEST)] = (body, OCI_MANIFEST)
    return source
