"""Write the files of a stored image to a directory, as ``oras pull`` does.

Each layer with an ``org.opencontainers.image.title`` annotation becomes a
file of that name; a layer marked ``io.deis.oras.content.unpack: "true"`` is
a tar (gzip, zstd or plain) unpacked into the directory. The titles of all
layers are checked before anything is written: each must name a path strictly
inside the directory (:func:`safe_name`: no absolute path, no empty, ``.`` or
``..`` component, nothing the file system cannot hold); ``tarfile``'s ``data``
filter refuses tar members that would land outside, links that point
outside, device files and setuid bits. ``max_bytes`` bounds what is written,
the unpacked bytes of a compressed tar included. All or nothing: every layer is
first written into a staging directory inside the output directory; only when
all of them are there are they renamed into place, in layer order (a later
layer replaces what an earlier one wrote under the same name, and a file or
link standing where a later layer needs a directory). A layer that fails
(an unsafe name, a broken tar, the bound passed, a full disk while staging)
leaves the output directory as it was (one this call created is removed again), and a reader never sees half a file; only an I/O error
during the renames themselves can leave it partly updated (an
:class:`ExtractError` says so). Nothing is written through a link that
already stands in the output directory. The price of all or nothing: while
extracting, the disk holds the old files and all the new ones.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from .algorithms import Compression
from .budget import check_free_space
from .codecs import open_decompressed
from .descriptor import ANNOTATION_TITLE, ANNOTATION_UNPACK, Descriptor
from .errors import ArtifactTooLargeError, CodecError, ExtractError, Fix
from .layout import OCILayout

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


_NAME_MAX = 255
"""Bytes in one component of a path (Linux ``NAME_MAX``)."""
_PATH_MAX = 4095
"""Bytes in a whole path (Linux ``PATH_MAX`` less its NUL)."""
_STAGING_PREFIX = ".extract-"


def safe_name(title: str) -> PurePosixPath:
    """``title`` as a relative path that names something strictly inside the output directory.

    :class:`ExtractError` for anything else: an empty title, an absolute path, a
    component that is empty (``a//b``, a trailing ``/``), ``.`` or ``..``; a NUL; a
    leading ``~``; text that is not valid UTF-8 (a lone surrogate); a component over
    255 bytes or a title over 4095; a first component that starts as the staging
    directory does (``.extract-``).
    """
    parts = title.split("/")
    problem = None
    if not title or title.startswith(("/", "~")):
        problem = "not a plain relative path"
    elif any(part in ("", ".", "..") for part in parts):
        problem = "not a plain relative path (an empty, '.' or '..' component)"
    elif "\0" in title:
        problem = "it holds a NUL"
    elif not _utf8(title):
        problem = "not valid UTF-8"
    elif len(title.encode()) > _PATH_MAX or any(len(part.encode()) > _NAME_MAX for part in parts):
        problem = f"too long (a name over {_NAME_MAX} bytes or a path over {_PATH_MAX})"
    elif parts[0].startswith(_STAGING_PREFIX):
        problem = f"its first name starts with {_STAGING_PREFIX!r}, reserved for staging"
    if problem is not None:
        raise ExtractError(f"refusing to write layer title {title[:200]!r}: {problem}")
    return PurePosixPath(title)


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


class _Allowance:
    """What may still be written to the output directory (``None``: no bound)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int, what: str) -> None:
        self.used += size
        if self.limit is not None and self.used > self.limit:
            raise ArtifactTooLargeError(
                f"{what}: the files written would exceed the limit of {self.limit} bytes", fix=Fix.MAX_SIZE)


class _ReadAdapter(io.RawIOBase):
    """A ``read(n)`` source as a file object for ``tarfile``, counting what it gives against ``allowance``."""

    def __init__(self, source: object, allowance: _Allowance, what: str) -> None:
        super().__init__()
        self._source = source
        self._allowance = allowance
        self._what = what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data: bytes = self._source.read(len(buffer))  # type: ignore[attr-defined]
        self._allowance.take(len(data), self._what)
        buffer[: len(data)] = data
        return len(data)


@contextlib.contextmanager
def _layer_stream(layout: OCILayout, layer: Descriptor, allowance: _Allowance) -> Iterator[BinaryIO]:
    """The layer's tar, decompressed; every byte read counts against ``allowance``."""
    what = f"layer {layer.digest} unpacked"
    with layout.open_blob(layer) as raw:
        head = raw.peek(8)[:8] if hasattr(raw, "peek") else b""
        compression = Compression.detect(head)
        source = raw if compression is Compression.NONE else open_decompressed(
            raw, compression, what=f"layer {layer.digest}")
        yield io.BufferedReader(_ReadAdapter(source, allowance, what), buffer_size=_CHUNK)


