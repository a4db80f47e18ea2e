"""``doras-oras apply``: apply a delta file to a base file, offline.

Prints the result's digest and size (or one JSON object with ``--json``);
exit 0 only when the output was written completely and verified. The output
is written by a :class:`~doras_oras.layout.BlobWriter` beside it (hashed while
written, checked, fsynced, renamed): it appears only when complete.

Neither delta format names its base: a wrong ``--base`` gives wrong bytes
without any error. So the result must be checked against ``--expect-digest``
(the target's digest, e.g. from its manifest); without it the command refuses
(a usage error) unless ``--allow-unverified`` is given, and then says loudly
that nothing was verified (``"verified": false`` in JSON).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from ..algorithms import DeltaAlgorithm
from ..codecs import apply_delta
from ..descriptor import validate_digest
from ..errors import InvalidArgumentError
from ..layout import BlobWriter
from .exits import EXIT_OK
from .options import count
from .output import emit, human_size, warn

log = logging.getLogger(__name__)

NAME = "apply"
HELP = "apply a delta (bsdiff or tar-diff) to a base file, offline"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, type=Path, help="the file the delta was made from")
    parser.add_argument("--delta", required=True, type=Path, help="the delta file")
    parser.add_argument("--output", required=True, type=Path,
                        help="where to write the result (replaced atomically)")
    parser.add_argument("--algorithm", choices=[a.value for a in DeltaAlgorithm],
                        help="the delta kind (default: detected from the delta's magic bytes)")
    parser.add_argument("--expect-digest", metavar="DIGEST",
                        help="fail unless the result has this digest (sha256:<hex>)")
    parser.add_argument("--expect-size", metavar="BYTES", type=count,
                        help="fail unless the result has this size")
    parser.add_argument("--allow-unverified", action="store_true",
                        help="write the result without --expect-digest (nothing then detects a wrong --base)")
    parser.add_argument("--tmp-dir", type=Path,
                        help="directory for temporary files (default: the output's directory)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def run(args: argparse.Namespace) -> int:
    if args.expect_digest is not None:
        validate_digest(args.expect_digest)
    output: Path = args.output
    if output.is_dir():
        raise InvalidArgumentError(f"--output {output} is a directory: give the path of the file to write")
    if not output.parent.is_dir():
        raise InvalidArgumentError(f"--output {output}: the directory {output.parent} does not exist")
    if args.expect_digest is None and not args.allow_unverified:
        raise InvalidArgumentError(
            "nothing would verify the result (a delta does not name its base: a wrong --base gives wrong "
            "bytes without an error); give --expect-digest sha256:<hex> (the target's digest, e.g. from its "
            "manifest), or --allow-unverified to write it anyway")
    if args.tmp_dir is not None and not args.tmp_dir.is_dir():
        raise InvalidArgumentError(f"--tmp-dir {args.tmp_dir}: no such directory")
    scratch_dir = args.tmp_dir or output.parent
    with open(args.base, "rb") as base, open(args.delta, "rb") as delta:
        if args.algorithm:
            algorithm = DeltaAlgorithm.from_name(args.algorithm)
        else:
            algorithm = DeltaAlgorithm.detect(delta.read(8))
            delta.seek(0)
            log.info("detected delta algorithm %s", algorithm.value)
        with BlobWriter.temporary(output.parent, digest=args.expect_digest, size=args.expect_size,
                                  what="delta output") as out:
            apply_delta(algorithm, base, delta, out, expected_size=args.expect_size,
                        scratch=lambda: tempfile.TemporaryFile(prefix=".doras-oras-", dir=scratch_dir))  # noqa: SIM115
            digest = out.commit(output)
    size = output.stat().st_size
    verified = args.expect_digest is not None
    if not verified:
        warn(f"{output} is NOT verified: without --expect-digest nothing checks that --base was the right base")
    emit(args, {"output": str(output), "algorithm": algorithm.value, "digest": digest, "size": size,
                "verified": verified},
         f"{output}: {digest} {human_size(size)} ({algorithm.value}){'' if verified else ', NOT verified'}")
    return EXIT_OK
