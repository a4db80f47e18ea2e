"""``doras-oras pull`` (verified full pull into an OCI layout) and ``doras-oras gc``.

``pull`` is built so that the delta pull can be added: :func:`add_registry_options`
and :func:`registry_from_args` are reusable, and :func:`full_pull_summary` gives
the JSON object printed with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any

from .budget import DownloadBudget, check_max_size
from .cli import EXIT_OK, EXIT_PENDING, EXIT_UP_TO_DATE, EXIT_USAGE, command
from .edgeapi import EdgeClient
from .extract import extract_image
from .layout import OCILayout
from .plan import ALL_ALGORITHMS
from .pull import (
    STATUS_DELTA,
    STATUS_PENDING,
    STATUS_UP_TO_DATE,
    Progress,
    PullResult,
    edge_client_for,
    pull_delta,
)
from .reference import Reference
from .registry import DeltaRegistry, FullPullResult
from .transport import TransferPolicy


def _seconds(text: str) -> float:
    """argparse type: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def add_registry_options(parser: argparse.ArgumentParser) -> None:
    """The flags that say how to talk to the registry (and bound every transfer)."""
    parser.add_argument("--plain-http", action="store_true", help="talk plain HTTP to the registry")
    parser.add_argument("--insecure", action="store_true", help="do not verify the registry's TLS certificate")
    parser.add_argument("--ca-file", metavar="FILE", help="CA bundle to verify the registry's certificate")
    parser.add_argument("-u", "--username", help="registry user name")
    parser.add_argument("-p", "--password", help="registry password (prefer --password-stdin)")
    parser.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    parser.add_argument(
        "--registry-config", metavar="FILE", action="append", default=[],
        help="docker config.json with registry credentials (repeatable; ~/.docker/config.json is read too)",
    )
    parser.add_argument(
        "--allow-insecure-auth", action="store_true",
        help="allow sending credentials over plain HTTP (with --plain-http)",
    )
    defaults = TransferPolicy()
    parser.add_argument("--connect-timeout", type=_seconds, default=defaults.connect_timeout_s, metavar="S",
                        help=f"TCP/TLS connect timeout per request (default {defaults.connect_timeout_s:g})")
    parser.add_argument("--read-timeout", dest="read_timeout", type=_seconds,
                        default=defaults.read_timeout_s, metavar="S",
                        help=f"give up an attempt after S seconds without a byte (default {defaults.read_timeout_s:g})")
    parser.add_argument("--deadline", type=_seconds, default=defaults.deadline_s, metavar="S",
                        help=f"overall time bound of the whole pull, retries included (default {defaults.deadline_s:g})")


def policy_from_args(args: argparse.Namespace) -> TransferPolicy:
    """The :class:`TransferPolicy` of :func:`add_registry_options` flags."""
    return TransferPolicy(
        connect_timeout_s=float(args.connect_timeout),
        read_timeout_s=float(args.read_timeout),
        deadline_s=float(args.deadline),
        allow_http=bool(args.plain_http),
    )


def registry_from_args(args: argparse.Namespace) -> DeltaRegistry:
    """A :class:`DeltaRegistry` configured from :func:`add_registry_options` flags.

    Raises :class:`ValueError` (a usage error) for contradicting or unusable flags.
    """
    if args.insecure and args.ca_file:
        raise ValueError("--insecure and --ca-file contradict each other")
    tls_verify: bool | str = True
    if args.insecure:
        tls_verify = False
    elif args.ca_file:
        if not os.path.isfile(args.ca_file):
            raise ValueError(f"--ca-file {args.ca_file}: no such file")
        tls_verify = str(args.ca_file)
    for config in args.registry_config:
        if not os.path.isfile(config):
            raise ValueError(f"--registry-config {config}: no such file")
    password = args.password
    if args.password_stdin:
        if args.password:
            raise ValueError("-p/--password and --password-stdin contradict each other")
        password = sys.stdin.readline().rstrip("\r\n")
    if (args.username or password) and not (args.username and password):
        raise ValueError("-u/--username and a password go together")
    registry = DeltaRegistry(
        insecure=bool(args.plain_http), tls_verify=tls_verify,
        allow_insecure_auth=bool(args.allow_insecure_auth), policy=policy_from_args(args),
        registry_configs=list(args.registry_config),
    )
    if args.username:
        registry.auth.set_basic_auth(args.username, password)
    return registry


def full_pull_summary(result: FullPullResult, layout: OCILayout) -> dict[str, Any]:
    """The ``--json`` object of a full pull."""
    return {
        "action": "full",
        "reference": str(result.reference),
        "layout": str(layout.root),
        "digest": result.manifest.digest,
        "resolved": result.resolved.digest,
        "media_type": result.manifest.media_type,
        "bytes_received": result.bytes_received,
        "blobs_fetched": result.blobs_fetched,
        "blobs_reused": result.blobs_reused,
    }


