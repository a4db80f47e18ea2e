"""``doras-oras pull``: update an OCI image layout to an image, by delta when a Doras server is given.

Every run goes through :func:`doras_oras.pull.pull_delta` (with or without
``--server``), so the outcome, its JSON object and its exit code are the same
in both cases: 0 updated, 3 up to date, 4 pending.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BaseNotFoundError, InvalidArgumentError
from ..pull import PullResult, Status, check_base_ref, pull_delta
from ..reference import Reference, names_registry
from ..registry_client import RegistryClient
from .exits import EXIT_OK, EXIT_PENDING, EXIT_UP_TO_DATE
from .options import SERVER_ONLY as OPTIONS_SERVER_ONLY
from .options import (
    add_connection_options,
    add_server_options,
    add_trust_options,
    check_server_only,
    credentials_from_args,
    duration,
    registry_from_args,
    seconds_or_zero,
    size,
    verification_from_args,
)
from .output import emit, hint, human_size
from .progress import Display

if TYPE_CHECKING:
    from ..edgeapi import EdgeClient
    from ..full import Progress
    from ..pull import Waiting
    from ..trust import Verification

log = logging.getLogger(__name__)

NAME = "pull"
HELP = "update an OCI image layout to an image: by delta through a Doras server, else a verified full pull"


def _budget(text: str) -> tuple[int, float]:
    """``BYTES/SECONDS``, e.g. ``100M/86400`` or ``1G/30d`` (s, m, h, d suffixes)."""
    try:
        amount, period = text.split("/", 1)
        return size(amount), duration(period)
    except (ValueError, IndexError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"invalid budget {text!r}: use BYTES/PERIOD with a positive period, "
                                         "e.g. 100M/1d") from None


#: The flags of ``pull`` that only mean something with ``--server`` (a usage error without it).
SERVER_ONLY = (*OPTIONS_SERVER_ONLY, ("from_ref", "--from"), ("on_timeout", "--on-timeout"),
               ("allow_unverified", "--allow-unverified"))


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("reference", metavar="REF", help="registry/repository[:tag][@digest]")
    add_pull_options(parser)
    parser.add_argument("--from", dest="from_ref", metavar="REF",
                        help="the image of the layout to patch: a tag (v1), a digest (sha256:...) or a "
                             "reference of the same repository (default: its newest)")
    parser.add_argument("--output", "-o", metavar="DIR",
                        help="also write the artifact's files to DIR (as oras pull -o), before the layout "
                             "records the image")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar or spinner (they are drawn only when stderr is a terminal)")


def add_pull_options(parser: argparse.ArgumentParser) -> None:
    """The flags of a pull that ``pull`` and ``watch`` share (all but REF, ``--from``, ``--output``)."""
    parser.add_argument("--oci-layout", required=True, metavar="DIR",
                        help="the OCI image layout to pull into (created when missing or empty)")
    add_server_options(parser, required=False)
    parser.add_argument("--on-timeout", choices=("full", "pending"), default=None,
                        help="when the delta is not ready in time: full pull (default) or exit 4")
    parser.add_argument("--fallback", choices=("full", "never"), default="full",
                        help="when a delta was possible but cannot be used (server down or failing, bad delta, "
                             "timeout): a verified full pull (default), or never: exit 1 with the reason, having "
                             "downloaded nothing but manifests (a first install still pulls in full)")
    parser.add_argument("--no-registry-deltas", dest="registry_deltas", action="store_false",
                        help="do not look for a delta stored in the registry (publish-delta, a Doras server) "
                             "before asking the server or when none is given")
    parser.add_argument("--allow-unverified", action="store_true",
                        help="accept a tar-diff result that cannot be verified (no content digest)")
    parser.add_argument("--max-size", type=size, metavar="BYTES",
                        help="refuse artifacts declaring more bytes (K/M/G suffixes)")
    parser.add_argument("--allow-downgrade", action="store_true",
                        help="with signature verification: install a target older than the installed image "
                             "(a deliberate downgrade; refused otherwise, exit 5)")
    parser.add_argument("--budget", type=_budget, metavar="BYTES/PERIOD",
                        help="download budget counted across runs in the layout, e.g. 100M/1d")
    parser.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="platform to choose from an image index")
    parser.add_argument("--lock-timeout", type=seconds_or_zero, default=300.0, metavar="S",
                        help="seconds to wait while another process writes the layout (default 300; 0: do not wait)")
    add_connection_options(parser)
    add_trust_options(parser)


def check_paths(layout: str, output: str | None) -> None:
    """``--oci-layout`` and ``--output`` must be directories (or not exist yet): usage errors else."""
    for flag, value in (("--oci-layout", layout), ("--output", output)):
        if value is not None and Path(value).exists() and not Path(value).is_dir():
            raise InvalidArgumentError(f"{flag} {value}: not a directory")
    if output is not None and Path(output).resolve() == Path(layout).resolve():
        raise InvalidArgumentError("--output and --oci-layout must be different directories")


def check_pull_args(args: argparse.Namespace) -> Verification | None:
    """The checks of :func:`add_pull_options` flags before anything is sent; the verification they ask for."""
    check_server_only(args, SERVER_ONLY)
    if args.fallback == "never" and not args.server and not args.registry_deltas:
        raise InvalidArgumentError("--fallback never needs --server or registry deltas (without "
                                   "--no-registry-deltas): else no delta could ever be found")
    verification = verification_from_args(args)  # keys and policy loaded before anything is sent
    if args.allow_downgrade and verification is None:
        raise InvalidArgumentError("--allow-downgrade needs --verify-key or --trust-policy (without verification "
                                   "nothing is ordered)")
    return verification


def call_pull(args: argparse.Namespace, registry: RegistryClient, edge: EdgeClient | None, ref: Reference, *,
              verification: Verification | None, from_ref: Reference | None = None, output: str | None = None,
              progress: Progress | None = None, on_wait: Waiting | None = None,
              refresh_output: bool = True) -> PullResult:
    """One pull of ``ref`` into ``--oci-layout`` with the :func:`add_pull_options` flags (``pull`` and ``watch``)."""
    return pull_delta(
        registry, ref, args.oci_layout, doras_url=args.server, edge_client=edge, from_ref=from_ref,
        accepted_algorithms=args.accept, wait=not args.async_, timeout_s=args.delta_timeout,
        on_timeout=args.on_timeout or "full", allow_unverified=args.allow_unverified,
        progress=progress, on_wait=on_wait, max_size=args.max_size, budget=args.budget,
        lock_timeout_s=args.lock_timeout, platform=args.platform, verify=verification, output_dir=output,
        refresh_output=refresh_output,
        allow_downgrade=args.allow_downgrade, registry_deltas=args.registry_deltas, fallback=args.fallback,
    )


def understood(text: str, ref: Reference) -> None:
    """Say what a reference without a registry host means (docker.io), before anything is sent."""
    if not names_registry(text):
        log.warning("%s names no registry host: understood as %s (write HOST[:PORT]/REPOSITORY[:TAG] "
                    "for another registry)", text, ref)


def run(args: argparse.Namespace) -> int:
    ref = Reference.parse(args.reference)
    check_server_only(args, SERVER_ONLY)
    from_ref = Reference.parse_relative(args.from_ref, ref) if args.from_ref else None
    if from_ref is not None:
        check_base_ref(ref, from_ref, name="--from")
    check_paths(args.oci_layout, args.output)
    verification = check_pull_args(args)
    credentials = credentials_from_args(args)
    registry = registry_from_args(args, credentials)
    understood(args.reference, ref)
    edge = None
    if args.server:
        from ..edgeapi import EdgeClient  # the Doras client loads only when a server is given

        edge = EdgeClient.for_registry(registry, args.server, ref.registry)
    display = None if args.no_progress or args.json or not sys.stderr.isatty() else Display(sys.stderr)
    try:
        result = call_pull(args, registry, edge, ref, verification=verification, from_ref=from_ref,
                           output=args.output, progress=display.progress if display else None,
                           on_wait=display.waiting if display else None)
    except BaseNotFoundError as exc:  # the library names its parameter; the command names its flag
        raise BaseNotFoundError(f"--from {exc.base}: no such image in {args.oci_layout}", base=exc.base) from exc
    finally:
        if display is not None:
            display.close()
        if edge is not None:
            edge.close()
        registry.close()
    summary: dict[str, Any] = result.to_json()
    summary["layout"] = str(args.oci_layout)
    summary["hint"] = hint(result.fix, args)
    emit(args, summary, _describe(result, args))
    return {Status.UP_TO_DATE: EXIT_UP_TO_DATE, Status.PENDING: EXIT_PENDING}.get(result.status, EXIT_OK)


def share_text(part: int, whole: int) -> str:
    """``part`` as a percentage of ``whole`` with two significant digits (``0.041%``, ``2.2%``, ``37%``)."""
    share = 100.0 * part / whole
    return f"{share:.0f}%" if share >= 10 else f"{share:.2g}%"


def _describe(result: PullResult, args: argparse.Namespace) -> str:
    """The one line of text output (sizes for people; ``--json`` keeps bytes)."""
    files = f"; files written to {args.output}" if result.output is not None else ""
    signature = result.trust.signature if result.trust is not None else None
    if signature is not None:
        files = f"; signed by {signature.key.name}{files}"
    if result.status == Status.UP_TO_DATE:
        return f"{result.reference}: up to date ({result.to_digest}){files}"
    if result.status == Status.PENDING:
        return f"{result.reference}: pending: {result.reason}"
    saved = ""
    if result.full_size:
        saved = f", {share_text(result.bytes_received, result.full_size)} of a full pull ({human_size(result.full_size)})"
    reason = result.reason
    words = hint(result.fix, args)
    if words:
        reason += f"; {words}"
    if result.status == Status.DELTA:
        source = " stored in the registry" if result.delta_source == "registry" else " from the Doras server"
        return (f"{result.reference}: updated to {result.to_digest} by delta {result.algorithm}{source}: "
                f"{human_size(result.bytes_received)} received{saved} in {result.duration_s:.2f} s{files}")
    return (f"{result.reference}: updated to {result.to_digest}, downloaded in full "
            f"({human_size(result.bytes_received)} received{saved} in {result.duration_s:.2f} s): {reason}{files}")
