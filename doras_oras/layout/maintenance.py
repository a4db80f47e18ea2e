"""Housekeeping of an :class:`~doras_oras.layout.store.OCILayout`: checks, recovery, gc.

- :func:`verify_layout`: checks every file, schema and referenced blob;
- :func:`rebuild_index`: recreates a lost or corrupt ``index.json`` from ``blobs/``;
- :func:`gc`: keeps the newest images per repository and removes unreferenced blobs.

They use the layout's public methods only (the store does not know this module). The
caller of :func:`rebuild_index` and :func:`gc` holds the layout's lock (they check it).
The leftovers of killed runs are cleaned by the lock itself (:func:`.files.clean_ingest`).
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import schemas
from ..descriptor import (
    ANNOTATION_REF_NAME,
    INDEX_MEDIA_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    validate_digest,
)
from ..errors import DocumentError, InvalidArgumentError, LayoutError, VerificationError
from .files import INGEST_DIR, META_SUFFIX, PARTIAL_SUFFIX, fsync_dir, remove_unless_claimed
from .index import ImageEntry

if TYPE_CHECKING:
    from .store import OCILayout

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class GCResult:
    """What :func:`gc` removed."""

    removed_images: tuple[ImageEntry, ...]
    removed_blobs: tuple[str, ...]
    freed_bytes: int


def verify_layout(layout: OCILayout) -> list[ImageEntry]:
    """Check the whole layout: files, schemas, every referenced blob's digest. Returns the images.

    Attachments (signature manifests) are checked like images.
    """
    layout.check_layout_file()
    images = layout.images()
    for image in [*images, *layout.attachments()]:
        for item in layout.closure(image.descriptor, verify=False):
            layout.forget_verified(item.digest)  # hash everything again
        layout.closure(image.descriptor, verify=True)
    return images


def rebuild_index(layout: OCILayout) -> list[ImageEntry]:
    """Recreate ``index.json`` from the manifests found in ``blobs/`` whose content is complete.

    Top-level manifests (not referenced by another stored index) become
    entries; a stored entry's tag and source annotations cannot be recovered
    from blobs: entries get ``ref.name`` ``recovered-<hex12>`` and no source.
    Returns the new images. The caller holds the lock.
    """
    layout.require_lock()
    found: dict[str, Descriptor] = {}
    children: set[str] = set()
    for alg_dir in sorted((layout.root / "blobs").iterdir()):
        for path in sorted(alg_dir.iterdir()):
            digest = f"{alg_dir.name}:{path.name}"
            try:
                validate_digest(digest)
                size = path.stat().st_size
                if size > schemas.MAX_MANIFEST_BYTES:
                    continue
                body = path.read_bytes()
                document = json.loads(body)
            except (ValueError, OSError):
                continue
            if not isinstance(document, dict) or document.get("schemaVersion") != 2:
                continue
            media_type = document.get("mediaType") or (OCI_INDEX if "manifests" in document else OCI_MANIFEST)
            try:
                schemas.parse_manifest(body, media_type, expected=Descriptor(media_type, digest, size))
                descriptor = Descriptor(media_type, digest, size, artifact_type=document.get("artifactType"))
                layout.closure(descriptor, verify=True)
            except (ValueError, LayoutError, VerificationError, DocumentError):
                continue
            found[digest] = descriptor
            if media_type in INDEX_MEDIA_TYPES:
                children.update(item["digest"] for item in document["manifests"])
    entries = [
        Descriptor(
            media_type=d.media_type,
            digest=d.digest,
            size=d.size,
            annotations={ANNOTATION_REF_NAME: f"recovered-{d.hex[:12]}"},
            artifact_type=d.artifact_type,
        ).to_json()
        for digest, d in sorted(found.items())
        if digest not in children
    ]
    layout.write_index(entries)
    log.warning("rebuilt %s/index.json with %d image(s)", layout.root, len(entries))
    return layout.images()


def gc(layout: OCILayout, keep: int) -> GCResult:
    """Keep the newest ``keep`` images per repository; remove unreferenced blobs and partials.

    Entries that doras-oras did not write (no source repository) are never collected.
    An attachment (signature manifest) stays while a kept image of its
    repository stands for its subject, and goes with the last such image. The caller holds the lock.
    """
    layout.require_lock()
    if not isinstance(keep, int) or keep < 0:
        raise InvalidArgumentError(f"keep must be an integer >= 0, not {keep!r}")
    images = layout.images()
    groups: dict[str | None, list[tuple[int, ImageEntry]]] = {}
    for position, image in enumerate(images):
        groups.setdefault(image.repository, []).append((position, image))
    drop: set[int] = set()
    for repository, members in groups.items():
        if repository is None:
            continue  # not ours: never collected
        ordered = sorted(members, key=lambda pair: (pair[1].pulled, pair[0]), reverse=True)
        drop.update(position for position, _ in ordered[keep:])
    kept = [image for position, image in enumerate(images) if position not in drop]
    removed_images = tuple(image for position, image in enumerate(images) if position in drop)
    wanted = {(image.repository, digest) for image in kept for digest in image.stands_for}
    attachments = layout.attachments()
    kept_attachments = [a for a in attachments if (a.repository, a.subject) in wanted]
    if removed_images or len(kept_attachments) != len(attachments):
        layout.write_index([image.descriptor.to_json() for image in kept]
                            + [a.descriptor.to_json() for a in kept_attachments])
    live = layout.live_digests()
    removed: list[str] = []
    freed = 0
    for alg_dir in (layout.root / "blobs").iterdir():
        if not alg_dir.is_dir():
            continue
        for path in alg_dir.iterdir():
            digest = f"{alg_dir.name}:{path.name}"
            if digest in live:
                continue
            with contextlib.suppress(FileNotFoundError):
                freed += path.stat().st_size
                path.unlink()
                removed.append(digest)
                layout.forget_verified(digest)
    for partial in (layout.root / INGEST_DIR).glob("*" + PARTIAL_SUFFIX):
        with contextlib.suppress(FileNotFoundError):
            size = partial.stat().st_size
            if remove_unless_claimed(partial):  # a download in flight holds its file: kept
                freed += size
                partial.with_name(partial.name + META_SUFFIX).unlink(missing_ok=True)
    if removed:
        fsync_dir(layout.root / "blobs")
    log.info("gc: removed %d image(s), %d blob(s), %d bytes", len(removed_images), len(removed), freed)
    return GCResult(removed_images, tuple(sorted(removed)), freed)
