"""What the command writes: results on stdout (text or one JSON object), errors on stderr.

Every error goes through :func:`report_error`: one line ``doras-oras: error: ...``
on stderr and, with ``--json``, one object ``{"status": "error", "error": CLASS,
"message": ..., "exit_code": N, "fix": CODE, "hint": ...}`` on stdout (plus the
Doras server's fields for its errors, ``reason`` for a trust failure, ``reason_code``
and ``reason`` for a refused full download), so that a script always gets one JSON object.

The library words the fix of an error (:class:`~doras_oras.errors.Fix`) in
Python API terms; the command says it in its own flags: :data:`CLI_HINTS`
(:func:`describe` puts them together). Sizes in text are human
(:func:`human_size`); JSON keeps bytes.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import DorasOrasError, DorasServerError, FallbackRefusedError, Fix, TrustError
from ..reference import Reference

PREFIX = "doras-oras: error: "

CLI_HINTS: dict[Fix, str] = {
    Fix.INSECURE_AUTH: "add --allow-insecure-auth to send them anyway (they travel in clear)",
    Fix.PLAIN_HTTP: "add --plain-http: the registry speaks plain HTTP",
    Fix.TLS_REGISTRY: "give --ca-file FILE (the CA that signed the registry's certificate) or --insecure "
                      "(no verification); --plain-http if the registry speaks plain HTTP",
    Fix.SERVER_PLAIN_HTTP: "an http:// --server is used as given (credentials go to it only with "
                           "--allow-insecure-auth)",
    Fix.SERVER_SPEAKS_HTTP: "the Doras server speaks plain HTTP: give --server {server_http}",
    Fix.TLS_SERVER: "the certificate of the Doras server {server} does not verify: give --ca-file FILE "
                    "(the CA that signed it; --ca-file applies to the registry too, so give a bundle "
                    "with both CAs if they differ) or --insecure",
    Fix.REGISTRY_CREDENTIALS: "give credentials with -u USER and --password-stdin, or --registry-config FILE, "
                              "or log in with `oras login {registry}` (~/.docker/config.json is read)",
    Fix.REALM_HOST: "if you trust that token server, add --allow-realm-host HOST:PORT",
    Fix.CREDENTIALS_REFUSED: "check the password and that the user may read the repository; other "
                             "credentials with -u USER and --password-stdin, or --registry-config FILE",
    Fix.NOT_FOUND: "check the repository and the tag of REF (`oras repo tags {name}` lists the registry's tags, "
                   "`doras-oras list --oci-layout {layout}` the layout's)",
    Fix.SERVER_CREDENTIALS: "the Doras server wants credentials: -u USER with --password-stdin, or "
                            "--registry-config FILE (pull passes the registry's credentials on; "
                            "`doras-oras delta` also takes --token-stdin)",
    Fix.REBUILD_INDEX: "run `doras-oras gc --rebuild --oci-layout {layout}` to rebuild it from the blobs "
                       "(the tags are lost)",
    Fix.LOCK_TIMEOUT: "wait longer with --lock-timeout S",
    Fix.MAX_SIZE: "raise --max-size",
    Fix.BUDGET: "raise --budget, or wait until the period has passed",
    Fix.DEADLINE: "raise --deadline S",
    Fix.DISK_SPACE: "free space on that file system (`doras-oras gc --oci-layout {layout} --keep N` drops old images), "
                    "or give a --oci-layout or --output on another one",
    Fix.READ_ONLY_LAYOUT: "make {layout} writable (remount its file system read-write) or give a writable "
                          "--oci-layout; on a read-only layout only an up-to-date pull, verify, fsck and list work",
    Fix.OVERWRITE_DELTA: "add --force to replace it",
}
"""The fix of each :class:`Fix` in the command's flags (``{...}`` filled in from the command line)."""


def _context(args: argparse.Namespace | None) -> dict[str, str]:
    """What the hints name: the layout, the Doras server, the registry host of the command line."""
    values = {"layout": "DIR", "server": "", "server_http": "http://HOST:PORT", "registry": "HOST",
              "name": "HOST/REPOSITORY"}
    if args is None:
        return values
    layout = getattr(args, "oci_layout", None)
    if layout:
        values["layout"] = str(layout)
    server = getattr(args, "server", None)
    if server:
        values["server"] = str(server)
        values["server_http"] = "http://" + str(server).split("://", 1)[-1]
    for name in ("reference", "from_image"):
        text = getattr(args, name, None)
        if text:
            try:
                parsed = Reference.parse(str(text))
            except DorasOrasError:
                continue
            values["registry"], values["name"] = parsed.registry, parsed.name
            break
    return values


def hint(fix: Fix | None, args: argparse.Namespace | None = None) -> str | None:
    """The fix in the command's flags, or None."""
    if fix is None:
        return None
    return CLI_HINTS[fix].format(**_context(args)).replace("  ", " ")


def describe(error: BaseException | str, args: argparse.Namespace | None = None) -> str:
    """The message of a failure as the command says it: what went wrong, then the fix in flags."""
    if isinstance(error, str):
        return error
    if not isinstance(error, DorasOrasError):
        return str(error)
    words = hint(error.fix, args)
    return f"{error.detail}; {words}" if words else error.detail


def emit(args: argparse.Namespace, obj: dict[str, Any], text: str) -> None:
    """Print the result: ``obj`` as one JSON line with ``--json``, else ``text``."""
    if getattr(args, "json", False):
        print(json.dumps(obj, sort_keys=True))
    else:
        print(text)


def error_object(error: BaseException | str, code: int, args: argparse.Namespace | None = None,
                 *, kind: str = "UsageError") -> dict[str, Any]:
    """The ``--json`` object of a failure (``kind`` names a failure given as text)."""
    fix = error.fix if isinstance(error, DorasOrasError) else None
    obj: dict[str, Any] = {
        "status": "error",
        "error": kind if isinstance(error, str) else type(error).__name__,
        "message": describe(error, args),
        "exit_code": code,
        "fix": fix.value if fix is not None else None,
        "hint": hint(fix, args),
    }
    if isinstance(error, DorasServerError):
        obj.update(http_status=error.status, server_message=error.message, context=error.context)
    if isinstance(error, TrustError):
        obj["reason"] = error.reason  # exit 5's reason code: not-found, bad-signature, rollback, stale, ...
    if isinstance(error, FallbackRefusedError):  # a refused full download: why no delta was used
        obj.update(reason_code=error.reason_code, reason=error.reason)
    return obj


def report_error(args: argparse.Namespace | None, error: BaseException | str, code: int, *,
                 json_output: bool | None = None, kind: str = "UsageError") -> int:
    """Say what went wrong (stderr; and stdout as JSON with ``--json``); return ``code``.

    ``json_output`` overrides ``args.json`` (for failures found before the flags parsed).
    """
    print(f"{PREFIX}{describe(error, args)}", file=sys.stderr)
    wanted = json_output if json_output is not None else bool(getattr(args, "json", False))
    if wanted:
        print(json.dumps(error_object(error, code, args, kind=kind), sort_keys=True))
    return code


def warn(text: str) -> None:
    """A warning the user should see (stderr, the command's prefix); not an error."""
    print(f"doras-oras: warning: {text}", file=sys.stderr)


def human_size(n: int) -> str:
    """``1536`` -> ``1.5 KiB`` (bytes below 1 KiB stay exact, ``512 B``)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover
