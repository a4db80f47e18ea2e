"""``doras-oras list``: the images of a layout (like ``oras repo tags --oci-layout``, with more columns).

One row per ``index.json`` entry, oldest first: repository, tag, digest, size
(the manifest and everything it references), how it came: ``full`` or
``delta ALGORITHM`` with the time doras-oras committed it, or ``other tool``
for an entry written by oras or skopeo (its repository is then the one its
``ref.name`` names, else unknown), and its name (``ref.name``: what
``skopeo ... oci:DIR:NAME`` and ``oras ... --oci-layout DIR:NAME`` take).
``--json``: ``{"layout": DIR, "images": [{"name", "repository", "tag", "digest",
"source_digest", "media_type", "size", "pulled_by", "pulled_at", "foreign"}]}``
(sizes in bytes). Read only: no lock.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import DorasOrasError
from ..layout import ImageEntry, OCILayout
from .exits import EXIT_OK
from .output import emit, human_size

NAME = "list"
HELP = "list the images of an OCI image layout (repository, tag, digest, size, how they were pulled, name)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--oci-layout", required=True, metavar="DIR", help="the OCI image layout")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _size(layout: OCILayout, image: ImageEntry) -> int | None:
    """Bytes of the image: its manifest (or index) and every blob it reaches; None if unreadable."""
    try:
        return sum(item.size for item in layout.closure(image.descriptor, verify=False))
    except (DorasOrasError, OSError, ValueError):
        return None


def _row(layout: OCILayout, image: ImageEntry) -> dict[str, Any]:
    named = image.named_reference
    return {
        "name": image.ref_name,
        "repository": image.repository or (named.name if named is not None else None),
        "tag": image.tag,
        "digest": image.descriptor.digest,
        "source_digest": image.source_digest,
        "media_type": image.descriptor.media_type,
        "size": _size(layout, image),
        "pulled_by": image.pulled_by,
        "pulled_at": image.pulled or None,
        "foreign": image.foreign,
    }


def _how(row: dict[str, Any]) -> str:
    if row["foreign"]:
        return "other tool"
    how = row["pulled_by"] or "doras-oras"
    return f"{how} {row['pulled_at'][:19].replace('T', ' ')}" if row["pulled_at"] else how


def run(args: argparse.Namespace) -> int:
    layout = OCILayout.open(args.oci_layout, create=False)
    rows = [_row(layout, image) for image in layout.images()]
    table = [("REPOSITORY", "TAG", "DIGEST", "SIZE", "PULLED", "NAME")]
    for row in rows:
        size = human_size(row["size"]) if row["size"] is not None else "?"
        table.append((row["repository"] or "-", row["tag"] or "-", row["digest"][:19], size, _how(row),
                      row["name"] or "-"))
    widths = [max(len(line[i]) for line in table) for i in range(5)]
    text = "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line[:5], widths, strict=True)) + "  " + line[5]
        for line in table
    )
    if not rows:
        text = f"{layout.root}: no images"
    emit(args, {"layout": str(layout.root), "images": rows}, text)
    return EXIT_OK
