"""Partial downloads in ``ingest/``: what ``clean`` keeps and drops, and storing them."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from doras_oras.descriptor import OCI_LAYER_TAR, Descriptor
from doras_oras.errors import LayoutError, SizeMismatchError
from doras_oras.layout import OCILayout
from tests.layout_support import sha256


def desc(data: bytes) -> Descriptor:
    return Descriptor(media_type=OCI_LAYER_TAR, digest=sha256(data), size=len(data))


def test_clean_keeps_fresh_partials_with_their_sidecars_and_drops_the_rest(tmp_path: Path) -> None:
    layout = OCILayout.open(tmp_path / "L")
    ingest = tmp_path / "L" / "ingest"
    fresh = layout.partial_path(desc(b"fresh"))
    fresh.write_bytes(b"fre")
    fresh.with_name(fresh.name + ".meta").write_text('{"digest": "x", "size": 5}')
    lone_fresh = layout.partial_path(desc(b"no sidecar yet"))
    lone_fresh.write_bytes(b"no")
    stale = layout.partial_path(desc(b"stale"))
    stale.write_bytes(b"st")
    stale_meta = stale.with_name(stale.name + ".meta")
    stale_meta.write_text("{}")
    for path in (stale, stale_meta):
        os.utime(path, (time.time() - 8 * 86400,) * 2)
    orphan = layout.partial_path(desc(b"orphan")).with_name(layout.partial_path(desc(b"orphan")).name + ".meta")
    orphan.write_text("{}")
    done_data = b"done already"
    with layout.lock():
        layout.ingest_bytes(desc(done_data), done_data)
    done = layout.partial_path(desc(done_data))
    done.write_bytes(b"done")
    done.with_name(done.name + ".meta").write_text("{}")
    (ingest / "x.partial.meta.tmp").write_text("{}")
    with layout.lock():
        pass
    assert sorted(p.name for p in ingest.iterdir()) == sorted(
        ["lock", fresh.name, fresh.name + ".meta", lone_fresh.name]
    )


def test_store_moves_a_verified_download_into_blobs(tmp_path: Path) -> None:
    layout = OCILayout.open(tmp_path / "L")
    data = os.urandom(100_000)
    d = desc(data)
    partial = layout.partial_path(d)
    with layout.partial_writer(d) as writer:  # downloading needs no lock; placing the blob does
        writer.write(data)
        with pytest.raises(LayoutError, match="lock"):
            layout.store(writer)
    with layout.lock():
        with layout.partial_writer(d) as writer:
            assert writer.offset == len(data)  # kept: the next writer resumes it
            stored = layout.store(writer)
        final = layout.blob_path(d.digest)
        assert stored.digest == d.digest and stored.size == d.size
        assert final.read_bytes() == data
        assert oct(final.stat().st_mode & 0o777) == oct(0o644)
        assert not partial.exists()
        assert layout.has_blob(d)
        short = desc(b"abcdef")
        with layout.partial_writer(short) as writer, pytest.raises(SizeMismatchError, match="3 bytes, expected 6"):
            writer.write(b"abc")
            layout.store(writer)
        assert not layout.partial_path(short).exists() and not layout.blob_path(sha256(b"abcdef")).exists()
        with layout.partial_writer(d) as writer:  # a blob stored already: the writer is dropped
            writer.write(data)
            assert layout.store(writer).digest == d.digest
        assert not partial.exists() and final.read_bytes() == data


def test_a_partial_another_writer_holds_is_not_shared(tmp_path: Path) -> None:
    """Two downloads of one blob at once (no layout lock): the second writes a temp file of its own."""
    layout = OCILayout.open(tmp_path / "L")
    data = os.urandom(50_000)
    d = desc(data)
    with layout.partial_writer(d) as first, layout.partial_writer(d) as second:
        assert first.path == layout.partial_path(d) and first.resumable
        assert second.path != first.path and not second.resumable
        first.write(data[:20_000])
        second.write(data)
        with layout.lock():
            layout.store(second)
    assert layout.has_blob(d)
    assert layout.partial_size(d) == 20_000  # the first one's bytes stay for a resume


def test_cleaning_leaves_the_files_of_writers_alone(tmp_path: Path) -> None:
    """Taking the lock cleans temp files of killed runs, never those a download is writing."""
    layout = OCILayout.open(tmp_path / "L")
    stale = layout.root / "ingest" / ".blob-killed.tmp"
    stale.write_bytes(b"left by a killed run")
    data = os.urandom(1000)
    with layout.temp_writer(digest=desc(data).digest, size=len(data)) as writer:
        writer.write(data[:10])
        with layout.lock():  # taking the lock cleans ingest/
            assert layout.clean() == []  # nothing left to clean: the held file is not a leftover
        assert writer.path.exists() and not stale.exists()
        writer.write(data[10:])
        with layout.lock():
            layout.store(writer)
    assert layout.has_blob(desc(data))
