"""``extract_image`` refuses names that would land outside the output directory, and writes nothing then."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from doras_oras.descriptor import Descriptor
from doras_oras.extract import ExtractError, extract_image
from doras_oras.layout import OCILayout
from doras_oras.pull import pull_delta
from doras_oras.registry_client import RegistryClient
from doras_oras.testing.registry import RegistryServer, find_tool
from tests.layout_support import cli, error_json, run, sha256
from tests.pull_support import oras_push_file, payload, unique

EMPTY = {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(b"{}"), "size": 2}


def store(layout: OCILayout, layers: list[tuple[bytes, dict[str, str], str]]) -> Descriptor:
    """Store an artifact with these ``(blob, annotations, media type)`` layers; return its manifest."""
    with layout.lock():
        layout.ingest_bytes(Descriptor.from_json(EMPTY), b"{}")
        items = []
        for data, annotations, media_type in layers:
            item = {"mediaType": media_type, "digest": sha256(data), "size": len(data), "annotations": annotations}
            layout.ingest_bytes(Descriptor.from_json(item), data)
            items.append(item)
        body = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "artifactType": "application/vnd.test", "config": EMPTY, "layers": items}).encode()
        manifest = Descriptor("application/vnd.oci.image.manifest.v1+json", sha256(body), len(body))
        layout.ingest_bytes(manifest, body)
        layout.commit_image(manifest, repository="example.test/art", tag="v1")
    return manifest


def tar_of(members: list[tarfile.TarInfo], contents: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info in members:
            data = contents.get(info.name)
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return gzip.compress(buffer.getvalue(), mtime=0)


@pytest.mark.parametrize("title", ["../escape.txt", "/etc/escape.txt", "a/../../escape.txt", "~/escape.txt"])
def test_titles_outside_the_directory_are_refused(tmp_path: Path, title: str) -> None:
    layout = OCILayout.open(tmp_path / "L")
    manifest = store(layout, [(b"payload\n", {"org.opencontainers.image.title": title},
                               "application/vnd.oci.image.layer.v1.tar")])
    out = tmp_path / "out" / "inner"
    with pytest.raises(ExtractError, match="refusing to write layer title"):
        extract_image(layout, manifest, out)
    assert not (tmp_path / "out" / "escape.txt").exists()
    assert not out.exists()  # refused before the output directory was made


def test_tar_members_escaping_are_refused(tmp_path: Path) -> None:
    evil = tarfile.TarInfo("dir/../../escape.txt")
    link = tarfile.TarInfo("dir/passwd")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    for members in ([evil], [link]):
        layout = OCILayout.open(tmp_path / f"L{len(members[0].name)}")
        blob = tar_of(members, {"dir/../../escape.txt": b"x"})
        manifest = store(layout, [(blob, {"org.opencontainers.image.title": "dir",
                                          "io.deis.oras.content.unpack": "true"},
                                   "application/vnd.oci.image.layer.v1.tar+gzip")])
        out = tmp_path / "out" / "inner"
        with pytest.raises(ExtractError, match="cannot unpack"):
            extract_image(layout, manifest, out)
        assert not (tmp_path / "out" / "escape.txt").exists()
        assert not out.exists()  # the staging directory is gone, and the directory this call made


def test_files_and_directories_are_written(tmp_path: Path) -> None:
    layout = OCILayout.open(tmp_path / "L")
    tree = tar_of([tarfile.TarInfo("dir/a.txt"), tarfile.TarInfo("dir/sub/b.txt")],
                  {"dir/a.txt": b"a\n", "dir/sub/b.txt": b"b\n"})
    manifest = store(layout, [
        (b"plain file\n", {"org.opencontainers.image.title": "file.txt"}, "application/vnd.oci.image.layer.v1.tar"),
        (tree, {"org.opencontainers.image.title": "dir", "io.deis.oras.content.unpack": "true"},
         "application/vnd.oci.image.layer.v1.tar+gzip"),
        (b"untitled", {}, "application/vnd.oci.image.layer.v1.tar"),
    ])
    out = tmp_path / "out"
    written = extract_image(layout, manifest, out)
    assert written == [out / "file.txt", out / "dir"]
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "dir/a.txt", "dir/sub/b.txt", "file.txt"]
    assert (out / "file.txt").read_bytes() == b"plain file\n"
    assert (out / "dir" / "sub" / "b.txt").read_bytes() == b"b\n"


@pytest.mark.parametrize("second", ["escaping tar member", "escaping title"])
def test_a_failing_layer_leaves_the_directory_as_it_was(tmp_path: Path, second: str) -> None:
    layout = OCILayout.open(tmp_path / "L")
    if second == "escaping tar member":
        bad = (tar_of([tarfile.TarInfo("dir/../../escape.txt")], {"dir/../../escape.txt": b"x"}),
               {"org.opencontainers.image.title": "dir", "io.deis.oras.content.unpack": "true"},
               "application/vnd.oci.image.layer.v1.tar+gzip")
    else:
        bad = (b"evil\n", {"org.opencontainers.image.title": "../escape.txt"}, "application/vnd.oci.image.layer.v1.tar")
    manifest = store(layout, [
        (b"new version\n", {"org.opencontainers.image.title": "file.txt"}, "application/vnd.oci.image.layer.v1.tar"),
        bad,
    ])
    out = tmp_path / "out"
    out.mkdir()
    (out / "file.txt").write_bytes(b"old version\n")
    (out / "keep.txt").write_bytes(b"mine\n")
    with pytest.raises(ExtractError):
        extract_image(layout, manifest, out)
    # the first layer was staged but not placed: the directory is exactly as before
    assert sorted(p.name for p in out.iterdir()) == ["file.txt", "keep.txt"]
    assert (out / "file.txt").read_bytes() == b"old version\n"
    assert not (tmp_path / "escape.txt").exists()


def test_later_layers_replace_earlier_ones_and_siblings_stay(tmp_path: Path) -> None:
    layout = OCILayout.open(tmp_path / "L")
    tree = tar_of([tarfile.TarInfo("conf/app.ini")], {"conf/app.ini": b"from the tree\n"})
    manifest = store(layout, [
        (b"from a file layer\n", {"org.opencontainers.image.title": "conf/app.ini"},
         "application/vnd.oci.image.layer.v1.tar"),
        (b"nested\n", {"org.opencontainers.image.title": "docs/readme.txt"}, "application/vnd.oci.image.layer.v1.tar"),
        (tree, {"org.opencontainers.image.title": "conf", "io.deis.oras.content.unpack": "true"},
         "application/vnd.oci.image.layer.v1.tar+gzip"),
    ])
    out = tmp_path / "out"
    (out / "docs").mkdir(parents=True)
    (out / "docs" / "other.txt").write_bytes(b"kept\n")
    extract_image(layout, manifest, out)
    assert (out / "conf" / "app.ini").read_bytes() == b"from the tree\n"  # the later layer wins
    assert (out / "docs" / "readme.txt").read_bytes() == b"nested\n"
    assert (out / "docs" / "other.txt").read_bytes() == b"kept\n"  # a file layer replaces only its file
    assert sorted(p.name for p in out.iterdir()) == ["conf", "docs"]  # no staging left


def test_a_later_layer_replaces_a_file_or_link_where_it_needs_a_directory(tmp_path: Path) -> None:
    layout = OCILayout.open(tmp_path / "L")
    tar = "application/vnd.oci.image.layer.v1.tar"
    manifest = store(layout, [
        (b"first\n", {"org.opencontainers.image.title": "a"}, tar),
        (b"second\n", {"org.opencontainers.image.title": "a/b"}, tar),
        (b"third\n", {"org.opencontainers.image.title": "link/c"}, tar),
    ])
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "link").symlink_to(outside)  # left by someone else: never written through
    extract_image(layout, manifest, out)
    assert (out / "a" / "b").read_bytes() == b"second\n"
    assert not (out / "link").is_symlink() and (out / "link" / "c").read_bytes() == b"third\n"
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in out.iterdir()) == ["a", "link"]  # no staging directory left


TAR = "application/vnd.oci.image.layer.v1.tar"
TITLE = "org.opencontainers.image.title"


def contents(root: Path) -> dict[str, bytes | str | None]:
    """Everything below ``root``: a file's bytes, a link's target (as text), a directory as None."""
    found: dict[str, bytes | str | None] = {}
    if not root.exists():
        return found
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        found[name] = str(path.readlink()) if path.is_symlink() else None if path.is_dir() else path.read_bytes()
    return found


@pytest.mark.parametrize("title", [".", "./", "./.", "a/..", "a/./b", "a/", "a//b", "."*3 + "/../.."])
def test_a_title_that_is_not_strictly_inside_is_refused_and_nothing_is_lost(tmp_path: Path, title: str) -> None:
    """``.`` once made the output directory itself the target: it was removed, the user's files with it."""
    layout = OCILayout.open(tmp_path / "L")
    manifest = store(layout, [(b"payload\n", {TITLE: title}, TAR)])
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "mine.txt").write_bytes(b"the user's\n")
    (out / "sub" / "b").write_bytes(b"also the user's\n")
    before = contents(out)
    with pytest.raises(ExtractError, match="refusing to write layer title"):
        extract_image(layout, manifest, out)
    assert contents(out) == before


