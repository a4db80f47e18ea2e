"""Planning a delta-aware pull. Pure: no I/O.

Given what the layout holds for the repository (the *base*) and the target
manifest, decide which delta algorithms can be applied **and verified**
(DESIGN.md §3–§4), and what a delta result must be checked against:

============================  ===============================  ==========================
base layer stored as          accepted algorithms              result checked against
============================  ===============================  ==========================
the exact registry blob       bsdiff (+zstd, +gzip); tardiff   bsdiff: target layer
                              too when the target layer has    digest and size; tardiff:
                              ``io.deis.oras.content.digest``  that annotation
our gzip of an earlier        tardiff only                     the annotation; without
tar-diff's result                                              it no check is possible:
                                                               full pull unless the caller
                                                               allows unverified content
============================  ===============================  ==========================
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from .algorithms import ALGORITHM_NAMES as ALL_ALGORITHMS
from .algorithms import BSDIFF, GZIP, TARDIFF, ZSTD, check_algorithm_names
from .descriptor import (
    ANNOTATION_CONTENT_DIGEST,
    ANNOTATION_UNPACK,
    OCI_LAYER_TAR_GZIP,
    Descriptor,
    validate_digest,
)
from .errors import InvalidDigestError

__all__ = [
    "ALL_ALGORITHMS",
    "DeltaPlan",
    "Expected",
    "Mode",
    "ReasonCode",
    "choose_accepted",
    "content_digest",
    "delta_possible",
    "expected_result",
    "rewritten_layer",
]


class ReasonCode(enum.StrEnum):
    """Why a pull ended as it did: the machine-readable twin of ``PullResult.reason``.

    ``delta``: :attr:`PATCHED`. ``up-to-date``: :attr:`UP_TO_DATE`. ``pending``:
    :attr:`BUILDING`, :attr:`DELTA_TIMEOUT`. ``full`` (a fallback or no delta
    possible): every other code.
    """

    PATCHED = "patched"
    UP_TO_DATE = "up-to-date"
    BUILDING = "building"
    DELTA_TIMEOUT = "delta-timeout"
    NO_SERVER = "no-server"
    NO_BASE = "no-base"
    INDEX_TARGET = "index-target"
    MULTI_LAYER = "multi-layer"
    BASE_MISSING = "base-missing"
    UNVERIFIABLE = "unverifiable"
    ALGORITHMS_REFUSED = "algorithms-refused"
    SERVER_UNREACHABLE = "server-unreachable"
    SERVER_ERROR = "server-error"
    INCOMPATIBLE = "incompatible"
    SERVER_IDENTICAL = "server-identical"
    ANSWER_TOO_LARGE = "answer-too-large"
    BAD_DELTA = "bad-delta"
    UNEXPECTED_ALGORITHM = "unexpected-algorithm"
    DELTA_DOWNLOAD_FAILED = "delta-download-failed"
    DELTA_FAILED = "delta-failed"
    DELTA_NO_SPACE = "delta-no-space"
    BASE_CORRUPT = "base-corrupt"


_NO_DELTA_CAN_EXIST = frozenset({ReasonCode.NO_BASE, ReasonCode.INDEX_TARGET, ReasonCode.MULTI_LAYER,
                                 ReasonCode.INCOMPATIBLE})


def delta_possible(code: ReasonCode) -> bool:
    """Whether a full pull for ``code`` replaces a delta that was possible in principle (and could not be
    used), rather than one where no delta can exist: a first install (no base), an image index, artifacts
    of more than one layer, or a pair the Doras server calls not diffable. ``fallback="never"`` refuses the
    first kind and allows the second (docs/pull.md)."""
    return code not in _NO_DELTA_CAN_EXIST


class Mode(enum.Enum):
    """What a pull does."""

    DELTA = "delta"
    FULL = "full"


@dataclass(frozen=True)
class Expected:
    """What the applied delta must hash to. ``digest`` None: nothing to check against."""

    digest: str | None
    size: int | None
    # The result is the exact registry layer blob (bsdiff) rather than a tar-diff's tar.
    is_registry_blob: bool


@dataclass(frozen=True)
class DeltaPlan:
    """The outcome of planning: the mode, and for a delta what to ask and to expect."""

    mode: Mode
    reason: str
    accepted: tuple[str, ...] = ()
    code: ReasonCode = ReasonCode.PATCHED


def content_digest(layer: Descriptor) -> str | None:
    """The ``io.deis.oras.content.digest`` annotation when it is a valid digest."""
    value = layer.annotations.get(ANNOTATION_CONTENT_DIGEST)
    if value is None:
        return None
    try:
        validate_digest(value)
    except InvalidDigestError:
        return None
    return value


def choose_accepted(
    *,
    base_is_registry_blob: bool,
    target_layer: Descriptor,
    allow_unverified: bool,
    requested: Sequence[str] | None = None,
) -> DeltaPlan:
    """The algorithms to accept for a delta from the stored base to ``target_layer``.

    ``requested`` (the caller's list) narrows the result; it never widens it to
    something unverifiable unless ``allow_unverified``.
    """
    if requested is not None:
        requested = check_algorithm_names(requested)
    verifiable_tardiff = content_digest(target_layer) is not None
    target_unpackable = target_layer.annotations.get(ANNOTATION_UNPACK) == "true"
    if base_is_registry_blob:
        accepted = [BSDIFF, ZSTD, GZIP]
        if target_unpackable and (verifiable_tardiff or allow_unverified):
            accepted.insert(0, TARDIFF)
    else:
        if not (verifiable_tardiff or allow_unverified):
            return DeltaPlan(
                Mode.FULL,
                "the stored base is an earlier tar-diff result (not the registry's blob) and the "
                f"target layer has no {ANNOTATION_CONTENT_DIGEST} annotation: a tar-diff result "
                "could not be verified",
                code=ReasonCode.UNVERIFIABLE,
            )
        accepted = [TARDIFF]
    if requested is not None:
        accepted = [a for a in accepted if a in requested]
        if not any(a in (BSDIFF, TARDIFF) for a in accepted):
            return DeltaPlan(
                Mode.FULL,
                "none of the requested algorithms can be applied and verified for this base",
                code=ReasonCode.ALGORITHMS_REFUSED,
            )
    return DeltaPlan(Mode.DELTA, "delta possible", tuple(accepted))


def expected_result(patch: str, target_layer: Descriptor) -> Expected:
    """What the result of a ``patch`` (``bsdiff`` / ``tardiff``) delta must match."""
    if patch == BSDIFF:
        return Expected(target_layer.digest, target_layer.size, is_registry_blob=True)
    return Expected(content_digest(target_layer), None, is_registry_blob=False)


def rewritten_layer(target_layer: Descriptor, digest: str, size: int) -> Descriptor:
    """The layer descriptor of a tar-diff result, stored as a gzip of the tar (the target's annotations kept)."""
    return Descriptor(
        media_type=OCI_LAYER_TAR_GZIP,
        digest=digest,
        size=size,
        annotations=dict(target_layer.annotations),
        artifact_type=target_layer.artifact_type,
    )
