"""Publishing deltas at release time: build on this machine, store as a Doras server does.

:func:`publish_delta` reads the two images (single-layer image manifests of one
repository), builds the delta (:func:`~doras_oras.publish.encode.build_delta`) and pushes it
under the tag a Doras server would use (:func:`doras_oras.algorithms.delta_tag`), with the
manifest a Doras server writes. Then devices find it in the registry with no server
(:mod:`doras_oras.stored_deltas`), and a Doras server asked for the pair answers 200 with it
at once instead of building. :func:`previous_versions` and :func:`publish_from_last` do it
for the N versions before a new one, as a release pipeline would after ``oras push``.

The kind, as the Go server chooses it: tar-diff when the base layer is marked
``io.deis.oras.content.unpack`` and the target layer carries ``io.deis.oras.content.digest``
(without it no client could verify a tar-diff result), else bsdiff over the raw blobs,
compressed with zstd unless told otherwise. Before anything is pushed the delta is applied
here as a device would apply it and its result checked against the target
(:func:`check_delta`). A different delta already under the tag is
kept (:class:`~doras_oras.errors.DeltaExistsError`) unless ``force``; the same one is not
pushed again; a server's placeholder is replaced.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import schemas
from ..algorithms import Compression, DeltaAlgorithm, Patch, delta_tag
from ..codecs import apply_delta
from ..descriptor import (
    ANNOTATION_CONTENT_DIGEST,
    ANNOTATION_CREATED,
    ANNOTATION_DELTA_DUMMY,
    ANNOTATION_UNPACK,
    EMPTY_JSON,
    OCI_EMPTY,
    Descriptor,
)
from ..errors import (
    ArtifactTooLargeError,
    CodecError,
    DeltaExistsError,
    DorasOrasError,
    Fix,
    InvalidArgumentError,
    PublishError,
    VerificationError,
)
from ..plan import content_digest, expected_result
from ..reference import Reference
from ..registry_client import RegistryClient
from .encode import (
    DEFAULT_MAX_BLOB_BYTES,
    DELTA_ARTIFACT_TYPE,
    build_cost,
    build_delta,
    delta_manifest,
)
from .push import RegistryWriter

log = logging.getLogger(__name__)

__all__ = ["Progress", "PublishedDelta", "check_delta", "choose_kind", "previous_versions", "publish_delta",
           "publish_from_last"]

Progress = Callable[[str, int, int], None]
"""``progress(phase, done, total)``: ``base`` and ``target`` (bytes read), ``build`` (0 of 1
while building, 1 of 1 after), ``push`` (bytes of the delta sent)."""

MAX_TAGS = 1000
"""Tags read by :func:`previous_versions` (one manifest read each); more are ignored with a warning."""
_SIGNATURE_TAG = re.compile(r"^sha256-[0-9a-f]{64}(\.[a-z]+)?$")


@dataclass(frozen=True)
class PublishedDelta:
    """What :func:`publish_delta` did for one pair."""

    from_image: str
    """``HOST/REPO@sha256:...`` of the base."""
    to_image: str
    algorithm: DeltaAlgorithm
    tag: str
    """The delta tag in the repository."""
    manifest: Descriptor
    """The delta manifest (stored now, or found there)."""
    layer: Descriptor
    """The delta blob."""
    status: str
    """``pushed``, ``replaced`` (a different delta or a placeholder was there) or ``exists``
    (the same delta was there: nothing sent)."""
    base_size: int
    target_size: int
    seconds: float
    bytes_sent: int = 0

    def to_json(self) -> dict[str, Any]:
        """The result as a JSON object (sizes in bytes)."""
        return {"from_image": self.from_image, "to_image": self.to_image, "algorithm": str(self.algorithm),
                "tag": self.tag, "delta_manifest": self.manifest.digest, "delta_digest": self.layer.digest,
                "delta_size": self.layer.size, "base_size": self.base_size, "target_size": self.target_size,
                "status": self.status, "bytes_sent": self.bytes_sent, "seconds": round(self.seconds, 3)}


def _single_layer(parsed: schemas.ParsedManifest, ref: Reference) -> Descriptor:
    if parsed.is_index:
        raise PublishError(f"{ref} is an index: Doras deltas are between single-layer image manifests "
                           "(name one platform's manifest by digest)")
    layers = parsed.document.get("layers") or []
    if len(layers) != 1:
        raise PublishError(f"{ref} has {len(layers)} layers: Doras deltas need exactly one")
    return Descriptor.from_json(layers[0])


def choose_kind(base_layer: Descriptor, target_layer: Descriptor, patch: Patch | None,
                compression: Compression | None) -> DeltaAlgorithm:
    """The delta kind for the pair: ``patch``/``compression`` as asked, or chosen as the Go server does.

    tar-diff needs a target layer with ``io.deis.oras.content.digest`` (the only way to verify
    the result) and is never compressed; bsdiff defaults to zstd.
    """
    unpack = base_layer.annotations.get(ANNOTATION_UNPACK) == "true"
    if unpack != (target_layer.annotations.get(ANNOTATION_UNPACK) == "true"):
        raise PublishError(f"the layers differ in {ANNOTATION_UNPACK}: the artifacts are not compatible "
                           "(a Doras server refuses them too)")
    verifiable = content_digest(target_layer) is not None
    if patch is None:
        patch = Patch.TARDIFF if unpack and verifiable and compression in (None, Compression.NONE) else Patch.BSDIFF
    if patch is Patch.TARDIFF:
        if not verifiable:
            raise PublishError(f"the target layer has no {ANNOTATION_CONTENT_DIGEST} "
                               "annotation: no client could verify a tar-diff result (publish bsdiff)")
        if compression not in (None, Compression.NONE):
            raise InvalidArgumentError("a tar-diff is stored uncompressed (as the Doras server stores it)")
        return DeltaAlgorithm.TARDIFF
    name = {None: "bsdiff+zstd", Compression.ZSTD: "bsdiff+zstd", Compression.GZIP: "bsdiff+gzip",
            Compression.NONE: "bsdiff"}[compression]
    return DeltaAlgorithm.from_name(name)


def _read_blob(client: RegistryClient, ref: Reference, layer: Descriptor, phase: str,
               progress: Progress | None) -> bytes:
    out = io.BytesIO()
    with client.open_blob(ref, layer) as stream:
        while True:
            chunk = stream.read(1 << 20)
            if not chunk:
                break
            out.write(chunk)
            if progress is not None:
                progress(phase, out.tell(), layer.size)
    if progress is not None and layer.size == 0:
        progress(phase, 0, 0)
    return out.getvalue()


class _Digest:
    """An output of :func:`apply_delta` that only hashes and counts."""

    def __init__(self, algorithm: str) -> None:
        self._algorithm = algorithm
        self.restart()

    def restart(self) -> None:
        self.hash = hashlib.new(self._algorithm)
        self.size = 0

    def write(self, data: bytes | bytearray, /) -> int:
        self.hash.update(data)
        self.size += len(data)
        return len(data)


def check_delta(kind: DeltaAlgorithm, old: bytes, delta: bytes, target_layer: Descriptor) -> None:
    """Apply ``delta`` to ``old`` as a device would and check the result against the target
    (:func:`doras_oras.plan.expected_result`); :class:`PublishError` when it does not reproduce it."""
    expected = expected_result(kind.patch.value, target_layer)
    if expected.digest is None:
        raise PublishError(f"a {kind} result for this target could not be verified")
    out = _Digest(expected.digest.split(":", 1)[0])
    with tempfile.TemporaryFile(prefix=".doras-oras-publish-") as base:
        base.write(old)
        base.flush()
        base.seek(0)
        try:
            apply_delta(kind, base, io.BytesIO(delta), out, expected_size=expected.size)
        except (CodecError, VerificationError) as exc:
            raise PublishError(f"the {kind} delta built here does not apply to the base: {exc}") from exc
    got = f"{expected.digest.split(':', 1)[0]}:{out.hash.hexdigest()}"
    if got != expected.digest:
        raise PublishError(f"the {kind} delta built here gives {got}, not the target's {expected.digest}: "
                           "nothing was pushed")


def _stored(client: RegistryClient, tag_ref: Reference) -> tuple[Descriptor | None, bool]:
    """The layer of the delta stored under ``tag_ref`` (None: nothing, or a placeholder) and
    whether something is there at all."""
    if not client.manifest_exists(tag_ref):
        return None, False
    parsed = client.fetch_parsed(tag_ref)
    annotations = parsed.document.get("annotations") or {}
    layers = parsed.document.get("layers") or []
    if str(annotations.get(ANNOTATION_DELTA_DUMMY, "")).lower() == "true" or len(layers) != 1:
        return None, True
    return Descriptor.from_json(layers[0]), True


def publish_delta(client: RegistryClient, from_ref: Reference | str, to_ref: Reference | str, *,
                  patch: Patch | None = None, compression: Compression | None = None, force: bool = False,
                  max_size: int = DEFAULT_MAX_BLOB_BYTES, progress: Progress | None = None) -> PublishedDelta:
    """Build the delta ``from_ref -> to_ref`` here and store it as a Doras server would.

    ``patch``/``compression``: the kind (default: as the Go server chooses, bsdiff with zstd
    unless a verifiable tar-diff is possible). Layers over ``max_size`` bytes are refused
    before they are read (:class:`ArtifactTooLargeError`): building holds everything in memory
    (:func:`~doras_oras.publish.encode.build_cost`). A different delta under the tag:
    :class:`DeltaExistsError` unless ``force``.
    """
    started = time.monotonic()
    from_ref = Reference.parse(from_ref) if isinstance(from_ref, str) else from_ref
    to_ref = Reference.parse(to_ref) if isinstance(to_ref, str) else to_ref
    if not from_ref.same_repository(to_ref):
        raise InvalidArgumentError(f"{from_ref} and {to_ref} are not in the same repository: Doras stores a "
                                   "delta in the repository of its images")
    from_parsed, to_parsed = client.fetch_parsed(from_ref), client.fetch_parsed(to_ref)
    from_digest, to_digest = from_parsed.descriptor.digest, to_parsed.descriptor.digest
    if from_digest == to_digest:
        raise PublishError(f"{from_ref} and {to_ref} are the same image ({to_digest}): no delta to publish")
    base_layer, target_layer = _single_layer(from_parsed, from_ref), _single_layer(to_parsed, to_ref)
    kind = choose_kind(base_layer, target_layer, patch, compression)
    for what, layer in (("the base layer", base_layer), ("the target layer", target_layer)):
        if layer.size > max_size:
            raise ArtifactTooLargeError(
                f"{what} is {layer.size} bytes, over the {max_size} byte bound for building a delta in memory",
                fix=Fix.MAX_SIZE)
    cost = build_cost(base_layer.size, target_layer.size, kind)
    from_image, to_image = f"{to_ref.name}@{from_digest}", f"{to_ref.name}@{to_digest}"
    tag = delta_tag(from_digest, to_digest, kind)
    tag_ref = to_ref.with_tag(tag)
    stored_layer, occupied = _stored(client, tag_ref)
    log.info("building a %s delta %s -> %s (about %.0f s and %d MiB of memory)", kind, from_digest[:19],
             to_digest[:19], cost.seconds, cost.memory_bytes >> 20)
    old = _read_blob(client, from_ref.with_digest(from_digest), base_layer, "base", progress)
    new = _read_blob(client, to_ref.with_digest(to_digest), target_layer, "target", progress)
    if progress is not None:
        progress("build", 0, 1)
    delta = build_delta(old, new, kind, max_size=max_size)
    del new
    check_delta(kind, old, delta, target_layer)  # never publish a delta that would not reproduce the target
    del old
    if progress is not None:
        progress("build", 1, 1)
    writer = RegistryWriter(client)
    digest = "sha256:" + hashlib.sha256(delta).hexdigest()
    if stored_layer is not None and stored_layer.digest == digest:
        manifest = client.resolve(tag_ref)
        return PublishedDelta(from_image, to_image, kind, tag, manifest, stored_layer, "exists",
                              base_layer.size, target_layer.size, time.monotonic() - started)
    if stored_layer is not None and not force:
        raise DeltaExistsError(
            f"{tag_ref} already holds a different {kind} delta for this pair ({stored_layer.digest}, "
            f"{stored_layer.size} bytes; this one is {digest}, {len(delta)} bytes)", fix=Fix.OVERWRITE_DELTA)
    writer.push_blob(to_ref, EMPTY_JSON, OCI_EMPTY)
    layer = writer.push_blob(to_ref, delta, kind.media_type)
    if progress is not None:
        progress("push", len(delta), len(delta))
    manifest = writer.push_manifest(to_ref, tag, delta_manifest(kind, layer.digest, layer.size,
                                                                from_image=from_image, to_image=to_image))
    return PublishedDelta(from_image, to_image, kind, tag, manifest, layer, "replaced" if occupied else "pushed",
                          base_layer.size, target_layer.size, time.monotonic() - started, writer.bytes_sent)


def _created(parsed: schemas.ParsedManifest) -> dt.datetime | None:
    value = (parsed.document.get("annotations") or {}).get(ANNOTATION_CREATED)
    if not isinstance(value, str):
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def _tags(client: RegistryClient, ref: Reference) -> list[str]:
    """The repository's tags (``/v2/<repo>/tags/list``, following ``Link`` pages), at most :data:`MAX_TAGS`."""
    path: str | None = f"/v2/{ref.repository}/tags/list?n={MAX_TAGS}"
    tags: list[str] = []
    while path is not None and len(tags) < MAX_TAGS:
        found = client.get_optional(ref, path, max_bytes=schemas.MAX_MANIFEST_BYTES)
        if found is None:
            break
        body, headers = found
        try:
            listed = json.loads(body).get("tags") or []
        except (ValueError, AttributeError) as exc:
            raise PublishError(f"the tag list of {ref.name} is not the JSON the API defines") from exc
        tags.extend(t for t in listed if isinstance(t, str))
        link = re.match(r"<(/v2/[^>]+)>;\s*rel=\"?next\"?", headers.get("Link", ""))
        path = link.group(1) if link else None
    if len(tags) >= MAX_TAGS:
        log.warning("%s has more than %d tags: only the first %d are considered", ref.name, MAX_TAGS, MAX_TAGS)
    return tags[:MAX_TAGS]


