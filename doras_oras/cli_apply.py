"""``doras-oras apply``: apply a delta file to a base file, offline.

Prints the result's digest and size (or one JSON object with ``--json``);
exit 0 only when the output was written completely and verified.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE, command
from .codecs import DeltaAlgorithm, apply_delta
from .descriptor import validate_digest
from .errors import InvalidDigestError

log = logging.getLogger(__name__)


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, type=Path, help="the file the delta was made from")
    parser.add_argument("--delta", required=True, type=Path, help="the delta file")
    parser.add_argument("--output", required=True, type=Path,
                        help="where to write the result (replaced atomically)")
    parser.add_argument("--algorithm", choices=[a.value for a in DeltaAlgorithm],
                        help="the delta kind (default: detected from the delta's magic bytes)")
    parser.add_argument("--expect-digest", metavar="DIGEST",
                        help="fail unless the result has this digest (sha256:<hex>)")
    parser.add_argument("--expect-size", metavar="BYTES", type=int,
                        help="fail unless the result has this size")
    parser.add_argument("--tmp-dir", type=Path,
                        help="directory for temporary files (default: the output's directory)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _run(args: argparse.Namespace) -> int:
    if args.expect_digest is not None:
        try:
            validate_digest(args.expect_digest)
        except InvalidDigestError as exc:
            print(f"doras-oras apply: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if args.expect_size is not None and args.expect_size < 0:
        print("doras-oras apply: --expect-size must be >= 0", file=sys.stderr)
        return EXIT_USAGE
    try:
        return _apply(args)
    except OSError as exc:
        print(f"doras-oras: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _apply(args: argparse.Namespace) -> int:
    with open(args.delta, "rb") as delta:
        if args.algorithm:
            algorithm = DeltaAlgorithm.from_name(args.algorithm)
        else:
            algorithm = DeltaAlgorithm.detect(delta.read(8))
            delta.seek(0)
            log.info("detected delta algorithm %s", algorithm.value)
        digest, size = apply_delta(
            algorithm, args.base, delta, args.output,
            expected_digest=args.expect_digest, expected_size=args.expect_size,
            tmp_dir=args.tmp_dir,
        )
    if args.json:
        print(json.dumps({"output": str(args.output), "algorithm": algorithm.value,
                          "digest": digest, "size": size}))
    else:
        print(f"{args.output}: {digest} {size} bytes ({algorithm.value})")
    return EXIT_OK


command("apply", "apply a delta (bsdiff or tar-diff) to a base file, offline")(_configure)(_run)
