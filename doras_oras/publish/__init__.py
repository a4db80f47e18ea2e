"""Publishing deltas at release time, so that devices need no Doras server (docs/deltas-without-server.md).

- :mod:`.deltas`: :func:`publish_delta`, :func:`previous_versions`, :func:`publish_from_last`;
- :mod:`.encode`: building a delta (bsdiff via the optional ``bsdiff4``, tar-diff) and its
  manifest, exactly as the Doras server stores them; the cost and the bound;
- :mod:`.push`: blob and manifest writes to the registry;
- :mod:`.tardiff_encoder`: the tar-diff encoder; :mod:`.bsdiff_build`: BSDIFF40 headers by hand.

The Doras-compatible test server (:mod:`doras_oras.testing.server`) builds with the same encoders.
"""

from __future__ import annotations

from .deltas import PublishedDelta, choose_kind, previous_versions, publish_delta, publish_from_last
from .encode import DEFAULT_MAX_BLOB_BYTES, BuildCost, build_cost, build_delta

__all__ = [
    "DEFAULT_MAX_BLOB_BYTES",
    "BuildCost",
    "PublishedDelta",
    "build_cost",
    "build_delta",
    "choose_kind",
    "previous_versions",
    "publish_delta",
    "publish_from_last",
]
