"""Image references: ``registry/repository[:tag][@digest]``. Pure, no I/O.

The grammar follows the distribution reference grammar (the one the oras CLI
and the Doras server use): the registry is the first path component when it
contains a ``.`` or a ``:`` or is ``localhost``; repository path components
are lowercase alphanumerics joined by ``.``, ``_``, ``__`` or ``-``; a tag is
``[A-Za-z0-9_][A-Za-z0-9._-]{0,127}``; a digest is validated by
:func:`doras_oras.descriptor.validate_digest`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .descriptor import validate_digest
from .errors import InvalidDigestError, InvalidReferenceError

DEFAULT_REGISTRY = "docker.io"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_HOST_RE = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$"
)
_MAX_NAME = 255


@dataclass(frozen=True)
class Reference:
    """A parsed image reference. ``tag`` and ``digest`` may both be set."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        """Parse ``text``; raise :class:`InvalidReferenceError` naming what is wrong."""
        if not text or text != text.strip():
            raise InvalidReferenceError(f"invalid reference {text!r}: empty or surrounded by spaces")
        rest = text
        digest: str | None = None
        if "@" in rest:
            rest, digest = rest.split("@", 1)
            try:
                validate_digest(digest)
            except InvalidDigestError as exc:
                raise InvalidReferenceError(f"invalid reference {text!r}: {exc}") from exc
        tag: str | None = None
        last_slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon > last_slash:
            rest, tag = rest[:colon], rest[colon + 1 :]
            if not _TAG_RE.match(tag):
                raise InvalidReferenceError(f"invalid reference {text!r}: bad tag {tag!r}")
        first, sep, remainder = rest.partition("/")
        if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
            registry, repository = first, remainder
            if not _HOST_RE.match(registry):
                raise InvalidReferenceError(f"invalid reference {text!r}: bad registry {registry!r}")
        else:
            registry, repository = DEFAULT_REGISTRY, rest
            if "/" not in repository:
                repository = "library/" + repository
        if not repository or not _REPOSITORY_RE.match(repository):
            raise InvalidReferenceError(
                f"invalid reference {text!r}: bad repository {repository!r} "
                "(lowercase letters, digits and separators . _ __ -)"
            )
        if len(registry) + 1 + len(repository) > _MAX_NAME:
            raise InvalidReferenceError(f"invalid reference {text!r}: name longer than {_MAX_NAME}")
        return cls(registry=registry, repository=repository, tag=tag, digest=digest)

    @property
    def name(self) -> str:
        """``registry/repository``."""
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What the registry API takes after ``/manifests/``: the digest, else the tag."""
        if self.digest:
            return self.digest
        return self.tag or "latest"

    def with_digest(self, digest: str) -> Reference:
        """This repository at ``digest`` (the tag dropped)."""
        validate_digest(digest)
        return Reference(self.registry, self.repository, None, digest)

    def with_tag(self, tag: str) -> Reference:
        """This repository at ``tag`` (the digest dropped)."""
        if not _TAG_RE.match(tag):
            raise InvalidReferenceError(f"bad tag {tag!r}")
        return Reference(self.registry, self.repository, tag, None)

    def same_repository(self, other: Reference) -> bool:
        """Whether both name the same registry and repository."""
        return self.registry == other.registry and self.repository == other.repository

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += ":" + self.tag
        if self.digest:
            text += "@" + self.digest
        return text
