"""The one redactor: credentials out of every message, log line and error excerpt. Pure.

:func:`redact` masks bearer/basic credentials, JSON token and password fields,
signatures and tokens in query strings, and URL userinfo. :func:`excerpt`
turns a (hostile) body into a short printable line, redacted and with the
request's own secrets (:func:`secrets_of`) masked.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
from collections.abc import Sequence

EXCERPT_CHARS = 200

_SECRET_PATTERNS = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 [REDACTED]"),
    (
        re.compile(r'(?i)"(token|access_token|refresh_token|password|secret|auth)"\s*:\s*"[^"]*"'),
        r'"\1":"[REDACTED]"',
    ),
    (re.compile(r"(?i)\b(token|access_token|password|secret|signature|sig|x-amz-signature)=[^&\s\"']+"),
     r"\1=[REDACTED]"),
    (re.compile(r"(?i)(https?://)[^/\s:@]+:[^/\s@]+@"), r"\1[REDACTED]@"),
)


def redact(text: str) -> str:
    """``text`` with bearer/basic credentials, tokens, passwords and URL userinfo masked."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def shorten(text: str, limit: int = EXCERPT_CHARS) -> str:
    """``text`` cut to ``limit`` characters (``...`` marks a cut)."""
    return text if len(text) <= limit else text[:limit] + "..."


def secrets_of(authorization: str | None) -> tuple[str, ...]:
    """The secrets inside an ``Authorization`` value (the token; a basic user and password)."""
    if not authorization:
        return ()
    scheme, _, value = authorization.partition(" ")
    out = [value]
    if scheme.lower() == "basic":
        with contextlib.suppress(ValueError, binascii.Error):
            out += [s for s in base64.b64decode(value).decode("utf-8", "replace").split(":", 1) if s]
    return tuple(s for s in out if len(s) >= 3)


def mask(text: str, secrets: Sequence[str]) -> str:
    """``text`` with each of ``secrets`` replaced by ``***``, then :func:`redact` ed."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return redact(text)


def excerpt(data: bytes, secrets: Sequence[str] = ()) -> str:
    """A short printable one-line excerpt of a body, credentials masked."""
    text = data[: EXCERPT_CHARS * 4].decode("utf-8", "replace")
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return shorten(mask(" ".join(text.split()), secrets))
