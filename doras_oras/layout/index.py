"""``index.json`` of the layout: its entries (:class:`ImageEntry`), reading, checking, building.

Each entry doras-oras writes carries ``org.opencontainers.image.ref.name``, the
image's name in the layout (:func:`layout_name`: ``REGISTRY/REPOSITORY/TAG``, the
registry's ``:`` written ``_``; what skopeo's ``oci:DIR:NAME`` and the oras CLI's
``--oci-layout DIR:NAME`` look up; earlier versions wrote the bare tag) and, under the project's prefix
``io.doras-oras.``: ``source.repository`` (``registry/repository``),
``source.digest`` (the registry manifest digest the entry stands for: its own
digest unless a tar-diff result was stored in a rewritten manifest), ``pulled``
(when it was committed), ``pulled.by`` (how: ``full`` or ``delta ALGORITHM``) and,
for a manifest chosen from an image index, ``source.index`` and ``source.platform``.

Entries written by other tools (``oras copy --to-oci-layout DIR:TAG``, ``skopeo
copy ... oci:DIR:TAG``) carry only ``ref.name``: they are *foreign*
(:attr:`ImageEntry.foreign`). A foreign entry whose name is a bare tag belongs to
whatever repository the caller pulls (the layout says no more); one named by a
layout name (``oci:DIR:host_5000/repo/tag``) or a whole reference (``skopeo copy
... oci:DIR:host/repo:tag``) to that repository (:meth:`ImageEntry.belongs_to`). The pull uses them as delta bases
and replaces one when it commits the same tag, as those tools do.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import schemas
from ..descriptor import (
    ANNOTATION_PREFIX,
    ANNOTATION_REF_NAME,
    ANNOTATION_SOURCE_DIGEST,
    ANNOTATION_SOURCE_REPOSITORY,
    OCI_INDEX,
    Descriptor,
)
from ..errors import CorruptLayoutError, DorasOrasError, Fix, SchemaValidationError
from ..reference import Reference, is_tag

ANNOTATION_PULLED = ANNOTATION_PREFIX + "pulled"
"""When doras-oras committed the entry (RFC 3339, UTC); orders images for ``gc``."""
ANNOTATION_SOURCE_INDEX = ANNOTATION_PREFIX + "source.index"
"""On an entry: the registry image index the platform manifest was chosen from."""
ANNOTATION_SOURCE_PLATFORM = ANNOTATION_PREFIX + "source.platform"
"""With ``source.index``: the platform (``os/arch[/variant]``) of the manifest chosen from it."""
ANNOTATION_PULLED_BY = ANNOTATION_PREFIX + "pulled.by"
"""How the image came: ``full`` (a verified full pull) or ``delta ALGORITHM`` (e.g. ``delta bsdiff+zstd``)."""

ANNOTATION_SIGNED_CREATED = ANNOTATION_PREFIX + "signed.created"
"""On an image verified when pulled: ``org.opencontainers.image.created`` of the signed manifest (or index),
what the rollback and freshness checks compare (docs/trust.md)."""
ANNOTATION_SIGNED_PREFIX = ANNOTATION_PREFIX + "signed.annotation."
"""On an image verified when pulled, + a name: the signed payload annotation a trust policy orders by."""

ANNOTATION_SUBJECT = ANNOTATION_PREFIX + "subject"
"""On an attachment's entry (a signature manifest, :mod:`.attachments`): the registry digest it belongs to."""


@dataclass(frozen=True)
class ImageEntry:
    """One image recorded in ``index.json``."""

    descriptor: Descriptor
    """The entry as written: the stored manifest's media type, digest, size, annotations."""

    @property
    def ref_name(self) -> str | None:
        """``org.opencontainers.image.ref.name`` as written."""
        return self.descriptor.annotations.get(ANNOTATION_REF_NAME)

    @property
    def tag(self) -> str | None:
        """The tag: ``ref.name``, or the tag of a foreign entry named by a whole reference."""
        named = self.named_reference
        return named.tag if named is not None else self.ref_name

    @property
    def repository(self) -> str | None:
        """The source ``registry/repository`` (None for entries doras-oras did not write)."""
        return self.descriptor.annotations.get(ANNOTATION_SOURCE_REPOSITORY)

    @property
    def foreign(self) -> bool:
        """Whether another tool (oras, skopeo) wrote this entry: it has no source repository."""
        return self.repository is None

    @property
    def named_reference(self) -> Reference | None:
        """What ``ref.name`` names when it is more than a bare tag: a :func:`layout_name` (any
        entry), or for a foreign entry a whole reference (``host/repo:tag``), parsed."""
        name = self.ref_name
        if not name or "/" not in name:
            return None
        named = parse_layout_name(name)
        if named is not None or not self.foreign:
            return named
        try:
            return Reference.parse(name)
        except DorasOrasError:
            return None

    def belongs_to(self, repository: str) -> bool:
        """Whether this is an image of ``repository`` (``registry/repository``).

        Ours by the recorded source; a foreign one by its ``ref.name``: a layout name or a
        whole reference must name ``repository``, a bare tag belongs to any (the caller's); an entry
        without a usable name belongs to none.
        """
        if not self.foreign:
            return self.repository == repository
        named = self.named_reference
        if named is not None:
            return named.name == repository
        name = self.ref_name
        return name is not None and is_tag(name)

    @property
    def pulled_by(self) -> str | None:
        """``full`` or ``delta ALGORITHM`` (None: a foreign entry, or stored before this was recorded)."""
        return self.descriptor.annotations.get(ANNOTATION_PULLED_BY)

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

    @property
    def source_index(self) -> str | None:
        """The registry image index this manifest was chosen from, if any."""
        return self.descriptor.annotations.get(ANNOTATION_SOURCE_INDEX)

    @property
    def subject(self) -> str | None:
        """For an attachment (a signature manifest): the registry digest it belongs to; else ``None``."""
        return self.descriptor.annotations.get(ANNOTATION_SUBJECT)

    @property
    def stands_for(self) -> tuple[str, ...]:
        """The registry digests this image stands for: its manifest's, and the index it came from."""
        index = self.source_index
        return (self.source_digest, index) if index else (self.source_digest,)


