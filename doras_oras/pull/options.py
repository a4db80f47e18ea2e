"""The settings of one pull (:class:`PullOptions`), checked once before anything is sent."""

from __future__ import annotations

import dataclasses
import enum
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict, Unpack

from ..algorithms import check_algorithm_names
from ..errors import InvalidArgumentError
from ..full import Progress
from ..platforms import parse_platform
from ..reference import Reference
from .result import Status

if TYPE_CHECKING:
    from ..edgeapi import EdgeClient
    from ..trust import Requirement, TrustPolicy, Verification

__all__ = ["Fallback", "PullKeywords", "PullOptions", "Waiting", "check_base_ref"]

Waiting = Callable[[int, float], None]
"""``on_wait(requests_sent, seconds_waited)``: called while the server builds the delta."""


class Fallback(enum.StrEnum):
    """What a pull does when a delta was possible but cannot be used (docs/pull.md)."""

    FULL = "full"
    """A verified full pull, the reason in the result (the default)."""
    NEVER = "never"
    """:class:`~doras_oras.errors.FallbackRefusedError`: nothing but manifests downloaded, nothing changed."""


def check_base_ref(target: Reference, base: Reference, *, name: str = "from_ref") -> None:
    """:class:`InvalidArgumentError` unless ``base`` (the setting called ``name``) is in ``target``'s repository."""
    if not base.same_repository(target):
        raise InvalidArgumentError(f"{name} {base} is not in the repository of {target}")


@dataclass(frozen=True)
class PullOptions:
    """One pull's target and settings, checked once: :meth:`of` reads the keywords of
    :func:`~doras_oras.pull.pull_delta` (:class:`PullKeywords`, the one place of their defaults);
    a bad setting is an :class:`InvalidArgumentError` before anything is sent."""

    target: Reference
    doras_url: str | None
    edge_client: EdgeClient | None
    from_ref: Reference | None
    """The base to patch (in the target's repository), instead of the newest image of the repository."""
    accepted_algorithms: tuple[str, ...] | None
    wait: bool
    timeout_s: float | None
    on_timeout: Status
    allow_unverified: bool
    progress: Progress | None
    on_wait: Waiting | None
    max_size: int | None
    budget: tuple[int, float] | None
    lock_timeout_s: float
    platform: str | None
    verification: Verification | None
    """``verify`` in its one shape, bound to the tag being pulled (``{tag}`` in required annotations)."""
    output_dir: Path | None
    refresh_output: bool
    """With ``output_dir``: also write the files when the layout already holds the target (False: only
    when it changes; an update agent that wrote them once does not rewrite them at every poll)."""
    allow_downgrade: bool
    registry_deltas: bool
    """Look for a delta stored in the registry (one ``HEAD`` per usable kind) before asking the server."""
    fallback: Fallback
    """``never``: refuse a full download that would replace a delta (``wait=False`` refuses it too)."""

    @classmethod
    def of(cls, target: str | Reference, *, doras_url: str | None, **options: Unpack[PullKeywords]) -> PullOptions:
        """Parse and check the arguments of :func:`~doras_oras.pull.pull_delta`."""
        ref = Reference.parse(target) if isinstance(target, str) else target
        on_timeout = options.get("on_timeout", Status.FULL)
        if on_timeout not in (Status.FULL, Status.PENDING):
            raise InvalidArgumentError("on_timeout must be 'full' or 'pending'")
        platform = options.get("platform")
        if platform is not None:
            parse_platform(platform)
        lock_timeout_s = options.get("lock_timeout_s", 300.0)
        if not (isinstance(lock_timeout_s, int | float) and math.isfinite(lock_timeout_s) and lock_timeout_s >= 0):
            raise InvalidArgumentError(f"lock_timeout_s must be a number of seconds >= 0, not {lock_timeout_s!r}")
        from_ref = options.get("from_ref")
        base = Reference.parse_relative(from_ref, ref) if isinstance(from_ref, str) else from_ref
        if base is not None:
            check_base_ref(ref, base)
        accepted = options.get("accepted_algorithms")
        verify = options.get("verify")
        verification = None
        if verify is not None:
            from ..trust import Verification  # cryptography loads only for a verified pull

            verification = dataclasses.replace(Verification.of(verify), tag=ref.tag)
        output_dir = options.get("output_dir")
        fallback = options.get("fallback", Fallback.FULL)
        if fallback not in (Fallback.FULL, Fallback.NEVER):
            raise InvalidArgumentError(f"fallback must be 'full' or 'never', not {fallback!r}")
        registry_deltas = options.get("registry_deltas", True)
        if not isinstance(registry_deltas, bool):
            raise InvalidArgumentError(f"registry_deltas must be True or False, not {registry_deltas!r}")
        if fallback == Fallback.NEVER and not registry_deltas and doras_url is None \
                and options.get("edge_client") is None:
            raise InvalidArgumentError("fallback='never' with no Doras server and registry_deltas=False: no delta "
                                       "could ever be found, so every update would be refused")
        return cls(
            target=ref, doras_url=doras_url, edge_client=options.get("edge_client"), from_ref=base,
            accepted_algorithms=check_algorithm_names(accepted) if accepted is not None else None,
            wait=options.get("wait", True), timeout_s=options.get("timeout_s"), on_timeout=Status(on_timeout),
            allow_unverified=options.get("allow_unverified", False), progress=options.get("progress"),
            on_wait=options.get("on_wait"), max_size=options.get("max_size"), budget=options.get("budget"),
            lock_timeout_s=lock_timeout_s, platform=platform, verification=verification,
            output_dir=Path(output_dir) if output_dir is not None else None,
            refresh_output=bool(options.get("refresh_output", True)),
            allow_downgrade=options.get("allow_downgrade", False), registry_deltas=registry_deltas,
            fallback=Fallback(fallback),
        )


class PullKeywords(TypedDict, total=False):
    """The keyword arguments of :func:`~doras_oras.pull.pull_delta` after ``doras_url`` (for
    :meth:`DeltaRegistry.pull_delta <doras_oras.registry.DeltaRegistry.pull_delta>`)."""

    from_ref: str | Reference | None
    accepted_algorithms: Sequence[str] | None
    wait: bool
    timeout_s: float | None
    on_timeout: str
    allow_unverified: bool
    progress: Progress | None
    on_wait: Waiting | None
    max_size: int | None
    budget: tuple[int, float] | None
    edge_client: EdgeClient | None
    lock_timeout_s: float
    platform: str | None
    verify: Verification | Requirement | TrustPolicy | None
    output_dir: str | os.PathLike[str] | None
    refresh_output: bool
    allow_downgrade: bool
    registry_deltas: bool
    fallback: str
