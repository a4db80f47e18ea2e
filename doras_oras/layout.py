"""The local OCI image layout (image-spec v1.1 ``image-layout.md``): a crash-safe, verified store.

Layout of the directory::

    oci-layout                  {"imageLayoutVersion": "1.0.0"}
    index.json                  the images, one entry per repository + tag
    blobs/<alg>/<hex>           content, each verified before it got there
    ingest/                     doras-oras's own: lock file, temp files, partial downloads

Rules (docs/layout.md): a blob is written to a temp file under ``ingest/``,
checked for size and digest while written, fsynced, renamed into ``blobs/``
and the directory fsynced; ``index.json`` is replaced atomically as the last
step of a commit. Writers hold :meth:`OCILayout.lock`. Each ``index.json``
entry carries ``org.opencontainers.image.ref.name`` (the tag),
:data:`~doras_oras.descriptor.ANNOTATION_SOURCE_REPOSITORY` and
:data:`~doras_oras.descriptor.ANNOTATION_SOURCE_DIGEST`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol

from . import schemas
from ._writeback import WriteBehind
from .descriptor import (
    ANNOTATION_PREFIX,
    ANNOTATION_REF_NAME,
    ANNOTATION_SOURCE_DIGEST,
    ANNOTATION_SOURCE_REPOSITORY,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    OCI_INDEX,
    OCI_LAYER_TAR,
    OCI_MANIFEST,
    Descriptor,
    validate_digest,
)
from .errors import (
    CorruptLayoutError,
    DigestMismatchError,
    DocumentError,
    ImageNotFoundError,
    LayoutError,
    LayoutLockedError,
    SchemaValidationError,
    SizeMismatchError,
    VerificationError,
)
from .verify import verifying_reader

log = logging.getLogger(__name__)

ANNOTATION_PULLED = ANNOTATION_PREFIX + "pulled"
"""When doras-oras committed the entry (RFC 3339, UTC); orders images for :meth:`OCILayout.gc`."""

LAYOUT_VERSION = "1.0.0"
INGEST_DIR = "ingest"
LOCK_FILE = "lock"
TEMP_SUFFIX = ".tmp"
PARTIAL_SUFFIX = ".partial"
META_SUFFIX = ".meta"
"""Sidecar of a partial download: which digest and size its bytes belong to (written by the transport)."""
STALE_PARTIAL_SECONDS = 7 * 24 * 3600
CHUNK = 1 << 20

TEST_HOOK_ENV = "DORAS_ORAS_TEST_SLEEP_BEFORE_INDEX"
"""Test hook: seconds to sleep after the blobs are in place and before ``index.json`` is replaced."""

_OUR_NAMES = {"oci-layout", "index.json", "blobs", INGEST_DIR}


class Readable(Protocol):
    """Anything with ``read(n) -> bytes``."""

    def read(self, n: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class ImageEntry:
    """One image recorded in ``index.json``."""

    descriptor: Descriptor
    """The entry as written: the stored manifest's media type, digest, size, annotations."""

    @property
    def tag(self) -> str | None:
        """``org.opencontainers.image.ref.name``."""
        return self.descriptor.annotations.get(ANNOTATION_REF_NAME)

    @property
    def repository(self) -> str | None:
        """The source ``registry/repository``."""
        return self.descriptor.annotations.get(ANNOTATION_SOURCE_REPOSITORY)

    @property
    def source_digest(self) -> str:
        """The registry manifest digest this entry stands for (its own digest unless rewritten)."""
        return self.descriptor.annotations.get(ANNOTATION_SOURCE_DIGEST, self.descriptor.digest)

    @property
    def pulled(self) -> str:
        """When it was committed (RFC 3339), or ``""``."""
        return self.descriptor.annotations.get(ANNOTATION_PULLED, "")

    @property
    def rewritten(self) -> bool:
        """Whether the stored manifest differs from the registry's (a tar-diff result)."""
        return self.source_digest != self.descriptor.digest


