"""``doras-oras fsck``: hash every blob of every image of a layout; ``--repair`` drops the damaged images.

Needs no key (``verify`` checks signatures; this checks that the bytes are
still the ones stored). Exit 0: nothing wrong; 1: damage found (also when
``--repair`` dropped it: the JSON says ``"repaired": true``, and the next pull
fetches the dropped images again). A corrupt ``index.json`` is damage too:
``--repair`` keeps it as ``index.json.corrupt`` and rebuilds it from the blobs,
as ``gc --rebuild`` does.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..layout import FsckResult, OCILayout, fsck
from .exits import EXIT_ERROR, EXIT_OK
from .options import seconds_or_zero
from .output import emit

NAME = "fsck"
HELP = "hash every blob of every image of a layout; --repair drops damaged images so the next pull fetches them"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--oci-layout", required=True, metavar="DIR", help="the OCI image layout")
    parser.add_argument("--repair", action="store_true",
                        help="drop the damaged images and their blobs; rebuild a corrupt index.json from the blobs")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--lock-timeout", type=seconds_or_zero, default=300.0, metavar="S",
                        help="seconds to wait while another process writes the layout (default 300; 0: do not wait)")


def summary(result: FsckResult) -> dict[str, Any]:
    """The ``--json`` object of a check (without the layout)."""
    return {
        "status": "ok" if result.clean else ("repaired" if result.intact else "damaged"),
        "index_problem": result.index_problem,
        "index_recovered": result.index_recovered,
        "checked_images": result.checked_images,
        "checked_blobs": result.checked_blobs,
        "damaged": [{"repository": d.entry.repository, "tag": d.entry.tag, "digest": d.entry.descriptor.digest,
                     "problems": list(d.problems)} for d in result.damaged],
        "repaired": result.repaired,
        "removed_blobs": len(result.removed_blobs),
    }


def _text(root: str, result: FsckResult) -> str:
    lines = []
    if result.index_problem is not None:
        what = ("kept as index.json.corrupt and rebuilt from the blobs (the tags are lost)"
                if result.index_recovered else "give --repair to rebuild it from the blobs")
        lines.append(f"{root}/index.json is unusable: {result.index_problem}; {what}")
    for damage in result.damaged:
        name = f"{damage.entry.repository or '-'}:{damage.entry.tag or '-'} ({damage.entry.descriptor.digest})"
        lines.append(f"damaged: {name}" + (": dropped" if result.repaired else ""))
        lines.extend(f"  {problem}" for problem in damage.problems)
    if result.damaged and not result.repaired:
        lines.append("give --repair to drop the damaged images (the next pull fetches them again)")
    if result.repaired and result.removed_blobs:
        lines.append(f"removed {len(result.removed_blobs)} blob(s)")
    lines.append(f"{root}: {result.checked_images} image(s), {result.checked_blobs} blob(s) hashed, "
                 f"{len(result.damaged)} damaged")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    layout = OCILayout.open(args.oci_layout, create=False, require_index=False)
    with layout.lock(timeout=args.lock_timeout):
        result = fsck(layout, repair=args.repair)
    emit(args, {"layout": str(layout.root), **summary(result)}, _text(str(layout.root), result))
    return EXIT_OK if result.clean else EXIT_ERROR
