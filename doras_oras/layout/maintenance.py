"""Housekeeping of an :class:`~doras_oras.layout.store.OCILayout`: leftovers, checks, recovery, gc.

- :func:`clean`: removes what killed runs left in ``ingest/`` (run on every lock);
- :func:`verify`: checks every file, schema and referenced blob;
- :func:`rebuild_index`: recreates a lost or corrupt ``index.json`` from ``blobs/``;
  :func:`recover_index` does it only when ``index.json`` is unusable, keeping the old file;
- :func:`fsck`: hashes every blob of every image, names the damaged ones; with
  ``repair``, drops them and their blobs (and recovers a corrupt ``index.json``);
- :func:`gc`: keeps the newest images per repository and removes unreferenced blobs.

The caller holds the layout's lock (the :class:`OCILayout` methods check it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import schemas
from ..descriptor import (
    ANNOTATION_REF_NAME,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    validate_digest,
)
from ..errors import (
    CorruptLayoutError,
    DocumentError,
    DorasOrasError,
    InvalidArgumentError,
    LayoutError,
    VerificationError,
)
from .files import INGEST_DIR, META_SUFFIX, PARTIAL_SUFFIX, TEMP_SUFFIX, disk_error, fsync_dir
from .index import ImageEntry

if TYPE_CHECKING:
    from .store import OCILayout

log = logging.getLogger(__name__)

STALE_PARTIAL_SECONDS = 7 * 24 * 3600
"""Partial downloads untouched this long are removed."""


@dataclass(frozen=True)
class GCResult:
    """What :func:`gc` removed."""

    removed_images: tuple[ImageEntry, ...]
    removed_blobs: tuple[str, ...]
    freed_bytes: int


def clean(layout: OCILayout, *, stale_after: float = STALE_PARTIAL_SECONDS) -> list[Path]:
    """Remove leftovers of killed runs in ``ingest/``; keep what a next pull can resume.

    Removed: temp files (``*.tmp``); partial downloads that are stale (untouched
    for ``stale_after`` seconds), already complete in ``blobs/`` or badly named,
    with their ``.meta`` sidecars; sidecars whose partial file is gone. Kept: fresh
    partials and their sidecars (the next download resumes them).
    """
    removed: list[Path] = []
    ingest = layout.root / INGEST_DIR
    now = time.time()
    entries = sorted(ingest.iterdir()) if ingest.is_dir() else []
    for entry in entries:
        name = entry.name
        remove = False
        if name.endswith(TEMP_SUFFIX):
            remove = True
        elif name.endswith(PARTIAL_SUFFIX):
            alg, _, hexpart = name[: -len(PARTIAL_SUFFIX)].partition("-")
            try:
                validate_digest(f"{alg}:{hexpart}")
                done = (layout.root / "blobs" / alg / hexpart).exists()
                remove = done or now - entry.stat().st_mtime > stale_after
            except (ValueError, OSError):
                remove = True
            if remove:
                sidecar = entry.with_name(name + META_SUFFIX)
                if sidecar.exists():
                    with contextlib.suppress(FileNotFoundError):
                        sidecar.unlink()
                    removed.append(sidecar)
        if remove:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
            removed.append(entry)
    for entry in entries:
        name = entry.name
        orphan = (
            name.endswith(PARTIAL_SUFFIX + META_SUFFIX)
            and entry not in removed
            and not entry.with_name(name[: -len(META_SUFFIX)]).exists()
        )
        if orphan:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
            removed.append(entry)
    if removed:
        log.info("cleaned %d leftover file(s) in %s", len(removed), ingest)
    return removed


@dataclass(frozen=True)
class Damage:
    """An entry of ``index.json`` (image or attachment) whose content is not intact."""

    entry: ImageEntry
    problems: tuple[str, ...]
    """One line per bad blob: its digest, media type and what is wrong."""


@dataclass(frozen=True)
class FsckResult:
    """What :func:`fsck` found (and, with ``repair``, did)."""

    index_problem: str | None
    """Why ``index.json`` was unusable, or None. Without ``repair`` nothing else was checked."""
    index_recovered: bool
    """``repair``: the unusable ``index.json`` was kept as ``index.json.corrupt`` and rebuilt."""
    checked_images: int
    checked_blobs: int
    damaged: tuple[Damage, ...]
    repaired: bool
    """``repair``: the damaged entries were dropped from ``index.json`` and their blobs removed."""
    removed_blobs: tuple[str, ...]

    @property
    def clean(self) -> bool:
        """Nothing found wrong."""
        return self.index_problem is None and not self.damaged

    @property
    def intact(self) -> bool:
        """The layout is sound now: nothing was wrong, or everything found was repaired."""
        return self.clean or (self.repaired and (self.index_problem is None or self.index_recovered))


def _damage(layout: OCILayout, entries: list[ImageEntry]) -> tuple[list[Damage], dict[str, list[str]], int]:
    """Hash every blob each entry reaches (each blob once): the damaged entries, the digests each entry
    reaches (by its digest), and the number of blobs hashed."""
    problems_of: dict[str, str | None] = {}
    reached: dict[str, list[str]] = {}
    damaged: list[Damage] = []
    for entry in entries:
        seen: dict[str, None] = {}
        problems: list[str] = []
        todo = [entry.descriptor]
        while todo:
            item = todo.pop()
            if item.digest in seen:
                continue
            seen[item.digest] = None
            if item.digest not in problems_of:
                problems_of[item.digest] = layout.blob_problem(item)
            problem = problems_of[item.digest]
            if problem is None and item.media_type in MANIFEST_MEDIA_TYPES + INDEX_MEDIA_TYPES:
                try:
                    todo.extend(layout.references(item))
                except (ValueError, DorasOrasError) as exc:
                    problem = f"not a usable manifest ({exc})"
            if problem is not None:
                problems.append(f"blob {item.digest} ({item.media_type}) is {problem}")
        reached[entry.descriptor.digest] = list(seen)
        if problems:
            damaged.append(Damage(entry, tuple(problems)))
    return damaged, reached, len(problems_of)


def verify(layout: OCILayout) -> list[ImageEntry]:
    """Check the whole layout: files, schemas, every referenced blob's digest. Returns the images.

    Attachments (signature manifests) are checked like images. The first problem
    found is raised as a :class:`CorruptLayoutError` (:func:`fsck` lists them all).
    """
    layout.check_layout_file()
    images = layout.images()
    damaged, _, _ = _damage(layout, [*images, *layout.attachments()])
    if damaged:
        raise CorruptLayoutError(damaged[0].problems[0])
    return images


def fsck(layout: OCILayout, *, repair: bool = False) -> FsckResult:
    """Hash every blob of every image and attachment of ``index.json``; name the damaged ones.

    An unusable ``index.json`` is reported (and nothing else checked), or with
    ``repair`` recovered first (:func:`recover_index`). With ``repair`` the damaged
    entries are dropped from ``index.json`` (one atomic write) and the blobs they
    reached that nothing else reaches are removed, so the next pull fetches them again.
    """
    layout.check_layout_file()
    index_problem: str | None = None
    recovered = False
    try:
        layout.read_index()
    except CorruptLayoutError as exc:
        index_problem = exc.detail
        if not repair:
            return FsckResult(index_problem, False, 0, 0, (), False, ())
        recover_index(layout)
        recovered = True
    entries = [*layout.images(), *layout.attachments()]
    damaged, reached, hashed = _damage(layout, entries)
    removed: list[str] = []
    if repair and damaged:
        dropped = [d.entry.descriptor for d in damaged]  # (descriptors are not hashable)
        layout._write_index([e.descriptor.to_json() for e in entries if e.descriptor not in dropped])
        removed = layout.discard_unreferenced([digest for d in damaged for digest in reached[d.entry.descriptor.digest]])
        for d in damaged:
            log.warning("dropped %s (%s) from index.json: %s", d.entry.tag or "an untagged image",
                        d.entry.descriptor.digest, "; ".join(d.problems))
    return FsckResult(index_problem, recovered, len(entries), hashed, tuple(damaged),
                      repair and (bool(damaged) or recovered), tuple(sorted(removed)))


def rebuild_index(layout: OCILayout) -> list[ImageEntry]:
    """Recreate ``index.json`` from the manifests found in ``blobs/`` whose content is complete.

    Top-level manifests (not referenced by another stored index) become
    entries; a stored entry's tag and source annotations cannot be recovered
    from blobs: entries get ``ref.name`` ``recovered-<hex12>`` and no source.
    Returns the new images.
    """
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
    layout._write_index(entries)
    log.warning("rebuilt %s/index.json with %d image(s)", layout.root, len(entries))
    return layout.images()


CORRUPT_INDEX = "index.json.corrupt"
"""Where :func:`recover_index` keeps an unusable ``index.json`` (for a person to look at)."""


def recover_index(layout: OCILayout) -> list[ImageEntry] | None:
    """Rebuild ``index.json`` when it is missing or unusable; None when it is valid (nothing done).

    An unusable file is kept as ``index.json.corrupt`` (replacing an older one),
    then :func:`rebuild_index` lists the complete images of ``blobs/``.
    """
    index = layout.root / "index.json"
    try:
        layout.read_index()
        return None
    except CorruptLayoutError as exc:
        log.warning("%s", exc.detail)
    layout.require_writable()
    if index.exists():
        try:
            index.replace(layout.root / CORRUPT_INDEX)
        except OSError as exc:
            raise disk_error(CORRUPT_INDEX, exc) from exc
    return layout.rebuild_index()


def gc(layout: OCILayout, keep: int) -> GCResult:
    """Keep the newest ``keep`` images per repository; remove unreferenced blobs and partials.

    Entries that doras-oras did not write (no source repository) are never collected.
    An attachment (signature manifest) stays while a kept image of its
    repository stands for its subject, and goes with the last such image.
    """
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
        layout._write_index([image.descriptor.to_json() for image in kept]
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
            freed += partial.stat().st_size
            partial.unlink()
            partial.with_name(partial.name + META_SUFFIX).unlink(missing_ok=True)
    if removed:
        fsync_dir(layout.root / "blobs")
    log.info("gc: removed %d image(s), %d blob(s), %d bytes", len(removed_images), len(removed), freed)
    return GCResult(removed_images, tuple(sorted(removed)), freed)