@dataclass(frozen=True)
class GCResult:
    """What :meth:`OCILayout.gc` removed."""

    removed_images: tuple[ImageEntry, ...]
    removed_blobs: tuple[str, ...]
    freed_bytes: int


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json_bytes(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def disk_error(what: str, exc: OSError) -> LayoutError:
    """A :class:`LayoutError` for a failed write of ``what`` (names a full disk as such)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return LayoutError(f"no space left on the device writing {what}")
    return LayoutError(f"cannot write {what}: {exc}")


_disk_error = disk_error


class OCILayout:
    """An OCI image layout on disk. Build it with :meth:`open`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._verified: set[str] = set()
        self._lock_depth = 0
        self._lock_fd: int | None = None

    # --- opening -------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str], *, create: bool = True) -> OCILayout:
        """Open the layout at ``path``; create it (when ``create``) if absent or empty.

        Refuses a directory that holds something other than an OCI layout,
        and an ``oci-layout`` file that is not ``{"imageLayoutVersion": "1.0.0"}``.
        """
        root = Path(path)
        if root.exists() and not root.is_dir():
            raise LayoutError(f"{root} is not a directory")
        names = {p.name for p in root.iterdir()} if root.is_dir() else set()
        if "oci-layout" not in names:
            foreign = sorted(names - _OUR_NAMES)
            if foreign:
                raise LayoutError(
                    f"{root} is not an OCI image layout (no oci-layout file; contains {', '.join(foreign[:5])})"
                )
            if names and "blobs" not in names and "index.json" in names:
                raise LayoutError(f"{root} is not an OCI image layout (no oci-layout file)")
            if not create:
                raise LayoutError(f"{root} is not an OCI image layout (no oci-layout file)")
            layout = cls(root)
            layout._create()
            return layout
        layout = cls(root)
        layout._check_layout_file()
        for sub in ("blobs", INGEST_DIR):
            (root / sub).mkdir(exist_ok=True)
        if not (root / "index.json").exists():
            raise CorruptLayoutError(f"{root}: index.json is missing (rebuild_index() can recover)")
        return layout

    def _create(self) -> None:
        try:
            (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
            (self.root / INGEST_DIR).mkdir(exist_ok=True)
            with self.lock():
                if not (self.root / "index.json").exists():
                    self._write_index([])
                self._atomic_write(self.root / "oci-layout", _json_bytes({"imageLayoutVersion": LAYOUT_VERSION}))
        except OSError as exc:
            raise _disk_error(f"a new layout at {self.root}", exc) from exc
        log.info("created OCI layout %s", self.root)

    def _check_layout_file(self) -> None:
        path = self.root / "oci-layout"
        try:
            document = json.loads(path.read_bytes()[: 1 << 16])
            schemas.validate(document, "oci-layout")
        except (OSError, ValueError, SchemaValidationError) as exc:
            raise CorruptLayoutError(f"{path}: not a valid oci-layout file ({exc})") from exc

    # --- locking -------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, timeout: float = 300.0) -> Iterator[None]:
        """Hold the layout's writer lock (re-entrant in a process); wait at most ``timeout`` s.

        Taking the lock cleans the leftovers of killed runs (temp files, stale partials).
        """
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        ingest = self.root / INGEST_DIR
        ingest.mkdir(parents=True, exist_ok=True)
        fd = os.open(ingest / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LayoutLockedError(
                        f"{self.root} is locked by another process (waited {timeout:g} s)"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.2)
        self._lock_fd = fd
        self._lock_depth = 1
        try:
            self._verified.clear()  # another writer may have changed things meanwhile
            self.clean()
            yield
        finally:
            self._lock_depth = 0
            self._lock_fd = None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _require_lock(self) -> None:
        if not self._lock_depth:
            raise LayoutError("writing to the layout needs its lock (use `with layout.lock():`)")

    def clean(self, *, stale_after: float = STALE_PARTIAL_SECONDS) -> list[Path]:
        """Remove leftovers of killed runs in ``ingest/``; keep what a next pull can resume.

        Removed: temp files (``*.tmp``); partial downloads that are stale (untouched
        for ``stale_after`` seconds), already complete in ``blobs/`` or badly named,
        with their ``.meta`` sidecars; sidecars whose partial file is gone. Kept: fresh
        partials and their sidecars (:meth:`doras_oras.transport.Transport.download`
        resumes them).
        """
        self._require_lock()
        removed: list[Path] = []
        ingest = self.root / INGEST_DIR
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
                    done = (self.root / "blobs" / alg / hexpart).exists()
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

    # --- blobs ---------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        """``blobs/<alg>/<hex>`` of a digest (validated before the path is built)."""
        algorithm, hexpart = validate_digest(digest)
        return self.root / "blobs" / algorithm / hexpart

    def partial_path(self, descriptor: Descriptor) -> Path:
        """Where a partial download of ``descriptor`` is kept for resuming."""
        algorithm, hexpart = validate_digest(descriptor.digest)
        return self.root / INGEST_DIR / f"{algorithm}-{hexpart}{PARTIAL_SUFFIX}"

    ingest_path = partial_path

    def partial_size(self, descriptor: Descriptor) -> int:
        """Bytes already in the partial file of ``descriptor`` (0 if none)."""
        try:
            return self.partial_path(descriptor).stat().st_size
        except FileNotFoundError:
            return 0

    def has_blob(self, descriptor: Descriptor) -> bool:
        """Whether the blob is present with the right size and digest (hashed once per lock)."""
        path = self.blob_path(descriptor.digest)
        if descriptor.digest in self._verified:
            return path.is_file()
        try:
            if path.stat().st_size != descriptor.size:
                log.warning("blob %s has the wrong size: removing it", descriptor.digest)
                self._remove_bad_blob(path)
                return False
            with path.open("rb") as handle:
                hasher = hashlib.new(descriptor.algorithm)
                for chunk in iter(lambda: handle.read(CHUNK), b""):
                    hasher.update(chunk)
        except FileNotFoundError:
            return False
        if hasher.hexdigest() != descriptor.hex:
            log.warning("blob %s is corrupt: removing it", descriptor.digest)
            self._remove_bad_blob(path)
            return False
        self._verified.add(descriptor.digest)
        return True

    def _remove_bad_blob(self, path: Path) -> None:
        if self._lock_depth:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def open_blob(self, descriptor: Descriptor) -> BinaryIO:
        """A reader of the stored blob that checks size and digest as it is read."""
        path = self.blob_path(descriptor.digest)
        try:
            handle = path.open("rb")
        except FileNotFoundError as exc:
            raise ImageNotFoundError(f"blob {descriptor.digest} is not in {self.root}") from exc
        if descriptor.digest in self._verified:
            return handle
        reader = verifying_reader(handle, descriptor.digest, descriptor.size, what="stored blob")
        return io.BufferedReader(_ClosingReader(reader, handle))

    def read_blob(self, descriptor: Descriptor, *, limit: int = schemas.MAX_MANIFEST_BYTES) -> bytes:
        """The verified bytes of a small blob (manifest, config), at most ``limit``."""
        if descriptor.size > limit:
            raise LayoutError(f"blob {descriptor.digest}: {descriptor.size} bytes, over the {limit}-byte cap")
        with self.open_blob(descriptor) as reader:
            data = reader.read(descriptor.size + 1)
        if len(data) != descriptor.size or hashlib.new(descriptor.algorithm, data).hexdigest() != descriptor.hex:
            raise CorruptLayoutError(f"stored blob {descriptor.digest} does not match its digest or size")
        return data

    def ingest(self, descriptor: Descriptor, stream: Readable, *, resume: bool = False) -> Path:
        """Store ``descriptor``'s content read from ``stream``; return the blob path.

        With ``resume``, ``stream`` continues the partial file (it yields bytes
        from :meth:`partial_size` on). Reading stops at ``size``; a longer or
        shorter stream or a wrong digest raises and stores nothing. A failure
        reading ``stream`` (an exception from ``read``, e.g. a dropped link) keeps the
        partial file for a later resume; any other failure removes it.
        """
        self._require_lock()
        final = self.blob_path(descriptor.digest)
        if self.has_blob(descriptor):
            return final
        partial = self.partial_path(descriptor)
        try:
            mode = "ab" if resume else "wb"
            if not resume:
                with contextlib.suppress(FileNotFoundError):
                    partial.unlink()
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if resume else os.O_TRUNC), 0o644)
            handle = os.fdopen(fd, mode)
        except OSError as exc:
            raise _disk_error(f"blob {descriptor.digest}", exc) from exc
        with handle:
            hasher = hashlib.new(descriptor.algorithm)
            count = 0
            if resume:
                count = self._hash_existing(partial, hasher, descriptor)
            behind = WriteBehind(handle.fileno(), start=count)
            while count < descriptor.size:
                try:
                    chunk = stream.read(min(CHUNK, descriptor.size - count))
                except VerificationError:  # the source itself found a lie: nothing to resume
                    handle.close()
                    partial.unlink(missing_ok=True)
                    raise
                if not chunk:
                    break
                hasher.update(chunk)
                count += len(chunk)
                try:
                    handle.write(chunk)
                    behind.wrote(count)
                except OSError as exc:
                    handle.close()
                    partial.unlink(missing_ok=True)
                    raise _disk_error(f"blob {descriptor.digest}", exc) from exc
            problem: VerificationError | None = None
            if count < descriptor.size:
                problem = SizeMismatchError(f"blob {descriptor.digest}: got {count} bytes, expected {descriptor.size}")
            elif self._read_probe(stream, partial, handle):
                problem = SizeMismatchError(f"blob {descriptor.digest}: more than the expected {descriptor.size} bytes")
            elif hasher.hexdigest() != descriptor.hex:
                problem = DigestMismatchError(
                    f"blob: expected {descriptor.digest}, got {descriptor.algorithm}:{hasher.hexdigest()}"
                )
            if problem is not None:  # the stream ended or lied: nothing worth resuming
                handle.close()
                partial.unlink(missing_ok=True)
                raise problem
            try:
                handle.flush()
                os.fsync(handle.fileno())
            except OSError as exc:
                handle.close()
                partial.unlink(missing_ok=True)
                raise _disk_error(f"blob {descriptor.digest}", exc) from exc
        self._place(partial, final, descriptor.digest)
        return final

    @staticmethod
    def _read_probe(stream: Readable, partial: Path, handle: IO[bytes]) -> bool:
        try:
            return bool(stream.read(1))
        except VerificationError:
            handle.close()
            partial.unlink(missing_ok=True)
            raise

    def _hash_existing(self, partial: Path, hasher: Any, descriptor: Descriptor) -> int:
        count = 0
        with partial.open("rb") as existing:
            for chunk in iter(lambda: existing.read(CHUNK), b""):
                hasher.update(chunk)
                count += len(chunk)
        if count > descriptor.size:
            partial.unlink(missing_ok=True)
            raise SizeMismatchError(f"partial blob {descriptor.digest} is longer than {descriptor.size} bytes")
        return count

    def ingest_bytes(self, descriptor: Descriptor, data: bytes) -> Path:
        """:meth:`ingest` from memory."""
        return self.ingest(descriptor, io.BytesIO(data))

    def ingest_file(self, descriptor: Descriptor, path: Path) -> Path:
        """Move a finished file (e.g. a patch result) into ``blobs/`` after checking it.

        The file must be on the layout's file system (write it under :meth:`temp_dir`).
        """
        self._require_lock()
        final = self.blob_path(descriptor.digest)
        if self.has_blob(descriptor):
            path.unlink(missing_ok=True)
            return final
        hasher = hashlib.new(descriptor.algorithm)
        with path.open("rb") as handle:
            count = 0
            for chunk in iter(lambda: handle.read(CHUNK), b""):
                hasher.update(chunk)
                count += len(chunk)
            os.fsync(handle.fileno())
        if count != descriptor.size:
            path.unlink(missing_ok=True)
            raise SizeMismatchError(f"blob {descriptor.digest}: file has {count} bytes, expected {descriptor.size}")
        if hasher.hexdigest() != descriptor.hex:
            path.unlink(missing_ok=True)
            raise DigestMismatchError(f"blob: expected {descriptor.digest}, got {descriptor.algorithm}:{hasher.hexdigest()}")
        os.chmod(path, 0o644)
        self._place(path, final, descriptor.digest)
        return final

    def adopt_partial(self, descriptor: Descriptor, path: Path) -> Path:
        """Move a file whose digest was computed while it was written into ``blobs/``.

        For files that :meth:`doras_oras.transport.Transport.download` returned (it
        checked digest and size as the bytes arrived and fsynced them) and results of
        :func:`doras_oras.codecs.apply_delta` (it hashes while writing): the size is
        checked again, the file fsynced, made 0644, renamed into place and the
        directory fsynced. Anything else goes through :meth:`ingest_file`, which hashes.
        """
        self._require_lock()
        final = self.blob_path(descriptor.digest)
        if self.has_blob(descriptor):
            path.unlink(missing_ok=True)
            return final
        try:
            with path.open("rb") as handle:
                length = os.fstat(handle.fileno()).st_size
                if length == descriptor.size:
                    os.fsync(handle.fileno())
        except OSError as exc:
            raise _disk_error(f"blob {descriptor.digest}", exc) from exc
        if length != descriptor.size:
            path.unlink(missing_ok=True)
            raise SizeMismatchError(f"blob {descriptor.digest}: file has {length} bytes, expected {descriptor.size}")
        self._place(path, final, descriptor.digest)
        return final

    def temp_dir(self) -> Path:
        """A directory on the layout's file system for temp files (``*.tmp`` there are cleaned)."""
        return self.root / INGEST_DIR

    def _place(self, source: Path, final: Path, digest: str) -> None:
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(source, 0o644)
            os.replace(source, final)
            _fsync_dir(final.parent)
        except OSError as exc:
            source.unlink(missing_ok=True)
            raise _disk_error(f"blob {digest}", exc) from exc
        self._verified.add(digest)
        log.debug("stored blob %s", digest)

    def _atomic_write(self, target: Path, data: bytes) -> None:
        fd, name = tempfile.mkstemp(dir=self.root / INGEST_DIR, prefix="write-", suffix=TEMP_SUFFIX)
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
            _fsync_dir(target.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    # --- index ---------------------------------------------------------------
    def read_index(self) -> dict[str, Any]:
        """The parsed, schema-checked ``index.json``; :class:`CorruptLayoutError` if unusable."""
        path = self.root / "index.json"
        try:
            body = path.read_bytes()
        except FileNotFoundError as exc:
            raise CorruptLayoutError(f"{path} is missing (rebuild_index() can recover)") from exc
        if len(body) > schemas.MAX_MANIFEST_BYTES:
            raise CorruptLayoutError(f"{path} is larger than {schemas.MAX_MANIFEST_BYTES} bytes")
        try:
            document = json.loads(body)
            schemas.validate(document, "index")
        except (ValueError, SchemaValidationError) as exc:
            raise CorruptLayoutError(f"{path} is corrupt ({exc}); rebuild_index() can recover") from exc
        if not isinstance(document, dict):
            raise CorruptLayoutError(f"{path} is not a JSON object")
        return document

    def images(self) -> list[ImageEntry]:
        """The images of ``index.json``, in its order (oldest commit first)."""
        return [ImageEntry(Descriptor.from_json(entry)) for entry in self.read_index()["manifests"]]

    def find_image(self, repository: str, tag: str | None = None) -> ImageEntry | None:
        """The newest image of ``repository`` (``registry/repo``), with ``tag`` if given; else None."""
        matches = [
            image
            for image in self.images()
            if image.repository == repository and (tag is None or image.tag == tag)
        ]
        return matches[-1] if matches else None

    def get_image(self, repository: str, tag: str | None = None) -> ImageEntry:
        """Like :meth:`find_image` but raises :class:`ImageNotFoundError`."""
        image = self.find_image(repository, tag)
        if image is None:
            what = f"{repository}:{tag}" if tag else repository
            raise ImageNotFoundError(f"no image of {what} in {self.root}")
        return image

    def _write_index(self, entries: Sequence[Mapping[str, Any]]) -> None:
        document = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list(entries)}
        schemas.validate(document, "index")
        try:
            self._atomic_write(self.root / "index.json", _json_bytes(document))
        except OSError as exc:
            raise _disk_error("index.json", exc) from exc

    def references(self, descriptor: Descriptor) -> list[Descriptor]:
        """The descriptors a stored manifest or index points to (config, layers, manifests)."""
        document = json.loads(self.read_blob(descriptor))
        if descriptor.media_type in INDEX_MEDIA_TYPES:
            schemas.validate(document, "index")
            return [Descriptor.from_json(item) for item in document["manifests"]]
        if descriptor.media_type in MANIFEST_MEDIA_TYPES:
            schemas.validate(document, "manifest")
            return [Descriptor.from_json(document["config"])] + [
                Descriptor.from_json(item) for item in document["layers"]
            ]
        return []

    def _closure(self, descriptor: Descriptor, *, verify: bool) -> list[Descriptor]:
        seen: dict[str, Descriptor] = {}
        todo = [descriptor]
        while todo:
            item = todo.pop()
            if item.digest in seen:
                continue
            seen[item.digest] = item
            if verify and not self.has_blob(item):
                raise CorruptLayoutError(f"blob {item.digest} ({item.media_type}) is missing or corrupt")
            if item.media_type in MANIFEST_MEDIA_TYPES + INDEX_MEDIA_TYPES:
                if not self.blob_path(item.digest).is_file():
                    raise CorruptLayoutError(f"manifest {item.digest} is missing")
                todo.extend(self.references(item))
        return list(seen.values())

    def commit_image(
        self,
        manifest: Descriptor,
        *,
        repository: str,
        tag: str | None,
        source_digest: str | None = None,
        annotations: Mapping[str, str] | None = None,
    ) -> ImageEntry:
        """Record ``manifest`` (already stored with all it references) as the image ``repository:tag``.

        Checks that every referenced blob is present and verified, then replaces
        ``index.json`` atomically; an entry of the same repository and tag is replaced.
        """
        self._require_lock()
        if manifest.media_type not in MANIFEST_MEDIA_TYPES + INDEX_MEDIA_TYPES:
            raise LayoutError(f"cannot commit {manifest.media_type!r}: not a manifest or index")
        self._closure(manifest, verify=True)
        validate_digest(source_digest or manifest.digest)
        notes: dict[str, str] = dict(annotations or {})
        if tag:
            notes[ANNOTATION_REF_NAME] = tag
        notes[ANNOTATION_SOURCE_REPOSITORY] = repository
        notes[ANNOTATION_SOURCE_DIGEST] = source_digest or manifest.digest
        notes[ANNOTATION_PULLED] = _now()
        entry = Descriptor(
            media_type=manifest.media_type,
            digest=manifest.digest,
            size=manifest.size,
            annotations=notes,
            artifact_type=manifest.artifact_type,
            platform=manifest.platform,
        )
        kept = [
            item.descriptor.to_json()
            for item in self.images()
            if not (item.repository == repository and item.tag == tag)
        ]
        hook = os.environ.get(TEST_HOOK_ENV)
        if hook:
            time.sleep(float(hook))
        self._write_index([*kept, entry.to_json()])
        log.info("committed %s:%s -> %s", repository, tag, manifest.digest)
        return ImageEntry(entry)

    def commit_rewritten(
        self,
        original: bytes,
        layer_index: int,
        layer: Descriptor,
        *,
        repository: str,
        tag: str | None,
        source_digest: str,
    ) -> ImageEntry:
        """Store a manifest rewritten for an uncompressed tar layer and commit it.

        ``original`` is the registry's manifest (digest ``source_digest``);
        its layer ``layer_index`` is replaced by ``layer`` (already stored:
        the uncompressed tar), media type ``application/vnd.oci.image.layer.v1.tar``,
        the original layer's annotations kept.
        """
        self._require_lock()
        try:
            declared = json.loads(original).get("mediaType") or OCI_MANIFEST
        except (ValueError, AttributeError) as exc:
            raise SchemaValidationError(f"original manifest is not a JSON object ({exc})") from exc
        parsed = schemas.parse_manifest(original, str(declared))
        if parsed.is_index:
            raise LayoutError("commit_rewritten needs an image manifest, not an index")
        if hashlib.sha256(original).hexdigest() != validate_digest(source_digest)[1]:
            raise DigestMismatchError(f"original manifest does not match {source_digest}")
        document = json.loads(original)
        layers = document["layers"]
        if not 0 <= layer_index < len(layers):
            raise LayoutError(f"manifest has no layer {layer_index}")
        old = layers[layer_index]
        new = {"mediaType": OCI_LAYER_TAR, "digest": layer.digest, "size": layer.size}
        if old.get("annotations"):
            new["annotations"] = old["annotations"]
        layers[layer_index] = new
        body = json.dumps(document, indent=2).encode("utf-8")
        schemas.validate(document, "manifest")
        manifest = Descriptor(
            media_type=parsed.descriptor.media_type,
            digest="sha256:" + hashlib.sha256(body).hexdigest(),
            size=len(body),
            artifact_type=document.get("artifactType"),
        )
        self.ingest_bytes(manifest, body)
        return self.commit_image(manifest, repository=repository, tag=tag, source_digest=source_digest)

    def forget_image(self, image: ImageEntry) -> bool:
        """Drop ``image``'s entry from ``index.json`` (atomically); False if it is not there.

        For an image whose content is lost (a blob found corrupt and removed):
        an index entry that points at a missing blob would make the layout invalid
        for every reader. Its remaining blobs go at the next :meth:`gc`.
        """
        self._require_lock()
        entries = self.read_index()["manifests"]
        kept = [entry for entry in entries if Descriptor.from_json(entry) != image.descriptor]
        if len(kept) == len(entries):
            return False
        self._write_index(kept)
        log.warning("dropped %s:%s (%s) from index.json: its content is lost",
                    image.repository, image.tag, image.descriptor.digest)
        return True

    def discard_unreferenced(self, digests: Sequence[str]) -> list[str]:
        """Remove those of ``digests`` that no image of ``index.json`` reaches (a rollback helper)."""
        self._require_lock()
        live: set[str] = set()
        for image in self.images():
            live.update(d.digest for d in self._closure(image.descriptor, verify=False))
        removed = []
        for digest in digests:
            if digest in live:
                continue
            with contextlib.suppress(FileNotFoundError):
                self.blob_path(digest).unlink()
                removed.append(digest)
            self._verified.discard(digest)
        if removed:
            _fsync_dir(self.root / "blobs" / "sha256")
        return removed

    # --- checks, recovery, gc ----------------------------------------------------
    def verify(self) -> list[ImageEntry]:
        """Check the whole layout: files, schemas, every referenced blob's digest. Returns the images."""
        self._check_layout_file()
        images = self.images()
        saved = set(self._verified)
        self._verified.clear()
        try:
            for image in images:
                self._closure(image.descriptor, verify=True)
        finally:
            self._verified |= saved
        return images

    def rebuild_index(self) -> list[ImageEntry]:
        """Recreate ``index.json`` from the manifests found in ``blobs/`` whose content is complete.

        Top-level manifests (not referenced by another stored index) become
        entries; a stored entry's tag and source annotations cannot be recovered
        from blobs: entries get ``ref.name`` ``recovered-<hex12>`` and no source.
        Returns the new images.
        """
        self._require_lock()
        found: dict[str, Descriptor] = {}
        children: set[str] = set()
        for alg_dir in sorted((self.root / "blobs").iterdir()):
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
                    self._closure(descriptor, verify=True)
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
        self._write_index(entries)
        log.warning("rebuilt %s/index.json with %d image(s)", self.root, len(entries))
        return self.images()

    def gc(self, keep: int) -> GCResult:
        """Keep the newest ``keep`` images per repository; remove unreferenced blobs and partials."""
        if keep < 0:
            raise ValueError("keep must be >= 0")
        self._require_lock()
        images = self.images()
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
        if removed_images:
            self._write_index([image.descriptor.to_json() for image in kept])
        live: set[str] = set()
        for image in kept:
            live.update(d.digest for d in self._closure(image.descriptor, verify=False))
        removed: list[str] = []
        freed = 0
        for alg_dir in (self.root / "blobs").iterdir():
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
                    self._verified.discard(digest)
        for partial in (self.root / INGEST_DIR).glob("*" + PARTIAL_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                freed += partial.stat().st_size
                partial.unlink()
        if removed:
            _fsync_dir(self.root / "blobs")
        log.info("gc: removed %d image(s), %d blob(s), %d bytes", len(removed_images), len(removed), freed)
        return GCResult(removed_images, tuple(sorted(removed)), freed)


class _ClosingReader(io.RawIOBase):
    """Reads from ``reader``; closing it closes ``handle`` too."""

    def __init__(self, reader: BinaryIO, handle: IO[bytes]) -> None:
        super().__init__()
        self._reader = reader
        self._handle = handle

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._reader.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._reader.close()
            self._handle.close()
        super().close()
