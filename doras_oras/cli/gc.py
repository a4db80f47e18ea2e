"""``doras-oras gc``: keep the newest N images per repository; remove unreferenced blobs."""

from __future__ import annotations

import argparse

from ..errors import InvalidArgumentError
from ..layout import OCILayout
from .exits import EXIT_OK
from .options import seconds_or_zero
from .output import emit

NAME = "gc"
HELP = "keep the newest N images per repository; remove unreferenced blobs"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--oci-layout", required=True, metavar="DIR", help="the OCI image layout")
    parser.add_argument("--keep", type=int, required=True, metavar="N", help="images to keep per repository")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--lock-timeout", type=seconds_or_zero, default=300.0, metavar="S",
                        help="how long to wait for another process using the layout (default 300)")


def run(args: argparse.Namespace) -> int:
    if args.keep < 0:
        raise InvalidArgumentError("--keep must be >= 0")
    layout = OCILayout.open(args.oci_layout, create=False)
    with layout.lock(timeout=args.lock_timeout):
        result = layout.gc(args.keep)
    summary = {
        "removed_images": [
            {"repository": i.repository, "tag": i.tag, "digest": i.descriptor.digest} for i in result.removed_images
        ],
        "removed_blobs": len(result.removed_blobs),
        "freed_bytes": result.freed_bytes,
    }
    emit(args, summary, f"removed {len(result.removed_images)} image(s), {len(result.removed_blobs)} blob(s), "
                        f"{result.freed_bytes} bytes")
    return EXIT_OK
