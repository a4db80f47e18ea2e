"""``doras-oras pull``: update an OCI image layout to an image, by delta when a Doras server is given.

Every run goes through :func:`doras_oras.pull.pull_delta` (with or without
``--server``), so the outcome, its JSON object and its exit code are the same
in both cases: 0 updated, 3 up to date, 4 pending.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from .. import schemas
from ..errors import InvalidArgumentError
from ..extract import extract_image
from ..layout import OCILayout
from ..pull import (
    STATUS_DELTA,
    STATUS_PENDING,
    STATUS_UP_TO_DATE,
    Progress,
    PullResult,
    edge_client_for,
    pull_delta,
)
from ..reference import Reference
from .exits import EXIT_OK, EXIT_PENDING, EXIT_UP_TO_DATE
from .options import (
    add_connection_options,
    add_server_options,
    add_trust_options,
    credentials_from_args,
    registry_from_args,
    seconds_or_zero,
    verification_from_args,
)
from .output import emit

NAME = "pull"
HELP = "update an OCI image layout to an image: by delta through a Doras server, else a verified full pull"


def _size(text: str) -> int:
    """``123``, ``64K``, ``10M``, ``2G`` (binary units) as bytes."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    text = text.strip().lower().removesuffix("ib").removesuffix("b")
    factor = units.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in units else text
    try:
        value = int(float(number) * factor)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: use BYTES with K/M/G/T suffixes") from None
    if value < 0:
        raise argparse.ArgumentTypeError("a size must be >= 0")
    return value


def _budget(text: str) -> tuple[int, float]:
    """``BYTES/SECONDS``, e.g. ``100M/86400`` or ``1G/30d`` (s, m, h, d suffixes)."""
    try:
        amount, period = text.split("/", 1)
        seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400}
        factor = seconds.get(period[-1:].lower(), 1)
        number = period[:-1] if period[-1:].lower() in seconds else period
        return _size(amount), float(number) * factor
    except (ValueError, IndexError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"invalid budget {text!r}: use BYTES/PERIOD, e.g. 100M/1d") from None


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("reference", metavar="REF", help="registry/repository[:tag][@digest]")
    parser.add_argument("--oci-layout", required=True, metavar="DIR", help="the OCI image layout to pull into")
    add_server_options(parser, required=False)
    parser.add_argument("--from", dest="from_ref", metavar="REF",
                        help="the image of the layout to patch (default: its newest of the repository)")
    parser.add_argument("--on-timeout", choices=("full", "pending"), default="full",
                        help="when the delta is not ready in time: full pull (default) or exit 4")
    parser.add_argument("--allow-unverified", action="store_true",
                        help="accept a tar-diff result that cannot be verified (no content digest)")
    parser.add_argument("--max-size", type=_size, metavar="BYTES",
                        help="refuse artifacts declaring more bytes (K/M/G suffixes)")
    parser.add_argument("--budget", type=_budget, metavar="BYTES/PERIOD",
                        help="download budget counted across runs in the layout, e.g. 100M/1d")
    parser.add_argument("--output", "-o", metavar="DIR", help="also write the artifact's files to DIR")
    parser.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="platform to choose from an image index")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    parser.add_argument("--lock-timeout", type=seconds_or_zero, default=300.0, metavar="S",
                        help="how long to wait for another process using the layout (default 300)")
    add_connection_options(parser)
    add_trust_options(parser)


def _progress() -> Progress:
    """A one-line progress bar on stderr (only used when stderr is a terminal)."""
    last = [0.0]

    def show(phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < 0.1:
            return
        last[0] = now
        width = 30
        filled = width * done // total if total else width
        bar = "#" * filled + "-" * (width - filled)
        sys.stderr.write(f"\r{phase:>6} [{bar}] {done:>12,}/{total:,} bytes")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def run(args: argparse.Namespace) -> int:
    schemas.warm_up()  # the validators compile while the arguments are checked and the first request travels
    ref = Reference.parse(args.reference)
    from_ref = Reference.parse(args.from_ref) if args.from_ref else None
    if from_ref is not None and not from_ref.same_repository(ref):
        raise InvalidArgumentError(f"--from {from_ref} is not in the repository of {ref}")
    verification = verification_from_args(args)  # keys and policy loaded before anything is sent
    credentials = credentials_from_args(args)
    registry = registry_from_args(args, credentials)
    edge = edge_client_for(registry, args.server, ref.registry) if args.server else None
    show = None if args.no_progress or args.json or not sys.stderr.isatty() else _progress()
    layout = OCILayout.open(args.oci_layout)
    try:
        result = pull_delta(
            registry, ref, layout, doras_url=args.server, edge_client=edge, from_ref=from_ref,
            accepted_algorithms=args.accept, wait=not args.async_, timeout_s=args.delta_timeout,
            on_timeout=args.on_timeout, allow_unverified=args.allow_unverified, progress=show,
            max_size=args.max_size, budget=args.budget, lock_timeout_s=args.lock_timeout,
            platform=args.platform, verify=verification,
        )
    finally:
        if edge is not None:
            edge.close()
        registry.close()
    summary: dict[str, Any] = result.to_json()
    summary["layout"] = str(layout.root)
    if args.output and result.stored_digest and result.status != STATUS_PENDING:
        image = next((i for i in layout.images() if i.descriptor.digest == result.stored_digest), None)
        if image is not None:
            summary["output"] = [str(p) for p in extract_image(layout, image.descriptor, args.output)]
    emit(args, summary, _describe(result))
    return {STATUS_UP_TO_DATE: EXIT_UP_TO_DATE, STATUS_PENDING: EXIT_PENDING}.get(result.status, EXIT_OK)


def _describe(result: PullResult) -> str:
    if result.status == STATUS_UP_TO_DATE:
        return f"{result.reference}: up to date ({result.to_digest})"
    if result.status == STATUS_PENDING:
        return f"{result.reference}: pending: {result.reason}"
    saved = ""
    if result.full_size:
        share = 100.0 * result.bytes_received / result.full_size
        saved = f", {share:.1f}% of a full pull ({result.full_size} bytes)"
    how = f"delta {result.algorithm}" if result.status == STATUS_DELTA else f"full pull ({result.reason})"
    return (f"{result.reference}: updated to {result.to_digest} by {how}: "
            f"{result.bytes_received} bytes received{saved} in {result.duration_s:.2f} s")
