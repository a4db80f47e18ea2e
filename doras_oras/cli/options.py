"""The flags ``pull`` and ``delta`` share, and what they build: a registry client, an edge client.

- :func:`add_server_options`: ``--server``, ``--accept``, ``--async``, ``--timeout``;
- :func:`add_connection_options`: TLS, credentials, timeouts (registry and Doras server alike);
- :func:`add_trust_options`: ``--verify-key``, ``--verify-annotation``, ``--trust-policy``, ``--max-age``
  (``pull`` and ``verify``), read by :func:`verification_from_args`;
- :func:`registry_from_args`, :func:`edge_auth_from_args`, :func:`policy_from_args`;
- the argparse types of numbers (:func:`seconds`, :func:`seconds_or_zero`, :func:`count`):
  finite, in range, or a usage error.

Contradicting or unusable flags raise :class:`~doras_oras.errors.InvalidArgumentError`
(a usage error, exit 2).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import warnings
from typing import TYPE_CHECKING

import urllib3

from ..algorithms import ALGORITHM_NAMES
from ..auth import IDENTITY_TOKEN_USER, DockerConfigAuth, default_docker_config
from ..errors import InvalidArgumentError
from ..registry_client import RegistryClient
from ..transport import TransferPolicy

if TYPE_CHECKING:
    from ..edgeapi import AuthArg
    from ..trust import Verification

log = logging.getLogger(__name__)


def seconds(text: str) -> float:
    """argparse type: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration(text: str) -> float:
    """argparse type: a positive duration, seconds or with a unit: ``90s``, ``30m``, ``12h``, ``7d``, ``2w``."""
    unit = text[-1:].lower()
    number = text[:-1] if unit in _UNITS else text
    try:
        value = float(number) * _UNITS.get(unit, 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 3600, 12h, 7d)") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive duration, not {text!r}")
    return value


def seconds_or_zero(text: str) -> float:
    """argparse type: a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, not {text!r}")
    return value


def size(text: str) -> int:
    """argparse type: ``123``, ``64K``, ``10M``, ``2G`` (binary units) as bytes, >= 0."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    text = text.strip().lower().removesuffix("ib").removesuffix("b")
    factor = units.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in units else text
    try:
        value = int(float(number) * factor)  # nan and inf raise here
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: use BYTES with K/M/G/T suffixes") from None
    if value < 0:
        raise argparse.ArgumentTypeError("a size must be >= 0")
    return value


