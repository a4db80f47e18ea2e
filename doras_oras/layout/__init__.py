"""The local OCI image layout: a crash-safe, verified store (see :mod:`.store`).

Modules, one job each:

- :mod:`.store`: :class:`OCILayout`, blobs in and out, commits of ``index.json``;
- :mod:`.writer`: :class:`BlobWriter`, the one writer (hash while writing, fsync, rename; resumable partials);
- :mod:`.index`: :class:`ImageEntry` and the ``index.json`` document;
- :mod:`.attachments`: :class:`Attachment`, signature manifests kept beside an image;
- :mod:`.lock`: the writer lock;
- :mod:`.maintenance`: :func:`verify_layout`, :func:`rebuild_index`, :func:`gc` (on an :class:`OCILayout`);
- :mod:`.files`: the atomic write, directory fsync, disk errors, writers' claims, cleaning ``ingest/``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .attachments import ANNOTATION_SUBJECT, Attachment
from .files import (
    INGEST_DIR,
    META_SUFFIX,
    PARTIAL_SUFFIX,
    STALE_PARTIAL_SECONDS,
    TEMP_SUFFIX,
    atomic_write,
    disk_error,
    fsync_dir,
)
from .index import (
    ANNOTATION_PULLED,
    ANNOTATION_PULLED_BY,
    ANNOTATION_SIGNED_CREATED,
    ANNOTATION_SIGNED_PREFIX,
    ANNOTATION_SOURCE_INDEX,
    ANNOTATION_SOURCE_PLATFORM,
    ImageEntry,
    layout_name,
)
from .lock import LOCK_FILE
from .maintenance import FsckResult, GCResult, fsck, gc, rebuild_index, recover_index, verify_layout
from .store import LAYOUT_VERSION, Install, OCILayout

if TYPE_CHECKING:
    from .writer import BlobWriter


def __getattr__(name: str) -> Any:
    """:class:`BlobWriter`, imported on first use (an up-to-date poll writes nothing)."""
    if name == "BlobWriter":
        from .writer import BlobWriter

        return BlobWriter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "ANNOTATION_PULLED",
    "ANNOTATION_PULLED_BY",
    "ANNOTATION_SIGNED_CREATED",
    "ANNOTATION_SIGNED_PREFIX",
    "ANNOTATION_SOURCE_INDEX",
    "ANNOTATION_SOURCE_PLATFORM",
    "ANNOTATION_SUBJECT",
    "INGEST_DIR",
    "LAYOUT_VERSION",
    "LOCK_FILE",
    "META_SUFFIX",
    "PARTIAL_SUFFIX",
    "STALE_PARTIAL_SECONDS",
    "TEMP_SUFFIX",
    "Attachment",
    "BlobWriter",
    "FsckResult",
    "GCResult",
    "ImageEntry",
    "Install",
    "OCILayout",
    "atomic_write",
    "disk_error",
    "fsck",
    "fsync_dir",
    "gc",
    "layout_name",
    "rebuild_index",
    "recover_index",
    "verify_layout",
]
