"""Apply a tar-diff from bytes, through the project's applier (doras_oras.codecs.tardiff)."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

from doras_oras.codecs.tardiff import apply_tardiff


def apply(old_tar: bytes, delta: bytes) -> bytes:
    """The new tar that ``delta`` makes of ``old_tar`` (plain, gzip or zstd tar)."""
    with tempfile.TemporaryDirectory(prefix="tardiff-test-") as tmp:
        base = Path(tmp) / "base"
        base.write_bytes(old_tar)
        out = io.BytesIO()
        apply_tardiff(base, io.BytesIO(delta), out, tmp_dir=tmp)
        return out.getvalue()
