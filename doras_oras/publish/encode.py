"""Building a delta and its manifest on this machine, exactly as the Doras server stores them.

- :func:`build_delta`: bsdiff over the raw registry blobs (compressed or not, as the Go
  server does), compressed with zstd or gzip or not at all; or tar-diff over the
  uncompressed tars (never compressed again). Everything happens in memory:
  :func:`build_cost` says how much, and :data:`DEFAULT_MAX_BLOB_BYTES` bounds it.
- :func:`delta_manifest`: the manifest oras-go's ``PackManifest`` writes for Doras
  (``artifactType`` ``application/vnd.example+type``, the empty config, one layer with the
  algorithm's media type and title, the ``from``/``to`` annotations and the creation time),
  as Go's ``encoding/json`` prints it.

bsdiff needs the optional ``bsdiff4`` package (``pip install doras-oras[publish]``); a device
that only pulls never loads it.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import zstandard

from ..algorithms import Compression, DeltaAlgorithm
from ..descriptor import (
    ANNOTATION_CREATED,
    ANNOTATION_DELTA_FROM,
    ANNOTATION_DELTA_TO,
    ANNOTATION_TITLE,
    EMPTY_DIGEST,
    OCI_EMPTY,
    OCI_MANIFEST,
)
from ..errors import ArtifactTooLargeError, Fix, InvalidArgumentError, PublishError
from . import tardiff_encoder

__all__ = [
    "DEFAULT_MAX_BLOB_BYTES",
    "DELTA_ARTIFACT_TYPE",
    "BuildCost",
    "build_cost",
    "build_delta",
    "delta_manifest",
    "go_json",
]

DELTA_ARTIFACT_TYPE = "application/vnd.example+type"
"""The ``artifactType`` of every delta manifest the Doras server writes."""

DEFAULT_MAX_BLOB_BYTES = 128 << 20
"""The largest base or target (uncompressed, for tar-diff) :func:`build_delta` accepts by default:
a bsdiff of two 128 MiB blobs needs about 2.5 GiB of memory and two to three minutes (:func:`build_cost`)."""

EMPTY_DESCRIPTOR: dict[str, Any] = {"mediaType": OCI_EMPTY, "digest": EMPTY_DIGEST, "size": 2, "data": "e30="}
"""The empty config (and the placeholder's one layer), with its data inline as oras-go writes it."""

ZSTD_LEVEL = 3
"""zstd's default level, as the Go server's compressor uses it."""


@dataclass(frozen=True)
class BuildCost:
    """What building a delta needs, roughly: peak memory in bytes and seconds on one core."""

    memory_bytes: int
    seconds: float


def build_cost(old_size: int, new_size: int, algorithm: DeltaAlgorithm) -> BuildCost:
    """The memory and time :func:`build_delta` needs for a base and target of these sizes (bytes).

    bsdiff (bsdiff4's suffix sort) holds two 8-byte integers per base byte, the base, the
    target and target-sized work buffers: about ``17 x base + 3 x target``; measured 0.6 to
    1.1 s per MiB of base on one core of a loaded 2-core machine (4, 16, 64 MiB: 2.5 s,
    15 s, 69 s; 64 MiB peaked at 1.2 GiB). tar-diff holds both uncompressed tars, the
    base's files and the operations: about ``3 x (base + target)``; files found in the base
    cost little (64 MiB with a few edits: 0.4 s), new content is compressed at zstd level 19,
    about 1 s per MiB (the worst case, counted here).
    """
    mib = 1 << 20
    if algorithm.is_bsdiff:
        return BuildCost(17 * old_size + 3 * new_size, 1.1 * old_size / mib)
    return BuildCost(3 * (old_size + new_size), 1.0 * new_size / mib)


def _check_size(what: str, size: int, max_size: int) -> None:
    if size > max_size:
        raise ArtifactTooLargeError(
            f"{what} is {size} bytes, over the {max_size} byte bound for building a delta in memory",
            fix=Fix.MAX_SIZE,
        )


def _gunzip_capped(data: bytes, what: str, max_size: int) -> bytes:
    """``data`` decompressed when it is gzip (at most ``max_size`` out), else unchanged."""
    if data[:2] != b"\x1f\x8b":
        return data
    out = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        raw = out.decompress(data, max_size + 1)
    except zlib.error as exc:
        raise InvalidArgumentError(f"{what} is not a valid gzip stream: {exc}") from exc
    _check_size(f"{what} (uncompressed)", len(raw), max_size)
    return raw


def build_delta(old: bytes, new: bytes, algorithm: DeltaAlgorithm, *,
                max_size: int = DEFAULT_MAX_BLOB_BYTES) -> bytes:
    """The delta blob that turns ``old`` (the base layer blob) into ``new`` (the target layer blob).

    bsdiff kinds diff the blobs byte for byte (the result is the exact target blob); tar-diff
    diffs the uncompressed tars (either blob may be a gzip of its tar; the result is the
    target's uncompressed tar). A blob over ``max_size`` (after decompression for tar-diff)
    is an :class:`ArtifactTooLargeError`.
    """
    _check_size("the base layer", len(old), max_size)
    _check_size("the target layer", len(new), max_size)
    if algorithm is DeltaAlgorithm.TARDIFF:
        old_tar = _gunzip_capped(old, "the base layer", max_size)
        new_tar = _gunzip_capped(new, "the target layer", max_size)
        try:
            return tardiff_encoder.encode(old_tar, new_tar)
        except Exception as exc:  # tarfile's errors: the layer is not a tar
            raise InvalidArgumentError(f"cannot build a tar-diff: a layer is not a tar archive ({exc})") from exc
    try:
        import bsdiff4  # the "publish" extra: loaded only when a bsdiff is built
    except ImportError as exc:
        raise PublishError("building a bsdiff needs the bsdiff4 package: install doras-oras[publish] "
                           "(a tar-diff needs nothing more)") from exc

    patch = bytes(bsdiff4.diff(old, new))
    if algorithm.compression is Compression.GZIP:
        return gzip.compress(patch, mtime=0)
    if algorithm.compression is Compression.ZSTD:
        return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(patch)
    return patch


def go_json(value: Any) -> bytes:
    """``value`` encoded as Go's ``encoding/json`` does (compact, HTML characters escaped)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text.encode("utf-8")


def now_rfc3339() -> str:
    """The current UTC time as the Doras server writes ``org.opencontainers.image.created``."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pack_manifest(layers: list[dict[str, Any]], annotations: Mapping[str, str]) -> bytes:
    """An image manifest as oras-go ``PackManifest`` (v1.1) writes it for Doras: artifactType
    ``application/vnd.example+type``, the empty config, annotation keys sorted (Go marshals
    maps sorted), compact JSON."""
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": DELTA_ARTIFACT_TYPE,
        "config": dict(EMPTY_DESCRIPTOR),
        "layers": layers,
        "annotations": dict(sorted(annotations.items())),
    }
    return go_json(manifest)


def delta_manifest(algorithm: DeltaAlgorithm, digest: str, size: int, *, from_image: str, to_image: str,
                   created: str | None = None) -> bytes:
    """The manifest of a stored delta: one layer (``digest``, ``size``) named for ``algorithm``;
    ``from_image``/``to_image`` are the ``HOST/REPO@sha256:...`` references of the pair."""
    layer = {"mediaType": algorithm.media_type, "digest": digest, "size": size,
             "annotations": {ANNOTATION_TITLE: algorithm.title}}
    return pack_manifest([layer], {ANNOTATION_DELTA_FROM: from_image, ANNOTATION_DELTA_TO: to_image,
                                   ANNOTATION_CREATED: created or now_rfc3339()})