def layout_name(repository: str, tag: str) -> str:
    """The ``ref.name`` of the image ``repository:tag`` (``registry/repository``) in a layout.

    ``REGISTRY/REPOSITORY/TAG`` with the registry's ``:`` written ``_``
    (``localhost:5000/fleet/fw`` at ``v1`` → ``localhost_5000/fleet/fw/v1``): one name per
    repository and tag (a tag holds no ``/``, a registry host no ``_``), and one both
    ``skopeo ... oci:DIR:NAME`` and ``oras ... --oci-layout DIR:NAME`` can address (the oras
    CLI cuts ``DIR:NAME`` at its last ``:`` and reads ``@`` as a digest; docs/layout.md).
    """
    registry, _, path = repository.partition("/")
    return f"{registry.replace(':', '_')}/{path}/{tag}"


def parse_layout_name(name: str) -> Reference | None:
    """The reference a :func:`layout_name` stands for (``localhost_5000/fleet/fw/v1`` →
    ``localhost:5000/fleet/fw:v1``); None for any text :func:`layout_name` does not write."""
    path, _, tag = name.rpartition("/")
    registry, _, repository = path.partition("/")
    if not registry or not repository or not is_tag(tag):
        return None
    try:
        named = Reference.parse(f"{registry.replace('_', ':')}/{repository}:{tag}")
    except DorasOrasError:
        return None
    return named if layout_name(named.name, tag) == name else None


def now() -> str:
    """The current time as the ``pulled`` annotation records it."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def json_bytes(document: Any) -> bytes:
    """The compact JSON the layout writes."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def read_index(path: Path) -> dict[str, Any]:
    """The parsed, schema-checked ``index.json`` at ``path``; :class:`CorruptLayoutError` if unusable."""
    try:
        with path.open("rb") as handle:
            body = handle.read(schemas.MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError as exc:
        raise CorruptLayoutError(f"{path} is missing", fix=Fix.REBUILD_INDEX) from exc
    except OSError as exc:
        raise CorruptLayoutError(f"{path} cannot be read ({exc})") from exc
    if len(body) > schemas.MAX_MANIFEST_BYTES:
        raise CorruptLayoutError(f"{path} is larger than {schemas.MAX_MANIFEST_BYTES} bytes")
    try:
        document = json.loads(body)
        schemas.validate(document, "index")
    except (ValueError, SchemaValidationError) as exc:
        raise CorruptLayoutError(f"{path} is corrupt ({exc})", fix=Fix.REBUILD_INDEX) from exc
    if not isinstance(document, dict):
        raise CorruptLayoutError(f"{path} is not a JSON object", fix=Fix.REBUILD_INDEX)
    return document


def index_document(entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A valid ``index.json`` document holding ``entries`` (checked against the schema)."""
    document = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list(entries)}
    schemas.validate(document, "index")
    return document


def entry_for(manifest: Descriptor, *, repository: str, tag: str | None, source_digest: str,
              annotations: Mapping[str, str] | None = None) -> Descriptor:
    """The ``index.json`` entry that records ``manifest`` as ``repository:tag`` (named :func:`layout_name`)."""
    notes: dict[str, str] = dict(annotations or {})
    if tag:
        notes[ANNOTATION_REF_NAME] = layout_name(repository, tag)
    notes[ANNOTATION_SOURCE_REPOSITORY] = repository
    notes[ANNOTATION_SOURCE_DIGEST] = source_digest
    notes[ANNOTATION_PULLED] = now()
    return Descriptor(
        media_type=manifest.media_type,
        digest=manifest.digest,
        size=manifest.size,
        annotations=notes,
        artifact_type=manifest.artifact_type,
        platform=manifest.platform,
    )
