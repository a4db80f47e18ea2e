"""tar-diff applier: path rules, base formats, op semantics (hand-made deltas)."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import tempfile
from pathlib import Path
from typing import IO

import pytest
import zstandard

from doras_oras.algorithms import DeltaAlgorithm
from doras_oras.codecs.tardiff import TarIndex, apply_tardiff, normalize_path
from doras_oras.errors import CorruptDeltaError
from tests._codec_support import apply_file, make_tardiff, tardiff_op


def _tar(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _open(name: bytes) -> bytes:
    return tardiff_op(1, len(name), name)


def _apply(base: Path, ops: bytes, **kw: object) -> bytes:
    out = io.BytesIO()
    apply_tardiff(base, io.BytesIO(make_tardiff(ops)), out, **kw)  # type: ignore[arg-type]
    return out.getvalue()


@pytest.mark.parametrize(("name", "expected"), [
    ("a", "a"), ("./a", "a"), ("a/./b", "a/b"), ("a//b/", "a/b"), ("._a", "._a"), (".a", ".a"),
    ("/a", None), ("../a", None), ("a/../b", None), ("", None), ("./", None), ("a\x00b", None),
])
def test_normalize_path(name: str, expected: str | None) -> None:
    assert normalize_path(name) == expected


def test_dot_slash_names_the_same_file_and_dot_underscore_is_real(tmp_path: Path) -> None:
    (tmp_path / "base.tar").write_bytes(_tar([("./a", b"AAAA"), ("._a", b"resource fork")]))
    ops = _open(b"a") + tardiff_op(2, 4) + _open(b"./._a") + tardiff_op(2, 8)
    assert _apply(tmp_path / "base.tar", ops) == b"AAAAresource"


def test_last_entry_of_a_name_wins(tmp_path: Path) -> None:
    (tmp_path / "base.tar").write_bytes(_tar([("x", b"first"), ("./x", b"second")]))
    assert _apply(tmp_path / "base.tar", _open(b"x") + tardiff_op(2, 6)) == b"second"


def test_a_later_non_regular_entry_hides_the_file(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("x")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
        link = tarfile.TarInfo("x")
        link.type = tarfile.SYMTYPE
        link.linkname = "elsewhere"
        tf.addfile(link)
    (tmp_path / "base.tar").write_bytes(buf.getvalue())
    with pytest.raises(CorruptDeltaError, match="symlink"):
        _apply(tmp_path / "base.tar", _open(b"x"))


def test_ops_data_copy_add_seek(tmp_path: Path) -> None:
    (tmp_path / "base.tar").write_bytes(_tar([("f", bytes(range(200)))]))
    ops = (tardiff_op(0, 3, b"hdr") + _open(b"f") + tardiff_op(4, 10) + tardiff_op(2, 5)
           + tardiff_op(3, 4, bytes([1, 2, 255, 0])) + tardiff_op(4, 198) + tardiff_op(2, 2))
    expected = b"hdr" + bytes(range(10, 15)) + bytes([16, 18, 16, 18]) + bytes([198, 199])
    assert _apply(tmp_path / "base.tar", ops) == expected


def test_large_adddata_is_streamed_and_numpy_agrees(tmp_path: Path) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    (tmp_path / "base.tar").write_bytes(_tar([("big", body)]))
    delta = bytes([7]) * len(body)
    ops = _open(b"big") + tardiff_op(3, len(delta), delta)
    expected = bytes((b + 7) & 0xFF for b in body)
    for use_numpy in (False, True):
        assert _apply(tmp_path / "base.tar", ops, use_numpy=use_numpy) == expected


@pytest.mark.parametrize("fmt", ["tar", "tar.gz", "tar.zst"])
def test_base_may_be_plain_gzip_or_zstd(tmp_path: Path, fmt: str) -> None:
    tar = _tar([("dir/file.txt", b"hello world")])
    data = {"tar": tar, "tar.gz": gzip.compress(tar),
            "tar.zst": zstandard.ZstdCompressor().compress(tar)}[fmt]
    base = tmp_path / f"base.{fmt}"
    base.write_bytes(data)
    work = tmp_path / "work"
    work.mkdir()
    spools: list[str] = []

    def scratch() -> IO[bytes]:
        handle = tempfile.NamedTemporaryFile(dir=work)  # noqa: SIM115 - closed by the applier
        spools.append(handle.name)
        return handle

    assert _apply(base, _open(b"dir/file.txt") + tardiff_op(2, 11), scratch=scratch) == b"hello world"
    assert len(spools) == (0 if fmt == "tar" else 1)  # only a compressed base is spooled
    assert list(work.iterdir()) == []  # the decompressed base is removed


def test_several_zstd_frames_are_one_op_stream(tmp_path: Path) -> None:
    (tmp_path / "base.tar").write_bytes(_tar([("f", b"0123456789")]))
    zc = zstandard.ZstdCompressor()
    ops = _open(b"f") + tardiff_op(2, 4) + tardiff_op(0, 2, b"--")
    # split the op stream in the middle of an op, across two frames
    delta = b"tardf1\n\x00" + zc.compress(ops[:4]) + zc.compress(ops[4:])
    out = io.BytesIO()
    apply_tardiff(tmp_path / "base.tar", io.BytesIO(delta), out)
    assert out.getvalue() == b"0123--"


def test_index_records_kinds(tmp_path: Path) -> None:
    (tmp_path / "base.tar").write_bytes(_tar([("a", b"x"), ("../evil", b"y"), ("/abs", b"z")]))
    index = TarIndex(tmp_path / "base.tar")
    assert sorted(index.members) == ["a"]  # unreferenceable names are not indexed
    assert index.members["a"].regular and index.members["a"].size == 1


def test_unreadable_base_is_a_codec_error(tmp_path: Path) -> None:
    from doras_oras.errors import CodecError

    (tmp_path / "base.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(CodecError, match="not a readable tar"):
        _apply(tmp_path / "base.tar", tardiff_op(0, 1, b"x"))


def test_expected_size_is_enforced_through_apply_file(tmp_path: Path) -> None:
    (tmp_path / "base.tar").write_bytes(_tar([("f", b"abc")]))
    delta = make_tardiff(tardiff_op(0, 5, b"hello"))
    from doras_oras.errors import SizeMismatchError

    with pytest.raises(SizeMismatchError):
        apply_file(DeltaAlgorithm.TARDIFF, tmp_path / "base.tar", io.BytesIO(delta),
                    tmp_path / "out", expected_size=6)
    assert not (tmp_path / "out").exists()
    digest, size = apply_file(DeltaAlgorithm.TARDIFF, tmp_path / "base.tar", io.BytesIO(delta),
                               tmp_path / "out", expected_size=5)
    assert size == 5 and (tmp_path / "out").read_bytes() == b"hello"
    assert digest == "sha256:" + hashlib.sha256(b"hello").hexdigest()
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o644
