"""Trust requirements: what must have signed an artifact, from the command line or a policy file.

A :class:`Requirement` is a set of trusted keys (any one suffices) plus the
annotations the signed payload must carry; no keys means "no signature
needed". It comes from ``--verify-key``/``--verify-annotation``
(:meth:`Requirement.from_keys`) or from a trust policy (:class:`TrustPolicy`),
a JSON file validated by ``schemas/trust-policy.json``::

    {"version": 1,
     "rules": [
       {"repository": "registry.example.com/fleet/*", "keys": ["keys/fleet.pub"],
        "annotations": {"channel": "stable"}},
       {"repository": "tools/**", "keys": []}
     ]}

Rules are tried in file order; the **first** whose pattern matches decides.
A repository that no rule matches is **refused**
(:class:`~doras_oras.errors.UntrustedRepositoryError`): a fleet lists what it
trusts; a last rule ``{"repository": "**", "keys": []}`` turns that into
"verify what is listed, allow the rest".

Patterns: when the first path component of a pattern is a host (contains
``.`` or ``:``, or is ``localhost``) the pattern is matched against
``registry/repository``, otherwise against the repository path alone, on any
registry. ``*`` and ``?`` match within one component, ``**`` any number of
components (``a/**`` matches ``a/b`` and ``a/b/c``, not ``a``;
``**/b`` matches ``b`` too). Hosts compare case-insensitively and
``index.docker.io`` is ``docker.io`` (as in :mod:`.payload`).
Key paths are relative to the policy file; every key is loaded when the
policy is, so a missing key file fails at once, not at the first pull.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import (
    AnnotationMismatchError,
    InvalidArgumentError,
    SchemaValidationError,
    TrustConfigError,
    UntrustedRepositoryError,
)
from ..reference import Reference
from ..schemas import validate
from .forward import ORDER_CREATED, OrderRule
from .keys import TrustedKey, load_public_key
from .payload import canonical_registry

MAX_POLICY_BYTES = 1024 * 1024
"""A trust policy file larger than this is refused."""


@dataclass(frozen=True)
class Requirement:
    """What a signature must satisfy for one repository."""

    keys: tuple[TrustedKey, ...] = ()
    """Any one of these must have signed; empty: no signature needed."""
    annotations: Mapping[str, str] = field(default_factory=dict)
    """Required ``KEY=VALUE`` pairs of the signed payload's ``optional`` map."""
    rule: str | None = None
    """The policy pattern that gave this requirement (``None`` for command-line keys)."""

    def __post_init__(self) -> None:
        if self.annotations and not self.keys:
            raise TrustConfigError("required annotations without a key: nothing could verify them")

    @property
    def required(self) -> bool:
        """Whether a signature must verify at all."""
        return bool(self.keys)

    @classmethod
    def from_keys(cls, keys: tuple[TrustedKey, ...] | list[TrustedKey], annotations: Mapping[str, str] | None = None) -> Requirement:
        """The requirement of ``--verify-key`` (repeated) and ``--verify-annotation KEY=VALUE``."""
        return cls(keys=tuple(keys), annotations=dict(annotations or {}))


