"""Reading the Markdown of docs/: fenced code blocks."""

from __future__ import annotations

import re
from pathlib import Path


def blocks(path: Path, language: str | None = None) -> list[str]:
    """The fenced code blocks of a Markdown file (of ``language``, when given)."""
    found = re.findall(r"```(\w*)\n(.*?)```", path.read_text(), re.S)
    return [body for lang, body in found if language is None or lang == language]
