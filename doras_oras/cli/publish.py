"""``doras-oras publish-delta``: build deltas here and store them in the registry as a Doras server does.

``--from REF --to REF`` publishes one delta; ``--to REF --from-last N`` publishes deltas from
the N previous versions of the repository (by ``org.opencontainers.image.created``).
Exit codes: 0 every delta published or already there, 1 an error (with ``--from-last``: at
least one pair failed; the others were published), 2 usage.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..algorithms import Compression, Patch
from ..errors import InvalidArgumentError
from ..publish import DEFAULT_MAX_BLOB_BYTES, PublishedDelta, publish_delta, publish_from_last
from ..publish.deltas import Progress
from ..reference import Reference
from .exits import EXIT_ERROR, EXIT_OK
from .options import add_connection_options, count, credentials_from_args, registry_from_args, size
from .output import describe, emit, human_size
from .progress import Display

NAME = "publish-delta"
HELP = "build a delta between two images here and store it in the registry as a Doras server would"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--to", dest="to_image", required=True, metavar="REF",
                        help="the new image: registry/repo:tag or registry/repo@sha256:...")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from", dest="from_image", metavar="REF",
                        help="the older image (registry/repo:tag or @sha256:..., or a tag or sha256:... "
                             "in the repository of --to)")
    source.add_argument("--from-last", dest="from_last", type=count, metavar="N",
                        help="publish deltas from the N previous versions of the repository "
                             "(by org.opencontainers.image.created)")
    parser.add_argument("--algorithm", choices=[p.value for p in Patch],
                        help="bsdiff (over the raw blobs) or tardiff (over the uncompressed tars; needs "
                             "io.deis.oras.content.digest on the target layer); default: as a Doras server chooses")
    parser.add_argument("--compression", choices=[c.value for c in Compression],
                        help="around a bsdiff patch (default zstd); a tardiff is never compressed")
    parser.add_argument("--force", action="store_true",
                        help="replace a different delta already stored under the tag")
    parser.add_argument("--max-size", dest="max_size", type=size, default=DEFAULT_MAX_BLOB_BYTES, metavar="BYTES",
                        help=f"refuse layers larger than this (building holds them in memory; "
                             f"default {DEFAULT_MAX_BLOB_BYTES})")
    parser.add_argument("--no-progress", action="store_true", help="no progress display on a terminal")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    add_connection_options(parser)


def _line(result: PublishedDelta) -> str:
    verb = {"pushed": "published", "replaced": "replaced", "exists": "already there"}[result.status]
    return (f"{verb}: {result.algorithm} delta {human_size(result.layer.size)} "
            f"({human_size(result.base_size)} -> {human_size(result.target_size)}) "
            f"{result.from_image.rsplit('@', 1)[1][:19]} -> {result.to_image.rsplit('@', 1)[1][:19]} "
            f"as :{result.tag} ({result.seconds:.1f} s)")


def _progress(display: Display) -> Progress:
    """The publish phases on the display: bars for bytes, a spinner while the delta is built."""
    def show(phase: str, done: int, total: int) -> None:
        if phase == "build":
            if done < total:
                display.busy("building the delta")
            return
        display.progress(phase, done, total)
    return show


def run(args: argparse.Namespace) -> int:
    to_ref = Reference.parse(args.to_image)
    display = None if args.no_progress or args.json or not sys.stderr.isatty() else Display(sys.stderr)
    options: dict[str, Any] = {
        "patch": Patch(args.algorithm) if args.algorithm else None,
        "compression": Compression(args.compression) if args.compression else None,
        "force": bool(args.force), "max_size": int(args.max_size),
        "progress": _progress(display) if display is not None else None,
    }
    if options["patch"] is Patch.TARDIFF and options["compression"] not in (None, Compression.NONE):
        raise InvalidArgumentError("--algorithm tardiff takes no --compression: a tar-diff is stored uncompressed")
    with registry_from_args(args, credentials_from_args(args)) as client:
        try:
            if args.from_image is not None:
                from_ref = Reference.parse_relative(args.from_image, to_ref)
                result = publish_delta(client, from_ref, to_ref, **options)
                emit(args, result.to_json(), _line(result))
                return EXIT_OK
            done, failed = publish_from_last(client, to_ref, int(args.from_last), **options)
        finally:
            if display is not None:
                display.close()
    failures = [{"from_image": str(ref), "error": type(exc).__name__, "message": describe(exc, args)}
                for ref, exc in failed]
    text = "\n".join([*(_line(r) for r in done), *(f"failed: {f['from_image']}: {f['message']}" for f in failures)])
    emit(args, {"status": "error" if failed else "ok", "deltas": [r.to_json() for r in done],
                "failed": failures}, text or "no previous version found: nothing to publish")
    return EXIT_ERROR if failed else EXIT_OK