def test_a_tar_bomb_is_refused_at_the_bound(tmp_path: Path) -> None:
    """A few KiB of zstd that unpack to 4 MiB, with a bound of 256 KiB: refused, nothing written."""
    import zstandard

    from doras_oras.errors import ArtifactTooLargeError

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("dir/zeros.bin")
        info.size = 4 << 20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    bomb = zstandard.ZstdCompressor(level=19).compress(raw.getvalue())
    assert len(bomb) < 8 << 10
    layout = OCILayout.open(tmp_path / "L")
    manifest = store(layout, [(bomb, {TITLE: "dir", "io.deis.oras.content.unpack": "true"},
                               "application/vnd.oci.image.layer.v1.tar+zstd")])
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_bytes(b"the user's\n")
    with pytest.raises(ArtifactTooLargeError, match="limit of 262144 bytes"):
        extract_image(layout, manifest, out, max_bytes=256 << 10)
    assert contents(out) == {"mine.txt": b"the user's\n"}
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]  # the staging directory is gone


# --- every title, any mix of layers: the output directory is the new content or as it was ---

SPECIAL_TITLES = [".", "./", "..", "./.", "a/../..", "a/./b", "a/", "b/", "a//b", "", "\0", "a\0b", "\ud800",
                  "x" * 256, "/".join(["y" * 200] * 25), "a", "b", "a/b", "a/b/c", "t", "u", ".extract-x", "~a",
                  "/abs", " ", "é/ü", "-", "a b"]