def count(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {text!r}")
    return value


def server_url(text: str) -> str:
    """argparse type: a Doras server URL (not empty: an unset variable in a script is a mistake)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty URL (is the variable that should hold it set?)")
    return text


#: The flags of ``pull`` that only mean something with ``--server``: (dest, flag).
SERVER_ONLY: tuple[tuple[str, str], ...] = (
    ("accept", "--accept"), ("async_", "--async"), ("delta_timeout", "--timeout"),
)


def check_server_only(args: argparse.Namespace, flags: tuple[tuple[str, str], ...] = SERVER_ONLY) -> None:
    """A usage error when flags of the delta path are given without ``--server``.

    A flag that would be silently ignored hides a mistake (an empty variable, a missing ``--server``).
    """
    if getattr(args, "server", None):
        return
    given = [flag for dest, flag in flags if getattr(args, dest, None) not in (None, False, [])]
    if given:
        raise InvalidArgumentError(f"{', '.join(given)} only apply with --server (a delta pull); "
                                   "without it the pull is a verified full pull")


def add_server_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """The Doras server and how to ask it."""
    parser.add_argument("--server", metavar="URL", required=required, type=server_url,
                        help="the Doras server, https://host[:port]"
                             + ("" if required else "; without it: a verified full pull"))
    parser.add_argument("--accept", action="append", choices=ALGORITHM_NAMES, metavar="ALGO",
                        help=f"an accepted algorithm ({', '.join(ALGORITHM_NAMES)}); repeat")
    parser.add_argument("--async", dest="async_", action="store_true",
                        help="ask once; exit 4 (pending) while the server builds the delta")
    parser.add_argument("--timeout", "--wait-timeout", dest="delta_timeout", type=seconds, metavar="S",
                        help="bound the wait for the delta to S seconds")


def add_connection_options(parser: argparse.ArgumentParser, *, registry: bool = True) -> None:
    """How to talk to the registry and the Doras server (TLS, credentials, time bounds).

    ``registry`` False: the command talks to the Doras server only (``delta``), and the help says so.
    """
    peers = "the registry and the Doras server" if registry else "the Doras server"
    if registry:
        parser.add_argument("--plain-http", action="store_true",
                            help="the registry speaks plain HTTP (an http:// --server needs no flag)")
    else:  # one meaning everywhere: this command talks to no registry (refused with a message in run)
        parser.add_argument("--plain-http", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--insecure", action="store_true",
                        help=f"do not verify the TLS certificates of {peers}")
    parser.add_argument("--ca-file", metavar="FILE",
                        help=f"CA bundle to verify the TLS certificates of {peers} with "
                             "(instead of the system's CAs)")
    parser.add_argument("-u", "--username",
                        help="registry user name (the Doras server is given it too)" if registry
                        else "user name given to the Doras server (it reads the registry with it)")
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument("-p", "--password", help="registry password (prefer --password-stdin)")
    secret.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    if registry:
        secret.add_argument("--identity-token", metavar="TOKEN",
                            help="registry identity token (an OAuth2 refresh token, as oras takes; prefer "
                                 "--identity-token-stdin)")
        secret.add_argument("--identity-token-stdin", action="store_true",
                            help="read the registry identity token from stdin")
    parser.add_argument(
        "--registry-config", metavar="FILE", action="append", default=[],
        help="docker config.json with registry credentials (repeatable; ~/.docker/config.json is read too)",
    )
    parser.add_argument(
        "--allow-insecure-auth", action="store_true",
        help="allow sending credentials over plain HTTP (to a --plain-http registry or an http:// --server)"
        if registry else "allow sending credentials to an http:// --server (they travel in clear)",
    )
    if registry:
        parser.add_argument(
            "--allow-realm-host", metavar="HOST[:PORT]", action="append", default=[],
            help="trust the registry's token server there, on another host or port than the registry (repeatable)",
        )
    defaults = TransferPolicy()
    parser.add_argument("--connect-timeout", type=seconds, default=defaults.connect_timeout_s, metavar="S",
                        help=f"TCP/TLS connect timeout per request (default {defaults.connect_timeout_s:g})")
    parser.add_argument("--read-timeout", dest="read_timeout", type=seconds,
                        default=defaults.read_timeout_s, metavar="S",
                        help=f"give up an attempt after S seconds without a byte (default {defaults.read_timeout_s:g})")
    parser.add_argument("--deadline", type=seconds, default=defaults.deadline_s, metavar="S",
                        help=f"overall time bound of all requests together, retries included "
                             f"(default {defaults.deadline_s:g})")


def policy_from_args(args: argparse.Namespace) -> TransferPolicy:
    """The :class:`TransferPolicy` of :func:`add_connection_options` flags."""
    return TransferPolicy(
        connect_timeout_s=float(args.connect_timeout),
        read_timeout_s=float(args.read_timeout),
        deadline_s=float(args.deadline),
        allow_http=bool(args.plain_http),
    )


def _https_peers(args: argparse.Namespace) -> list[str]:
    """The peers of the command spoken to over TLS: the registry (``pull``, without ``--plain-http``), the server."""
    peers = ["the registry"] if hasattr(args, "reference") and not args.plain_http else []
    if str(getattr(args, "server", None) or "").startswith("https://"):
        peers.append("the Doras server")
    return peers


def tls_from_args(args: argparse.Namespace) -> bool | str:
    """``tls_verify``: True, False (``--insecure``) or the ``--ca-file``.

    ``--insecure`` is said once, as a warning of the command (none under ``-q``, none
    when no peer speaks TLS), instead of urllib3's warning per request.
    """
    if args.insecure and args.ca_file:
        raise InvalidArgumentError("--insecure and --ca-file contradict each other")
    if args.insecure:
        warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
        peers = _https_peers(args)
        if peers:
            log.warning("--insecure: the TLS certificates of %s are not verified", " and ".join(peers))
        return False
    if args.ca_file:
        if not os.path.isfile(args.ca_file):
            raise InvalidArgumentError(f"--ca-file {args.ca_file}: no such file")
        return str(args.ca_file)
    return True


def credentials_from_args(args: argparse.Namespace) -> tuple[str, str] | None:
    """``(user, password)`` of ``-u`` with ``-p`` or ``--password-stdin`` (first line of stdin); an identity
    token is ``("<token>", token)`` (:data:`~doras_oras.auth.IDENTITY_TOKEN_USER`)."""
    for config in args.registry_config:
        if not os.path.isfile(config):
            raise InvalidArgumentError(f"--registry-config {config}: no such file")
    identity = getattr(args, "identity_token", None)
    if getattr(args, "identity_token_stdin", False):
        identity = sys.stdin.readline().strip()
        if not identity:
            raise InvalidArgumentError("--identity-token-stdin: no token on stdin")
    if identity is not None:
        if args.username:
            raise InvalidArgumentError("an identity token and --username exclude each other")
        return IDENTITY_TOKEN_USER, identity
    password = args.password
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise InvalidArgumentError("--password-stdin: no password on stdin")
    if password and not args.username:
        raise InvalidArgumentError("a password needs --username (-u)")
    if args.username and not password:
        raise InvalidArgumentError("--username needs --password or --password-stdin")
    return (args.username, password) if args.username else None


def registry_from_args(args: argparse.Namespace, credentials: tuple[str, str] | None) -> RegistryClient:
    """A :class:`RegistryClient` configured from :func:`add_connection_options` flags."""
    return RegistryClient(
        plain_http=bool(args.plain_http), tls_verify=tls_from_args(args),
        allow_insecure_auth=bool(args.allow_insecure_auth), policy=policy_from_args(args),
        registry_configs=list(args.registry_config), credentials=credentials,
        allowed_realm_hosts=list(args.allow_realm_host),
    )


def edge_auth_from_args(args: argparse.Namespace, credentials: tuple[str, str] | None,
                        token: str | None) -> AuthArg:
    """What the Doras server is given: a bearer token, the basic credentials, or the docker config."""
    from ..edgeapi import BasicAuth, BearerAuth

    if token is not None:
        return BearerAuth(token)
    if credentials is not None:
        return BasicAuth(*credentials)
    return DockerConfigAuth([default_docker_config(), *args.registry_config])


def add_trust_options(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    """Which signatures make an artifact acceptable (docs/trust.md); with none, nothing is verified.

    ``required``: at least one of ``--verify-key`` and ``--trust-policy`` must be given.
    """
    group = parser.add_argument_group("signature verification (cosign, docs/trust.md)")
    group.add_argument("--verify-key", metavar="FILE", action="append", default=[],
                       help="refuse the artifact unless a cosign signature by this public key verifies "
                            "(PEM; repeatable: any one key suffices)")
    group.add_argument("--verify-annotation", metavar="KEY=VALUE", action="append", default=[],
                       help="and unless its signed payload carries this annotation (repeatable: all must be "
                            "there; needs --verify-key)")
    group.add_argument("--trust-policy", metavar="FILE",
                       help="a trust policy (JSON, schemas/trust-policy.json): which keys each repository "
                            "needs; with --verify-key, both must pass")
    group.add_argument("--max-age", type=duration, metavar="DURATION",
                       help="refuse a target whose signed creation time is older than this (e.g. 30d): "
                            "a registry that stopped showing new releases")
    parser.set_defaults(trust_required=required)


def verification_from_args(args: argparse.Namespace) -> Verification | None:
    """The :class:`~doras_oras.trust.Verification` of :func:`add_trust_options` flags (``None``: none given).

    ``--verify-annotation`` without ``--verify-key``, or a bad ``KEY=VALUE``, is a
    usage error; an unusable key or policy file is a trust failure
    (:class:`~doras_oras.errors.TrustConfigError`, exit 5). Keys and the policy are
    loaded here, before anything is sent.
    """
    keys_given, annotations_given, policy_file = args.verify_key, args.verify_annotation, args.trust_policy
    max_age = getattr(args, "max_age", None)
    if max_age is not None and not keys_given and policy_file is None:
        raise InvalidArgumentError("--max-age needs --verify-key or --trust-policy (only a signed creation time "
                                   "can be trusted)")
    if annotations_given and not keys_given:
        raise InvalidArgumentError("--verify-annotation needs --verify-key (the annotation is checked in a "
                                   "payload that key signed)")
    if not keys_given and policy_file is None:
        if getattr(args, "trust_required", False):
            raise InvalidArgumentError("give --verify-key FILE or --trust-policy FILE")
        return None
    from ..errors import TrustConfigError
    from ..trust import Requirement, Verification, load_policy, load_public_keys, parse_annotation

    annotations: dict[str, str] = {}
    for text in annotations_given:
        try:
            key, value = parse_annotation(text)
        except TrustConfigError as exc:
            raise InvalidArgumentError(f"--verify-annotation: {exc}") from exc
        if key in annotations and annotations[key] != value:
            raise InvalidArgumentError(f"--verify-annotation {key} given twice with different values")
        annotations[key] = value
    requirement = Requirement.from_keys(load_public_keys(keys_given), annotations) if keys_given else None
    policy = load_policy(policy_file) if policy_file is not None else None
    return Verification(policy=policy, keys=requirement, max_age_s=max_age)
