"""OCI content descriptors, digests and media types. Pure, no I/O.

A digest is accepted only as ``sha256:<64 lowercase hex>`` or
``sha512:<128 lowercase hex>``; it is checked by :func:`validate_digest`
before any file path is built from it.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidArgumentError, InvalidDigestError

# --- media types ----------------------------------------------------------
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

MANIFEST_MEDIA_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_MEDIA_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)

# --- annotations ----------------------------------------------------------
ANNOTATION_TITLE = "org.opencontainers.image.title"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CREATED = "org.opencontainers.image.created"
ANNOTATION_UNPACK = "io.deis.oras.content.unpack"
ANNOTATION_CONTENT_DIGEST = "io.deis.oras.content.digest"
ANNOTATION_DELTA_FROM = "com.unbasical.doras.delta.from"
ANNOTATION_DELTA_TO = "com.unbasical.doras.delta.to"
ANNOTATION_DELTA_DUMMY = "com.unbasical.doras.delta.dummy"

# doras-oras's own annotations on index.json entries of the layout (docs/layout.md):
# the source repository ("registry/repository") an image was pulled from, and the
# digest of the registry manifest the entry stands for (differs from the entry's own
# digest when a tar-diff result was stored: a manifest rewritten for it).
ANNOTATION_PREFIX = "io.doras-oras."
ANNOTATION_SOURCE_REPOSITORY = ANNOTATION_PREFIX + "source.repository"
ANNOTATION_SOURCE_DIGEST = ANNOTATION_PREFIX + "source.digest"

# The empty descriptor of the image spec: ``{}``.
EMPTY_JSON = b"{}"
EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"

_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_DIGEST_RE = re.compile(r"^(sha256|sha512):([0-9a-f]+)$")


def validate_digest(digest: str) -> tuple[str, str]:
    """Return ``(algorithm, hex)`` of a valid digest, else raise :class:`InvalidDigestError`."""
    if not isinstance(digest, str):
        raise InvalidDigestError(f"digest must be a string, not {type(digest).__name__}")
    match = _DIGEST_RE.match(digest)
    if not match:
        raise InvalidDigestError(
            f"invalid digest {digest[:100]!r}: expected sha256:<64 lowercase hex> "
            "or sha512:<128 lowercase hex>"
        )
    algorithm, hexpart = match.group(1), match.group(2)
    if len(hexpart) != _HEX_LENGTH[algorithm]:
        raise InvalidDigestError(
            f"invalid digest {digest[:100]!r}: {algorithm} needs {_HEX_LENGTH[algorithm]} hex digits"
        )
    return algorithm, hexpart


def new_hasher(digest: str) -> Any:
    """A fresh hashlib object for the algorithm of ``digest`` (validated)."""
    algorithm, _ = validate_digest(digest)
    return hashlib.new(algorithm)


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    """The digest string of ``data``."""
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor (image-spec v1.1 ``descriptor.md``)."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    artifact_type: str | None = None
    urls: tuple[str, ...] = ()
    data: bytes | None = None
    platform: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        validate_digest(self.digest)
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 0:
            raise InvalidArgumentError(f"descriptor size must be a non-negative integer, not {self.size!r}")

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Descriptor:
        """Build from a JSON object (already schema-validated or not: types are checked)."""
        if not isinstance(obj, Mapping):
            raise InvalidArgumentError("descriptor must be a JSON object")
        media_type = obj.get("mediaType")
        if not isinstance(media_type, str):
            raise InvalidArgumentError("descriptor mediaType must be a string")
        size = obj.get("size")
        if not isinstance(size, int) or isinstance(size, bool):
            raise InvalidArgumentError("descriptor size must be an integer")
        data_b64 = obj.get("data")
        data = base64.b64decode(data_b64, validate=True) if isinstance(data_b64, str) else None
        annotations = obj.get("annotations") or {}
        return cls(
            media_type=media_type,
            digest=str(obj.get("digest")),
            size=size,
            annotations=dict(annotations),
            artifact_type=obj.get("artifactType"),
            urls=tuple(obj.get("urls") or ()),
            data=data,
            platform=obj.get("platform"),
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON object, with keys in the order the spec lists them."""
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.urls:
            out["urls"] = list(self.urls)
        if self.data is not None:
            out["data"] = base64.b64encode(self.data).decode("ascii")
        if self.platform:
            out["platform"] = dict(self.platform)
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    @property
    def hex(self) -> str:
        """The hex part of the digest."""
        return self.digest.split(":", 1)[1]

    @property
    def algorithm(self) -> str:
        """The algorithm part of the digest."""
        return self.digest.split(":", 1)[0]