def previous_versions(client: RegistryClient, to_ref: Reference | str, count: int) -> list[Reference]:
    """The ``count`` most recent versions of ``to_ref``'s repository created before it, newest first.

    Versions are the repository's tags (deltas, ``_delta-...``, and cosign's ``sha256-...``
    tags skipped) whose image manifests (not indexes, not deltas) carry
    ``org.opencontainers.image.created`` earlier than the target's; one reference per
    digest (the newest tag naming it).
    """
    if count < 1:
        raise InvalidArgumentError(f"the number of previous versions must be at least 1, not {count}")
    to_ref = Reference.parse(to_ref) if isinstance(to_ref, str) else to_ref
    target = client.fetch_parsed(to_ref)
    target_created = _created(target)
    if target_created is None:
        raise PublishError(f"{to_ref} has no {ANNOTATION_CREATED} annotation: cannot tell which versions are older")
    found: dict[str, tuple[dt.datetime, Reference]] = {}
    for tag in _tags(client, to_ref):
        if tag.startswith("_delta-") or _SIGNATURE_TAG.match(tag) or tag == to_ref.tag:
            continue
        try:
            parsed = client.fetch_parsed(to_ref.with_tag(tag))
        except DorasOrasError as exc:
            log.warning("skipping tag %s: %s", tag, exc)
            continue
        digest = parsed.descriptor.digest
        if (parsed.is_index or parsed.document.get("artifactType") == DELTA_ARTIFACT_TYPE
                or digest == target.descriptor.digest):
            continue
        created = _created(parsed)
        if created is None or created >= target_created:
            continue
        if digest not in found or created > found[digest][0]:
            found[digest] = (created, to_ref.with_digest(digest))
    ordered = sorted(found.values(), key=lambda item: (item[0], str(item[1])), reverse=True)
    return [ref for _created_at, ref in ordered[:count]]


def publish_from_last(client: RegistryClient, to_ref: Reference | str, count: int, **options: Any,
                      ) -> tuple[list[PublishedDelta], list[tuple[Reference, DorasOrasError]]]:
    """Publish deltas to ``to_ref`` from its ``count`` previous versions (:func:`previous_versions`).

    ``options`` are those of :func:`publish_delta`. A pair that fails is reported in the
    second list and the others go on (a release pipeline wants every delta it can get).
    """
    to_ref = Reference.parse(to_ref) if isinstance(to_ref, str) else to_ref
    done: list[PublishedDelta] = []
    failed: list[tuple[Reference, DorasOrasError]] = []
    for base in previous_versions(client, to_ref, count):
        try:
            done.append(publish_delta(client, base, to_ref, **options))
        except (PublishError, ArtifactTooLargeError) as exc:
            log.warning("no delta from %s: %s", base.digest, exc)
            failed.append((base, exc))
    return done, failed
