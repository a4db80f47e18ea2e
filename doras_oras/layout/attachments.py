"""Manifests kept beside an image: its signatures, as ``oras copy -r`` and skopeo see them.

An :class:`Attachment` is a manifest that belongs to an image without being
one: a cosign signature manifest. It is committed with the image, in the same
``index.json`` write (its blobs first), as an entry of its own:

- a **legacy** signature (found under the tag ``sha256-<hex>.sig``) under that
  tag, ``org.opencontainers.image.ref.name: sha256-<hex>.sig``, so that
  ``skopeo inspect --raw oci:DIR:sha256-<hex>.sig`` and ``oras copy
  --from-oci-layout DIR:sha256-<hex>.sig`` read it;
- a **referrer** (OCI 1.1, its ``subject`` the image) untagged, with its
  ``artifactType``: what ``oras copy -r --to-oci-layout`` writes, and what
  ``oras discover --oci-layout`` lists.

Both carry ``io.doras-oras.source.repository`` and ``io.doras-oras.subject``
(the registry digest the signature is for: the manifest digest, or the image
index digest it was chosen from). Entries with ``io.doras-oras.subject`` are
never images (:meth:`~doras_oras.layout.store.OCILayout.images` leaves them
out); ``gc`` keeps them while an image of the repository stands for their
subject. When the signed document is not the stored manifest (an image
index, or the registry manifest of a rewritten tar-diff result), its bytes
are kept too (``subject_body``), so the chain from signature to stored bytes
can be checked again offline; the attachment keeps that blob alive.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..descriptor import (
    ANNOTATION_REF_NAME,
    ANNOTATION_SOURCE_REPOSITORY,
    Descriptor,
    digest_of,
    validate_digest,
)
from ..errors import LayoutError
from .index import ANNOTATION_PULLED, ANNOTATION_SUBJECT, now

__all__ = ["ANNOTATION_SUBJECT", "Attachment", "attachment_entry", "is_attachment", "replaced_by"]


@dataclass(frozen=True)
class Attachment:
    """A manifest to keep beside an image (a signature), with everything it references."""

    manifest: Descriptor
    """Its media type, digest, size and ``artifactType``."""
    body: bytes
    """The manifest's exact bytes."""
    blobs: Mapping[str, bytes]
    """Its config and layers, by digest."""
    subject: str
    """The registry digest it belongs to."""
    tag: str | None = None
    """``sha256-<hex>.sig`` for a legacy signature; ``None`` for a referrer."""
    subject_body: bytes | None = field(default=None, repr=False)
    """The bytes of ``subject`` when they are not the stored manifest's (an index, a rewritten image's original)."""

    def __post_init__(self) -> None:
        algorithm, _ = validate_digest(self.subject)
        if digest_of(self.body, self.manifest.algorithm) != self.manifest.digest or len(self.body) != self.manifest.size:
            raise LayoutError(f"attachment {self.manifest.digest}: its bytes do not match its descriptor")
        if self.subject_body is not None and digest_of(self.subject_body, algorithm) != self.subject:
            raise LayoutError(f"attachment {self.manifest.digest}: the subject's bytes are not {self.subject}")


def is_attachment(entry: Mapping[str, Any]) -> bool:
    """Whether an ``index.json`` entry (JSON) is an attachment doras-oras wrote."""
    annotations = entry.get("annotations") or {}
    return isinstance(annotations, Mapping) and ANNOTATION_SUBJECT in annotations


def attachment_entry(attachment: Attachment, *, repository: str) -> Descriptor:
    """The ``index.json`` entry of ``attachment`` kept for ``repository``."""
    notes = {ANNOTATION_SOURCE_REPOSITORY: repository, ANNOTATION_SUBJECT: attachment.subject,
             ANNOTATION_PULLED: now()}
    if attachment.tag:
        notes[ANNOTATION_REF_NAME] = attachment.tag
    return Descriptor(
        media_type=attachment.manifest.media_type,
        digest=attachment.manifest.digest,
        size=attachment.manifest.size,
        annotations=notes,
        artifact_type=attachment.manifest.artifact_type,
    )


def replaced_by(entry: Mapping[str, Any], new: Descriptor) -> bool:
    """Whether the existing attachment ``entry`` gives way to the new attachment entry ``new``.

    Same repository, and the same manifest or the same tag (a re-signed image:
    its ``.sig`` manifest grew a layer).
    """
    if not is_attachment(entry):
        return False
    old = entry.get("annotations") or {}
    notes = new.annotations
    if old.get(ANNOTATION_SOURCE_REPOSITORY) != notes[ANNOTATION_SOURCE_REPOSITORY]:
        return False
    if entry.get("digest") == new.digest:
        return True
    tag = notes.get(ANNOTATION_REF_NAME)
    return tag is not None and old.get(ANNOTATION_REF_NAME) == tag
