"""The simple-signing payload a cosign signature signs, and the claims checked in it. Pure.

A cosign image signature signs these exact bytes (the layer blob of media
type ``application/vnd.dev.cosign.simplesigning.v1+json``)::

    {"critical": {"identity": {"docker-reference": "HOST/REPO"},
                  "image": {"docker-manifest-digest": "sha256:..."},
                  "type": "cosign container image signature"},
     "optional": {"KEY": "VALUE", ...} or null}

Only a payload whose signature verified is looked at; then all of these must
hold (cosign v2.6.5 itself checks only the digest and the annotations):

- ``critical.type`` is ``cosign container image signature``;
- ``critical.image.docker-manifest-digest`` is exactly the digest being
  installed (for an image index: the index digest);
- ``critical.identity.docker-reference`` names the same repository as the
  reference being installed (see :func:`same_repository`); a tag or digest in
  it (``cosign sign --sign-container-identity``) is ignored;
- every required annotation is in ``optional`` with exactly that string value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import (
    AnnotationMismatchError,
    InvalidReferenceError,
    MalformedSignatureError,
    PayloadMismatchError,
)
from ..reference import Reference

SIMPLE_SIGNING_TYPE = "cosign container image signature"

DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io"})
"""Host names that name the same registry (go-containerregistry turns ``docker.io`` into ``index.docker.io``)."""


@dataclass(frozen=True)
class SimpleSigningPayload:
    """The fields of a simple-signing payload that are checked."""

    docker_reference: str
    manifest_digest: str
    type: str
    optional: Mapping[str, Any] = field(default_factory=dict)


def parse_payload(data: bytes) -> SimpleSigningPayload:
    """Parse payload bytes; :class:`MalformedSignatureError` when the shape is wrong."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedSignatureError(f"signed payload is not JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise MalformedSignatureError("signed payload is not a JSON object")
    critical = document.get("critical")
    if not isinstance(critical, dict):
        raise MalformedSignatureError("signed payload has no 'critical' object")
    identity = critical.get("identity")
    image = critical.get("image")
    kind = critical.get("type")
    if not isinstance(identity, dict) or not isinstance(identity.get("docker-reference"), str):
        raise MalformedSignatureError("signed payload has no critical.identity.docker-reference string")
    if not isinstance(image, dict) or not isinstance(image.get("docker-manifest-digest"), str):
        raise MalformedSignatureError("signed payload has no critical.image.docker-manifest-digest string")
    if not isinstance(kind, str):
        raise MalformedSignatureError("signed payload has no critical.type string")
    optional = document.get("optional")
    if optional is None:
        optional = {}
    if not isinstance(optional, dict):
        raise MalformedSignatureError("signed payload's 'optional' is neither an object nor null")
    return SimpleSigningPayload(
        docker_reference=identity["docker-reference"],
        manifest_digest=image["docker-manifest-digest"],
        type=kind,
        optional=optional,
    )


def canonical_registry(host: str) -> str:
    """The registry host as compared: lowercase, Docker Hub's aliases as ``docker.io``."""
    host = host.lower()
    return "docker.io" if host in DOCKER_HUB_ALIASES else host


def same_repository(docker_reference: str, target: Reference) -> bool:
    """Whether a payload's ``docker-reference`` names ``target``'s registry and repository.

    Hosts compare case-insensitively, ``docker.io`` equals ``index.docker.io``,
    a one-component Docker Hub name gets ``library/``, as references parse;
    no other aliasing (``localhost`` is not ``127.0.0.1``, ``host:443`` is not
    ``host``): a device pulls from the name the signer signed.
    """
    try:
        claimed = Reference.parse(docker_reference)
    except InvalidReferenceError:
        return False
    return (
        canonical_registry(claimed.registry) == canonical_registry(target.registry)
        and claimed.repository == target.repository
    )


def check_claims(
    payload: SimpleSigningPayload, *, digest: str, target: Reference, annotations: Mapping[str, str]
) -> None:
    """Raise :class:`PayloadMismatchError` / :class:`AnnotationMismatchError` unless every claim holds."""
    if payload.type != SIMPLE_SIGNING_TYPE:
        raise PayloadMismatchError(f"signed payload has critical.type {payload.type[:80]!r}, not {SIMPLE_SIGNING_TYPE!r}")
    if payload.manifest_digest != digest:
        raise PayloadMismatchError(
            f"signed payload is for digest {payload.manifest_digest[:80]!r}, not {digest}"
        )
    if not same_repository(payload.docker_reference, target):
        raise PayloadMismatchError(
            f"signed payload is for repository {payload.docker_reference[:200]!r}, not {target.name}"
        )
    for key, value in annotations.items():
        if key not in payload.optional:
            raise AnnotationMismatchError(f"signed payload lacks required annotation {key!r}")
        have = payload.optional[key]
        if have != value or not isinstance(have, str):
            raise AnnotationMismatchError(
                f"signed payload has annotation {key}={str(have)[:80]!r}, required {value!r}"
            )
