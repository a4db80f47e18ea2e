"""The OCI layout store on its own: ingest, verify, commit, lock, clean, rebuild, gc."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from doras_oras.descriptor import (
    ANNOTATION_REF_NAME,
    ANNOTATION_SOURCE_DIGEST,
    ANNOTATION_SOURCE_REPOSITORY,
    OCI_LAYER_TAR,
    OCI_LAYER_TAR_GZIP,
    OCI_MANIFEST,
    Descriptor,
)
from doras_oras.errors import (
    CorruptLayoutError,
    DigestMismatchError,
    InvalidDigestError,
    LayoutError,
    LayoutLockedError,
    SizeMismatchError,
)
from doras_oras.layout import OCILayout, gc, rebuild_index, verify_layout
from doras_oras.layout import lock as lock_module
from doras_oras.layout.lock import LOCK_FILE, LayoutLock
from tests.layout_support import REPO, blob, layout_problems, sha256, store_image


def all_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != "lock"}


def test_create_open_and_refuse_foreign_directories(tmp_path: Path) -> None:
    layout = OCILayout.open(tmp_path / "new")
    assert json.loads((tmp_path / "new" / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert layout.images() == []
    assert layout_problems(tmp_path / "new") == []
    assert OCILayout.open(tmp_path / "new", create=False).images() == []
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(LayoutError, match=r"not an OCI image layout.*notes\.txt"):
        OCILayout.open(tmp_path / "other")
    assert sorted(os.listdir(tmp_path / "other")) == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(LayoutError, match="not a directory"):
        OCILayout.open(tmp_path / "file")
    with pytest.raises(LayoutError):
        OCILayout.open(tmp_path / "absent", create=False)
    bad = tmp_path / "bad"
    OCILayout.open(bad)
    (bad / "oci-layout").write_text('{"imageLayoutVersion": "9"}')
    with pytest.raises(CorruptLayoutError, match="oci-layout"):
        OCILayout.open(bad)


def test_ingest_verifies_and_publishes_0644(tmp_path: Path) -> None:
    layout = OCILayout.open(tmp_path / "L")
    data = os.urandom(3 * 1024 * 1024 + 7)
    desc = blob(data)
    with layout.lock():
        path = layout.ingest(desc, io.BytesIO(data))
    assert path.read_bytes() == data
    assert path == tmp_path / "L" / "blobs" / "sha256" / desc.hex
    assert path.stat().st_mode & 0o777 == 0o644
    assert layout.has_blob(desc)
    with layout.open_blob(desc) as reader:
        assert reader.read() == data
    assert list((tmp_path / "L" / "ingest").iterdir()) == [tmp_path / "L" / "ingest" / "lock"]


@pytest.mark.parametrize(
    ("stream", "error"),
    [
        (b"hello world", DigestMismatchError),  # right size, other bytes
        (b"hello", SizeMismatchError),  # short
        (b"hello worlds and more", SizeMismatchError),  # longer than announced
    ],
)
def test_ingest_refuses_bad_content_and_writes_nothing(tmp_path: Path, stream: bytes, error: type[Exception]) -> None:
    layout = OCILayout.open(tmp_path / "L")
    before = all_files(tmp_path / "L")
    desc = blob(b"hello there")
    with layout.lock(), pytest.raises(error):
        layout.ingest(desc, io.BytesIO(stream))
    assert not layout.has_blob(desc)
    after = all_files(tmp_path / "L") - before
    # only a short stream may leave a partial file for resuming, and never in blobs/
    assert all(name.startswith("ingest/") for name in after)
    if error is not SizeMismatchError or len(stream) >= desc.size:
        assert after == set()


def test_ingest_reads_no_more_than_size_plus_probe(tmp_path: Path) -> None:
    layout = OCILayout.open(tmp_path / "L")
    data = b"x" * 1000
    source = io.BytesIO(data + b"y" * 10_000_000)
    with layout.lock(), pytest.raises(SizeMismatchError, match="more than"):
        layout.ingest(blob(data), source)
    assert source.tell() == 1001


@pytest.mark.parametrize("digest", ["sha256:../../x", "sha256:" + "A" * 64, "sha256:" + "a" * 63, "md5:abc"])
def test_bad_digest_refused_before_any_path(tmp_path: Path, digest: str) -> None:
    layout = OCILayout.open(tmp_path / "L")
    with pytest.raises((InvalidDigestError, ValueError)):
        layout.blob_path(digest)
    with pytest.raises((InvalidDigestError, ValueError)):
        Descriptor(OCI_LAYER_TAR, digest, 1)


def test_partial_download_resumes(tmp_path: Path) -> None:
    """The layout's resumable writer keeps what arrived; the next writer of the blob continues it."""
    layout = OCILayout.open(tmp_path / "L")
    data = os.urandom(200_000)
    desc = blob(data)
    with layout.lock(), layout.partial_writer(desc) as writer:
        writer.write(data[:120_000])  # then the link drops: the writer is closed, not committed
    assert layout.partial_size(desc) == 120_000
    assert layout.partial_path(desc).parent.name == "ingest"
    with layout.lock():  # taking the lock again keeps the (fresh) partial
        assert layout.partial_size(desc) == 120_000
        with layout.partial_writer(desc) as writer:
            assert writer.offset == 120_000  # re-hashed, continued at its end
            writer.write(data[120_000:])
            layout.store(writer)
    assert layout.has_blob(desc)
    assert not layout.partial_path(desc).exists()
    assert not layout.partial_path(desc).with_name(layout.partial_path(desc).name + ".meta").exists()
    # a resume whose content is wrong is refused and the partial dropped
    other = os.urandom(1000)
    odesc = blob(other)
    with layout.lock():
        with layout.partial_writer(odesc) as writer:
            writer.write(b"z" * 400)
        with layout.partial_writer(odesc) as writer, pytest.raises(DigestMismatchError):
            writer.write(other[400:])
            layout.store(writer)
    assert not layout.partial_path(odesc).exists()
    assert not layout.blob_path(odesc.digest).exists()


def test_existing_blob_checked_once_and_corrupt_one_replaced(tmp_path: Path) -> None:
    layout = OCILayout.open(tmp_path / "L")
    data = b"payload" * 100
    desc = blob(data)
    with layout.lock():
        path = layout.ingest_bytes(desc, data)
    path.chmod(0o644)
    path.write_bytes(b"rotten" + data[6:])  # same size, other bytes
    layout2 = OCILayout.open(tmp_path / "L")
    with layout2.lock():
        assert not layout2.has_blob(desc)
        layout2.ingest_bytes(desc, data)
        assert path.read_bytes() == data


def test_commit_replaces_same_tag_and_records_annotations(tmp_path: Path) -> None:
    layout = OCILayout.open(tmp_path / "L")
    m1 = store_image(layout, b"one", "v1")
    m2 = store_image(layout, b"two", "v1")
    m3 = store_image(layout, b"three", "v2")
    store_image(layout, b"other", "v1", repo="registry.example:5000/team/other")
    images = layout.images()
    assert [(i.repository, i.tag, i.descriptor.digest) for i in images[:2]] == [(REPO, "v1", m2.digest), (REPO, "v2", m3.digest)]
    assert m1.digest not in {i.descriptor.digest for i in images}
    entry = json.loads((tmp_path / "L" / "index.json").read_text())["manifests"][0]
    assert entry["annotations"][ANNOTATION_REF_NAME] == "registry.example_5000/team/app/v1"
    assert entry["annotations"][ANNOTATION_SOURCE_REPOSITORY] == REPO
    assert entry["annotations"][ANNOTATION_SOURCE_DIGEST] == m2.digest
    assert layout.find_image(REPO).descriptor.digest == m3.digest  # type: ignore[union-attr]
    assert layout.find_image(REPO, "v1").descriptor.digest == m2.digest  # type: ignore[union-attr]
    assert layout.find_image("x/y") is None
    assert layout_problems(tmp_path / "L") == []
    assert len(verify_layout(layout)) == 3


def test_commit_refuses_missing_blobs_and_needs_the_lock(tmp_path: Path) -> None:
    layout = OCILayout.open(tmp_path / "L")
    layer = blob(b"never stored")
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": blob(b"{}").to_json(), "layers": [layer.to_json()]}).encode()
    manifest = blob(body, OCI_MANIFEST)
    with pytest.raises(LayoutError, match="lock"):
        layout.ingest_bytes(manifest, body)
    with layout.lock():
        layout.ingest_bytes(manifest, body)
        with pytest.raises(CorruptLayoutError, match="missing"):
            layout.commit_image(manifest, repository=REPO, tag="v1")
    assert layout.images() == []


def test_leftovers_cleaned_when_the_lock_is_taken(tmp_path: Path) -> None:
    layout = OCILayout.open(tmp_path / "L")
    desc = store_image(layout, b"done", "v1")
    ingest = tmp_path / "L" / "ingest"
    (ingest / "write-abc.tmp").write_bytes(b"half an index")
    done_partial = ingest / f"sha256-{blob(b'done').hex}.partial"
    done_partial.write_bytes(b"do")
    stale = ingest / f"sha256-{'b' * 64}.partial"
    stale.write_bytes(b"old")
    os.utime(stale, (time.time() - 30 * 86400,) * 2)
    fresh = ingest / f"sha256-{'c' * 64}.partial"
    fresh.write_bytes(b"new")
    (ingest / "sha256-XYZ.partial").write_bytes(b"not a digest")
    with layout.lock():
        pass
    assert sorted(p.name for p in ingest.iterdir()) == sorted(["lock", fresh.name])
    assert layout.find_image(REPO, "v1").descriptor == Descriptor(  # type: ignore[union-attr]
        desc.media_type, desc.digest, desc.size, annotations=layout.find_image(REPO, "v1").descriptor.annotations  # type: ignore[union-attr]
    )


class FakeClock:
    """The lock's clock and sleep: every sleep advances the clock by exactly what was asked, at once."""

    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


@pytest.fixture
def held_layout(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """A layout whose lock another process holds until it reads a line on its stdin."""
    OCILayout.open(tmp_path / "L")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from doras_oras.layout import OCILayout\n"
         f"L=OCILayout.open({str(tmp_path / 'L')!r})\n"
         "with L.lock():\n print('held', flush=True); sys.stdin.readline()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield tmp_path / "L" / "ingest" / LOCK_FILE, holder
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_lock_held_by_another_process_waits_its_timeout_then_refuses(
        held_layout: tuple[Path, subprocess.Popen[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    path, _holder = held_layout
    clock = FakeClock()
    monkeypatch.setattr(lock_module, "time", clock)
    lock = LayoutLock(path, what="L", sleep=clock.sleep)
    with pytest.raises(LayoutLockedError, match="locked"):
        lock.acquire(timeout=0.5)
    assert sum(clock.sleeps) == pytest.approx(0.5)  # it waited its whole timeout, no more
    assert len(clock.sleeps) > 1 and max(clock.sleeps) <= 0.2  # polling, not one long sleep


def test_lock_held_by_another_process_is_granted_once_the_holder_lets_go(
        held_layout: tuple[Path, subprocess.Popen[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    path, holder = held_layout
    clock = FakeClock()
    monkeypatch.setattr(lock_module, "time", clock)

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if len(clock.sleeps) == 3:  # the holder lets go after the waiter's third poll
            assert holder.stdin is not None
            holder.stdin.write("go\n")
            holder.stdin.flush()
            assert holder.wait(timeout=10) == 0

    lock = LayoutLock(path, what="L", sleep=sleep)
    assert lock.acquire(timeout=20)
    try:
        assert len(clock.sleeps) == 3  # refused while held, granted at the first poll after
    finally:
        lock.release()


def test_corrupt_index_reported_and_rebuilt(tmp_path: Path) -> None:
    layout = OCILayout.open(tmp_path / "L")
    m1 = store_image(layout, b"one", "v1")
    m2 = store_image(layout, b"two", "v2")
    index = tmp_path / "L" / "index.json"
    for damage in (b'{"schemaVersion": 2, "manifests": [', b'{"schemaVersion": 2, "manifests": [{"digest": 1}]}', b""):
        index.write_bytes(damage)
        with pytest.raises(CorruptLayoutError, match=r"index\.json"):
            layout.images()
    # a lost layer makes its image unrecoverable; the other one comes back
    (tmp_path / "L" / "blobs" / "sha256" / blob(b"one").hex).unlink()
    with layout.lock():
        recovered = rebuild_index(layout)
    assert [r.descriptor.digest for r in recovered] == [m2.digest]
    assert recovered[0].tag == f"recovered-{m2.hex[:12]}"
    assert m1.digest not in {r.descriptor.digest for r in recovered}
    assert layout_problems(tmp_path / "L") == []


def test_gc_keeps_newest_per_repository(tmp_path: Path) -> None:
    layout = OCILayout.open(tmp_path / "L")
    for n in range(4):
        store_image(layout, f"app-{n}".encode(), f"v{n}")
    store_image(layout, b"lib-0", "v0", repo="r.example/lib")
    before = {p.name for p in (tmp_path / "L" / "blobs" / "sha256").iterdir()}
    with layout.lock():
        result = gc(layout, keep=2)
    assert sorted(i.tag for i in result.removed_images if i.tag) == ["v0", "v1"]
    left = [(i.repository, i.tag) for i in layout.images()]
    assert left == [(REPO, "v2"), (REPO, "v3"), ("r.example/lib", "v0")]
    after = {p.name for p in (tmp_path / "L" / "blobs" / "sha256").iterdir()}
    assert before - after == {d.split(":")[1] for d in result.removed_blobs}
    assert len(result.removed_blobs) == 4  # two layers + two manifests; the shared config stays
    assert result.freed_bytes > 0
    assert layout_problems(tmp_path / "L") == []


def test_a_rewritten_manifest_records_the_registry_digest(tmp_path: Path) -> None:
    layout = OCILayout.open(tmp_path / "L")
    gz = b"\x1f\x8b compressed"
    config = blob(b"{}", "application/vnd.oci.empty.v1+json")
    original = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.to_json(),
        "layers": [Descriptor(OCI_LAYER_TAR_GZIP, sha256(gz), len(gz),
                              annotations={"io.deis.oras.content.unpack": "true",
                                           "org.opencontainers.image.title": "dir"}).to_json()],
    }, indent=2).encode()
    tar = b"uncompressed tar bytes"
    with layout.lock():
        layout.ingest_bytes(config, b"{}")
        layout.ingest_bytes(blob(tar), tar)
        with pytest.raises(DigestMismatchError):
            layout.store_rewritten(original, 0, blob(tar), source_digest=sha256(b"x"))
        manifest = layout.store_rewritten(original, 0, blob(tar), source_digest=sha256(original))
        image = layout.commit_image(manifest, repository=REPO, tag="v1", source_digest=sha256(original))
    assert image.rewritten and image.source_digest == sha256(original)
    stored = json.loads(layout.read_blob(image.descriptor))
    assert stored["layers"][0]["mediaType"] == OCI_LAYER_TAR
    assert stored["layers"][0]["digest"] == sha256(tar)
    assert stored["layers"][0]["annotations"]["io.deis.oras.content.unpack"] == "true"
    assert layout_problems(tmp_path / "L") == []
