"""What a pull reports: :class:`PullResult`, its :class:`Status` and :class:`~doras_oras.plan.ReasonCode`."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import Fix
from ..plan import ReasonCode

if TYPE_CHECKING:
    from ..trust import TrustResult

__all__ = ["PullResult", "Status"]


class Status(enum.StrEnum):
    """How a pull ended (a ``str``: equal to its value, which is what ``--json`` prints)."""

    DELTA = "delta"
    FULL = "full"
    UP_TO_DATE = "up-to-date"
    PENDING = "pending"


@dataclass(frozen=True)
class PullResult:
    """What a pull did and why. ``to_json()`` gives the CLI's ``--json`` object."""

    status: Status
    """:attr:`Status.DELTA`, :attr:`Status.FULL`, :attr:`Status.UP_TO_DATE` or :attr:`Status.PENDING`."""
    reference: str
    reason: str
    """Why this status, in words (the fallback reason for ``full``)."""
    from_digest: str | None
    to_digest: str | None
    algorithm: str | None
    """The delta algorithm applied (``bsdiff+zstd``, ``tardiff``, ...), if any."""
    bytes_received: int
    """Bytes received from the registry and the Doras server during this pull."""
    full_size: int | None
    """What a full pull of the target costs: manifest + config + layers (None when up to date with an
    image stored rewritten or chosen from an index, whose registry sizes the layout does not know)."""
    duration_s: float
    stored_digest: str | None = None
    """The digest of the manifest recorded in the layout (differs from ``to_digest``
    when a tar-diff result was stored as an uncompressed tar)."""
    verified: bool = True
    """False only for a tar-diff result accepted with ``allow_unverified``."""
    delta_size: int | None = None
    blobs_fetched: int | None = None
    """For a full pull: blobs downloaded (None otherwise)."""
    blobs_reused: int | None = None
    """For a full pull: blobs already in the layout, not downloaded."""
    reason_code: ReasonCode = ReasonCode.PATCHED
    """Why this status (stable, for scripts; a ``str`` equal to its value)."""
    trust: TrustResult | None = None
    """With ``verify``: the signature check (which key verified, which signature manifest, where it
    was found, ``origin`` registry or layout), as in :class:`~doras_oras.full.FullPullResult`; ``None`` without."""
    output: list[str] | None = None
    """With ``output_dir``: the files and directories written there (None without)."""
    delta_source: str | None = None
    """Where the delta applied came from: ``"registry"`` (stored under its Doras tag, found with no server
    asked) or ``"server"`` (named by the Doras server); None when no delta was applied."""
    fix: Fix | None = None
    """For a fallback that a setting would have avoided (a TLS or credentials problem with the
    Doras server, ...): the :class:`~doras_oras.errors.Fix`; ``fix.hint`` words it. Its value in JSON."""

    @property
    def updated(self) -> bool:
        return self.status in (Status.DELTA, Status.FULL)

    @property
    def fallback(self) -> ReasonCode | None:
        """The reason code of a full pull (why no delta was used); None otherwise."""
        return self.reason_code if self.status == Status.FULL else None

    def to_json(self) -> dict[str, Any]:
        document = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        document["status"] = self.status.value
        document["reason_code"] = self.reason_code.value
        document["trust"] = self.trust.to_json() if self.trust is not None else None
        document["fix"] = self.fix.value if self.fix is not None else None
        document["output"] = list(self.output) if self.output is not None else None
        return document
