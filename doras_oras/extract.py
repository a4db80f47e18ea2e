"""Write the files of a stored image to a directory, as ``oras pull`` does.

Each layer with an ``org.opencontainers.image.title`` annotation becomes a
file of that name; a layer marked ``io.deis.oras.content.unpack: "true"`` is
a tar (gzip, zstd or plain) unpacked into the directory. Names are checked
first: absolute paths, ``..`` and anything that would land outside the
directory are refused (``tarfile``'s ``data`` filter also refuses links that
point outside, device files and setuid bits). All or nothing: every layer is
first written into a staging directory inside the output directory; only when
all of them are there are they renamed into place, in layer order (a later
layer replaces what an earlier one wrote under the same name, and a file or
link standing where a later layer needs a directory). A layer that fails
(an unsafe name, a broken tar, a full disk while staging) leaves the output
directory as it was, and a reader never sees half a file; only an I/O error
during the renames themselves can leave it partly updated (an
:class:`ExtractError` says so). Nothing is written through a link that
already stands in the output directory. The price of all or nothing: while
extracting, the disk holds the old files and all the new ones.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from .algorithms import Compression
from .codecs import open_decompressed
from .descriptor import ANNOTATION_TITLE, ANNOTATION_UNPACK, Descriptor
from .errors import ExtractError
from .layout import OCILayout

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def safe_name(title: str) -> PurePosixPath:
    """``title`` as a relative path that stays inside the output directory."""
    path = PurePosixPath(title)
    if not title or path.is_absolute() or ".." in path.parts or "\0" in title or title.startswith("~"):
        raise ExtractError(f"refusing to write layer title {title[:200]!r}: not a plain relative path")
    return path


class _ReadAdapter(io.RawIOBase):
    """A ``read(n)`` source as a file object for ``tarfile``."""

    def __init__(self, source: object) -> None:
        super().__init__()
        self._source = source

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data: bytes = self._source.read(len(buffer))  # type: ignore[attr-defined]
        buffer[: len(data)] = data
        return len(data)


@contextlib.contextmanager
def _layer_stream(layout: OCILayout, layer: Descriptor) -> Iterator[BinaryIO]:
    with layout.open_blob(layer) as raw:
        head = raw.peek(8)[:8] if hasattr(raw, "peek") else b""
        compression = Compression.detect(head)
        if compression is Compression.NONE:
            yield raw
        else:
            reader = open_decompressed(raw, compression, what=f"layer {layer.digest}")
            yield io.BufferedReader(_ReadAdapter(reader), buffer_size=_CHUNK)


def extract_image(layout: OCILayout, manifest: Descriptor, output_dir: str | os.PathLike[str]) -> list[Path]:
    """Write the titled layers of the stored ``manifest`` to ``output_dir``; return what was written.

    :class:`ExtractError` when ``output_dir`` is not a directory or cannot be written.
    """
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ExtractError(f"cannot write the files to {out}: not a directory")
    try:
        return _extract(layout, manifest, out)
    except OSError as exc:  # named by the output directory, not by a staging file inside it
        raise ExtractError(f"cannot write the files to {out}: {exc.strerror or exc}") from exc


def _extract(layout: OCILayout, manifest: Descriptor, out: Path) -> list[Path]:
    import json

    out.mkdir(parents=True, exist_ok=True)
    document = json.loads(layout.read_blob(manifest))
    written: list[Path] = []
    moves: list[tuple[Path, Path]] = []
    with tempfile.TemporaryDirectory(prefix=".extract-", dir=out) as tmp:
        staging = Path(tmp)
        for number, item in enumerate(document.get("layers", [])):
            layer = Descriptor.from_json(item)
            title = layer.annotations.get(ANNOTATION_TITLE)
            if not title:
                log.info("layer %s has no title: not written", layer.digest)
                continue
            name = safe_name(title)
            layer_dir = staging / str(number)
            layer_dir.mkdir()
            if layer.annotations.get(ANNOTATION_UNPACK) == "true":
                _unpack(layout, layer, layer_dir, name)
                moves += [(entry, out / entry.name) for entry in sorted(layer_dir.iterdir())]
            else:
                staged = layer_dir / "file"
                _write_file(layout, layer, staged)
                moves.append((staged, out / name))
            written.append(out / name)
        for source, final in moves:  # every layer is staged: put them in place
            try:
                _place(source, final, out)
            except OSError as exc:
                raise ExtractError(f"cannot put {final} in place ({exc}); {out} may be partly updated") from exc
    return written


def _place(source: Path, final: Path, root: Path) -> None:
    """Rename ``source`` to ``final`` (below ``root``), replacing what stands in the way."""
    parent = root
    for part in final.relative_to(root).parts[:-1]:
        parent = parent / part
        if parent.is_symlink() or (parent.exists() and not parent.is_dir()):
            parent.unlink()  # a later layer wins, and nothing is written through a link
        parent.mkdir(exist_ok=True)
    if final.is_dir() and not final.is_symlink():
        shutil.rmtree(final)
    elif final.exists() or final.is_symlink():
        final.unlink()
    os.replace(source, final)


def _write_file(layout: OCILayout, layer: Descriptor, target: Path) -> None:
    with open(target, "wb") as fh, layout.open_blob(layer) as blob:
        shutil.copyfileobj(blob, fh, _CHUNK)
    os.chmod(target, 0o644)


def _unpack(layout: OCILayout, layer: Descriptor, into: Path, name: PurePosixPath) -> None:
    with _layer_stream(layout, layer) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        try:
            tar.extractall(into, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise ExtractError(f"cannot unpack layer {layer.digest} ({name}): {exc}") from exc
