"""Recorded pairs of the real tools pushed to the registry, for the publish and stored-delta tests."""

from __future__ import annotations

from doras_oras.reference import Reference
from doras_oras.testing.registry import RegistryServer
from doras_oras.testing.vectors import doras_vectors, push_recorded
from tests.pull_support import unique

ALL = ("bsdiff", "tardiff", "zstd", "gzip")


def pushed(registry: RegistryServer, vector: str) -> tuple[Reference, Reference]:
    """A recorded pair of the real tools pushed as v1/v2 of a fresh repository; digest references."""
    repo = unique("pub")
    digests = push_recorded(registry.url, doras_vectors() / vector, repo)
    base = Reference(registry.host, repo)
    return base.with_digest(digests["from_digest"]), base.with_digest(digests["to_digest"])
