"""Finding the cosign signature manifests of a digest, as cosign v2.6.5 writes them.

Two places, tried in this order (lazily: the next is asked only when nothing
found so far verified):

1. the legacy tag ``sha256-<hex>.sig`` in the same repository (``cosign
   sign`` default): an image manifest whose layers are the signatures;
2. the OCI 1.1 referrers of the digest (``cosign sign
   --registry-referrers-mode oci-1-1``, with ``COSIGN_EXPERIMENTAL=1``): an
   image manifest with ``artifactType`` and ``config.mediaType``
   ``application/vnd.dev.cosign.artifact.sig.v1+json`` and ``subject`` = the
   digest, pushed by digest. They are listed by the referrers API
   (``GET /v2/<name>/referrers/<digest>``), or, where the registry has no such
   API (answers 404; Debian's docker-registry 2.8), by the referrers tag
   schema: an image index under the tag ``sha256-<hex>``, which cosign (through
   go-containerregistry) maintains.

Each attempt yields a :class:`Candidate` (a parsed signature manifest) or a
:class:`Failure` naming why a place gave nothing usable. Caps: manifests and
indexes 4 MiB, at most :data:`~.source.MAX_REFERRERS` index entries, at most
:data:`~.source.MAX_SIGNATURE_MANIFESTS` matching referrers (the last listed
first, as cosign takes the last).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum

from ..descriptor import OCI_MANIFEST, Descriptor, validate_digest
from ..errors import (
    BodyTooLargeError,
    DocumentError,
    InvalidDigestError,
    VerificationError,
)
from ..reference import Reference
from ..schemas import ParsedManifest, parse_manifest
from .source import (
    MAX_MANIFEST_BYTES,
    MAX_REFERRERS,
    MAX_SIGNATURE_MANIFESTS,
    SignatureSource,
)

log = logging.getLogger(__name__)

SIGNATURE_ARTIFACT_TYPE = "application/vnd.dev.cosign.artifact.sig.v1+json"
"""``artifactType`` (and ``config.mediaType``) of a cosign signature referrer."""

FOUND_TAG = "tag"
FOUND_REFERRERS_API = "referrers-api"
FOUND_REFERRERS_TAG = "referrers-tag"


class Stage(IntEnum):
    """How far a signature candidate got; the furthest failure decides the error raised."""

    NOT_FOUND = 0
    MALFORMED = 1
    LIMIT = 2
    BAD_SIGNATURE = 3
    ANNOTATION = 4
    PAYLOAD = 5


@dataclass(frozen=True)
class Failure:
    """Why one place or one signature gave nothing that verifies."""

    stage: Stage
    message: str


@dataclass(frozen=True)
class Candidate:
    """A signature manifest found for the digest."""

    found_via: str
    """:data:`FOUND_TAG`, :data:`FOUND_REFERRERS_API` or :data:`FOUND_REFERRERS_TAG`."""
    location: str
    """The tag it was found under, or ``referrers API``."""
    manifest: ParsedManifest


def signature_tag(digest: str) -> str:
    """The legacy cosign tag of ``digest``: ``sha256-<hex>.sig``."""
    algorithm, hexpart = validate_digest(digest)
    return f"{algorithm}-{hexpart}.sig"


def referrers_tag(digest: str) -> str:
    """The referrers tag schema's tag of ``digest``: ``sha256-<hex>``."""
    algorithm, hexpart = validate_digest(digest)
    return f"{algorithm}-{hexpart}"


def _parse(body: bytes, content_type: str, what: str, expected: Descriptor | None = None) -> ParsedManifest | Failure:
    if len(body) > MAX_MANIFEST_BYTES:
        return Failure(Stage.LIMIT, f"{what}: {len(body)} bytes, over the {MAX_MANIFEST_BYTES}-byte cap")
    try:
        return parse_manifest(body, content_type, expected=expected, what=what)
    except BodyTooLargeError as exc:
        return Failure(Stage.LIMIT, str(exc))
    except (DocumentError, VerificationError, InvalidDigestError) as exc:
        return Failure(Stage.MALFORMED, str(exc))


def _legacy(source: SignatureSource, target: Reference, digest: str) -> Iterator[Candidate | Failure]:
    tag = signature_tag(digest)
    try:
        fetched = source.fetch_manifest(target, tag, max_bytes=MAX_MANIFEST_BYTES)
    except BodyTooLargeError as exc:
        yield Failure(Stage.LIMIT, f"signature tag {tag}: {exc}")
        return
    if fetched is None:
        yield Failure(Stage.NOT_FOUND, f"no signature tag {tag}")
        return
    parsed = _parse(fetched.body, fetched.content_type, f"signature manifest (tag {tag})")
    if isinstance(parsed, Failure):
        yield parsed
    elif parsed.is_index:
        yield Failure(Stage.MALFORMED, f"signature tag {tag} holds an index, not a signature manifest")
    else:
        yield Candidate(found_via=FOUND_TAG, location=tag, manifest=parsed)


