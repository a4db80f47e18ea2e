"""``doras-oras delta``: ask a Doras server for a delta and print its answer.

Exit codes: 0 ready, 3 identical (up to date), 4 pending (``--async`` got
202, or the blocking wait ran out of attempts or time), 2 usage, 1 error.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .cli import EXIT_ERROR, EXIT_OK, EXIT_PENDING, EXIT_UP_TO_DATE, EXIT_USAGE, command
from .edgeapi import (
    ALGORITHM_NAMES,
    DEFAULT_TIMEOUT_S,
    AuthArg,
    BasicAuth,
    BearerAuth,
    DockerConfigAuth,
    EdgeClient,
    ReadDeltaResponse,
)
from .errors import (
    BackoffExhausted,
    DorasOrasError,
    DorasServerError,
    ImagesIdenticalError,
    InsecureTransportError,
    InvalidReferenceError,
    UnsupportedAlgorithmError,
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="from_image", required=True, metavar="REF",
                        help="the image you have, as a digest reference registry/repo@sha256:...")
    parser.add_argument("--to", dest="to_image", required=True, metavar="REF",
                        help="the image you want: registry/repo:tag or registry/repo@sha256:...")
    parser.add_argument("--server", required=True, metavar="URL", help="the Doras server, https://host[:port]")
    parser.add_argument("--accept", action="append", choices=ALGORITHM_NAMES, metavar="ALGO",
                        help=f"an accepted algorithm ({', '.join(ALGORITHM_NAMES)}); repeat; "
                             "none: the server's default (bsdiff, tardiff, zstd)")
    parser.add_argument("--async", dest="no_wait", action="store_true",
                        help="ask once; exit 4 if the delta is still being built")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--plain-http", action="store_true",
                        help="allow a plain http server (credentials then travel in clear)")
    parser.add_argument("--ca-file", metavar="FILE", help="verify the server's TLS certificate with this CA")
    parser.add_argument("--insecure", action="store_true", help="do not verify the server's TLS certificate")
    parser.add_argument("-u", "--username", help="basic credentials the server passes to the registry")
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument("-p", "--password", help="password for --username (prefer --password-stdin)")
    secret.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    secret.add_argument("--token-stdin", action="store_true", help="read a bearer token from stdin")
    parser.add_argument("--timeout", type=float, default=None, metavar="S",
                        help="give up waiting for the delta after S seconds (also caps each request)")


def _auth(args: argparse.Namespace) -> AuthArg:
    if args.token_stdin:
        if args.username:
            raise _Usage("--token-stdin and --username exclude each other")
        token = sys.stdin.readline().strip()
        if not token:
            raise _Usage("--token-stdin: no token on stdin")
        return BearerAuth(token)
    if args.password_stdin or args.password is not None:
        if not args.username:
            raise _Usage("a password needs --username")
        password = sys.stdin.readline().rstrip("\r\n") if args.password_stdin else args.password
        if not password:
            raise _Usage("empty password")
        return BasicAuth(args.username, password)
    if args.username:
        raise _Usage("--username needs --password or --password-stdin")
    return DockerConfigAuth()


class _Usage(Exception):
    """A bad combination of flags."""


def _emit(args: argparse.Namespace, obj: dict[str, Any], text: str) -> None:
    if args.json:
        print(json.dumps(obj, sort_keys=True))
    else:
        print(text)


def _ready(args: argparse.Namespace, response: ReadDeltaResponse) -> int:
    _emit(args, {"status": "ready", **response.to_json()},
          f"target_image: {response.target_image}\ndelta_image: {response.delta_image}")
    return EXIT_OK


def _error(args: argparse.Namespace, exc: DorasOrasError, code: int) -> int:
    print(f"doras-oras delta: error: {exc}", file=sys.stderr)
    if args.json:
        obj: dict[str, Any] = {"status": "error", "error": type(exc).__name__, "message": str(exc)}
        if isinstance(exc, DorasServerError):
            obj.update(http_status=exc.status, server_message=exc.message, context=exc.context)
        print(json.dumps(obj, sort_keys=True))
    return code


def run(args: argparse.Namespace) -> int:
    if args.timeout is not None and args.timeout <= 0:
        print("doras-oras delta: error: --timeout must be > 0", file=sys.stderr)
        return EXIT_USAGE
    try:
        auth = _auth(args)
        timeout_s = min(args.timeout, DEFAULT_TIMEOUT_S) if args.timeout else DEFAULT_TIMEOUT_S
        client = EdgeClient(args.server, allow_http=args.plain_http, auth=auth, ca_file=args.ca_file,
                            insecure=args.insecure, timeout_s=timeout_s)
        client.delta_url(args.from_image, args.to_image, args.accept)  # local checks first
    except _Usage as exc:
        print(f"doras-oras delta: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (InvalidReferenceError, UnsupportedAlgorithmError, InsecureTransportError) as exc:
        return _error(args, exc, EXIT_USAGE)
    with client:
        try:
            if args.no_wait:
                response, _exists = client.read_delta_async(args.from_image, args.to_image, args.accept)
            else:
                response = client.read_delta(args.from_image, args.to_image, args.accept,
                                             deadline_s=args.timeout)
        except ImagesIdenticalError:
            _emit(args, {"status": "identical"}, "up to date: from and to are the same image")
            return EXIT_UP_TO_DATE
        except BackoffExhausted as exc:
            print(f"doras-oras delta: {exc}", file=sys.stderr)
            _emit(args, {"status": "pending", "message": str(exc)},
                  "pending: the delta is still being built; ask again later")
            return EXIT_PENDING
        except DorasOrasError as exc:
            return _error(args, exc, EXIT_ERROR)
    if response is None:
        _emit(args, {"status": "pending"}, "pending: the delta is being built; ask again later")
        return EXIT_PENDING
    return _ready(args, response)


command("delta", "ask a Doras server for a delta between two images and print its answer")(configure)(run)