TAR_MEMBERS = ["t/x", "t/y", "u", "a/b"]


def _place_in_model(state: dict[str, bytes | None], final: str, entries: dict[str, bytes | None]) -> None:
    """What ``_place`` does: files or links on the way become directories, ``final`` is replaced."""
    parts = final.split("/")
    for depth in range(1, len(parts)):
        state["/".join(parts[:depth])] = None
    for name in [n for n in state if n == final or n.startswith(final + "/")]:
        del state[name]
    state.update(entries)


def _model(before: dict[str, bytes | None], layers: list[tuple[str, bool, bytes, list[str]]]) -> dict[str, object]:
    state = dict(before)
    for title, unpack, data, members in layers:
        if not title:
            continue
        if not unpack:
            _place_in_model(state, title, {title: data})
            continue
        for top in sorted({m.split("/")[0] for m in members}):
            entries: dict[str, bytes | None] = {}
            for member in members:
                if member.split("/")[0] == top:
                    parts = member.split("/")
                    entries.update({"/".join(parts[:d]): None for d in range(1, len(parts))})
                    entries[member] = member.encode() + data
            _place_in_model(state, top, entries)
    return dict(sorted(state.items()))


titles = st.one_of(st.sampled_from(SPECIAL_TITLES), st.text(max_size=12),
                   st.lists(st.sampled_from(["a", "b", ".", "..", ""]), min_size=1, max_size=3).map("/".join))
