"""The local OCI image layout (image-spec v1.1 ``image-layout.md``): a crash-safe, verified store.

Layout of the directory::

    oci-layout                  {"imageLayoutVersion": "1.0.0"}
    index.json                  the images, one entry per repository + tag
    blobs/<alg>/<hex>           content, each verified before it got there
    ingest/                     doras-oras's own: lock file, temp files, partial downloads

:class:`OCILayout` is the only writer of these directories. A blob is written
by a :class:`~doras_oras.layout.writer.BlobWriter` into ``ingest/`` (hashed
and counted while written), checked, fsynced, renamed into ``blobs/`` and the
directory fsynced; ``index.json`` is replaced atomically as the last step of
a commit. Downloads and other content are written into ``ingest/`` without the
layout's lock (each writer holds its own file: :func:`~.files.claim`); placing
blobs into ``blobs/`` and writing ``index.json`` happen in one install transaction
(:meth:`OCILayout.install`) under :meth:`OCILayout.lock`. Housekeeping
(``verify_layout``, ``rebuild_index``, ``gc``) is in :mod:`.maintenance`, which
uses this class's public methods (this module does not import it).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO

from .. import schemas
from ..descriptor import (
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    OCI_MANIFEST,
    Descriptor,
    validate_digest,
)
from ..errors import (
    CorruptLayoutError,
    DigestMismatchError,
    DorasOrasError,
    Fix,
    ImageNotFoundError,
    LayoutError,
    NotALayoutError,
    SchemaValidationError,
    SizeMismatchError,
)
from ..stream import Readable, verifying_stream
from .attachments import (
    ANNOTATION_SUBJECT,
    Attachment,
    attachment_entry,
    is_attachment,
    replaced_by,
)
from .files import (
    INGEST_DIR,
    PARTIAL_SUFFIX,
    STALE_PARTIAL_SECONDS,
    atomic_write,
    clean_ingest,
    disk_error,
)
from .index import (
    ImageEntry,
    entry_for,
    index_document,
    json_bytes,
    read_index,
)
from .lock import LOCK_FILE, LayoutLock

if TYPE_CHECKING:  # the writer loads when something is written (an up-to-date poll writes nothing)
    from .writer import BlobWriter

log = logging.getLogger(__name__)

LAYOUT_VERSION = "1.0.0"
GZIP_LEVEL = 0
"""Compression level of :meth:`OCILayout.store_gzip`: 0, stored deflate blocks (the tar's size, as the plain
tar took before; ~15x faster than level 1 here, and the next tar-diff inflates it at copy speed)."""
MISSING = "missing"
"""What :meth:`OCILayout.blob_problem` says of a blob that is not there."""
CHUNK = 1 << 20

_OUR_NAMES = {"oci-layout", "index.json", "blobs", INGEST_DIR}
LEDGER = (".doras-oras", "downloads.json")
"""The download budget's ledger, ``<layout>/.doras-oras/downloads.json`` (:mod:`doras_oras.budget`)."""


