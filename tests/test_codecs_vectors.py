"""The appliers give byte for byte what the real Go tools and the Doras server expect."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest

from doras_oras.algorithms import DeltaAlgorithm
from doras_oras.descriptor import ANNOTATION_CONTENT_DIGEST
from tests._codec_support import apply_file, vectors_dir

VECTORS = vectors_dir()
TARDIFF_GO = sorted((VECTORS / "tardiff-go").iterdir())
DORAS_CASES = sorted(p for p in (VECTORS / "doras-v0.20.2").iterdir() if p.is_dir())


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_all_vectors_are_present() -> None:
    assert len(TARDIFF_GO) == 16
    assert {p.name for p in DORAS_CASES} >= {
        "bsdiff", "bsdiff+gzip", "bsdiff+zstd", "gzip-layer-bsdiff+zstd",
        "tardiff-oras-dir", "tardiff-doras-dir", "dir-bsdiff-only",
    }


@pytest.mark.parametrize("case", TARDIFF_GO, ids=lambda p: p.name)
def test_tardiff_go_vectors(case: Path, tmp_path: Path) -> None:
    expected = gzip.decompress((case / "new.tar.gz").read_bytes())
    with open(case / "delta.tardiff", "rb") as delta:
        assert DeltaAlgorithm.detect(delta.read(8)) is DeltaAlgorithm.TARDIFF
        delta.seek(0)
        digest, size = apply_file(DeltaAlgorithm.TARDIFF, case / "old.tar.gz", delta,
                                   tmp_path / "new.tar", tmp_dir=tmp_path)
    assert (tmp_path / "new.tar").read_bytes() == expected
    assert (digest, size) == (_sha256(expected), len(expected))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.tar"]


def test_tardiff_hello_vector(tmp_path: Path) -> None:
    case = VECTORS / "tardiff-hello"
    expected = gzip.decompress((case / "to.tar.gz").read_bytes())
    with open(case / "delta.patch.tardiff", "rb") as delta:
        apply_file(DeltaAlgorithm.TARDIFF, case / "from.tar.gz", delta, tmp_path / "out.tar",
                    expected_digest=_sha256(expected), expected_size=len(expected))
    assert (tmp_path / "out.tar").read_bytes() == expected


@pytest.mark.parametrize("case", DORAS_CASES, ids=lambda p: p.name)
def test_doras_server_vectors(case: Path, tmp_path: Path) -> None:
    delta_manifest = json.loads((case / "delta.manifest.json").read_bytes())
    algorithm = DeltaAlgorithm.from_media_type(delta_manifest["layers"][0]["mediaType"])
    delta_bytes = (case / "delta.layer").read_bytes()
    assert DeltaAlgorithm.detect(delta_bytes[:8]) is algorithm
    target_layer = json.loads((case / "to.manifest.json").read_bytes())["layers"][0]
    to_layer = (case / "to.layer").read_bytes()
    out = tmp_path / "out"
    with open(case / "delta.layer", "rb") as delta:
        if algorithm.is_bsdiff:
            # bsdiff works on the raw registry blobs: the result is the target layer blob.
            digest, size = apply_file(algorithm, case / "from.layer", delta, out,
                                       expected_digest=target_layer["digest"],
                                       expected_size=target_layer["size"])
            assert out.read_bytes() == to_layer
            assert (digest, size) == (target_layer["digest"], target_layer["size"])
        else:
            # tar-diff gives the uncompressed target tar.
            expected = gzip.decompress(to_layer)
            content_digest = target_layer.get("annotations", {}).get(ANNOTATION_CONTENT_DIGEST)
            digest, size = apply_file(algorithm, case / "from.layer", delta, out,
                                       expected_digest=content_digest)
            assert out.read_bytes() == expected
            assert digest == _sha256(expected)
            if case.name == "tardiff-oras-dir":
                assert content_digest == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("case", TARDIFF_GO[::3], ids=lambda p: p.name)
def test_test_server_tardiff_encoder_round_trips(case: Path, tmp_path: Path) -> None:
    """Deltas of the project's test server (its own encoder) apply to the exact new tar."""
    from doras_oras.publish.tardiff_encoder import encode

    new_tar = gzip.decompress((case / "new.tar.gz").read_bytes())
    delta = encode((case / "old.tar.gz").read_bytes(), new_tar, level=3)
    (tmp_path / "delta").write_bytes(delta)
    with open(tmp_path / "delta", "rb") as fh:
        result = apply_file(DeltaAlgorithm.TARDIFF, case / "old.tar.gz", fh, tmp_path / "out",
                             expected_digest=_sha256(new_tar), expected_size=len(new_tar))
    assert (tmp_path / "out").read_bytes() == new_tar
    assert result == (_sha256(new_tar), len(new_tar))
