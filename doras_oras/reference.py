"""Image references: ``registry/repository[:tag][@digest]``. Pure, no I/O.

The grammar follows the distribution reference grammar (the one the oras CLI
and the Doras server use): the registry is the first path component when it
contains a ``.`` or a ``:`` or is ``localhost``; repository path components
are lowercase alphanumerics joined by ``.``, ``_``, ``__`` or ``-``; a tag is
``[A-Za-z0-9_][A-Za-z0-9._-]{0,127}``; a digest is validated by
:func:`doras_oras.descriptor.validate_digest`.

Two obvious mistakes are refused rather than read by the grammar: a URL
(``http://host/repo``) and a registry without a repository (``host:5000``,
which the grammar reads as ``docker.io/library/host`` at tag ``5000``).
:func:`names_registry` tells whether a text names its registry (else it is
``docker.io``); :meth:`Reference.parse_relative` reads ``v1`` or
``sha256:...`` in the repository of another reference (``--from``).

Docker Hub is named ``docker.io`` (a one-component repository there is under
``library/``, as docker reads ``alpine``), but its API is served by
:data:`DOCKER_HUB_API` (:func:`api_host`), its token realm is on
:data:`DOCKER_HUB_AUTH`, and docker and oras store its credentials under
:data:`DOCKER_HUB_CONFIG_KEY` (:func:`config_key`), as every Docker Hub client does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .descriptor import validate_digest
from .errors import InvalidDigestError, InvalidReferenceError

DEFAULT_REGISTRY = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
"""The host that serves Docker Hub's registry API (``docker.io`` itself does not)."""
DOCKER_HUB_AUTH = "auth.docker.io"
"""The host of Docker Hub's token realm."""
DOCKER_HUB_CONFIG_KEY = "https://index.docker.io/v1/"
"""The key of Docker Hub's credentials in a docker ``config.json`` and for credential helpers."""
_DOCKER_HUB_NAMES = frozenset({DEFAULT_REGISTRY, "index.docker.io", DOCKER_HUB_API})

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_HOST_RE = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$"
)
_MAX_NAME = 255
_PORT_RE = re.compile(r"^[0-9]{1,5}$")
_DIGEST_START_RE = re.compile(r"^sha(?:256|512):")


def _is_host(component: str) -> bool:
    """Whether the first path component of a reference is a registry host (the grammar's rule)."""
    return "." in component or ":" in component or component == "localhost" or component.startswith("[")


def is_docker_hub(registry: str) -> bool:
    """Whether ``registry`` (``host[:port]``) names Docker Hub."""
    return registry.lower() in _DOCKER_HUB_NAMES


def api_host(registry: str) -> str:
    """The host the registry API of ``registry`` is asked at: Docker Hub's is :data:`DOCKER_HUB_API`."""
    return DOCKER_HUB_API if is_docker_hub(registry) else registry


def config_key(registry: str) -> str:
    """The key of ``registry``'s credentials in a docker config: Docker Hub's is :data:`DOCKER_HUB_CONFIG_KEY`."""
    return DOCKER_HUB_CONFIG_KEY if is_docker_hub(registry) else registry


def is_tag(text: str) -> bool:
    """Whether ``text`` is a valid tag."""
    return _TAG_RE.match(text) is not None


def names_registry(text: str) -> bool:
    """Whether the reference ``text`` names its registry host (``host[:port]/repo``); else it means docker.io."""
    first, sep, _rest = text.partition("/")
    return bool(sep) and _is_host(first)


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
        scheme, sep, after = text.partition("://")
        if sep:
            raise InvalidReferenceError(f"invalid reference {text!r}: a URL; write it without {scheme}:// "
                                        f"(e.g. {after or 'HOST/REPOSITORY:TAG'})")
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
        if tag is not None and _PORT_RE.match(tag) and "/" not in rest and _is_host(rest):
            raise InvalidReferenceError(
                f"invalid reference {text!r}: {rest}:{tag} names a registry but no repository; "
                f"write {rest}:{tag}/REPOSITORY[:TAG]")
        first, sep, remainder = rest.partition("/")
        if sep and _is_host(first):
            registry, repository = first, remainder
            if not _HOST_RE.match(registry):
                raise InvalidReferenceError(f"invalid reference {text!r}: bad registry {registry!r}")
        else:
            registry, repository = DEFAULT_REGISTRY, rest
        if registry in (DEFAULT_REGISTRY, "index.docker.io") and repository and "/" not in repository:
            repository = "library/" + repository  # docker.io/alpine is docker.io/library/alpine
        if not repository or not _REPOSITORY_RE.match(repository):
            raise InvalidReferenceError(
                f"invalid reference {text!r}: bad repository {repository!r} "
                "(lowercase letters, digits and separators . _ __ -)"
            )
        if len(registry) + 1 + len(repository) > _MAX_NAME:
            raise InvalidReferenceError(f"invalid reference {text!r}: name longer than {_MAX_NAME}")
        return cls(registry=registry, repository=repository, tag=tag, digest=digest)

    @classmethod
    def parse_relative(cls, text: str, base: Reference) -> Reference:
        """``text`` in the repository of ``base`` when it names only a tag or digest, else parsed.

        ``v1`` → ``base``'s repository at tag ``v1``; ``sha256:<hex>`` or ``@sha256:<hex>`` →
        at that digest; ``v1@sha256:<hex>`` → both; anything with a ``/`` (or a name
        ``repo:tag``) is a whole reference (:meth:`parse`).
        """
        if "/" not in text and text == text.strip() and text:
            if _DIGEST_START_RE.match(text):
                text = "@" + text
            tag, _at, digest = text.partition("@")
            if (not tag or _TAG_RE.match(tag)) and (tag or digest):
                if digest:
                    try:
                        validate_digest(digest)
                    except InvalidDigestError as exc:
                        raise InvalidReferenceError(f"invalid reference {text!r}: {exc}") from exc
                return cls(base.registry, base.repository, tag or None, digest or None)
        return cls.parse(text)

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
