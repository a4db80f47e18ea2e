"""Signed updates only go forward: rollback and freeze decisions (issue #20). Pure.

A signature says *who* made an artifact, not *when* nor *in which order*: a
registry can serve an older validly signed version (rollback), keep serving
the same one forever (freeze), or name one release by another's tag
(mix-and-match; bound by ``tag={tag}`` in the required annotations, see
:mod:`.policy`). :func:`decide` is the order and freshness check a verified
pull makes on the target before anything of it is downloaded:

- **order**: the target must not be older than the installed image of the
  same repository. By default the value compared is the manifest annotation
  ``org.opencontainers.image.created`` (RFC 3339; the oras CLI sets it), read
  from the manifest bytes whose digest the signature names; a trust policy
  rule may name a signed payload annotation instead, compared as a
  non-negative ``integer`` or as ``semver`` (:class:`OrderRule`). Equal values
  pass (two pushes in one second have the same ``created``).
- **missing value**: a target without the value the rule needs is refused
  when there is something to decide (an installed image to compare with, or
  a freshness bound), unless the rule allows it (``allow_missing``). An
  installed image without the value orders nothing: the target passes.
- **freshness** (opt-in, ``max_age_s``): the target's signed ``created``
  must be at most that old at ``now`` (injected: the caller's clock).
- ``allow_downgrade``: an older target passes, and the decision says so.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ..errors import InvalidArgumentError, MissingOrderError, RollbackError, StaleTargetError

CREATED_ANNOTATION = "org.opencontainers.image.created"
"""The OCI manifest annotation the default order compares (RFC 3339)."""

ORDER_CREATED = "created"
ORDER_INTEGER = "integer"
ORDER_SEMVER = "semver"

_INTEGER = re.compile(r"[0-9]{1,40}")
_SEMVER = re.compile(
    r"v?(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(?:-((?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?"
)


@dataclass(frozen=True)
class OrderRule:
    """Which value orders the releases of a repository."""

    annotation: str | None = None
    """A signed payload annotation (``optional`` map); ``None``: the manifest's ``created``."""
    compare: str = ORDER_CREATED
    """``created`` (RFC 3339 time), ``integer`` or ``semver``."""
    allow_missing: bool = False
    """Let a target without the value pass (it is then not ordered)."""

    def __post_init__(self) -> None:
        if (self.annotation is None) != (self.compare == ORDER_CREATED):
            raise InvalidArgumentError("an order annotation needs compare 'integer' or 'semver'; 'created' takes none")
        if self.compare not in (ORDER_CREATED, ORDER_INTEGER, ORDER_SEMVER):
            raise InvalidArgumentError(f"unknown order {self.compare!r}")

    @property
    def name(self) -> str:
        """How the result names the rule: ``created`` or ``version (integer)``."""
        return ORDER_CREATED if self.annotation is None else f"{self.annotation} ({self.compare})"

    def value_of(self, standing: Standing) -> str | None:
        """The value this rule compares for ``standing`` (``None`` when absent)."""
        return standing.created if self.annotation is None else standing.annotations.get(self.annotation)


@dataclass(frozen=True)
class Standing:
    """What orders one image: its signed ``created`` and signed payload annotations."""

    created: str | None = None
    """``org.opencontainers.image.created`` of the signed manifest (or index)."""
    annotations: Mapping[str, str] = field(default_factory=dict)
    """The signed payload's ``optional`` map (string values)."""
    digest: str | None = None
    """The registry digest, for messages."""


@dataclass(frozen=True)
class Decision:
    """Why a target passed: for ``PullResult.trust["order"]`` and ``--json``."""

    rule: str
    """:attr:`OrderRule.name`."""
    outcome: str
    """``newer``, ``same``, ``first`` (nothing installed), ``unordered`` (a value missing, allowed or
    not needed) or ``downgrade-allowed``."""
    target: str | None
    installed: str | None
    installed_digest: str | None = None
    max_age_s: float | None = None
    age_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "outcome": self.outcome, "target": self.target, "installed": self.installed,
                "installed_digest": self.installed_digest, "max_age_s": self.max_age_s, "age_s": self.age_s}


def parse_created(text: str) -> datetime | None:
    """An RFC 3339 time (``Z`` or an offset), else ``None`` (also for a time without an offset)."""
    try:
        value = datetime.fromisoformat(text.strip())
    except (ValueError, AttributeError):
        return None
    if value.tzinfo is None:
        return None
    return value


def _semver_key(text: str) -> tuple[Any, ...] | None:
    match = _SEMVER.fullmatch(text)
    if match is None:
        return None
    major, minor, patch, pre = match.groups()
    core = (int(major), int(minor), int(patch))
    if pre is None:
        return (core, 1, ())  # a release sorts after its pre-releases
    # SemVer 2.0 §11: numeric identifiers compare as numbers and sort before alphanumeric ones.
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return (core, 0, parts)


def order_key(rule: OrderRule, value: str) -> Any:
    """The sortable key of ``value`` under ``rule``; ``None`` when it cannot be read."""
    if rule.compare == ORDER_CREATED:
        return parse_created(value)
    if rule.compare == ORDER_INTEGER:
        return int(value) if _INTEGER.fullmatch(value) else None
    return _semver_key(value)


def _age(target: Standing, max_age_s: float, now: datetime) -> float:
    created = parse_created(target.created) if target.created is not None else None
    if created is None:
        what = "no" if target.created is None else f"an unreadable ({target.created[:60]!r})"
        raise MissingOrderError(f"refusing {target.digest}: freshness needs the signed creation time and the "
                                f"target has {what} {CREATED_ANNOTATION}")
    age = (now - created).total_seconds()
    if age > max_age_s:
        raise StaleTargetError(
            f"refusing {target.digest}: created {target.created}, {timedelta(seconds=int(age))} ago, older than "
            f"the {timedelta(seconds=int(max_age_s))} allowed (a registry that stopped showing new releases?)")
    return round(age, 3)


def decide(target: Standing, installed: Standing | None, rule: OrderRule, *, now: datetime,
           max_age_s: float | None = None, allow_downgrade: bool = False) -> Decision:
    """Whether ``target`` may replace ``installed`` (the newest image of its repository, ``None``: none).

    Raises :class:`~doras_oras.errors.RollbackError` (older), :class:`~doras_oras.errors.StaleTargetError`
    (older than ``max_age_s`` at ``now``) or :class:`~doras_oras.errors.MissingOrderError` (a value
    the decision needs is missing or unreadable); returns the :class:`Decision` otherwise.
    """
    age = _age(target, max_age_s, now) if max_age_s is not None else None
    have = rule.value_of(target)
    old = rule.value_of(installed) if installed is not None else None

    def decision(outcome: str) -> Decision:
        return Decision(rule=rule.name, outcome=outcome, target=have, installed=old,
                        installed_digest=installed.digest if installed is not None else None,
                        max_age_s=max_age_s, age_s=age)

    target_key = order_key(rule, have) if have is not None else None
    if target_key is None and not (installed is None or rule.allow_missing):
        what = "no" if have is None else f"an unreadable ({have[:60]!r})"
        source = CREATED_ANNOTATION if rule.annotation is None else f"signed annotation {rule.annotation!r}"
        raise MissingOrderError(f"refusing {target.digest}: the order rule {rule.name} needs a value and the "
                                f"target has {what} {source}; it cannot be ordered after the installed "
                                f"{installed.digest if installed else None}")
    if installed is None:
        return decision("first")
    installed_key = order_key(rule, old) if old is not None else None
    if target_key is None or installed_key is None:
        return decision("unordered")
    if target_key < installed_key:
        if allow_downgrade:
            return decision("downgrade-allowed")
        raise RollbackError(f"refusing {target.digest}: {rule.name} {have} is older than the installed "
                            f"{installed.digest}'s {old} (rollback); a deliberate downgrade must be allowed")
    return decision("same" if target_key == installed_key else "newer")