def output_needs(layers: Sequence[Descriptor], output_dir: Path) -> list[tuple[Path, int]]:
    """What writing the titled ``layers`` takes on the file system of ``output_dir``, at least
    (:func:`~doras_oras.budget.check_free_space`): a file layer its size, an unpacked one its
    compressed size (what it unpacks to is known only while unpacking, bounded by ``max_bytes``)."""
    return [(output_dir, layer.size) for layer in layers if layer.annotations.get(ANNOTATION_TITLE)]


def extract_image(layout: OCILayout, manifest: Descriptor, output_dir: str | os.PathLike[str], *,
                  max_bytes: int | None = None) -> list[Path]:
    """Write the titled layers of the stored ``manifest`` to ``output_dir``; return what was written.

    :class:`ExtractError` when ``output_dir`` is not a directory or cannot be written, or a
    title is unsafe (:func:`safe_name`; checked for every layer before anything is written).
    ``max_bytes``: at most this many bytes written, counting a file layer by its size and
    an unpacked layer by its uncompressed tar; :class:`ArtifactTooLargeError` (nothing
    written) as soon as it is passed.
    """
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ExtractError(f"cannot write the files to {out}: not a directory")
    document = json.loads(layout.read_blob(manifest))
    layers = [(number, Descriptor.from_json(item)) for number, item in enumerate(document.get("layers", []))]
    named: list[tuple[int, Descriptor, PurePosixPath]] = []
    for number, layer in layers:
        title = layer.annotations.get(ANNOTATION_TITLE)
        if not title:
            log.info("layer %s has no title: not written", layer.digest)
            continue
        name = safe_name(title)
        if len(os.fsencode(out / name)) > _PATH_MAX:
            raise ExtractError(f"refusing to write layer title {title[:200]!r}: {out / name} would be too long")
        named.append((number, layer, name))
    check_free_space(output_needs([layer for _n, layer, _name in named], out), what=f"writing the files to {out}")
    created = not out.exists()
    try:
        try:
            return _extract(layout, named, out, _Allowance(max_bytes))
        except OSError as exc:  # named by the output directory, not by a staging file inside it
            raise ExtractError(f"cannot write the files to {out}: {exc.strerror or exc}") from exc
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only when empty: nothing was placed
        raise


def _extract(layout: OCILayout, named: list[tuple[int, Descriptor, PurePosixPath]], out: Path,
             allowance: _Allowance) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    moves: list[tuple[Path, Path]] = []
    with tempfile.TemporaryDirectory(prefix=_STAGING_PREFIX, dir=out) as tmp:
        staging = Path(tmp)
        for number, layer, name in named:
            layer_dir = staging / str(number)
            layer_dir.mkdir()
            if layer.annotations.get(ANNOTATION_UNPACK) == "true":
                _unpack(layout, layer, layer_dir, name, allowance)
                moves += [(entry, out / entry.name) for entry in sorted(layer_dir.iterdir())]
            else:
                allowance.take(layer.size, f"layer {layer.digest} ({name})")
                staged = layer_dir / "file"
                _write_file(layout, layer, staged)
                moves.append((staged, out / name))
            written.append(out / name)
        for _source, final in moves:  # a tar's top-level entry too must not be the staging directory
            if final.name.startswith(_STAGING_PREFIX) and final.parent == out:
                raise ExtractError(f"refusing to write {final}: {_STAGING_PREFIX!r} is reserved for staging")
        for source, final in moves:  # every layer is staged: put them in place
            try:
                _place(source, final, out)
            except OSError as exc:
                raise ExtractError(f"cannot put {final} in place ({exc}); {out} may be partly updated") from exc
    return written


def _place(source: Path, final: Path, root: Path) -> None:
    """Rename ``source`` to ``final`` (strictly below ``root``), replacing what stands in the way."""
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


def _unpack(layout: OCILayout, layer: Descriptor, into: Path, name: PurePosixPath, allowance: _Allowance) -> None:
    try:
        with _layer_stream(layout, layer, allowance) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError, CodecError) as exc:
            raise ExtractError(f"cannot unpack layer {layer.digest} ({name}): {exc}") from exc