layer_specs = st.lists(st.tuples(titles, st.booleans(), st.binary(max_size=8),
                                 st.lists(st.sampled_from(TAR_MEMBERS), min_size=1, max_size=3, unique=True)),
                       min_size=1, max_size=3)


@settings(max_examples=150, deadline=None)
@given(specs=layer_specs)
def test_any_titles_leave_the_new_content_or_the_old(specs: list[tuple[str, bool, bytes, list[str]]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        layout = OCILayout.open(root / "L")
        layers = []
        for title, unpack, data, members in specs:
            annotations = {TITLE: title}
            if unpack:
                annotations["io.deis.oras.content.unpack"] = "true"
                infos = [tarfile.TarInfo(m) for m in members]
                layers.append((tar_of(infos, {m: m.encode() + data for m in members}), annotations,
                               "application/vnd.oci.image.layer.v1.tar+gzip"))
            else:
                layers.append((data, annotations, TAR))
        manifest = store(layout, layers)
        out = root / "out"
        (out / "a").mkdir(parents=True)
        (out / "a" / "old").write_bytes(b"the user's\n")
        (out / "mine.txt").write_bytes(b"the user's too\n")
        before = contents(out)
        try:
            extract_image(layout, manifest, out)
        except ExtractError:
            assert contents(out) == before
        else:
            assert contents(out) == _model(before, specs)  # type: ignore[arg-type]


def test_the_command_refuses_a_dot_title_and_keeps_the_output_directory(oci_registry: RegistryServer,
                                                                        tmp_path: Path) -> None:
    """The reported case: ``pull --output OUT`` of a layer titled ``.`` removed OUT, the user's files with it."""
    made = OCILayout.open(tmp_path / "made")
    store(made, [(b"payload\n", {TITLE: "."}, TAR)])
    ref = f"{oci_registry.host}/extract/dot:v1"
    run(find_tool("oras"), "copy", "--to-plain-http", "--from-oci-layout", f"{tmp_path / 'made'}:example.test/art/v1", ref)
    out = tmp_path / "devout"
    out.mkdir()
    (out / "unrelated.txt").write_bytes(b"the user's\n")
    proc = cli("pull", ref, "--oci-layout", str(tmp_path / "L"), "--plain-http", "--output", str(out), "--json")
    assert proc.returncode == 1, proc.stderr
    assert "refusing to write layer title '.'" in error_json(proc)["message"]
    assert contents(out) == {"unrelated.txt": b"the user's\n"}


@pytest.mark.parametrize("refresh", [True, False])
def test_an_up_to_date_pull_rewrites_the_output_unless_told_not_to(oci_registry: RegistryServer, tmp_path: Path,
                                                                   refresh: bool) -> None:
    """``refresh_output`` (default True) writes the files of an image the layout already holds again;
    False leaves the directory alone until the image changes (what ``watch`` passes after its first poll)."""
    repo = unique("extract/refresh")
    oras_push_file(oci_registry.host, f"{repo}:v1", tmp_path / "p", "fw.bin", payload(2000, 7))
    client, ref, layout, out = RegistryClient(plain_http=True), f"{oci_registry.host}/{repo}:v1", tmp_path / "L", tmp_path / "out"
    assert pull_delta(client, ref, layout, doras_url=None, output_dir=out).status == "full"
    (out / "fw.bin").unlink()
    result = pull_delta(client, ref, layout, doras_url=None, output_dir=out, refresh_output=refresh)
    assert result.status == "up-to-date"
    assert (out / "fw.bin").exists() is refresh
    assert (result.output is not None) is refresh
