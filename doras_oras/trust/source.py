"""Where signatures are read from: the :class:`SignatureSource` protocol, and the caps.

The verifier never does I/O itself. A source answers three questions about
one repository; a registry adapter (phase 2: through the project's
transport) and an OCI-layout adapter (offline re-verification) both fit.
A source must:

- stop reading a body at ``max_bytes`` and raise
  :class:`~doras_oras.errors.BodyTooLargeError` beyond it (the verifier checks
  the length again);
- answer ``None`` for "not found" (HTTP 404) and raise a
  :class:`~doras_oras.errors.DorasOrasError` (e.g. ``TransportError``) for any
  other failure: the verifier then refuses, it never guesses;
- send ``Accept`` for OCI/Docker manifests and indexes on manifest requests
  and report the ``Content-Type`` it got.

The verifier re-checks what it can itself (digests, sizes, media types,
schemas), so a source that passes bytes on unchecked is still safe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..descriptor import Descriptor
from ..reference import Reference

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
"""Cap of a signature manifest and of a referrers index (DESIGN.md §5)."""

MAX_SIGNATURE_BLOB_BYTES = 1024 * 1024
"""Cap of a simple-signing payload or signature config blob (a real one is ~250 bytes)."""

MAX_REFERRERS = 1000
"""A referrers index with more entries is refused without looking at any of them."""

MAX_SIGNATURE_MANIFESTS = 16
"""At most this many signature manifests (matching referrers) are tried for one digest."""

MAX_SIGNATURE_LAYERS = 64
"""A signature manifest with more simple-signing layers (signatures) is refused."""


@dataclass(frozen=True)
class FetchedManifest:
    """A manifest or index body as the registry served it."""

    body: bytes
    content_type: str
    """The ``Content-Type`` header (parameters allowed)."""


class SignatureSource(Protocol):
    """Read access to a repository's manifests, referrers and blobs (see the module doc)."""

    def fetch_manifest(self, repository: Reference, reference: str, *, max_bytes: int) -> FetchedManifest | None:
        """``GET /v2/<name>/manifests/<reference>`` (a tag or a digest); ``None`` when not found."""
        ...

    def fetch_referrers(
        self, repository: Reference, digest: str, *, artifact_type: str | None, max_bytes: int
    ) -> FetchedManifest | None:
        """``GET /v2/<name>/referrers/<digest>[?artifactType=...]``; ``None`` when the API is absent (404).

        A source may follow ``Link`` pages and merge them into one index, within ``max_bytes``.
        """
        ...

    def fetch_blob(self, repository: Reference, descriptor: Descriptor, *, max_bytes: int) -> bytes | None:
        """``GET /v2/<name>/blobs/<digest>``, at most ``max_bytes``; ``None`` when not found."""
        ...


class CachingSource:
    """A :class:`SignatureSource` that asks ``inner`` each question once (answers and "not found").

    Errors are not kept: a failed read fails again when asked again.
    """

    def __init__(self, inner: SignatureSource) -> None:
        self.inner = inner
        self._answers: dict[tuple[str, ...], object] = {}

    def fetch_manifest(self, repository: Reference, reference: str, *, max_bytes: int) -> FetchedManifest | None:
        key = ("manifest", repository.name, reference, str(max_bytes))
        if key not in self._answers:
            self._answers[key] = self.inner.fetch_manifest(repository, reference, max_bytes=max_bytes)
        answer = self._answers[key]
        assert answer is None or isinstance(answer, FetchedManifest)
        return answer

    def fetch_referrers(
        self, repository: Reference, digest: str, *, artifact_type: str | None, max_bytes: int
    ) -> FetchedManifest | None:
        key = ("referrers", repository.name, digest, artifact_type or "", str(max_bytes))
        if key not in self._answers:
            self._answers[key] = self.inner.fetch_referrers(
                repository, digest, artifact_type=artifact_type, max_bytes=max_bytes)
        answer = self._answers[key]
        assert answer is None or isinstance(answer, FetchedManifest)
        return answer

    def fetch_blob(self, repository: Reference, descriptor: Descriptor, *, max_bytes: int) -> bytes | None:
        key = ("blob", repository.name, descriptor.digest, str(max_bytes))
        if key not in self._answers:
            self._answers[key] = self.inner.fetch_blob(repository, descriptor, max_bytes=max_bytes)
        answer = self._answers[key]
        assert answer is None or isinstance(answer, bytes)
        return answer
