"""``doras-oras gc``: keep the newest N images per repository; remove unreferenced blobs.

``--rebuild`` recovers a layout whose ``index.json`` is missing or corrupt: the
corrupt file is kept as ``index.json.corrupt``, and a new one lists the complete
images found in ``blobs/`` (tagged ``recovered-<hex12>``: the tags were only in
the lost file). A valid ``index.json`` is left alone.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import InvalidArgumentError
from ..layout import OCILayout, gc, recover_index
from .exits import EXIT_OK
from .options import count, seconds_or_zero
from .output import emit, human_size

NAME = "gc"
HELP = "keep the newest N images per repository and remove unreferenced blobs; --rebuild a lost index.json"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--oci-layout", required=True, metavar="DIR", help="the OCI image layout")
    parser.add_argument("--keep", type=count, metavar="N", help="images to keep per repository")
    parser.add_argument("--rebuild", action="store_true",
                        help="recreate a missing or corrupt index.json from the blobs (tags are lost), "
                             "before --keep if given")
    parser.add_argument("--force", action="store_true", help="needed with --keep 0 (which removes every image)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--lock-timeout", type=seconds_or_zero, default=300.0, metavar="S",
                        help="seconds to wait while another process writes the layout (default 300; 0: do not wait)")


def run(args: argparse.Namespace) -> int:
    if args.keep is None and not args.rebuild:
        raise InvalidArgumentError("give --keep N (images to keep per repository), --rebuild, or both")
    if args.keep == 0 and not args.force:
        raise InvalidArgumentError("--keep 0 removes every image of the layout: add --force to do so")
    layout = OCILayout.open(args.oci_layout, create=False, require_index=not args.rebuild)
    summary: dict[str, Any] = {"rebuilt": False, "recovered_images": [], "removed_images": [],
                               "removed_blobs": 0, "freed_bytes": 0}
    lines: list[str] = []
    with layout.lock(timeout=args.lock_timeout):
        if args.rebuild:
            recovered = recover_index(layout)
            if recovered is None:
                lines.append(f"{layout.root}/index.json is valid: nothing to rebuild")
            else:
                summary["rebuilt"] = True
                summary["recovered_images"] = [{"tag": i.tag, "digest": i.descriptor.digest} for i in recovered]
                lines.append(f"rebuilt {layout.root}/index.json: {len(recovered)} image(s) recovered "
                             "(tagged recovered-<digest>; the old file is index.json.corrupt)")
        if args.keep is not None:
            result = gc(layout, args.keep)
            summary["removed_images"] = [
                {"repository": i.repository, "tag": i.tag, "digest": i.descriptor.digest}
                for i in result.removed_images
            ]
            summary["removed_blobs"] = len(result.removed_blobs)
            summary["freed_bytes"] = result.freed_bytes
            lines.append(f"removed {len(result.removed_images)} image(s), {len(result.removed_blobs)} blob(s), "
                         f"{human_size(result.freed_bytes)} freed")
    emit(args, summary, "\n".join(lines))
    return EXIT_OK
