"""The test bed's signer: cosign key-based signatures of what it publishes, without cosign.

:func:`sign` writes into a registry exactly what ``cosign sign --key K
--tlog-upload=false`` (v2.6.5) writes, so that scripts can be tried against
signed artifacts with only the test bed (``tests/test_testbed_signing.py``
checks every shape with the real ``cosign verify``):

- ``mode="tag"`` (cosign's default): the image manifest tagged
  ``sha256-<hex>.sig``; one ``application/vnd.dev.cosign.simplesigning.v1+json``
  layer per signature (the payload blob, the base64 ECDSA signature in the
  annotation ``dev.cosignproject.cosign/signature``); signing again appends a
  layer; the config is the one cosign derives from the layers;
- ``mode="referrers"`` (``--registry-referrers-mode oci-1-1``): the same
  layers in a manifest pushed by digest with ``artifactType`` and
  ``config.mediaType`` ``application/vnd.dev.cosign.artifact.sig.v1+json`` and
  ``subject`` the signed manifest, listed in the referrers tag schema's index
  ``sha256-<hex>`` (docker-registry 2.8 has no referrers API).

Keys: :meth:`SigningKey.generate` makes an ECDSA P-256 pair, ``cosign.pub``
(what devices are given: ``--verify-key``) and ``testbed.key`` (PKCS#8 PEM,
unencrypted; ``cosign import-key-pair --key testbed.key`` takes it too).
The payload's ``docker-reference`` is ``HOST/REPOSITORY`` as the registry is
named by its clients (``docker_reference`` changes it, to make the
copied-signature cases of the tests).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..descriptor import OCI_INDEX, OCI_MANIFEST, Descriptor
from ..trust import (
    SIGNATURE_ANNOTATION,
    SIGNATURE_ARTIFACT_TYPE,
    SIMPLE_SIGNING_MEDIA_TYPE,
    SIMPLE_SIGNING_TYPE,
    cosign_config,
    referrers_tag,
    signature_tag,
)

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MODES = ("tag", "referrers")
PUBLIC_KEY_FILE = "cosign.pub"
PRIVATE_KEY_FILE = "testbed.key"
_ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, "application/vnd.docker.distribution.manifest.v2+json",
                     "application/vnd.docker.distribution.manifest.list.v2+json"))


def _json(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class SigningKey:
    """An ECDSA P-256 key pair on disk (``cosign.pub``, ``testbed.key``)."""

    private: ec.EllipticCurvePrivateKey
    directory: Path

    @property
    def public_path(self) -> Path:
        """The public key file devices verify with (``--verify-key``)."""
        return self.directory / PUBLIC_KEY_FILE

    @property
    def private_path(self) -> Path:
        return self.directory / PRIVATE_KEY_FILE

    @classmethod
    def generate(cls, directory: str | Path) -> SigningKey:
        """A new pair written to ``directory`` (created); the private key file is 0600."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        private = ec.generate_private_key(ec.SECP256R1())
        key = cls(private=private, directory=directory)
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        key.private_path.touch(mode=0o600)
        key.private_path.write_bytes(pem)
        key.public_path.write_bytes(private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        return key

    @classmethod
    def load(cls, directory: str | Path) -> SigningKey:
        """The pair :meth:`generate` wrote to ``directory``."""
        directory = Path(directory)
        private = serialization.load_pem_private_key((directory / PRIVATE_KEY_FILE).read_bytes(), password=None)
        if not isinstance(private, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{directory / PRIVATE_KEY_FILE}: not an ECDSA key")
        return cls(private=private, directory=directory)

    @classmethod
    def load_or_generate(cls, directory: str | Path) -> SigningKey:
        directory = Path(directory)
        return cls.load(directory) if (directory / PRIVATE_KEY_FILE).is_file() else cls.generate(directory)

    def sign_bytes(self, data: bytes) -> str:
        """The base64 ASN.1 DER ECDSA signature of ``data`` over SHA-256 (what cosign puts in the annotation)."""
        return base64.b64encode(self.private.sign(data, ec.ECDSA(hashes.SHA256()))).decode()


def simple_signing_payload(docker_reference: str, digest: str, annotations: Mapping[str, str] | None = None) -> bytes:
    """The exact payload bytes ``cosign sign`` signs (``optional`` is ``null`` without annotations)."""
    return _json({"critical": {"identity": {"docker-reference": docker_reference},
                               "image": {"docker-manifest-digest": digest},
                               "type": SIMPLE_SIGNING_TYPE},
                  "optional": dict(annotations) if annotations else None})


class _Registry:
    """The few distribution API calls the signer makes (plain requests; basic auth and a CA file allowed)."""

    def __init__(self, url: str, *, auth: tuple[str, str] | None, ca_file: str | None) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.auth = auth
        self.session.verify = ca_file if ca_file else True

    def manifest(self, repository: str, reference: str) -> tuple[bytes, str] | None:
        answer = self.session.get(f"{self.url}/v2/{repository}/manifests/{reference}",
                                  headers={"Accept": _ACCEPT}, timeout=30)
        if answer.status_code == 404:
            return None
        answer.raise_for_status()
        return answer.content, answer.headers.get("Content-Type", "").split(";")[0].strip()

    def put_blob(self, repository: str, data: bytes) -> str:
        digest = _digest(data)
        if self.session.head(f"{self.url}/v2/{repository}/blobs/{digest}", timeout=30).status_code == 200:
            return digest
        start = self.session.post(f"{self.url}/v2/{repository}/blobs/uploads/", timeout=30)
        start.raise_for_status()
        location = urljoin(self.url + "/", start.headers["Location"])
        if urlsplit(location).netloc != urlsplit(self.url).netloc:
            raise RuntimeError(f"upload location {location} is on another host")
        separator = "&" if "?" in location else "?"
        done = self.session.put(f"{location}{separator}digest={digest}", data=data,
                                headers={"Content-Type": "application/octet-stream"}, timeout=30)
        done.raise_for_status()
        return digest

    def put_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> None:
        answer = self.session.put(f"{self.url}/v2/{repository}/manifests/{reference}", data=body,
                                  headers={"Content-Type": media_type}, timeout=30)
        answer.raise_for_status()


def _layers_of(found: tuple[bytes, str] | None) -> list[dict[str, Any]]:
    if found is None or found[1] != OCI_MANIFEST:
        return []
    layers = json.loads(found[0]).get("layers") or []
    return [layer for layer in layers if layer.get("mediaType") == SIMPLE_SIGNING_MEDIA_TYPE]


def sign(
    registry_url: str,
    repository: str,
    digest: str,
    key: SigningKey,
    *,
    annotations: Mapping[str, str] | None = None,
    mode: str = "tag",
    docker_reference: str | None = None,
    auth: tuple[str, str] | None = None,
    ca_file: str | None = None,
) -> str:
    """Sign ``repository@digest`` in the registry at ``registry_url`` as cosign does; the signature manifest's digest.

    ``digest`` must be a manifest (or index) of the repository.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    registry = _Registry(registry_url, auth=auth, ca_file=ca_file)
    subject = registry.manifest(repository, digest)
    if subject is None:
        raise ValueError(f"{repository}@{digest} is not in the registry")
    reference = docker_reference or f"{urlsplit(registry.url).netloc}/{repository}"
    payload = simple_signing_payload(reference, digest, annotations)
    layer = {"mediaType": SIMPLE_SIGNING_MEDIA_TYPE, "size": len(payload), "digest": registry.put_blob(repository, payload),
             "annotations": {SIGNATURE_ANNOTATION: key.sign_bytes(payload)}}
    if mode == "tag":
        layers = [*_layers_of(registry.manifest(repository, signature_tag(digest))), layer]
    else:
        layers = [layer]
    config = cosign_config([Descriptor(SIMPLE_SIGNING_MEDIA_TYPE, item["digest"], item["size"]) for item in layers])
    config_descriptor = {"mediaType": OCI_CONFIG if mode == "tag" else SIGNATURE_ARTIFACT_TYPE,
                         "size": len(config), "digest": registry.put_blob(repository, config)}
    if mode == "tag":
        body = _json({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_descriptor, "layers": layers})
        registry.put_manifest(repository, signature_tag(digest), body, OCI_MANIFEST)
        return _digest(body)
    body = _json({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_descriptor, "layers": layers,
                  "subject": {"mediaType": subject[1], "size": len(subject[0]), "digest": digest},
                  "artifactType": SIGNATURE_ARTIFACT_TYPE})
    manifest_digest = _digest(body)
    registry.put_manifest(repository, manifest_digest, body, OCI_MANIFEST)
    tag = referrers_tag(digest)
    found = registry.manifest(repository, tag)
    entries = json.loads(found[0]).get("manifests", []) if found is not None and found[1] == OCI_INDEX else []
    entries.append({"mediaType": OCI_MANIFEST, "size": len(body), "digest": manifest_digest,
                    "artifactType": SIGNATURE_ARTIFACT_TYPE})
    registry.put_manifest(repository, tag, _json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}),
                          OCI_INDEX)
    return manifest_digest
