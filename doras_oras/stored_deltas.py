"""Deltas already stored in the registry, found without a Doras server.

A Doras server keeps each delta in the artifact's own repository under a tag any client
can compute (:func:`doras_oras.algorithms.delta_tag`), and so does ``doras-oras
publish-delta``. :func:`find_stored_delta` looks there for the pair (installed image,
target image):

1. the delta kinds to try are those the pull can apply *and verify* for its base
   (``accepted``, from :func:`doras_oras.plan.choose_accepted`), in order of preference
   (:func:`candidate_algorithms`: tar-diff, then bsdiff with zstd, gzip, none);
2. one ``HEAD`` per tag, accepting only the OCI image manifest (a miss costs one small request
   and no body: about 400 bytes each way together on loopback, docs/deltas-without-server.md);
3. at a hit the manifest is read and checked as a server-named delta is
   (:func:`doras_oras.edgeapi.check_delta_manifest`: schema, digest, one layer, its media
   type); a placeholder (``com.unbasical.doras.delta.dummy``) is skipped, and the
   ``from``/``to`` annotations must name exactly the two images (repository and digest;
   the host is not compared: it is how the writer addressed the registry, and a mirror or
   CDN has another name), and the layer must be the kind the tag stands for.

A manifest under a tag that fails a check is skipped with a warning: the next tag is
tried. What is found is a :class:`~doras_oras.edgeapi.Delta`, used exactly as one a server
named (the result is verified against the target all the same).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from .algorithms import BSDIFF, GZIP, TARDIFF, ZSTD, DeltaAlgorithm, delta_tag
from .descriptor import (
    ANNOTATION_DELTA_DUMMY,
    ANNOTATION_DELTA_FROM,
    ANNOTATION_DELTA_TO,
    OCI_MANIFEST,
)
from .edgeapi import Delta, ImageRef, ReadDeltaResponse, check_delta_manifest
from .errors import DocumentError, InvalidReferenceError, VerificationError
from .reference import Reference
from .registry_client import RegistryClient

log = logging.getLogger(__name__)

__all__ = ["candidate_algorithms", "find_stored_delta"]


def candidate_algorithms(accepted: Sequence[str]) -> tuple[DeltaAlgorithm, ...]:
    """The stored delta kinds a pull that accepts ``accepted`` can use, most preferred first.

    tar-diff first (it reuses the files of the base, and the Go server picks it first when it
    may), then bsdiff with zstd, with gzip, uncompressed: each only when its patch and its
    compression are accepted.
    """
    order: list[DeltaAlgorithm] = []
    if TARDIFF in accepted:
        order.append(DeltaAlgorithm.TARDIFF)
    if BSDIFF in accepted:
        if ZSTD in accepted:
            order.append(DeltaAlgorithm.BSDIFF_ZSTD)
        if GZIP in accepted:
            order.append(DeltaAlgorithm.BSDIFF_GZIP)
        order.append(DeltaAlgorithm.BSDIFF)
    return tuple(order)


def _names_image(value: str | None, target: Reference) -> bool:
    """Whether an annotation value names ``target``'s repository at ``target``'s digest."""
    if value is None:
        return False
    try:
        ref = Reference.parse(value)
    except InvalidReferenceError:
        return False
    return ref.repository == target.repository and ref.digest == target.digest


def find_stored_delta(client: RegistryClient, from_ref: Reference, to_ref: Reference,
                      accepted: Sequence[str]) -> Delta | None:
    """The delta stored in the registry from ``from_ref`` to ``to_ref`` (both digest references
    in the same repository), of a kind ``accepted`` allows; ``None`` when there is none usable.

    Registry failures other than "not there" raise as every registry read does
    (:class:`~doras_oras.errors.TransportError`); the caller decides what a failure means.
    """
    if from_ref.digest is None or to_ref.digest is None:
        raise InvalidReferenceError("stored deltas are looked up between digest references")
    if not from_ref.same_repository(to_ref):
        raise InvalidReferenceError(f"{from_ref} and {to_ref} are not in the same repository")
    for algorithm in candidate_algorithms(accepted):
        tag_ref = to_ref.with_tag(delta_tag(from_ref.digest, to_ref.digest, algorithm))
        if not client.manifest_exists(tag_ref, accept=OCI_MANIFEST):  # a delta is an OCI image manifest
            continue
        try:
            parsed = client.fetch_parsed(tag_ref)
        except (DocumentError, VerificationError) as exc:
            log.warning("skipping the stored %s delta %s: %s", algorithm, tag_ref.tag, exc)
            continue
        annotations = parsed.document.get("annotations") or {}
        if str(annotations.get(ANNOTATION_DELTA_DUMMY, "")).lower() == "true":
            log.info("the %s delta %s is a placeholder (a server is building it)", algorithm, tag_ref.tag)
            continue
        if not (_names_image(annotations.get(ANNOTATION_DELTA_FROM), from_ref)
                and _names_image(annotations.get(ANNOTATION_DELTA_TO), to_ref)):
            log.warning("skipping %s: its annotations do not name %s -> %s", tag_ref.tag, from_ref.digest,
                        to_ref.digest)
            continue
        response = ReadDeltaResponse(target_image=ImageRef(to_ref),
                                     delta_image=ImageRef(to_ref.with_digest(parsed.descriptor.digest)))
        try:
            layer, kind = check_delta_manifest(parsed.body, parsed.descriptor.media_type, response, from_ref)
        except (DocumentError, VerificationError) as exc:
            log.warning("skipping the stored delta %s: %s", tag_ref.tag, exc)
            continue
        if kind is not algorithm:
            log.warning("skipping %s: its layer is %s, its tag stands for %s", tag_ref.tag, kind, algorithm)
            continue
        return Delta(response=response, layer=layer, algorithm=kind)
    return None

