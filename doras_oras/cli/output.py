"""What the command writes: results on stdout (text or one JSON object), errors on stderr.

Every error goes through :func:`report_error`: one line ``doras-oras: error: ...``
on stderr and, with ``--json``, one object ``{"status": "error", "error": CLASS,
"message": ..., "exit_code": N}`` on stdout (plus the Doras server's fields for
its errors), so that a script always gets one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import DorasOrasError, DorasServerError

PREFIX = "doras-oras: error: "


def emit(args: argparse.Namespace, obj: dict[str, Any], text: str) -> None:
    """Print the result: ``obj`` as one JSON line with ``--json``, else ``text``."""
    if getattr(args, "json", False):
        print(json.dumps(obj, sort_keys=True))
    else:
        print(text)


def error_object(error: BaseException | str, code: int) -> dict[str, Any]:
    """The ``--json`` object of a failure."""
    if isinstance(error, str):
        return {"status": "error", "error": "UsageError", "message": error, "exit_code": code}
    obj: dict[str, Any] = {"status": "error", "error": type(error).__name__, "message": str(error),
                           "exit_code": code}
    if isinstance(error, DorasServerError):
        obj.update(http_status=error.status, server_message=error.message, context=error.context)
    return obj


def report_error(args: argparse.Namespace | None, error: DorasOrasError | str, code: int) -> int:
    """Say what went wrong (stderr; and stdout as JSON with ``--json``); return ``code``."""
    print(f"{PREFIX}{error}", file=sys.stderr)
    if args is not None and getattr(args, "json", False):
        print(json.dumps(error_object(error, code), sort_keys=True))
    return code


def human_size(n: int) -> str:
    """``1536`` -> ``1.5 KiB`` (bytes below 1 KiB stay exact)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover
