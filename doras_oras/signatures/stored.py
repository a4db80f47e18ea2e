"""Signatures kept in the OCI layout: what is stored of a verified signature, and reading it back offline.

- :func:`attachments_of`: the :class:`~doras_oras.layout.Attachment` of each
  signature manifest that verified (a legacy one under its ``sha256-<hex>.sig``
  tag, a referrer untagged), committed with the image in one ``index.json``
  write (docs/trust.md, docs/layout.md);
- :class:`LayoutSignatureSource`: the layout as a
  :class:`~doras_oras.trust.SignatureSource`, so the very verifier that
  checked the registry checks the stored copy, without a network;
- :func:`verify_stored`: ``doras-oras verify``: the stored image's signature
  and the chain from the signed digest to the stored bytes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from .. import schemas
from ..descriptor import (
    ANNOTATION_CONTENT_DIGEST,
    ANNOTATION_REF_NAME,
    ANNOTATION_SOURCE_REPOSITORY,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    OCI_INDEX,
    OCI_LAYER_TAR,
    OCI_LAYER_TAR_GZIP,
    Descriptor,
    validate_digest,
)
from ..errors import (
    BodyTooLargeError,
    CorruptLayoutError,
    DocumentError,
    ImageNotFoundError,
    InvalidDigestError,
    LayoutError,
    TrustChainError,
    VerificationError,
)
from ..layout import Attachment, ImageEntry, OCILayout
from ..reference import Reference
from ..trust import (
    MAX_MANIFEST_BYTES,
    MAX_REFERRERS,
    ORIGIN_LAYOUT,
    FetchedManifest,
    TrustResult,
    Verification,
    check,
)
from ..trust.discovery import FOUND_TAG
from ..trust.forward import decide
from .forward import standing_of

log = logging.getLogger(__name__)


def attachments_of(result: TrustResult, subject_body: bytes | None = None) -> list[Attachment]:
    """What to keep beside the image of every signature of ``result`` that verified.

    ``subject_body``: the bytes of the signed document (the registry's
    manifest or index of the verified digest), kept so that the chain can be
    checked again offline when they are not the stored manifest.
    """
    found: list[Attachment] = []
    for signature in result.signatures:
        document = json.loads(signature.manifest_body)
        manifest = Descriptor(
            media_type=signature.signature_manifest.media_type,
            digest=signature.signature_manifest.digest,
            size=signature.signature_manifest.size,
            artifact_type=document.get("artifactType"),
        )
        found.append(Attachment(
            manifest=manifest, body=signature.manifest_body, blobs=dict(signature.blobs),
            subject=signature.digest, tag=signature.location if signature.found_via == FOUND_TAG else None,
            subject_body=subject_body,
        ))
    return found


class LayoutSignatureSource:
    """An OCI layout as a :class:`~doras_oras.trust.SignatureSource` (offline re-verification).

    - a tag is looked up in ``index.json`` (``org.opencontainers.image.ref.name``),
      among entries of the repository or entries without a recorded repository
      (a layout ``oras copy`` wrote);
    - a digest is the blob of that digest;
    - the referrers of a digest are the manifests listed in ``index.json``
      with an ``artifactType`` whose ``subject`` is that digest (how ``oras copy
      -r`` keeps them); the layout always "has the API", so an empty list is
      an answer, not a 404;
    - blobs are read from ``blobs/``. Reads are capped; the verifier checks
      every digest again.
    """

    def __init__(self, layout: OCILayout) -> None:
        self.layout = layout
        self._entries = [Descriptor.from_json(raw) for raw in layout.read_index()["manifests"]]

    def _ours(self, entry: Descriptor, repository: Reference) -> bool:
        recorded = entry.annotations.get(ANNOTATION_SOURCE_REPOSITORY)
        return recorded is None or recorded == repository.name

    def _read(self, digest: str, max_bytes: int) -> bytes | None:
        try:
            path = self.layout.blob_path(digest)
        except InvalidDigestError:
            return None
        try:
            with path.open("rb") as handle:
                data = handle.read(max_bytes + 1)
        except FileNotFoundError:
            return None
        if len(data) > max_bytes:
            raise BodyTooLargeError(f"stored blob {digest}: over the {max_bytes}-byte cap")
        return data

    def fetch_manifest(self, repository: Reference, reference: str, *, max_bytes: int) -> FetchedManifest | None:
        """A manifest by tag (from ``index.json``) or by digest (from ``blobs/``)."""
        media_type: str | None = None
        if ":" in reference:
            validate_digest(reference)
            digest = reference
            media_type = next((e.media_type for e in self._entries if e.digest == digest), None)
        else:
            entry = next((e for e in reversed(self._entries)
                          if e.annotations.get(ANNOTATION_REF_NAME) == reference and self._ours(e, repository)), None)
            if entry is None:
                return None
            digest, media_type = entry.digest, entry.media_type
        body = self._read(digest, max_bytes)
        if body is None:
            return None
        if media_type is None:
            try:
                declared = json.loads(body).get("mediaType")
            except (UnicodeDecodeError, ValueError, AttributeError):
                declared = None
            media_type = declared if isinstance(declared, str) else "application/octet-stream"
        return FetchedManifest(body=body, content_type=media_type)

    def fetch_referrers(
        self, repository: Reference, digest: str, *, artifact_type: str | None, max_bytes: int
    ) -> FetchedManifest:
        """An index of the stored manifests whose ``subject`` is ``digest`` (``artifactType`` filtered)."""
        validate_digest(digest)
        listed: list[dict[str, Any]] = []
        for entry in self._entries:
            if entry.media_type not in MANIFEST_MEDIA_TYPES or not entry.artifact_type:
                continue
            if artifact_type is not None and entry.artifact_type != artifact_type:
                continue
            if not self._ours(entry, repository) or entry.size > MAX_MANIFEST_BYTES:
                continue
            body = self._read(entry.digest, MAX_MANIFEST_BYTES)
            try:
                subject = json.loads(body or b"null").get("subject") or {}
            except (UnicodeDecodeError, ValueError, AttributeError):
                continue
            if isinstance(subject, dict) and subject.get("digest") == digest:
                listed.append({"mediaType": entry.media_type, "digest": entry.digest, "size": entry.size,
                               "artifactType": entry.artifact_type})
            if len(listed) > MAX_REFERRERS:
                break
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": listed},
                          separators=(",", ":")).encode()
        if len(body) > max_bytes:
            raise BodyTooLargeError(f"stored referrers of {digest}: over the {max_bytes}-byte cap")
        return FetchedManifest(body=body, content_type=OCI_INDEX)

    def fetch_blob(self, repository: Reference, descriptor: Descriptor, *, max_bytes: int) -> bytes | None:
        """A blob of ``blobs/``, at most ``max_bytes``."""
        return self._read(descriptor.digest, max_bytes)


def verify_in_layout(layout: OCILayout, target: Reference, verification: Verification) -> TrustResult:
    """:func:`~doras_oras.trust.check` of ``target`` (with its digest) against the layout's stored signatures."""
    return check(LayoutSignatureSource(layout), target, verification, origin=ORIGIN_LAYOUT)


