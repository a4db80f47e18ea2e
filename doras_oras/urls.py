"""URL helpers shared by the transport, registry auth and the edge client. Pure."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit


def origin(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of ``url``, the unit credentials are bound to."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower(), port


def safe_url(url: str) -> str:
    """``url`` without userinfo and query (which may hold signatures), for messages and logs."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    query = "…" if parts.query else ""
    return urlunsplit((parts.scheme, host, parts.path, query, ""))


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """``(first, last, total)`` of ``bytes first-last/total`` (total None for ``*``), else None."""
    if value is None:
        return None
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value)
    if not match:
        return None
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), int(match.group(2)), total