def _referrers_index(
    source: SignatureSource, target: Reference, digest: str
) -> tuple[str, str, ParsedManifest] | Failure:
    try:
        fetched = source.fetch_referrers(
            target, digest, artifact_type=SIGNATURE_ARTIFACT_TYPE, max_bytes=MAX_MANIFEST_BYTES
        )
    except BodyTooLargeError as exc:
        return Failure(Stage.LIMIT, f"referrers answer: {exc}")
    if fetched is not None:
        found_via, location = FOUND_REFERRERS_API, "referrers API"
    else:
        tag = referrers_tag(digest)
        found_via, location = FOUND_REFERRERS_TAG, tag
        try:
            fetched = source.fetch_manifest(target, tag, max_bytes=MAX_MANIFEST_BYTES)
        except BodyTooLargeError as exc:
            return Failure(Stage.LIMIT, f"referrers tag {tag}: {exc}")
        if fetched is None:
            return Failure(Stage.NOT_FOUND, f"no referrers (API absent, no referrers tag {tag})")
    parsed = _parse(fetched.body, fetched.content_type, f"referrers index ({location})")
    if isinstance(parsed, Failure):
        return parsed
    if not parsed.is_index:
        return Failure(Stage.MALFORMED, f"referrers ({location}): not an image index")
    return found_via, location, parsed


def _referrers(source: SignatureSource, target: Reference, digest: str) -> Iterator[Candidate | Failure]:
    answer = _referrers_index(source, target, digest)
    if isinstance(answer, Failure):
        yield answer
        return
    found_via, location, index = answer
    entries = index.document.get("manifests") or []
    if len(entries) > MAX_REFERRERS:
        yield Failure(
            Stage.LIMIT, f"referrers ({location}): {len(entries)} entries, over the cap of {MAX_REFERRERS}; none looked at"
        )
        return
    matching = [e for e in entries if isinstance(e, dict) and e.get("artifactType") == SIGNATURE_ARTIFACT_TYPE]
    if not matching:
        yield Failure(Stage.NOT_FOUND, f"referrers ({location}): no entry of artifactType {SIGNATURE_ARTIFACT_TYPE}")
        return
    if len(matching) > MAX_SIGNATURE_MANIFESTS:
        yield Failure(
            Stage.LIMIT,
            f"referrers ({location}): {len(matching)} signature manifests, over the cap of {MAX_SIGNATURE_MANIFESTS}",
        )
        return
    for entry in reversed(matching):
        try:
            descriptor = Descriptor.from_json(entry)
        except (ValueError, InvalidDigestError) as exc:
            yield Failure(Stage.MALFORMED, f"referrers ({location}): bad entry ({exc})")
            continue
        what = f"signature manifest {descriptor.digest} ({location})"
        if descriptor.media_type != OCI_MANIFEST:
            yield Failure(Stage.MALFORMED, f"{what}: media type {descriptor.media_type!r}, not an OCI manifest")
            continue
        if descriptor.size > MAX_MANIFEST_BYTES:
            yield Failure(Stage.LIMIT, f"{what}: declared size {descriptor.size} over the {MAX_MANIFEST_BYTES}-byte cap")
            continue
        try:
            fetched = source.fetch_manifest(target, descriptor.digest, max_bytes=MAX_MANIFEST_BYTES)
        except BodyTooLargeError as exc:
            yield Failure(Stage.LIMIT, f"{what}: {exc}")
            continue
        if fetched is None:
            yield Failure(Stage.NOT_FOUND, f"{what}: listed but not in the registry")
            continue
        parsed = _parse(fetched.body, fetched.content_type, what, expected=descriptor)
        if isinstance(parsed, Failure):
            yield parsed
            continue
        subject = parsed.document.get("subject")
        if not isinstance(subject, dict) or subject.get("digest") != digest:
            yield Failure(Stage.MALFORMED, f"{what}: its subject is not {digest}")
            continue
        if parsed.document.get("artifactType", (parsed.document.get("config") or {}).get("mediaType")) != (
            SIGNATURE_ARTIFACT_TYPE
        ):
            yield Failure(Stage.MALFORMED, f"{what}: artifactType is not {SIGNATURE_ARTIFACT_TYPE}")
            continue
        yield Candidate(found_via=found_via, location=location, manifest=parsed)


def discover(source: SignatureSource, target: Reference, digest: str) -> Iterator[Candidate | Failure]:
    """Signature manifests of ``digest`` in ``target``'s repository, legacy tag first, then referrers."""
    validate_digest(digest)
    for item in _legacy(source, target, digest):
        log.debug("signature discovery: %s", item if isinstance(item, Failure) else item.location)
        yield item
    for item in _referrers(source, target, digest):
        log.debug("signature discovery: %s", item if isinstance(item, Failure) else item.location)
        yield item