@dataclass(frozen=True)
class StoredVerification:
    """What ``doras-oras verify`` found: the image, the digest that was signed, the trust result."""

    image: ImageEntry
    signed_digest: str
    """The registry digest the signature covers (the index digest for an image chosen from an index)."""
    trust: TrustResult

    def to_json(self) -> dict[str, Any]:
        return {"status": "verified", "repository": self.image.repository, "tag": self.image.tag,
                "stored_digest": self.image.descriptor.digest, "signed_digest": self.signed_digest,
                "trust": self.trust.to_json()}


def find_stored_image(layout: OCILayout, ref: Reference) -> ImageEntry:
    """The layout's image of ``ref``: by digest (any digest it stands for), else by tag; the newest."""
    for image in reversed(layout.images()):
        if image.repository != ref.name:
            continue
        if ref.digest is not None:
            if ref.digest in (*image.stands_for, image.descriptor.digest):
                return image
        elif image.tag == (ref.tag or "latest"):
            return image
    raise ImageNotFoundError(f"no image {ref} in {layout.root}")


def _signed_digest(image: ImageEntry, ref: Reference) -> str:
    if ref.digest is not None and ref.digest != image.descriptor.digest:
        return ref.digest
    return image.source_index or image.source_digest


def _stored_document(layout: OCILayout, digest: str, what: str) -> dict[str, Any]:
    """The stored signed document ``digest`` (verified by its digest), parsed."""
    path = layout.blob_path(digest)
    if not path.is_file():
        raise TrustChainError(f"{what} {digest} is not in the layout: the stored image cannot be tied to the "
                              "signed digest offline (pull it again with verification)")
    size = path.stat().st_size
    try:
        body = layout.read_blob(Descriptor("application/octet-stream", digest, size))
        document = json.loads(body)
        media_type = document.get("mediaType") if isinstance(document, dict) else None
        parsed = schemas.parse_manifest(body, str(media_type or ""), what=f"{what} {digest}")
    except (ValueError, DocumentError, VerificationError, LayoutError) as exc:
        raise TrustChainError(f"{what} {digest} in the layout is unusable: {exc}") from exc
    return dict(parsed.document)


def _check_chain(layout: OCILayout, image: ImageEntry, signed: str) -> None:
    """The stored manifest is the signed digest, or is reached from it (index) or rewritten from it."""
    stored = image.descriptor
    if signed == stored.digest:
        return
    if signed == image.source_index:
        index = _stored_document(layout, signed, "the signed image index")
        if stored.media_type in INDEX_MEDIA_TYPES or not any(
                isinstance(m, dict) and m.get("digest") == stored.digest and m.get("size") == stored.size
                for m in index.get("manifests") or []):
            raise TrustChainError(f"the signed image index {signed} does not list the stored manifest {stored.digest}")
        return
    if signed == image.source_digest and image.rewritten:
        original = _stored_document(layout, signed, "the signed registry manifest")
        mine = json.loads(layout.read_blob(stored))
        _check_rewrite(layout, original, mine, signed, stored.digest)
        return
    raise TrustChainError(f"the stored image {stored.digest} does not stand for {signed}")


def _check_rewrite(layout: OCILayout, original: dict[str, Any], mine: dict[str, Any], signed: str,
                   stored: str) -> None:
    """A rewritten manifest differs from its original only by layers holding the verified tar.

    Such a layer keeps the original's annotations, and holds the tar whose digest the signed
    ``io.deis.oras.content.digest`` annotation names: as a gzip of it (what doras-oras stores),
    or the tar itself (what earlier versions stored).
    """
    same = {k: v for k, v in original.items() if k != "layers"} == {k: v for k, v in mine.items() if k != "layers"}
    layers_o, layers_m = original.get("layers") or [], mine.get("layers") or []
    if not same or len(layers_o) != len(layers_m):
        raise TrustChainError(f"the stored manifest {stored} is not a rewrite of the signed {signed}")
    for old, new in zip(layers_o, layers_m, strict=True):
        if old == new:
            continue
        content = (old.get("annotations") or {}).get(ANNOTATION_CONTENT_DIGEST)
        kind = new.get("mediaType")
        holds = content is not None and new.get("annotations") == old.get("annotations") and (
            new.get("digest") == content if kind == OCI_LAYER_TAR else
            kind == OCI_LAYER_TAR_GZIP and layout.tar_digest(Descriptor.from_json(new)) == content)
        if not holds:
            raise TrustChainError(f"the stored manifest {stored} changes a layer of the signed {signed} "
                                  "other than by storing its verified tar")


def verify_stored(layout: OCILayout, ref: Reference, verification: Verification) -> StoredVerification:
    """Re-verify, offline, the stored image of ``ref`` with the signatures kept beside it.

    Checks, in order: the signature (the same verifier as the pull, reading
    the layout), the chain from the signed digest to the stored manifest (an
    index lists it; a rewritten manifest differs only by its layer holding the
    verified tar), and every stored blob of the image against its digest.
    ``{tag}`` in a required annotation stands for the tag the image is stored under
    (``ref``'s, else the entry's); with ``verification.max_age_s`` the signed creation
    time recorded for the image must be that fresh (now).
    Raises a :class:`~doras_oras.errors.TrustError` (or :class:`ImageNotFoundError`).
    """
    image = find_stored_image(layout, ref)
    signed = _signed_digest(image, ref)
    target = Reference(ref.registry, ref.repository).with_digest(signed)
    verification = replace(verification, tag=ref.tag or image.tag)
    trust = verify_in_layout(layout, target, verification)
    if verification.max_age_s is not None and trust.signature is not None:
        decision = decide(standing_of(layout, image), None, verification.order_for(target), now=datetime.now(UTC),
                          max_age_s=verification.max_age_s)
        trust = replace(trust, order=decision)
    _check_chain(layout, image, signed)
    try:
        for item in layout.closure(image.descriptor, verify=False):
            layout.forget_verified(item.digest)  # hash every stored byte again
        layout.closure(image.descriptor, verify=True)
    except CorruptLayoutError as exc:
        raise TrustChainError(f"the stored image {image.descriptor.digest} no longer matches what was signed: "
                              f"{exc}") from exc
    log.info("stored %s (%s) verified offline: signed digest %s", ref, image.descriptor.digest, signed)
    return StoredVerification(image=image, signed_digest=signed, trust=trust)
