"""Streaming decompression: frames, members, caps, truncation, garbage; the algorithm names."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard

from doras_oras.codecs import Compression, DeltaAlgorithm, open_decompressed
from doras_oras.errors import CorruptDeltaError, UnsupportedAlgorithmError
from tests._codec_support import REPO_ROOT, make_bsdiff, vectors_dir

DATA = os.urandom(300_000) + bytes(500_000)


def _read(blob: bytes, compression: Compression, step: int = 7000, **kw: object) -> bytes:
    reader = open_decompressed(io.BytesIO(blob), compression, **kw)  # type: ignore[arg-type]
    parts = []
    while chunk := reader.read(step):
        assert len(chunk) <= step
        parts.append(chunk)
    return b"".join(parts)


def test_zstd_several_frames_and_skippable_frames() -> None:
    zc = zstandard.ZstdCompressor(write_checksum=True)
    skippable = (0x184D2A53).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"skip!"
    blob = zc.compress(DATA[:1000]) + skippable + zc.compress(DATA[1000:])
    assert _read(blob, Compression.ZSTD) == DATA


def test_zstd_streamed_frame_without_content_size() -> None:
    cobj = zstandard.ZstdCompressor().compressobj()
    blob = cobj.compress(DATA) + cobj.flush()
    assert _read(blob, Compression.ZSTD, step=1 << 20) == DATA


@pytest.mark.parametrize("cut", [1, 3, 4, 100])
def test_zstd_truncation_is_an_error(cut: int) -> None:
    blob = zstandard.ZstdCompressor(write_checksum=True).compress(DATA)
    with pytest.raises(CorruptDeltaError, match="truncated"):
        _read(blob[:-cut], Compression.ZSTD)


@pytest.mark.parametrize("junk", [b"\x00", b"\x00\x00\x00\x00", b"garbage!!", b"\x28\xb5"])
def test_zstd_trailing_garbage_is_an_error(junk: bytes) -> None:
    blob = zstandard.ZstdCompressor().compress(DATA)
    with pytest.raises(CorruptDeltaError, match="garbage"):
        _read(blob + junk, Compression.ZSTD)


def test_zstd_corrupt_checksum_is_an_error() -> None:
    blob = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(b"hello" * 100))
    blob[-1] ^= 0xFF
    with pytest.raises(CorruptDeltaError, match="invalid zstd data"):
        _read(bytes(blob), Compression.ZSTD)


def test_gzip_several_members() -> None:
    blob = gzip.compress(DATA[:5]) + gzip.compress(DATA[5:])
    assert _read(blob, Compression.GZIP) == DATA


@pytest.mark.parametrize("compression", [Compression.GZIP, Compression.ZSTD])
def test_empty_input_is_an_error(compression: Compression) -> None:
    with pytest.raises(CorruptDeltaError, match="empty"):
        _read(b"", compression)


def test_gzip_truncation_and_garbage() -> None:
    blob = gzip.compress(DATA)
    with pytest.raises(CorruptDeltaError, match="truncated"):
        _read(blob[:-4], Compression.GZIP)
    with pytest.raises(CorruptDeltaError, match="garbage"):
        _read(blob + b"\x00\x00", Compression.GZIP)


@pytest.mark.parametrize("compression", list(Compression))
def test_max_output_caps_every_codec(compression: Compression) -> None:
    blob = {Compression.NONE: DATA, Compression.GZIP: gzip.compress(DATA),
            Compression.ZSTD: zstandard.ZstdCompressor().compress(DATA)}[compression]
    assert _read(blob, compression, max_output=len(DATA)) == DATA
    with pytest.raises(CorruptDeltaError, match="exceeds the allowed"):
        _read(blob, compression, max_output=len(DATA) - 1)


def test_detect_compression() -> None:
    assert Compression.detect(b"\x1f\x8b\x08") is Compression.GZIP
    assert Compression.detect(b"\x28\xb5\x2f\xfd") is Compression.ZSTD
    assert Compression.detect(b"BSDIFF40") is Compression.NONE


@pytest.mark.parametrize(("media_type", "algorithm"), [
    ("application/bsdiff", DeltaAlgorithm.BSDIFF),
    ("application/bsdiff+gzip", DeltaAlgorithm.BSDIFF_GZIP),
    ("application/bsdiff+zstd", DeltaAlgorithm.BSDIFF_ZSTD),
    ("application/tardiff", DeltaAlgorithm.TARDIFF),
])
def test_algorithm_from_media_type(media_type: str, algorithm: DeltaAlgorithm) -> None:
    assert DeltaAlgorithm.from_media_type(media_type) is algorithm
    assert algorithm.media_type == media_type
    assert DeltaAlgorithm.from_name(media_type.split("/")[1]) is algorithm


@pytest.mark.parametrize("media_type", ["application/vnd.tar-diff", "application/BSDIFF",
                                        "application/bsdiff ", "application/xdelta", ""])
def test_unknown_media_types_are_unsupported(media_type: str) -> None:
    with pytest.raises(UnsupportedAlgorithmError):
        DeltaAlgorithm.from_media_type(media_type)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "-m", "doras_oras", *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_cli_apply_detects_the_algorithm_and_prints_json(tmp_path: Path) -> None:
    case = vectors_dir() / "doras-v0.20.2" / "bsdiff+zstd"
    layer = json.loads((case / "to.manifest.json").read_bytes())["layers"][0]
    res = _cli("apply", "--base", str(case / "from.layer"), "--delta", str(case / "delta.layer"),
               "--output", str(tmp_path / "out"), "--expect-digest", layer["digest"], "--json")
    assert res.returncode == 0, res.stderr
    answer = json.loads(res.stdout)
    assert answer == {"output": str(tmp_path / "out"), "algorithm": "bsdiff+zstd",
                      "digest": layer["digest"], "size": layer["size"], "verified": True}
    assert (tmp_path / "out").read_bytes() == (case / "to.layer").read_bytes()


def test_cli_apply_tardiff_plain_output(tmp_path: Path) -> None:
    case = vectors_dir() / "tardiff-hello"
    target = gzip.decompress((case / "to.tar.gz").read_bytes())
    res = _cli("apply", "--base", str(case / "from.tar.gz"), "--delta",
               str(case / "delta.patch.tardiff"), "--output", str(tmp_path / "out.tar"),
               "--algorithm", "tardiff", "--expect-digest", "sha256:" + hashlib.sha256(target).hexdigest())
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"{tmp_path / 'out.tar'}: sha256:")
    assert (tmp_path / "out.tar").read_bytes() == target


def test_cli_apply_failures_leave_nothing(tmp_path: Path) -> None:
    (tmp_path / "old").write_bytes(b"old")
    (tmp_path / "bad").write_bytes(make_bsdiff([(5, 0, 0)], bytes(5), b"", 10))
    res = _cli("apply", "--base", str(tmp_path / "old"), "--delta", str(tmp_path / "bad"),
               "--output", str(tmp_path / "out"), "--allow-unverified")
    assert res.returncode == 1
    assert "control stream" in res.stderr
    # a tar-diff forced onto a bsdiff patch, a wrong expected digest, a bad digest, a missing file
    (tmp_path / "good").write_bytes(make_bsdiff([(3, 0, 0)], bytes(3), b"", 3))
    res = _cli("apply", "--base", str(tmp_path / "old"), "--delta", str(tmp_path / "good"),
               "--output", str(tmp_path / "out"), "--algorithm", "tardiff", "--allow-unverified")
    assert res.returncode == 1 and "not a tar-diff delta" in res.stderr
    res = _cli("apply", "--base", str(tmp_path / "old"), "--delta", str(tmp_path / "good"),
               "--output", str(tmp_path / "out"), "--expect-digest", "sha256:" + "1" * 64)
    assert res.returncode == 1 and "expected sha256:1111" in res.stderr
    res = _cli("apply", "--base", str(tmp_path / "old"), "--delta", str(tmp_path / "good"),
               "--output", str(tmp_path / "out"), "--expect-digest", "md5:abc")
    assert res.returncode == 2 and "invalid digest" in res.stderr
    res = _cli("apply", "--base", str(tmp_path / "missing"), "--delta", str(tmp_path / "good"),
               "--output", str(tmp_path / "out"), "--allow-unverified")
    assert res.returncode == 1 and "missing" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "good", "old"]


def test_magic_constants_agree() -> None:
    from doras_oras.algorithms import TARDIFF_MAGIC
    from doras_oras.codecs.tardiff import MAGIC

    assert TARDIFF_MAGIC == MAGIC == b"tardf1\n\x00"
    assert DeltaAlgorithm.detect(MAGIC + b"\x28\xb5\x2f\xfd") is DeltaAlgorithm.TARDIFF