def _size(text: str) -> int:
    """``123``, ``64K``, ``10M``, ``2G`` (binary units) as bytes."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    text = text.strip().lower().removesuffix("ib").removesuffix("b")
    factor = units.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in units else text
    value = int(float(number) * factor)
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
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"invalid budget {text!r}: use BYTES/PERIOD, e.g. 100M/1d") from None


def _configure_pull(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("reference", metavar="REF", help="registry/repository[:tag][@digest]")
    parser.add_argument("--oci-layout", required=True, metavar="DIR", help="the OCI image layout to pull into")
    parser.add_argument("--server", metavar="URL",
                        help="Doras server (https://host:port); without it: a verified full pull")
    parser.add_argument("--from", dest="from_ref", metavar="REF",
                        help="the image of the layout to patch (default: its newest of the repository)")
    parser.add_argument("--accept", action="append", choices=ALL_ALGORITHMS, metavar="ALGO",
                        help="narrow the accepted delta algorithms (bsdiff, tardiff, gzip, zstd); repeat")
    parser.add_argument("--async", dest="async_", action="store_true",
                        help="ask once; exit 4 (pending) while the server builds the delta")
    parser.add_argument("--timeout", "--wait-timeout", dest="delta_timeout", type=float, metavar="S",
                        help="bound the wait for the delta; then --on-timeout decides")
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
    parser.add_argument("--lock-timeout", type=float, default=300.0, metavar="S",
                        help="how long to wait for another process using the layout")
    add_registry_options(parser)


def _edge_client(args: argparse.Namespace, registry: DeltaRegistry, ref: Reference) -> EdgeClient | None:
    """The Doras server's client: the registry's credentials and TLS flags apply to it too."""
    if not args.server:
        return None
    return edge_client_for(registry, args.server, ref.registry)


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


def _run_pull(args: argparse.Namespace) -> int:
    try:
        ref = Reference.parse(args.reference)
        from_ref = Reference.parse(args.from_ref) if args.from_ref else None
        if from_ref is not None and not from_ref.same_repository(ref):
            raise ValueError(f"--from {from_ref} is not in the repository of {ref}")
        registry = registry_from_args(args)
        edge = _edge_client(args, registry, ref)
    except ValueError as exc:
        print(f"doras-oras: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    layout = OCILayout.open(args.oci_layout)
    with registry.pull_deadline():  # --deadline bounds every request of the pull together
        if edge is None:
            return _run_full(args, registry, ref, layout)
        return _run_delta(args, registry, edge, ref, from_ref, layout)


def _run_delta(args: argparse.Namespace, registry: DeltaRegistry, edge: EdgeClient, ref: Reference,
               from_ref: Reference | None, layout: OCILayout) -> int:
    """With a Doras server: the delta-aware pull; exit 0 updated, 3 up to date, 4 pending."""
    show = None if args.no_progress or args.json or not sys.stderr.isatty() else _progress()
    try:
        result = pull_delta(
            registry, ref, layout, doras_url=args.server, edge_client=edge, from_ref=from_ref,
            accepted_algorithms=args.accept, wait=not args.async_, timeout_s=args.delta_timeout,
            on_timeout=args.on_timeout, allow_unverified=args.allow_unverified, progress=show,
            max_size=args.max_size, budget=args.budget, lock_timeout_s=args.lock_timeout,
            platform=args.platform,
        )
    finally:
        edge.close()
    summary = result.to_json()
    summary["layout"] = str(layout.root)
    if args.output and result.stored_digest and result.status != STATUS_PENDING:
        image = next((i for i in layout.images() if i.descriptor.digest == result.stored_digest), None)
        if image is not None:
            summary["output"] = [str(p) for p in extract_image(layout, image.descriptor, args.output)]
    if args.json:
        print(json.dumps(summary))
    else:
        print(_describe(result))
    return {STATUS_UP_TO_DATE: EXIT_UP_TO_DATE, STATUS_PENDING: EXIT_PENDING}.get(result.status, EXIT_OK)


def _run_full(args: argparse.Namespace, registry: DeltaRegistry, ref: Reference, layout: OCILayout) -> int:
    """Without a Doras server: a verified full pull (exit 0), with ``--max-size`` and ``--budget``."""
    ledger = DownloadBudget(layout.root, *args.budget) if args.budget else None
    with layout.lock(timeout=args.lock_timeout):
        received_before = registry.bytes_received
        parsed = None
        if args.max_size is not None or ledger is not None:
            parsed = registry.fetch_parsed(ref)
            document = parsed.document
            declared = parsed.descriptor.size
            if "config" in document:  # an image manifest (an index declares only itself)
                declared += sum(int(d["size"]) for d in [document["config"], *document.get("layers", [])])
            check_max_size(declared, args.max_size, what=str(ref))
            if ledger is not None:
                ledger.check(declared, what=f"a full pull of {ref}")
        try:
            full = registry.pull_full(ref, layout, platform=args.platform, lock_timeout=args.lock_timeout,
                                      parsed=parsed)
        finally:
            if ledger is not None:
                ledger.record(registry.bytes_received - received_before)
    summary = full_pull_summary(full, layout)
    if args.output:
        summary["output"] = [str(p) for p in extract_image(layout, full.manifest, args.output)]
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"pulled {summary['reference']} -> {summary['layout']} {summary['digest']} "
              f"({summary['bytes_received']} bytes received)")
    return EXIT_OK


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


command("pull", "update an OCI image layout to an image: by delta through a Doras server, else a verified full pull")(_configure_pull)(_run_pull)


def _configure_gc(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--oci-layout", required=True, metavar="DIR", help="the OCI image layout")
    parser.add_argument("--keep", type=int, required=True, metavar="N", help="images to keep per repository")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--lock-timeout", type=float, default=300.0, metavar="S")


def _run_gc(args: argparse.Namespace) -> int:
    if args.keep < 0:
        print("doras-oras: error: --keep must be >= 0", file=sys.stderr)
        return EXIT_USAGE
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
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"removed {len(result.removed_images)} image(s), {len(result.removed_blobs)} blob(s), "
              f"{result.freed_bytes} bytes")
    return EXIT_OK


command("gc", "keep the newest N images per repository; remove unreferenced blobs")(_configure_gc)(_run_gc)
