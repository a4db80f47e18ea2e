"""``doras-oras delta``: ask a Doras server for a delta and print its answer.

Exit codes: 0 ready, 3 identical (up to date), 4 pending (``--async`` got
202, or the blocking wait ran out of attempts or time), 2 usage, 1 error.
"""

from __future__ import annotations

import argparse
import sys

from ..auth import DockerConfigAuth
from ..edgeapi import DEFAULT_TIMEOUT_S, EdgeClient
from ..errors import (
    BackoffExhausted,
    Fix,
    ImagesIdenticalError,
    InsecureTransportError,
    InvalidArgumentError,
)
from ..reference import Reference
from ..transport import TransferPolicy
from .exits import EXIT_OK, EXIT_PENDING, EXIT_UP_TO_DATE
from .options import (
    add_connection_options,
    add_server_options,
    credentials_from_args,
    edge_auth_from_args,
    tls_from_args,
)
from .output import emit, warn

NAME = "delta"
HELP = "ask a Doras server for a delta between two images and print its answer"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="from_image", required=True, metavar="REF",
                        help="the image you have, as a digest reference registry/repo@sha256:... "
                             "(or sha256:... in the repository of --to)")
    parser.add_argument("--to", dest="to_image", required=True, metavar="REF",
                        help="the image you want: registry/repo:tag or registry/repo@sha256:...")
    add_server_options(parser, required=True)
    parser.add_argument("--token-stdin", action="store_true",
                        help="read a bearer token for the Doras server from stdin")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    add_connection_options(parser, registry=False)


def _client(args: argparse.Namespace) -> EdgeClient:
    # --from sha256:<hex> (or a tag) is read in the repository of --to
    args.from_image = str(Reference.parse_relative(args.from_image, Reference.parse(args.to_image)))
    if args.plain_http:
        raise InvalidArgumentError("--plain-http says the registry speaks plain HTTP (pull); delta talks to the "
                                   "Doras server only, and an http:// --server needs no flag")
    token: str | None = None
    if args.token_stdin:
        if args.username or args.password or args.password_stdin:
            raise InvalidArgumentError("--token-stdin and --username/--password exclude each other")
        token = sys.stdin.readline().strip()
        if not token:
            raise InvalidArgumentError("--token-stdin: no token on stdin")
    credentials = credentials_from_args(args)
    plain = str(args.server).startswith("http://")
    auth = edge_auth_from_args(args, credentials, token)
    if plain and not args.allow_insecure_auth and (
            not isinstance(auth, DockerConfigAuth) or auth.authorization(Reference.parse(args.to_image).registry)):
        raise InsecureTransportError(f"credentials would go to the Doras server {args.server} over plain HTTP; "
                                     "refused", fix=Fix.INSECURE_AUTH)
    verify = tls_from_args(args)
    # Each request also times out after min(--timeout, 30 s): a wait bound shorter than a request.
    read_timeout = min(float(args.read_timeout), float(args.delta_timeout or DEFAULT_TIMEOUT_S))
    policy = TransferPolicy(connect_timeout_s=min(float(args.connect_timeout), read_timeout),
                            read_timeout_s=read_timeout, deadline_s=float(args.deadline), max_attempts=3,
                            wait_initial_s=0.25, wait_max_s=5.0, retry_after_max_s=30.0)
    client = EdgeClient(args.server, plain, auth, tls_verify=verify, policy=policy)
    client.delta_url(args.from_image, args.to_image, args.accept)  # local checks first
    return client


def run(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            if args.async_:
                response, _exists = client.read_delta_async(args.from_image, args.to_image, args.accept)
            else:
                response = client.read_delta(args.from_image, args.to_image, args.accept,
                                             deadline_s=args.delta_timeout)
        except ImagesIdenticalError:
            emit(args, {"status": "identical"}, "up to date: from and to are the same image")
            return EXIT_UP_TO_DATE
        except BackoffExhausted as exc:
            warn(str(exc))
            emit(args, {"status": "pending", "message": str(exc)},
                 "pending: the delta is still being built; ask again later")
            return EXIT_PENDING
    if response is None:
        emit(args, {"status": "pending"}, "pending: the delta is being built; ask again later")
        return EXIT_PENDING
    emit(args, {"status": "ready", **response.to_json()},
         f"target_image: {response.target_image}\ndelta_image: {response.delta_image}")
    return EXIT_OK
