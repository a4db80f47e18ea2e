"""Registry authentication for :class:`doras_oras.transport.Transport`.

:class:`RegistryAuth` answers the registry's 401 challenges: ``Basic`` with
the configured username and password, ``Bearer realm=…,service=…,scope=…``
by fetching a token from the realm (with the basic credentials when there
are any, anonymously otherwise). Credentials are only ever attached to
requests for the registry's own origin. A realm over plain http (unless the
transport's policy allows http) or on another host (unless listed in
``allowed_realm_hosts``) is refused with :class:`InsecureTransportError`. A
token the registry stops accepting (it expired mid-pull) is renewed once per
request. Credentials can come from docker ``config.json`` files and
credential helpers through oras-py's loader (:meth:`RegistryAuth.from_docker_config`).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import requests

from .errors import InsecureTransportError, RegistryAuthError
from .transport import origin, safe_url

if TYPE_CHECKING:
    from .transport import Transport

log = logging.getLogger(__name__)

#: Token responses are JSON of a few KiB; anything bigger is refused.
TOKEN_BODY_CAP = 1024 * 1024

_PARAM_RE = re.compile(r'([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenge(value: str) -> tuple[str, dict[str, str]]:
    """``(scheme, params)`` of a ``WWW-Authenticate`` value, scheme lowercased."""
    value = value.strip()
    scheme, _, rest = value.partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)).replace('\\"', '"')
              for m in _PARAM_RE.finditer(rest)}
    return scheme.lower(), params


def basic_header(username: str, password: str) -> str:
    """The ``Authorization`` value for HTTP basic auth."""
    raw = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


class RegistryAuth:
    """Credentials for one registry (``registry`` is ``host[:port]`` as in references).

    ``username``/``password`` (or ``identity_token`` as the password of the
    token request) are optional: without them, bearer tokens are requested
    anonymously and basic challenges fail. ``allowed_realm_hosts`` lists
    other ``host[:port]`` values whose token realms are trusted.
    """

    def __init__(
        self,
        registry: str,
        *,
        username: str | None = None,
        password: str | None = None,
        allowed_realm_hosts: Iterable[str] = (),
    ) -> None:
        if not registry or "/" in registry:
            raise ValueError(f"registry must be host[:port], not {registry!r}")
        self.registry = registry.lower()
        self.username = username
        self.password = password
        self.allowed_realm_hosts = frozenset(h.lower() for h in allowed_realm_hosts)
        self._lock = threading.Lock()
        self._mode: str | None = None  # "basic" | "bearer" once a challenge was answered
        self._token: str | None = None
        self._token_scope: str | None = None
        self.tokens_fetched = 0

    @classmethod
    def from_docker_config(
        cls,
        registry: str,
        *,
        configs: list[str] | None = None,
        allowed_realm_hosts: Iterable[str] = (),
    ) -> RegistryAuth:
        """Credentials for ``registry`` from docker ``config.json`` files / credential helpers.

        Uses oras-py's loader (``configs`` plus the default docker config);
        no credentials found gives an anonymous :class:`RegistryAuth`.
        """
        import oras.auth.base
        import oras.auth.utils

        backend: Any = oras.auth.base.AuthBackend()
        backend._auth_config = oras.auth.utils.load_configs(list(configs or []))
        backend._basic_auth = None
        if backend._load_auth(registry) and backend._basic_auth:
            decoded = base64.b64decode(backend._basic_auth).decode("utf-8")
            username, _, password = decoded.partition(":")
            return cls(registry, username=username, password=password,
                       allowed_realm_hosts=allowed_realm_hosts)
        log.debug("no credentials for %s in the docker config", registry)
        return cls(registry, allowed_realm_hosts=allowed_realm_hosts)

    @property
    def has_credentials(self) -> bool:
        return self.username is not None

    def _is_registry(self, url: str) -> bool:
        parts = urlsplit(url)
        netloc = parts.netloc.rsplit("@", 1)[-1].lower()
        scheme, host, port = origin(url)
        default = (scheme == "https" and port == 443) or (scheme == "http" and port == 80)
        return netloc == self.registry or (default and host == self.registry)

    def headers_for(self, url: str) -> Mapping[str, str]:
        """The ``Authorization`` header for a request to the registry, once a challenge set the mode."""
        if not self._is_registry(url):
            return {}
        with self._lock:
            if self._mode == "bearer" and self._token:
                return {"Authorization": f"Bearer {self._token}"}
            if self._mode == "basic" and self.username is not None:
                return {"Authorization": basic_header(self.username, self.password or "")}
        return {}

    def on_unauthorized(self, url: str, response: requests.Response, transport: Transport) -> bool:
        """Answer a 401: switch to basic, or fetch (renew) a bearer token; True to retry."""
        if not self._is_registry(url):
            return False
        challenge = response.headers.get("WWW-Authenticate", "")
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            with self._lock:
                if self.username is None or self._mode == "basic":
                    return False  # no credentials, or they were just refused
                self._mode = "basic"
            return True
        if scheme != "bearer" or "realm" not in params:
            log.warning("unsupported challenge from %s: %r", safe_url(url), challenge[:200])
            return False
        token = self._fetch_token(url, params, transport)
        with self._lock:
            self._mode = "bearer"
            self._token = token
            self._token_scope = params.get("scope")
        return True

    def _check_realm(self, url: str, realm: str, transport: Transport) -> None:
        realm_scheme, _, _ = origin(realm)
        if realm_scheme not in ("http", "https"):
            raise InsecureTransportError(f"token realm {safe_url(realm)} is not an http(s) URL")
        if realm_scheme == "http" and not transport.policy.allow_http:
            raise InsecureTransportError(f"refusing token realm over plain http: {safe_url(realm)}")
        if origin(url)[0] == "https" and realm_scheme == "http":
            raise InsecureTransportError(f"refusing plain-http token realm {safe_url(realm)} of an https registry")
        realm_netloc = urlsplit(realm).netloc.rsplit("@", 1)[-1].lower()
        realm_host = origin(realm)[1]
        if realm_host != origin(url)[1] and not (
            realm_netloc in self.allowed_realm_hosts or realm_host in self.allowed_realm_hosts
        ):
            raise InsecureTransportError(
                f"refusing token realm {safe_url(realm)}: not on the registry's host "
                f"{origin(url)[1]} and not in allowed_realm_hosts"
            )

    def _fetch_token(self, url: str, params: Mapping[str, str], transport: Transport) -> str:
        realm = params["realm"]
        self._check_realm(url, realm, transport)
        query = {k: params[k] for k in ("service", "scope") if params.get(k)}
        token_url = realm + (("&" if "?" in realm else "?") + urlencode(query) if query else "")
        headers: dict[str, str] = {"Accept": "application/json"}
        if self.username is not None:
            headers["Authorization"] = basic_header(self.username, self.password or "")
        try:
            body, _ = transport.get_bytes(token_url, max_bytes=TOKEN_BODY_CAP, headers=headers,
                                          authenticate=False)
        except RegistryAuthError as exc:
            raise RegistryAuthError(
                f"token server {safe_url(realm)} refused the credentials for {self.registry}",
                status=exc.status,
            ) from exc
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise RegistryAuthError(f"token server {safe_url(realm)} answered no JSON") from exc
        token = data.get("token") or data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise RegistryAuthError(f"token server {safe_url(realm)} answered no token")
        self.tokens_fetched += 1
        log.debug("fetched a token from %s for scope %r", safe_url(realm), query.get("scope"))
        return token
