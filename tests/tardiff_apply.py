"""Apply a tar-diff from bytes, through the project's applier (doras_oras.codecs.tardiff)."""

from __future__ import annotations

import io

from doras_oras.codecs.tardiff import apply_tardiff


def apply(old_tar: bytes, delta: bytes) -> bytes:
    """The new tar that ``delta`` makes of ``old_tar`` (plain, gzip or zstd tar)."""
    out = io.BytesIO()
    apply_tardiff(io.BytesIO(old_tar), io.BytesIO(delta), out)
    return out.getvalue()
