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
from typing import Any

from .cli import EXIT_OK, EXIT_USAGE, command
from .layout import OCILayout
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
    parser.add_argument("--read-timeout", "--timeout", dest="read_timeout", type=_seconds,
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


def _configure_pull(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("reference", metavar="REF", help="registry/repository[:tag][@digest]")
    parser.add_argument("--oci-layout", required=True, metavar="DIR", help="the OCI image layout to pull into")
    parser.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="platform to choose from an image index")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--lock-timeout", type=float, default=300.0, metavar="S",
                        help="how long to wait for another process using the layout")
    add_registry_options(parser)


def _run_pull(args: argparse.Namespace) -> int:
    try:
        ref = Reference.parse(args.reference)
    except ValueError as exc:
        print(f"doras-oras: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        registry = registry_from_args(args)
    except ValueError as exc:
        print(f"doras-oras: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    layout = OCILayout.open(args.oci_layout)
    result = registry.pull_full(ref, layout, platform=args.platform, lock_timeout=args.lock_timeout)
    summary = full_pull_summary(result, layout)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"pulled {summary['reference']} -> {summary['layout']} {summary['digest']} "
              f"({summary['bytes_received']} bytes received)")
    return EXIT_OK


command("pull", "pull an image into an OCI image layout (verified)")(_configure_pull)(_run_pull)


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
