"""The test server's tar-diff encoder against the Go tar-diff recordings."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest
import zstandard
from tardiff_apply import apply

from doras_oras.publish.tardiff_encoder import MAGIC, clean_path, encode
from doras_oras.testing.vectors import vectors_dir

GO = vectors_dir() / "tardiff-go"
PAIRS = sorted(p.name for p in GO.iterdir() if p.is_dir())


def _ops(delta: bytes) -> list[int]:
    """The op codes of a delta (test-only parse)."""
    body = zstandard.ZstdDecompressor().decompressobj().decompress(delta[8:])
    ops, i = [], 0
    while i < len(body):
        op = body[i]
        i += 1
        size = shift = 0
        while True:
            b = body[i]
            i += 1
            size |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        ops.append(op)
        if op in (0, 1, 3):
            i += size
    return ops


@pytest.mark.parametrize("pair", PAIRS)
def test_go_pairs_reproduce_the_new_tar(pair: str) -> None:
    old = (GO / pair / "old.tar.gz").read_bytes()
    new = (GO / pair / "new.tar.gz").read_bytes()
    want = gzip.decompress(new)
    # The Go tool's delta, applied by the test applier, gives the same result (applier sanity).
    assert apply(old, (GO / pair / "delta.tardiff").read_bytes()) == want
    delta = encode(old, new)
    assert delta.startswith(MAGIC)
    assert apply(old, delta) == want
    # Not a bigger delta than the Go tool's, give or take a little.
    assert len(delta) <= len((GO / pair / "delta.tardiff").read_bytes()) * 1.1 + 512


def test_hello_vector() -> None:
    hello = vectors_dir() / "tardiff-hello"
    old, new = (hello / "from.tar.gz").read_bytes(), (hello / "to.tar.gz").read_bytes()
    assert apply(old, encode(old, new)) == gzip.decompress(new)


def _tar(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1
            archive.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_unchanged_file_is_open_copy_and_edit_is_not_data() -> None:
    big = bytes(range(256)) * 400
    edited = big[:50_000] + b"EDIT" + big[50_004:] + b"tail"
    old = _tar([("./same.bin", big), ("edit.bin", big)])
    new = _tar([("same.bin", big), ("edit.bin", edited), ("new.txt", b"hello")])
    delta = encode(old, new)
    assert apply(old, delta) == new
    ops = _ops(delta)
    assert ops.count(1) == 2  # one Open per reused file
    assert 2 in ops and (3 in ops or 4 in ops)  # Copy runs, AddData or Seek
    assert len(delta) < 2_000  # two ~100 kB files, nearly nothing new


def test_last_entry_of_a_path_wins_and_paths_are_normalised() -> None:
    old = _tar([("a", b"first version"), ("./a", b"second version" * 100)])
    new = _tar([("a", b"second version" * 100)])
    delta = encode(old, new)
    assert apply(old, delta) == new
    assert _ops(delta).count(0) <= 2  # headers and trailer only; the content is copied


def test_clean_path() -> None:
    assert clean_path("./a/b/") == "a/b"
    assert clean_path("a/../../b") == "b"
    assert clean_path("._a") == "._a"


def test_new_tar_and_no_old_content(tmp_path: Path) -> None:
    old = _tar([])
    new = _tar([("x", b"\x00" * 1000), ("empty", b"")])
    assert apply(old, encode(old, new)) == new
