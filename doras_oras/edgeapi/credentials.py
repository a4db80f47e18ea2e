"""Credentials a client gives the Doras server (which passes them on to the registry)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..auth import basic_header


class AuthProvider(Protocol):
    """Supplies the ``Authorization`` header value for a registry host, or ``None``."""

    def authorization(self, registry: str) -> str | None: ...


@dataclass(frozen=True)
class BearerAuth:
    """``Authorization: Bearer <token>``."""

    token: str

    def authorization(self, registry: str) -> str | None:
        return f"Bearer {self.token}"

    def __repr__(self) -> str:
        return "BearerAuth(token=***)"


@dataclass(frozen=True)
class BasicAuth:
    """``Authorization: Basic base64(user:password)``."""

    username: str
    password: str

    def authorization(self, registry: str) -> str | None:
        return basic_header(self.username, self.password)

    def __repr__(self) -> str:
        return f"BasicAuth(username={self.username!r}, password=***)"


AuthArg = AuthProvider | tuple[str, str] | None


def as_provider(auth: AuthArg) -> AuthProvider | None:
    """``auth`` as a provider (a ``(user, password)`` pair becomes :class:`BasicAuth`)."""
    if auth is None:
        return None
    if isinstance(auth, tuple):
        user, password = auth
        return BasicAuth(user, password)
    return auth


