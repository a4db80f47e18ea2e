"""Platforms of image indexes (``os/arch[/variant]``): this machine's, matching, choosing. Pure."""

from __future__ import annotations

import platform as _platform
from collections.abc import Mapping
from typing import Any

from .descriptor import MANIFEST_MEDIA_TYPES, Descriptor
from .errors import ImageNotFoundError, InvalidArgumentError

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm"}


def host_platform() -> str:
    """``os/arch`` of this machine in OCI terms (e.g. ``linux/amd64``)."""
    machine = _platform.machine().lower()
    return f"{_platform.system().lower()}/{_ARCH.get(machine, machine)}"


def parse_platform(text: str) -> tuple[str, str, str | None]:
    """``(os, arch, variant)`` of ``os/arch[/variant]``; :class:`InvalidArgumentError` otherwise."""
    parts = text.split("/") if isinstance(text, str) else []
    if len(parts) not in (2, 3) or not all(parts):
        raise InvalidArgumentError(f"invalid platform {str(text)[:100]!r}: expected os/arch[/variant], "
                                   "e.g. linux/arm64 or linux/arm/v7")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def platform_text(platform: Mapping[str, Any] | None) -> str:
    """``os/arch[/variant]`` of an index entry's ``platform`` object."""
    plat = platform or {}
    return "/".join(str(x) for x in (plat.get("os"), plat.get("architecture"), plat.get("variant")) if x)


def platform_matches(recorded: str, wanted: str) -> bool:
    """Whether an image of platform ``recorded`` is what ``wanted`` asks for (as an index entry
    is chosen: os and architecture equal, and the variant too when ``wanted`` names one)."""
    try:
        have, want = parse_platform(recorded), parse_platform(wanted)
    except InvalidArgumentError:
        return False
    return have[:2] == want[:2] and (want[2] is None or have[2] == want[2])


def choose_manifest(index: Mapping[str, Any], wanted: str, *, what: str) -> Descriptor:
    """The entry of the image ``index`` document for platform ``wanted``.

    :class:`ImageNotFoundError` names the platforms the index has when none matches.
    """
    parse_platform(wanted)  # a malformed platform is an error, not "no match"
    available = []
    for item in index["manifests"]:
        entry = Descriptor.from_json(item)
        text = platform_text(entry.platform)
        available.append(text)
        if platform_matches(text, wanted) and entry.media_type in MANIFEST_MEDIA_TYPES:
            return entry
    raise ImageNotFoundError(
        f"{what}: no manifest for platform {wanted} in the index (has: {', '.join(available) or 'none'})"
    )
