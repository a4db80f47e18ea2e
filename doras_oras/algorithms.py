"""The vocabulary of delta kinds: names, compressions, patch formats, media types. Pure, no I/O.

One place for what the Doras server, the planner, the edge client and the
codecs call a delta:

- the four ``accepted_algorithm`` names a client may send (:data:`ALGORITHM_NAMES`:
  ``bsdiff``, ``tardiff``, ``gzip``, ``zstd``) and what the server assumes when a
  request names none (:data:`SERVER_DEFAULT_ALGORITHMS`);
- :class:`Compression` around a patch, detected from magic bytes;
- :class:`Patch`, the patch format without its compression;
- :class:`DeltaAlgorithm`, the four delta kinds a server stores, each with its
  layer media type (``application/bsdiff+zstd``, ...), layer title and tag suffix;
- :func:`delta_tag`, the tag a delta is stored under in the registry.
"""

from __future__ import annotations

import enum
import hashlib

from .errors import CorruptDeltaError, InvalidArgumentError, UnsupportedAlgorithmError

__all__ = [
    "ALGORITHM_NAMES",
    "BSDIFF",
    "GZIP",
    "SERVER_DEFAULT_ALGORITHMS",
    "TARDIFF",
    "ZSTD",
    "Compression",
    "DeltaAlgorithm",
    "Patch",
    "check_algorithm_names",
    "delta_tag",
]

BSDIFF = "bsdiff"
TARDIFF = "tardiff"
GZIP = "gzip"
ZSTD = "zstd"

#: Values of the ``accepted_algorithm`` query parameter the server knows (DESIGN §2).
ALGORITHM_NAMES = (BSDIFF, TARDIFF, GZIP, ZSTD)

#: What the Go server assumes when the request names none.
SERVER_DEFAULT_ALGORITHMS = (BSDIFF, TARDIFF, ZSTD)

BSDIFF_MAGIC = b"BSDIFF40"
TARDIFF_MAGIC = b"tardf1\n\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"


def check_algorithm_names(names: object) -> tuple[str, ...]:
    """``names`` as a tuple of known algorithm names; :class:`InvalidArgumentError` names the others."""
    if isinstance(names, str) or not hasattr(names, "__iter__"):
        raise InvalidArgumentError(
            f"accepted algorithms must be a list of names, not {type(names).__name__}"
        )
    values = tuple(names)
    unknown = [str(name)[:50] for name in values if name not in ALGORITHM_NAMES]
    if unknown:
        raise InvalidArgumentError(
            f"unknown algorithm(s) {', '.join(repr(u) for u in unknown)}; known: {', '.join(ALGORITHM_NAMES)}"
        )
    return values


class Compression(enum.Enum):
    """A compression wrapped around a delta (or a layer)."""

    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"

    @classmethod
    def detect(cls, head: bytes) -> Compression:
        """The compression whose magic bytes start ``head`` (``NONE`` if neither)."""
        if head.startswith(GZIP_MAGIC):
            return cls.GZIP
        if head.startswith(ZSTD_MAGIC):
            return cls.ZSTD
        return cls.NONE


class Patch(enum.StrEnum):
    """The patch format of a delta."""

    BSDIFF = "bsdiff"
    TARDIFF = "tardiff"


class DeltaAlgorithm(enum.Enum):
    """A delta kind, valued by its CLI name (``str()`` gives it too)."""

    BSDIFF = "bsdiff"
    BSDIFF_GZIP = "bsdiff+gzip"
    BSDIFF_ZSTD = "bsdiff+zstd"
    TARDIFF = "tardiff"

    @property
    def media_type(self) -> str:
        """The delta layer media type the Doras server uses (``application/<name>``)."""
        return f"application/{self.value}"

    @property
    def tag_suffix(self) -> str:
        """The ``SUFFIX`` of the delta tag (``bsdiff``, ``bsdiff_gzip``, ``bsdiff_zstd``, ``tardiff``)."""
        return self.value.replace("+", "_")

    @property
    def title(self) -> str:
        """The delta layer's ``org.opencontainers.image.title`` (``delta.bsdiff.zstd``, ...)."""
        return "delta." + self.value.replace("+", ".")

    @property
    def compression(self) -> Compression:
        """The compression around the patch (``NONE`` for bsdiff and tardiff)."""
        return {
            DeltaAlgorithm.BSDIFF_GZIP: Compression.GZIP,
            DeltaAlgorithm.BSDIFF_ZSTD: Compression.ZSTD,
        }.get(self, Compression.NONE)

    def __str__(self) -> str:
        return self.value

    @property
    def patch(self) -> Patch:
        """The patch format, without its compression."""
        return Patch.TARDIFF if self is DeltaAlgorithm.TARDIFF else Patch.BSDIFF

    @property
    def is_bsdiff(self) -> bool:
        """True for the three bsdiff kinds."""
        return self is not DeltaAlgorithm.TARDIFF

    def accepted_by(self, accepted: tuple[str, ...] | list[str]) -> bool:
        """Whether a request that accepted these names asked for this kind (patch and compression)."""
        if self.patch.value not in accepted:
            return False
        return self.compression is Compression.NONE or self.compression.value in accepted

    @classmethod
    def from_media_type(cls, media_type: str) -> DeltaAlgorithm:
        """Parse exactly one of the four delta layer media types."""
        for algorithm in cls:
            if media_type == algorithm.media_type:
                return algorithm
        raise UnsupportedAlgorithmError(f"unsupported delta media type {media_type[:200]!r}")

    @classmethod
    def from_name(cls, name: str) -> DeltaAlgorithm:
        """Parse a CLI name: ``bsdiff``, ``bsdiff+gzip``, ``bsdiff+zstd`` or ``tardiff``."""
        try:
            return cls(name)
        except ValueError:
            raise UnsupportedAlgorithmError(f"unknown delta algorithm {name[:100]!r}") from None

    @classmethod
    def detect(cls, head: bytes) -> DeltaAlgorithm:
        """The algorithm of a delta from its first bytes (at least 8).

        ``BSDIFF40`` → bsdiff, ``tardf1\\n\\0`` → tardiff, gzip → bsdiff+gzip,
        zstd → bsdiff+zstd (the server compresses only bsdiff patches).
        """
        if head.startswith(BSDIFF_MAGIC):
            return cls.BSDIFF
        if head.startswith(TARDIFF_MAGIC):
            return cls.TARDIFF
        compression = Compression.detect(head)
        if compression is Compression.GZIP:
            return cls.BSDIFF_GZIP
        if compression is Compression.ZSTD:
            return cls.BSDIFF_ZSTD
        raise CorruptDeltaError(f"unrecognised delta: first bytes {head[:8].hex()}")


def delta_tag(from_digest: str, to_digest: str, algorithm: DeltaAlgorithm) -> str:
    """The tag a Doras server stores the delta ``from_digest -> to_digest`` under (DESIGN.md §2).

    ``_delta-`` + hex sha256 of ``FROMHEX + TOHEX + SUFFIX`` (the manifest digests' hex, without
    the ``sha256:`` prefix). Any client can compute it: a delta published at release time is found
    under the same tag as one the server built.
    """
    seed = from_digest.split(":", 1)[1] + to_digest.split(":", 1)[1] + algorithm.tag_suffix
    return "_delta-" + hashlib.sha256(seed.encode()).hexdigest()
