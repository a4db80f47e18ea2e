"""Helpers of the codec tests: finding the shared vectors, building patches by hand."""

from __future__ import annotations

import bz2
from pathlib import Path

from doras_oras.publish.bsdiff_build import bsdiff_header as bsdiff_header
from doras_oras.publish.bsdiff_build import offtout as offtout
from doras_oras.publish.tardiff_encoder import uvarint as uvarint
from doras_oras.testing.vectors import vectors_dir as vectors_dir

REPO_ROOT = Path(__file__).resolve().parents[1]

#: Peak RSS allowed for a child process that applies (or rejects) one delta.
RSS_BOUND = 48 << 20


def make_bsdiff(
    triples: list[tuple[int, int, int]],
    diff: bytes,
    extra: bytes,
    new_size: int,
    *,
    raw_ctrl: bytes | None = None,
) -> bytes:
    """A BSDIFF40 patch from explicit control triples and diff/extra data."""
    ctrl_plain = raw_ctrl if raw_ctrl is not None else b"".join(
        offtout(x) + offtout(y) + offtout(z) for x, y, z in triples
    )
    ctrl = bz2.compress(ctrl_plain)
    dblk = bz2.compress(diff)
    eblk = bz2.compress(extra)
    return bsdiff_header(len(ctrl), len(dblk), new_size) + ctrl + dblk + eblk


def tardiff_op(op: int, size: int, data: bytes = b"") -> bytes:
    return bytes([op]) + uvarint(size) + data


def make_tardiff(ops: bytes) -> bytes:
    import zstandard

    return b"tardf1\n\x00" + zstandard.ZstdCompressor().compress(ops)


def apply_file(
    algorithm: object,
    base: str | Path,
    delta: object,
    output: str | Path,
    *,
    expected_digest: str | None = None,
    expected_size: int | None = None,
    tmp_dir: str | Path | None = None,
    **options: object,
) -> tuple[str, int]:
    """Apply a delta from a file to a file as ``doras-oras apply`` does: the codec writes into the
    project's one blob writer (hashed while written, checked, fsynced, renamed); ``(digest, size)``."""
    import tempfile

    from doras_oras.codecs import apply_delta
    from doras_oras.layout import BlobWriter

    out_path = Path(output)
    scratch_dir = Path(tmp_dir) if tmp_dir is not None else out_path.parent
    with open(base, "rb") as base_fh, BlobWriter.temporary(out_path.parent, digest=expected_digest,
                                                           size=expected_size, what="delta output") as out:
        apply_delta(algorithm, base_fh, delta, out, expected_size=expected_size,  # type: ignore[arg-type]
                    scratch=lambda: tempfile.TemporaryFile(dir=scratch_dir),  # noqa: SIM115
                    **options)  # type: ignore[arg-type]
        digest = out.commit(out_path)
        return digest, out.offset
