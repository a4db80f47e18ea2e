"""The verified full pull: manifest, config and layers of one image into a layout.

:func:`pull_full` fetches what the layout lacks (resuming partial downloads a
dropped link or a killed run left in ``ingest/``), checks every blob against
its descriptor while it arrives, and commits ``index.json`` last. An image
index is resolved to the manifest of one platform. Nothing of a failed pull
stays in ``blobs/``.

With ``verify`` (keys, a trust policy, or both: docs/trust.md) the digest the
reference resolves to is verified first, before its manifest is fetched; an
image index is verified by its own digest, then the platform manifest is
reached through it. The signature manifests that verified are committed
beside the image in the same ``index.json`` write.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import schemas
from .budget import check_free_space
from .descriptor import Descriptor
from .errors import InvalidArgumentError
from .layout import (
    ANNOTATION_PULLED_BY,
    ANNOTATION_SOURCE_INDEX,
    ANNOTATION_SOURCE_PLATFORM,
    Attachment,
    ImageEntry,
    OCILayout,
)
from .platforms import choose_manifest, host_platform, parse_platform, platform_text
from .reference import Reference
from .registry_client import RegistryClient, SupportsRegistryClient, registry_client_of

if TYPE_CHECKING:
    from .layout import BlobWriter
    from .trust import Requirement, TrustPolicy, TrustResult, Verification

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
"""``progress(phase, done_bytes, total_bytes)``; phases: ``full`` (blobs of a full pull),
``delta`` (the delta download), ``apply``."""

BeforeCommit = Callable[[Descriptor], None]
"""Called with the stored manifest after every blob is in the layout, before ``index.json``
names it (in the install transaction, under the lock): raising leaves the layout as it was
(e.g. files written first)."""


@dataclass(frozen=True)
class FullPullResult:
    """What :func:`pull_full` did."""

    reference: Reference
    resolved: Descriptor
    """What the reference named (an index when the registry has several platforms)."""
    manifest: Descriptor
    """The image manifest stored and committed."""
    image: ImageEntry
    bytes_received: int
    """Bytes of manifests and blobs received from the registry."""
    blobs_fetched: int
    blobs_reused: int
    trust: TrustResult | None = None
    """The signature check made with ``verify`` (which key verified), else ``None``."""


def pull_full(
    registry: RegistryClient | SupportsRegistryClient,
    ref: Reference | str,
    layout: OCILayout,
    *,
    platform: str | None = None,
    lock_timeout_s: float = 300.0,
    parsed: schemas.ParsedManifest | None = None,
    progress: Progress | None = None,
    verify: Verification | Requirement | TrustPolicy | None = None,
    attachments: Sequence[Attachment] = (),
    before_commit: BeforeCommit | None = None,
    annotations: Mapping[str, str] | None = None,
    allow_downgrade: bool = False,
) -> FullPullResult:
    """Verified full pull of ``ref`` into ``layout``; ``index.json`` is written last.

    An image index is resolved to the manifest of ``platform`` (``os/arch[/variant]``,
    default: this machine). Blobs already in the layout (and verified) are not fetched;
    a blob interrupted by a previous run is resumed from its partial file. All requests
    share one deadline (``policy.deadline_s``, or the enclosing ``pull_deadline``).
    ``parsed``: the manifest (or index) of ``ref`` as ``fetch_parsed`` already
    returned it, so it is not fetched again. ``progress("full", done, total)`` follows
    the blobs' bytes. ``verify``: refuse (:class:`~doras_oras.errors.TrustError`,
    nothing fetched but the signature, nothing written) unless the resolved
    digest is signed as required. ``attachments``: manifests to commit beside
    the image (signatures the caller verified; :func:`doras_oras.pull.pull_delta` does).
    ``before_commit(manifest)`` runs before ``index.json`` is written (:data:`BeforeCommit`).
    With ``verify``, a target older than the newest image of its repository in ``layout`` is
    refused (a rollback) unless ``allow_downgrade`` (docs/trust.md). ``annotations``: more
    annotations for the image's ``index.json`` entry.
    """
    client = registry_client_of(registry)
    ref = Reference.parse(ref) if isinstance(ref, str) else ref
    if platform is not None:
        parse_platform(platform)
    if parsed is not None and ref.digest and parsed.descriptor.digest != ref.digest:
        raise InvalidArgumentError(
            f"pull_full: the manifest given is {parsed.descriptor.digest}, {ref} names another")
    if verify is not None and attachments:
        raise InvalidArgumentError("pull_full: verify= and attachments= exclude each other")
    with client.pull_deadline():
        start = client.bytes_received
        trust = None
        notes = dict(annotations or {})
        if verify is not None:
            trust, parsed, attachments, recorded = _verified(client, ref, layout, parsed, verify, allow_downgrade)
            notes.update(recorded)
        result = _pull_full(client, ref, layout, platform=platform, lock_timeout_s=lock_timeout_s, parsed=parsed,
                            progress=progress, attachments=attachments,
                            before_commit=before_commit, annotations=notes)
    return dataclasses.replace(result, bytes_received=client.bytes_received - start, trust=trust)


def _verified(
    client: RegistryClient, ref: Reference, layout: OCILayout, parsed: schemas.ParsedManifest | None,
    verify: Verification | Requirement | TrustPolicy, allow_downgrade: bool,
) -> tuple[TrustResult, schemas.ParsedManifest, list[Attachment], dict[str, str]]:
    """Resolve, verify the digest, fetch exactly that manifest (or index), refuse a rollback."""
    from .signatures import (  # cryptography loads only for a verified pull
        attachments_of,
        check_forward,
        target_standing,
        verify_in_registry,
    )
    from .trust import Verification

    verification = dataclasses.replace(Verification.of(verify), tag=ref.tag)
    resolved = parsed.descriptor if parsed is not None else client.resolve(ref)
    trust = verify_in_registry(client, ref.with_digest(resolved.digest), verification)
    if parsed is None:
        parsed = client.fetch_parsed(ref, expected=resolved)
    trust, recorded = check_forward(layout, ref, trust, verification,
                                    target_standing(trust, parsed.body, resolved.digest),
                                    allow_downgrade=allow_downgrade)
    return trust, parsed, attachments_of(trust, parsed.body), recorded


def _pull_full(
    client: RegistryClient, ref: Reference, layout: OCILayout, *, platform: str | None, lock_timeout_s: float,
    parsed: schemas.ParsedManifest | None, progress: Progress | None, attachments: Sequence[Attachment],
    before_commit: BeforeCommit | None, annotations: Mapping[str, str],
) -> FullPullResult:
    start = client.bytes_received
    top = parsed if parsed is not None else client.fetch_parsed(ref)
    resolved = top.descriptor
    manifest = top
    notes: dict[str, str] = {ANNOTATION_PULLED_BY: "full", **annotations}
    if top.is_index:
        chosen = choose_manifest(top.document, platform or host_platform(), what=str(ref))
        manifest = client.fetch_parsed(ref, expected=chosen)
        notes[ANNOTATION_SOURCE_INDEX] = resolved.digest
        notes[ANNOTATION_SOURCE_PLATFORM] = platform_text(chosen.platform)
    document = manifest.document
    blobs = [Descriptor.from_json(document["config"])] + [Descriptor.from_json(x) for x in document["layers"]]
    own = Descriptor(
        media_type=manifest.descriptor.media_type,
        digest=manifest.descriptor.digest,
        size=manifest.descriptor.size,
        artifact_type=document.get("artifactType"),
    )
    fetched = reused = 0
    total = sum(blob.size for blob in blobs)
    done = 0
    missing = [blob for blob in [*blobs, own] if blob.data is None and not layout.blob_present(blob)]
    check_free_space([(layout.root, blob.size) for blob in missing], what=f"a full pull of {ref}")
    with contextlib.ExitStack() as stack:  # downloads before the lock; a dropped link keeps its partial
        downloaded: list[BlobWriter] = []
        try:
            for blob in blobs:
                if layout.has_blob(blob):
                    reused += 1
                    done += blob.size
                    continue
                writer = stack.enter_context(layout.partial_writer(blob))
                base = done
                report = (lambda n, base=base: progress("full", base + n, total)) if progress else None
                client.download(ref, blob, writer, on_progress=report)  # inline and empty blobs: not asked for
                downloaded.append(writer)
                done += blob.size
                if progress is not None:
                    progress("full", done, total)
                fetched += 1
            with layout.install(timeout=lock_timeout_s) as install:
                for writer in downloaded:
                    install.store(writer)
                install.put(own, manifest.body)
                image = install.commit(own, before_commit=before_commit, repository=ref.name, tag=ref.tag,
                                       source_digest=own.digest, annotations=notes, attachments=attachments)
        except BaseException:
            for writer in downloaded:  # nothing of a failed pull stays (but the partial of a dropped link)
                writer.discard()
            raise
    received = client.bytes_received - start
    log.info("pulled %s (%s): %d blob(s) fetched, %d reused, %d bytes", ref, own.digest, fetched, reused, received)
    return FullPullResult(
        reference=ref, resolved=resolved, manifest=own, image=image,
        bytes_received=received, blobs_fetched=fetched, blobs_reused=reused,
    )
