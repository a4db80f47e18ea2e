"""``doras-oras verify``: re-verify, offline, an image of an OCI layout with the signatures kept beside it.

A device that pulled with ``--verify-key`` (or ``--trust-policy``) keeps the
signature manifest that verified in the layout; this command checks it again
without any network: the signature with the given keys (or policy), the chain
from the signed digest to the stored manifest, and every stored byte of the
image against its digest (docs/trust.md). It only reads (no lock, nothing
written or removed: a read-only layout works). Exit 0 verified, 5 refused
(any :class:`~doras_oras.errors.TrustError`, a tampered stored byte too), 1
when the layout lacks the image, 2 usage.
"""

from __future__ import annotations

import argparse

from ..layout import OCILayout
from ..reference import Reference
from .exits import EXIT_OK
from .options import add_trust_options, verification_from_args
from .output import emit

NAME = "verify"
HELP = "re-verify, offline, the signature of an image stored in an OCI layout"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("reference", metavar="REF",
                        help="the image as it was pulled: registry/repository[:tag][@digest]")
    parser.add_argument("--oci-layout", required=True, metavar="DIR", help="the OCI image layout")
    add_trust_options(parser, required=True)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def run(args: argparse.Namespace) -> int:
    ref = Reference.parse(args.reference)
    verification = verification_from_args(args)
    assert verification is not None  # add_trust_options(required=True)
    from ..signatures import verify_stored  # cryptography loads for this command only

    layout = OCILayout.open(args.oci_layout, create=False)
    checked = verify_stored(layout, ref, verification)  # read only: no lock, nothing written or removed
    signature = checked.trust.signature
    who = f" by {signature.key}" if signature is not None else " (the trust policy needs no signature here)"
    emit(args, {"reference": str(ref), **checked.to_json()},
         f"{ref}: verified {checked.signed_digest}{who}; stored image {checked.image.descriptor.digest} intact")
    return EXIT_OK