class OCILayout:
    """An OCI image layout on disk. Build it with :meth:`open`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._verified: set[str] = set()
        self._lock = LayoutLock(root / INGEST_DIR / LOCK_FILE, what=str(root))

    # --- opening -------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str], *, create: bool = True, require_index: bool = True) -> OCILayout:
        """Open the layout at ``path``; create it (when ``create``) if absent or empty.

        Refuses a path that is not a directory, a directory that holds something
        other than an OCI layout (:class:`NotALayoutError`), and an ``oci-layout`` file
        that is not ``{"imageLayoutVersion": "1.0.0"}``. A missing ``index.json`` is a
        :class:`CorruptLayoutError` unless ``require_index`` is False (to rebuild it).
        """
        root = Path(path)
        if root.exists() and not root.is_dir():
            raise NotALayoutError(f"{root} is not a directory")
        names = {p.name for p in root.iterdir()} if root.is_dir() else set()
        if "oci-layout" not in names:
            foreign = sorted(names - _OUR_NAMES)
            if foreign:
                raise NotALayoutError(
                    f"{root} is not an OCI image layout (no oci-layout file; contains {', '.join(foreign[:5])})"
                )
            if names and "blobs" not in names and "index.json" in names:
                raise NotALayoutError(f"{root} is not an OCI image layout (no oci-layout file)")
            if not create:
                what = "does not exist" if not root.exists() else "is not an OCI image layout (no oci-layout file)"
                raise NotALayoutError(f"{root} {what}")
            layout = cls(root)
            layout._create()
            return layout
        layout = cls(root)
        layout.check_layout_file()
        for sub in ("blobs", INGEST_DIR):
            with contextlib.suppress(OSError):  # a read-only layout: the lock says so when it is taken
                (root / sub).mkdir(exist_ok=True)
        if require_index and not (root / "index.json").exists():
            raise CorruptLayoutError(f"{root}: index.json is missing", fix=Fix.REBUILD_INDEX)
        return layout

    def _create(self) -> None:
        try:
            (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
            (self.root / INGEST_DIR).mkdir(exist_ok=True)
            with self.lock():
                if not (self.root / "index.json").exists():
                    self.write_index([])
                self._atomic_write(self.root / "oci-layout", json_bytes({"imageLayoutVersion": LAYOUT_VERSION}))
        except OSError as exc:
            raise disk_error(f"a new layout at {self.root}", exc) from exc
        log.info("created OCI layout %s", self.root)

    def check_layout_file(self) -> None:
        """:class:`CorruptLayoutError` unless ``oci-layout`` is valid."""
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
        first = self._lock.acquire(timeout)
        try:
            if first and self._lock.read_only is None:  # what was verified stays so: another writer only
                self.clean()  # adds verified blobs or removes some (has_blob checks the file is still there)
            yield
        finally:
            self._lock.release()

    @property
    def locked(self) -> bool:
        """Whether this process holds the layout's lock."""
        return self._lock.held

    @property
    def read_only(self) -> bool:
        """Whether the lock found the layout unwritable (a read-only file system, no permission)."""
        return self._lock.read_only is not None

    def require_lock(self, *, write: bool = True) -> None:
        """:class:`LayoutError` unless this process holds the layout's lock (and, for ``write``,
        the layout can be written: :meth:`require_writable`)."""
        if not self._lock.held:
            raise LayoutError("this needs the layout's lock (use `with layout.lock():`)")
        if write:
            self.require_writable()

    def require_writable(self) -> None:
        """:class:`LayoutError` (:data:`Fix.READ_ONLY_LAYOUT`) when the lock found the layout unwritable."""
        if self._lock.read_only is not None:
            raise LayoutError(f"{self.root} cannot be written ({self._lock.read_only})", fix=Fix.READ_ONLY_LAYOUT)

    def clean(self, *, stale_after: float = STALE_PARTIAL_SECONDS) -> list[Path]:
        """Remove leftovers of killed runs in ``ingest/`` (see :func:`.files.clean_ingest`)."""
        self.require_lock()
        return clean_ingest(self.root, stale_after=stale_after)

    # --- blobs: reading --------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        """``blobs/<alg>/<hex>`` of a digest (validated before the path is built)."""
        algorithm, hexpart = validate_digest(digest)
        return self.root / "blobs" / algorithm / hexpart

    def partial_path(self, descriptor: Descriptor) -> Path:
        """Where a partial download of ``descriptor`` is kept for resuming."""
        algorithm, hexpart = validate_digest(descriptor.digest)
        return self.root / INGEST_DIR / f"{algorithm}-{hexpart}{PARTIAL_SUFFIX}"

    def partial_size(self, descriptor: Descriptor) -> int:
        """Bytes already in the partial file of ``descriptor`` (0 if none)."""
        try:
            return self.partial_path(descriptor).stat().st_size
        except FileNotFoundError:
            return 0

    def has_blob(self, descriptor: Descriptor) -> bool:
        """Whether the blob is present with the right size and digest (hashed once per lock).

        A blob found with the wrong size or digest is removed (when the lock is held).
        """
        path = self.blob_path(descriptor.digest)
        if descriptor.digest in self._verified:
            return path.is_file()
        problem = self.blob_problem(descriptor)
        if problem is None:
            self._verified.add(descriptor.digest)
            return True
        if problem != MISSING:
            log.warning("blob %s is %s: removing it", descriptor.digest, problem)
            self._remove_bad_blob(path)
        return False

    def blob_problem(self, descriptor: Descriptor) -> str | None:
        """What is wrong with the stored blob (:data:`MISSING`, a wrong size, a wrong digest,
        unreadable), None when it is intact. Reads and hashes it; never removes it."""
        path = self.blob_path(descriptor.digest)
        try:
            size = path.stat().st_size
            if size != descriptor.size:
                return f"{size} bytes long, not {descriptor.size}"
            with path.open("rb") as handle:
                hasher = hashlib.new(descriptor.algorithm)
                for chunk in iter(lambda: handle.read(CHUNK), b""):
                    hasher.update(chunk)
        except FileNotFoundError:
            return MISSING
        except OSError as exc:
            return f"unreadable ({exc.strerror or exc})"
        if hasher.hexdigest() != descriptor.hex:
            return f"corrupt (its content hashes to {descriptor.algorithm}:{hasher.hexdigest()})"
        return None

    def blob_present(self, descriptor: Descriptor) -> bool:
        """Whether the blob is there with the right size (not hashed: cheap)."""
        try:
            return self.blob_path(descriptor.digest).stat().st_size == descriptor.size
        except FileNotFoundError:
            return False

    def _remove_bad_blob(self, path: Path) -> None:
        if self._lock.held and self._lock.read_only is None:
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
        return verifying_stream(handle, descriptor.digest, descriptor.size, what="stored blob")

    def read_blob(self, descriptor: Descriptor, *, limit: int = schemas.MAX_MANIFEST_BYTES) -> bytes:
        """The verified bytes of a small blob (manifest, config), at most ``limit``."""
        if descriptor.size > limit:
            raise LayoutError(f"blob {descriptor.digest}: {descriptor.size} bytes, over the {limit}-byte cap")
        with self.open_blob(descriptor) as reader:
            data = reader.read(descriptor.size + 1)
        if len(data) != descriptor.size or hashlib.new(descriptor.algorithm, data).hexdigest() != descriptor.hex:
            raise CorruptLayoutError(f"stored blob {descriptor.digest} does not match its digest or size")
        return data

    # --- blobs: writing --------------------------------------------------------
    def partial_writer(self, descriptor: Descriptor, *, what: str = "blob") -> BlobWriter:
        """The resumable writer of a download of ``descriptor`` into ``ingest/`` (no lock needed).

        Bytes a previous run left there are re-hashed and kept; :meth:`store` moves the
        finished blob into ``blobs/``; :meth:`BlobWriter.close` keeps the partial file
        for the next run, :meth:`BlobWriter.discard` removes it. While another writer
        holds the partial file, a temp file is written instead (:meth:`BlobWriter.partial`).
        """
        from .writer import BlobWriter

        return BlobWriter.partial(self.partial_path(descriptor), digest=descriptor.digest,
                                  size=descriptor.size, what=what)

    def temp_writer(self, *, digest: str | None = None, size: int | None = None,
                    what: str = "blob") -> BlobWriter:
        """A writer of new content into a temp file of ``ingest/`` (no lock needed: its name is unique).

        ``digest``/``size``, when known, are checked by :meth:`BlobWriter.finish`.
        """
        from .writer import BlobWriter

        return BlobWriter.temporary(self.root / INGEST_DIR, digest=digest, size=size, what=what)

    def scratch_file(self) -> IO[bytes]:
        """An anonymous temp file on the layout's file system (gone when closed), for codecs' spools."""
        return tempfile.TemporaryFile(prefix=".scratch-", dir=self.root / INGEST_DIR)

    def store(self, writer: BlobWriter) -> Descriptor:
        """Move the content of ``writer`` into ``blobs/`` (checked, fsynced, renamed); return its digest and size.

        If the blob is already stored, the writer is discarded.
        """
        self.require_lock()
        digest = writer.finish()
        final = self.blob_path(digest)
        stored = Descriptor("application/octet-stream", digest, writer.offset)
        if digest in self._verified and final.is_file():
            writer.discard()
            return stored
        writer.commit(final)
        self._verified.add(digest)
        log.debug("stored blob %s", digest)
        return stored

    def store_gzip(self, tar: Descriptor) -> Descriptor:
        """Store a gzip stream of the stored blob ``tar`` (read verified); return its digest and size.

        How a tar-diff result is kept (needs the lock): the oras CLI unpacks a layer marked
        ``io.deis.oras.content.unpack`` through gzip whatever its media type says, and checks
        the tar against ``io.deis.oras.content.digest``. Level :data:`GZIP_LEVEL`, no name,
        mtime 0: the same tar gives the same blob.
        """
        self.require_lock()
        compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        with self.temp_writer(what=f"gzip of {tar.digest}") as out, self.open_blob(tar) as reader:
            while chunk := reader.read(CHUNK):
                out.write(compressor.compress(chunk))
            out.write(compressor.flush())
            return self.store(out)

    def tar_digest(self, descriptor: Descriptor) -> str:
        """The sha256 digest of the decompressed content of the stored gzip blob ``descriptor`` (read verified).

        For a layer :meth:`store_gzip` wrote: the digest of the tar it holds.
        """
        hasher = hashlib.sha256()
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            with self.open_blob(descriptor) as reader:
                while chunk := reader.read(CHUNK):
                    hasher.update(inflater.decompress(chunk))
            hasher.update(inflater.flush())
        except zlib.error as exc:
            raise CorruptLayoutError(f"stored blob {descriptor.digest} is not a gzip stream ({exc})") from exc
        return "sha256:" + hasher.hexdigest()

    def ingest(self, descriptor: Descriptor, stream: Readable) -> Path:
        """Store ``descriptor``'s content read from ``stream``; return the blob path.

        Reading stops at ``size``; a longer or shorter stream or a wrong digest
        raises and stores nothing.
        """
        self.require_lock()
        final = self.blob_path(descriptor.digest)
        if self.has_blob(descriptor):
            return final
        with self.temp_writer(digest=descriptor.digest, size=descriptor.size) as writer:
            while writer.offset < descriptor.size:
                chunk = stream.read(min(CHUNK, descriptor.size - writer.offset))
                if not chunk:
                    break
                writer.write(chunk)
            if writer.offset == descriptor.size and stream.read(1):
                raise SizeMismatchError(f"blob {descriptor.digest}: more than the expected {descriptor.size} bytes")
            self.store(writer)
        return final

    def ingest_bytes(self, descriptor: Descriptor, data: bytes) -> Path:
        """:meth:`ingest` from memory."""
        return self.ingest(descriptor, io.BytesIO(data))

    def _atomic_write(self, target: Path, data: bytes) -> None:
        atomic_write(target, data, tmp_dir=self.root / INGEST_DIR)

    # --- index ---------------------------------------------------------------
    def read_index(self) -> dict[str, Any]:
        """The parsed, schema-checked ``index.json``; :class:`CorruptLayoutError` if unusable."""
        return read_index(self.root / "index.json")

    def images(self) -> list[ImageEntry]:
        """The images of ``index.json``, in its order (oldest commit first); attachments left out."""
        return [ImageEntry(Descriptor.from_json(entry)) for entry in self.read_index()["manifests"]
                if not is_attachment(entry)]

    def attachments(self, repository: str | None = None, subject: str | None = None) -> list[ImageEntry]:
        """The attachments (signature manifests) of ``index.json``, of ``repository`` and ``subject`` if given."""
        found = [ImageEntry(Descriptor.from_json(entry)) for entry in self.read_index()["manifests"]
                 if is_attachment(entry)]
        return [entry for entry in found
                if (repository is None or entry.repository == repository)
                and (subject is None or entry.descriptor.annotations.get(ANNOTATION_SUBJECT) == subject)]

    def find_image(self, repository: str, tag: str | None = None) -> ImageEntry | None:
        """The newest image of ``repository`` (``registry/repo``), with ``tag`` if given; else None.

        Images doras-oras stored come first; else a foreign entry (oras, skopeo) that belongs
        to the repository (:meth:`ImageEntry.belongs_to`), the last one in ``index.json``.
        """
        matches = [image for image in self.images_of(repository) if tag is None or image.tag == tag]
        return matches[-1] if matches else None

    def images_of(self, repository: str) -> list[ImageEntry]:
        """The images of ``repository``, best last: foreign entries that belong to it (in index
        order), then the ones doras-oras stored (in commit order)."""
        images = [image for image in self.images() if image.belongs_to(repository)]
        return [image for image in images if image.foreign] + [image for image in images if not image.foreign]

    def get_image(self, repository: str, tag: str | None = None) -> ImageEntry:
        """Like :meth:`find_image` but raises :class:`ImageNotFoundError`."""
        image = self.find_image(repository, tag)
        if image is None:
            what = f"{repository}:{tag}" if tag else repository
            raise ImageNotFoundError(f"no image of {what} in {self.root}")
        return image

    def write_index(self, entries: Sequence[Mapping[str, Any]]) -> None:
        data = json_bytes(index_document(entries))
        try:
            self._atomic_write(self.root / "index.json", data)
        except OSError as exc:
            raise disk_error("index.json", exc) from exc

    @property
    def ledger_path(self) -> Path:
        """Where the download budget's ledger is kept."""
        return self.root.joinpath(*LEDGER)

    def read_ledger(self) -> bytes | None:
        """The download budget's ledger (:mod:`doras_oras.budget`), None when there is none or it is unreadable."""
        try:
            return self.ledger_path.read_bytes()[: 1 << 20]
        except OSError:
            return None

    def write_ledger(self, data: bytes) -> None:
        """Replace the download budget's ledger atomically (needs the lock)."""
        self.require_lock()
        try:
            self.ledger_path.parent.mkdir(exist_ok=True)
            atomic_write(self.ledger_path, data)
        except OSError as exc:
            raise disk_error("the download ledger", exc) from exc

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

    def closure(self, descriptor: Descriptor, *, verify: bool) -> list[Descriptor]:
        """``descriptor`` and everything it reaches; with ``verify`` every blob is checked."""
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
        attachments: Sequence[Attachment] = (),
    ) -> ImageEntry:
        """Record ``manifest`` (already stored with all it references) as the image ``repository:tag``.

        Checks that every referenced blob is present and verified, stores the
        ``attachments`` (signature manifests, :mod:`.attachments`) and their
        blobs, then replaces ``index.json`` atomically, once, with the image and
        its attachments (the image named :func:`~.index.layout_name`): an entry of the same
        repository and tag is replaced (also one an earlier version named by the bare tag), and
        so is a foreign entry of that tag that belongs to the repository (:meth:`ImageEntry.belongs_to`),
        as is an attachment of the same repository with the same digest or tag.
        """
        self.require_lock()
        if manifest.media_type not in MANIFEST_MEDIA_TYPES + INDEX_MEDIA_TYPES:
            raise LayoutError(f"cannot commit {manifest.media_type!r}: not a manifest or index")
        self.closure(manifest, verify=True)
        source = source_digest or manifest.digest
        validate_digest(source)
        entry = entry_for(manifest, repository=repository, tag=tag, source_digest=source,
                          annotations=annotations)
        def replaced(raw: Mapping[str, Any], extra: Sequence[Descriptor]) -> bool:
            if is_attachment(raw):
                return any(replaced_by(raw, new) for new in extra)
            item = ImageEntry(Descriptor.from_json(raw))
            if item.foreign:
                return tag is not None and item.tag == tag and item.belongs_to(repository)
            return item.repository == repository and item.tag == tag

        placed: list[str] = []
        try:
            extra = [self._store_attachment(attachment, repository, placed) for attachment in attachments]
            kept = [raw for raw in self.read_index()["manifests"] if not replaced(raw, extra)]
            self.write_index([*kept, entry.to_json(), *(new.to_json() for new in extra)])
        except BaseException:
            with contextlib.suppress(Exception):  # the attachments' blobs go with a failed commit
                self.discard_unreferenced(placed)
            raise
        log.info("committed %s:%s -> %s%s", repository, tag, manifest.digest,
                 f" with {len(extra)} signature manifest(s)" if extra else "")
        return ImageEntry(entry)

    def _store_attachment(self, attachment: Attachment, repository: str, placed: list[str]) -> Descriptor:
        """Store an attachment's blobs, its subject's bytes and its manifest (blobs first); its entry.

        The digests of blobs that were not there before are added to ``placed``.
        """
        manifest = attachment.manifest
        if manifest.media_type not in MANIFEST_MEDIA_TYPES:
            raise LayoutError(f"attachment {manifest.digest}: {manifest.media_type!r} is not a manifest")
        document = schemas.parse_manifest(attachment.body, manifest.media_type, expected=manifest,
                                          what=f"attachment {manifest.digest}").document
        todo: list[tuple[Descriptor, bytes]] = []
        for raw in [document["config"], *document["layers"]]:
            blob = Descriptor.from_json(raw)
            data = blob.data if blob.data is not None else attachment.blobs.get(blob.digest)
            if data is None:
                raise LayoutError(f"attachment {manifest.digest}: blob {blob.digest} not given")
            todo.append((blob, data))
        if attachment.subject_body is not None:
            todo.append((Descriptor("application/octet-stream", attachment.subject, len(attachment.subject_body)),
                         attachment.subject_body))
        todo.append((manifest, attachment.body))
        for blob, data in todo:
            if not self.has_blob(blob):
                placed.append(blob.digest)
            self.ingest_bytes(blob, data)
        self.closure(manifest, verify=True)
        return attachment_entry(attachment, repository=repository)

    def store_rewritten(self, original: bytes, layer_index: int, layer: Descriptor, *,
                        source_digest: str) -> Descriptor:
        """Store the manifest ``original`` rewritten for the stored ``layer``; return it (not committed)."""
        self.require_lock()
        try:
            declared = json.loads(original).get("mediaType") or OCI_MANIFEST
        except (ValueError, AttributeError) as exc:
            raise SchemaValidationError(f"original manifest is not a JSON object ({exc})") from exc
        parsed = schemas.parse_manifest(original, str(declared))
        if parsed.is_index:
            raise LayoutError("store_rewritten needs an image manifest, not an index")
        if hashlib.sha256(original).hexdigest() != validate_digest(source_digest)[1]:
            raise DigestMismatchError(f"original manifest does not match {source_digest}")
        document = json.loads(original)
        layers = document["layers"]
        if not 0 <= layer_index < len(layers):
            raise LayoutError(f"manifest has no layer {layer_index}")
        old = layers[layer_index]
        new = {"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}
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
        return manifest

    @contextlib.contextmanager
    def install(self, *, timeout: float = 300.0) -> Iterator[Install]:
        """The one install transaction of a pull: place blobs, run a step before the commit, commit.

        Holds the layout's lock (waiting at most ``timeout`` s) for the block, and only
        for it: downloads happen before, into writers of ``ingest/``. When the block
        raises, every blob it placed that no image of ``index.json`` reaches is removed
        again, and ``index.json`` is as it was.
        """
        with self.lock(timeout=timeout):
            transaction = Install(self)
            try:
                yield transaction
            except BaseException:
                with contextlib.suppress(Exception):
                    self.discard_unreferenced(transaction.placed)
                raise

    def forget_image(self, image: ImageEntry) -> bool:
        """Drop ``image``'s entry from ``index.json`` (atomically); False if it is not there.

        For an image whose content is lost (a blob found corrupt and removed):
        an index entry that points at a missing blob would make the layout invalid
        for every reader. Its remaining blobs go at the next :meth:`gc`.
        """
        self.require_lock()
        entries = self.read_index()["manifests"]
        kept = [entry for entry in entries if Descriptor.from_json(entry) != image.descriptor]
        if len(kept) == len(entries):
            return False
        self.write_index(kept)
        log.warning("dropped %s:%s (%s) from index.json: its content is lost",
                    image.repository, image.tag, image.descriptor.digest)
        return True

    def live_digests(self) -> set[str]:
        """Every digest an entry of ``index.json`` reaches (images and attachments).

        An attachment also keeps its subject's bytes when they are stored (an
        image index, a rewritten image's registry manifest: :mod:`.attachments`).
        """
        live: set[str] = set()
        for raw in self.read_index()["manifests"]:
            entry = Descriptor.from_json(raw)
            live.update(d.digest for d in self.closure(entry, verify=False))
            subject = entry.annotations.get(ANNOTATION_SUBJECT)
            if subject is not None and self._blob_file(subject):
                live.add(subject)
        return live

    def _blob_file(self, digest: str) -> bool:
        try:
            return self.blob_path(digest).is_file()
        except ValueError:
            return False

    def discard_unreferenced(self, digests: Sequence[str]) -> list[str]:
        """Remove those of ``digests`` that no image of ``index.json`` reaches (a rollback helper)."""
        self.require_lock()
        live = self.live_digests()
        removed = []
        for digest in digests:
            if digest in live:
                continue
            with contextlib.suppress(FileNotFoundError):
                self.blob_path(digest).unlink()
                removed.append(digest)
            self._verified.discard(digest)
        return removed

    def remove_if_unused(self, *, remove_root: bool) -> bool:
        """Remove a layout that holds nothing: no image, no blob, no partial download, no ledger.

        For a layout a failed first pull created: it leaves no empty layout behind (a partial
        download or a budget record is state for the next run, and keeps it). ``remove_root``:
        also remove the directory itself (it did not exist before). Returns whether it was removed.
        """
        try:
            with self.lock(timeout=0):
                if self.images() or any(p.is_file() for p in (self.root / "blobs").rglob("*")):
                    return False
                ingest = self.root / INGEST_DIR
                leftovers = {p.name for p in ingest.iterdir()} - {LOCK_FILE} if ingest.is_dir() else set()
                if leftovers or set(p.name for p in self.root.iterdir()) - _OUR_NAMES:
                    return False
                for name in ("index.json", "oci-layout"):
                    (self.root / name).unlink(missing_ok=True)
                for directory in sorted((self.root / "blobs").rglob("*"), reverse=True):
                    directory.rmdir()
                (self.root / "blobs").rmdir()
                (ingest / LOCK_FILE).unlink(missing_ok=True)
                ingest.rmdir()
        except (DorasOrasError, OSError) as exc:
            log.debug("left %s in place: %s", self.root, exc)
            return False
        if remove_root:
            with contextlib.suppress(OSError):
                self.root.rmdir()
        log.info("removed the unused layout %s", self.root)
        return True

    def forget_verified(self, digest: str) -> None:
        """Forget that ``digest`` was verified (its file was removed)."""
        self._verified.discard(digest)


class Install:
    """An install transaction in progress (:meth:`OCILayout.install`): what it placed, its commit."""

    def __init__(self, layout: OCILayout) -> None:
        self.layout = layout
        self.placed: list[str] = []
        """Digests of the blobs this transaction put into ``blobs/`` (removed again if it fails)."""

    def store(self, writer: BlobWriter) -> Descriptor:
        """Move the finished content of ``writer`` into ``blobs/`` (:meth:`OCILayout.store`)."""
        stored = self.layout.store(writer)
        self.placed.append(stored.digest)
        return stored

    def put(self, descriptor: Descriptor, data: bytes) -> None:
        """Store ``data`` (a manifest) as ``descriptor`` unless it is there (:meth:`OCILayout.ingest_bytes`)."""
        if not self.layout.has_blob(descriptor):
            self.placed.append(descriptor.digest)
        self.layout.ingest_bytes(descriptor, data)

    def store_gzip(self, tar: Descriptor) -> Descriptor:
        """Store a gzip of the stored blob ``tar`` (:meth:`OCILayout.store_gzip`)."""
        placed = self.layout.store_gzip(tar)
        self.placed.append(placed.digest)
        return placed

    def put_rewritten(self, original: bytes, layer: Descriptor, *, source_digest: str) -> Descriptor:
        """Store the single-layer manifest ``original`` rewritten for ``layer`` (:meth:`OCILayout.store_rewritten`)."""
        manifest = self.layout.store_rewritten(original, 0, layer, source_digest=source_digest)
        self.placed.append(manifest.digest)
        return manifest

    def commit(self, manifest: Descriptor, *, before_commit: Callable[[Descriptor], None] | None,
               repository: str, tag: str | None, source_digest: str | None,
               annotations: Mapping[str, str] | None, attachments: Sequence[Attachment]) -> ImageEntry:
        """Run ``before_commit(manifest)`` (raising leaves the layout as it was), then :meth:`OCILayout.commit_image`."""
        if before_commit is not None:
            before_commit(manifest)
        return self.layout.commit_image(manifest, repository=repository, tag=tag, source_digest=source_digest,
                                        annotations=annotations, attachments=attachments)