def parse_annotation(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` (as ``--verify-annotation`` takes it) -> ``(KEY, VALUE)``; the value may contain ``=``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise TrustConfigError(f"annotation {text[:100]!r}: expected KEY=VALUE")
    return key, value


def _is_host(component: str) -> bool:
    return "." in component or ":" in component or component == "localhost"


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """The regular expression of a repository glob (see the module doc)."""
    parts: list[str] = []
    components = pattern.split("/")
    for position, component in enumerate(components):
        last = position == len(components) - 1
        if component == "**":
            parts.append(".*" if last else "(?:[^/]+/)*")
            continue
        text = ""
        i = 0
        while i < len(component):
            char = component[i]
            if component.startswith("**", i):
                text += ".*"
                i += 2
                continue
            if char == "*":
                text += "[^/]*"
            elif char == "?":
                text += "[^/]"
            else:
                text += re.escape(char)
            i += 1
        parts.append(text if last else text + "/")
    return re.compile("".join(parts))


@dataclass(frozen=True)
class PolicyRule:
    """One rule of a trust policy."""

    pattern: str
    keys: tuple[TrustedKey, ...]
    annotations: Mapping[str, str]
    order: OrderRule = field(default_factory=OrderRule)
    """What orders this repository's releases (default: the manifest's ``created``)."""
    _regex: re.Pattern[str] = field(repr=False, compare=False, default=re.compile(""))

    @classmethod
    def make(cls, pattern: str, keys: tuple[TrustedKey, ...], annotations: Mapping[str, str],
             order: OrderRule | None = None) -> PolicyRule:
        """A rule with its pattern compiled; a host in the pattern is canonicalised."""
        first, sep, rest = pattern.partition("/")
        text = pattern
        if sep and _is_host(first):
            text = canonical_registry(first) + "/" + rest
        return cls(pattern=pattern, keys=keys, annotations=dict(annotations), order=order or OrderRule(),
                   _regex=compile_pattern(text))

    @property
    def names_host(self) -> bool:
        """Whether the pattern is matched against ``registry/repository`` (else the repository alone)."""
        first, sep, _ = self.pattern.partition("/")
        return bool(sep) and _is_host(first)

    def matches(self, target: Reference) -> bool:
        """Whether this rule applies to ``target``'s repository."""
        subject = (canonical_registry(target.registry) + "/" + target.repository) if self.names_host else target.repository
        return self._regex.fullmatch(subject) is not None


@dataclass(frozen=True)
class TrustPolicy:
    """A parsed trust policy: rules in order, first match wins, no match is refused."""

    rules: tuple[PolicyRule, ...]
    source: str = "(policy)"
    """Where it was loaded from, for messages."""

    def rule_for(self, target: Reference) -> PolicyRule | None:
        """The first rule matching ``target``, or ``None``."""
        return next((rule for rule in self.rules if rule.matches(target)), None)

    def requirement_for(self, target: Reference) -> Requirement:
        """The requirement for ``target``; :class:`UntrustedRepositoryError` when no rule names it."""
        rule = self.rule_for(target)
        if rule is None:
            raise UntrustedRepositoryError(
                f"refusing {target.name}: trust policy {self.source} has no rule for this repository"
            )
        return Requirement(keys=rule.keys, annotations=rule.annotations, rule=rule.pattern)


@dataclass(frozen=True)
class Verification:
    """What a pull must check: a trust policy, command-line keys, or both.

    With both, **both must pass** (the policy's rule for the repository, and
    the keys with their annotations): the command line can add a requirement,
    never waive one. A policy rule with ``keys: []`` plus command-line keys
    therefore still needs one of those keys; a repository the policy does not
    list is refused whatever the command line says.
    """

    policy: TrustPolicy | None = None
    keys: Requirement | None = None
    """``--verify-key``/``--verify-annotation`` (:meth:`Requirement.from_keys`)."""
    max_age_s: float | None = None
    """Freshness (``--max-age``): refuse a target whose signed creation time is older than this."""
    tag: str | None = None
    """The tag being pulled: ``{tag}`` in a required annotation's value stands for it (tag binding);
    ``None`` (a pull by digest) refuses such a requirement. The pulls set it from the reference."""

    def __post_init__(self) -> None:
        if self.policy is None and self.keys is None:
            raise TrustConfigError("a verification needs a trust policy or keys")
        if self.keys is not None and not self.keys.required:
            raise TrustConfigError("command-line verification without a key: nothing could verify")
        if self.max_age_s is not None and not self.max_age_s > 0:
            raise TrustConfigError(f"max_age_s must be a positive number of seconds, not {self.max_age_s}")

    @classmethod
    def of(cls, value: Verification | Requirement | TrustPolicy) -> Verification:
        """``pull_delta(verify=...)`` takes any of the three; this is the one shape."""
        if isinstance(value, Verification):
            return value
        if isinstance(value, TrustPolicy):
            return cls(policy=value)
        if isinstance(value, Requirement):
            return cls(keys=value)
        raise InvalidArgumentError(f"verify= takes a Verification, Requirement or TrustPolicy, not {type(value).__name__}")

    def requirements_for(self, target: Reference) -> tuple[Requirement, ...]:
        """Every requirement that applies to ``target`` (policy first), ``{tag}`` bound to :attr:`tag`.

        :class:`UntrustedRepositoryError` when the policy has no rule; :class:`AnnotationMismatchError`
        when a value names ``{tag}`` and no tag is pulled.
        """
        found: list[Requirement] = []
        if self.policy is not None:
            found.append(self.policy.requirement_for(target))
        if self.keys is not None:
            found.append(self.keys)
        return tuple(self._bound(requirement, target) for requirement in found)

    def _bound(self, requirement: Requirement, target: Reference) -> Requirement:
        if not any(TAG_PLACEHOLDER in value for value in requirement.annotations.values()):
            return requirement
        if self.tag is None:
            raise AnnotationMismatchError(f"refusing {target.name}: a required annotation names {TAG_PLACEHOLDER} "
                                          "and the pull names no tag (a pull by digest)")
        tag = self.tag
        bound = {key: value.replace(TAG_PLACEHOLDER, tag) for key, value in requirement.annotations.items()}
        return Requirement(keys=requirement.keys, annotations=bound, rule=requirement.rule)

    def order_for(self, target: Reference) -> OrderRule:
        """What orders ``target``'s releases: the policy rule's ``order``, else the manifest's ``created``."""
        if self.policy is not None:
            rule = self.policy.rule_for(target)
            if rule is not None and rule.keys:
                return rule.order
        return OrderRule()


TAG_PLACEHOLDER = "{tag}"
"""In a required annotation's value: the tag being pulled (``--verify-annotation tag={tag}``)."""

KeyLoader = Callable[[Path], TrustedKey]


def parse_policy(
    document: Any, *, base_dir: Path, source: str = "(policy)", load_key: KeyLoader = load_public_key
) -> TrustPolicy:
    """Validate a policy document against its schema and load its keys (paths relative to ``base_dir``)."""
    try:
        validate(document, "trust-policy")
    except SchemaValidationError as exc:
        raise TrustConfigError(f"trust policy {source}: {exc}") from exc
    cache: dict[Path, TrustedKey] = {}
    rules: list[PolicyRule] = []
    for position, raw in enumerate(document["rules"]):
        keys: list[TrustedKey] = []
        for name in raw["keys"]:
            path = (base_dir / name).resolve() if not Path(name).is_absolute() else Path(name)
            if path not in cache:
                try:
                    cache[path] = load_key(path)
                except TrustConfigError as exc:
                    raise TrustConfigError(f"trust policy {source}: rules[{position}]: {exc}") from exc
            keys.append(cache[path])
        annotations = dict(raw.get("annotations") or {})
        if annotations and not keys:
            raise TrustConfigError(
                f"trust policy {source}: rules[{position}] ({raw['repository']}): annotations need keys"
            )
        order = _order(raw.get("order"))
        if raw.get("order") is not None and not keys:
            raise TrustConfigError(f"trust policy {source}: rules[{position}] ({raw['repository']}): an order needs "
                                   "keys (only signed values are ordered)")
        rules.append(PolicyRule.make(raw["repository"], tuple(keys), annotations, order))
    return TrustPolicy(rules=tuple(rules), source=source)


def _order(raw: Mapping[str, Any] | None) -> OrderRule:
    """A rule's ``order`` object (the schema checked its shape)."""
    if raw is None:
        return OrderRule()
    annotation = raw.get("annotation")
    return OrderRule(annotation=annotation, compare=raw.get("compare", ORDER_CREATED),
                     allow_missing=bool(raw.get("allow_missing", False)))


def load_policy(path: str | Path) -> TrustPolicy:
    """Read, validate and load a trust policy file (``--trust-policy FILE``)."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_POLICY_BYTES + 1)
    except OSError as exc:
        raise TrustConfigError(f"trust policy {path}: cannot read ({exc.strerror or exc})") from exc
    if len(data) > MAX_POLICY_BYTES:
        raise TrustConfigError(f"trust policy {path}: over {MAX_POLICY_BYTES} bytes")
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TrustConfigError(f"trust policy {path}: not JSON ({exc})") from exc
    return parse_policy(document, base_dir=path.parent, source=str(path))
