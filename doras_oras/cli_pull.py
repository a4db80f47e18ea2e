"""``doras-oras pull`` (verified full pull into an OCI layout) and ``doras-oras gc``.

``pull`` is built so that the delta pull can be added: :func:`add_registry_options`
and :func:`registry_from_args` are reusable, and :func:`full_pull_summary` gives
the JSON object printed with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .cli import EXIT_OK, EXIT_USAGE, command
from .layout import OCILayout
from .reference import Reference
from .registry import DeltaRegistry, FullPullResult


def add_registry_options(parser: argparse.ArgumentParser) -> None:
    """The flags that say how to talk to the registry."""
    parser.add_argument("--plain-http", action="store_true", help="talk plain HTTP to the registry")
    parser.add_argument("--insecure", action="store_true", help="do not verify the registry's TLS certificate")
    parser.add_argument("--ca-file", metavar="FILE", help="CA bundle to verify the registry's certificate")
    parser.add_argument("-u", "--username", help="registry user name")
    parser.add_argument("-p", "--password", help="registry password (prefer --password-stdin)")
    parser.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    parser.add_argument(
        "--allow-insecure-auth", action="store_true",
        help="allow sending credentials over plain HTTP (with --plain-http)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, metavar="S", help="read timeout in seconds")


def registry_from_args(args: argparse.Namespace) -> DeltaRegistry:
    """A :class:`DeltaRegistry` configured from :func:`add_registry_options` flags."""
    tls_verify: bool | str = True
    if args.insecure:
        tls_verify = False
    elif args.ca_file:
        tls_verify = str(args.ca_file)
    registry = DeltaRegistry(
        insecure=bool(args.plain_http), tls_verify=tls_verify,
        allow_insecure_auth=bool(args.allow_insecure_auth), timeout=(10.0, float(args.timeout)),
    )
    password = args.password
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    if args.username or password:
        if not (args.username and password):
            raise ValueError("-u/--username and a password go together")
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
