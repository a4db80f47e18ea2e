"""Registry authentication for :class:`doras_oras.transport.Transport`.

:class:`RegistryAuth` answers the registry's 401 challenges: ``Basic`` with
the configured username and password, ``Bearer realm=…,service=…,scope=…``
by fetching a token from the realm (with the basic credentials when there
are any, anonymously otherwise). Credentials are only ever attached to
requests for the registry's own origin. A realm over plain http (unless the
transport's policy allows http) or on another origin (scheme, host, port;
unless its ``host:port`` or its host is listed in ``allowed_realm_hosts``) is
refused with :class:`InsecureTransportError` before any request is sent. A
token the registry stops accepting (it expired mid-pull) is renewed once per
request. Credentials can come from docker ``config.json`` files and
credential helpers (:class:`DockerConfigAuth`, :meth:`RegistryAuth.from_docker_config`);
the Doras edge client uses the same reader.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import subprocess
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import requests

from .errors import Fix, InsecureTransportError, InvalidArgumentError, RegistryAuthError
from .reference import config_key
from .urls import origin, safe_url

if TYPE_CHECKING:
    from .transport import Transport

log = logging.getLogger(__name__)

#: Docker config files over this size are ignored.
CONFIG_CAP = 4 << 20

#: Token responses are JSON of a few KiB; anything bigger is refused.
TOKEN_BODY_CAP = 1024 * 1024

#: The user name that says the password is an identity token (docker's credential convention).
IDENTITY_TOKEN_USER = "<token>"

#: The OAuth2 client id sent with an identity token (the token server records it).
CLIENT_ID = "doras-oras"

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

    ``username``/``password`` are optional: without them, bearer tokens are
    requested anonymously and basic challenges fail. The user name
    :data:`IDENTITY_TOKEN_USER` (``<token>``, docker's convention) makes the password
    an identity token (an OAuth2 refresh token, as ``oras login --identity-token``
    takes): tokens are then asked with a ``POST`` of ``grant_type=refresh_token``
    to the realm. ``allowed_realm_hosts`` lists the token realms trusted besides the
    registry's own origin: a ``host:port`` allows that one port, a bare ``host``
    every port of it.
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
            raise InvalidArgumentError(f"registry must be host[:port], not {registry!r}")
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

        Reads the default docker config and then ``configs`` (later files win)
        with :class:`DockerConfigAuth`; no basic credentials found gives an
        anonymous :class:`RegistryAuth` (an identity token is not a registry password).
        """
        header = DockerConfigAuth([default_docker_config(), *(configs or [])]).authorization(registry)
        if header and header.startswith("Basic "):
            try:
                decoded = base64.b64decode(header[6:], validate=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                log.warning("ignoring a malformed docker config entry for %s", registry)
            else:
                username, _, password = decoded.partition(":")
                return cls(registry, username=username, password=password,
                           allowed_realm_hosts=allowed_realm_hosts)
        log.debug("no basic credentials for %s in the docker config", registry)
        return cls(registry, allowed_realm_hosts=allowed_realm_hosts)

    @property
    def has_credentials(self) -> bool:
        return self.username is not None

    def serves(self, url: str) -> bool:
        """Whether ``url`` is on this registry's origin (the only one credentials go to)."""
        return self._is_registry(url)

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
        if origin(realm) == origin(url):
            return
        registry = origin(url)
        realm_netloc = urlsplit(realm).netloc.rsplit("@", 1)[-1].lower()
        if realm_netloc in self.allowed_realm_hosts or origin(realm)[1] in self.allowed_realm_hosts:
            return
        raise InsecureTransportError(
            f"refusing token realm {safe_url(realm)}: not on the registry's host and port "
            f"({'://'.join((registry[0], f'{registry[1]}:{registry[2]}'))}) and not in allowed_realm_hosts",
            fix=Fix.REALM_HOST,
        )

    def _fetch_token(self, url: str, params: Mapping[str, str], transport: Transport) -> str:
        realm = params["realm"]
        self._check_realm(url, realm, transport)
        query = {k: params[k] for k in ("service", "scope") if params.get(k)}
        token_url = realm + (("&" if "?" in realm else "?") + urlencode(query) if query else "")
        if self.username == IDENTITY_TOKEN_USER:
            body = self._oauth2_token(realm, query, transport)
        else:
            body = self._distribution_token(realm, token_url, transport)
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


    def _distribution_token(self, realm: str, token_url: str, transport: Transport) -> bytes:
        """The token server's answer to a ``GET`` (with the basic credentials when there are any)."""
        headers: dict[str, str] = {"Accept": "application/json"}
        if self.username is not None:
            headers["Authorization"] = basic_header(self.username, self.password or "")
        try:
            body, _ = transport.get_bytes(token_url, max_bytes=TOKEN_BODY_CAP, headers=headers,
                                          authenticate=False)
        except RegistryAuthError as exc:
            raise RegistryAuthError(
                f"token server {safe_url(realm)} refused the credentials for {self.registry}",
                status=exc.status, fix=Fix.REGISTRY_CREDENTIALS,
            ) from exc
        return body

    def _oauth2_token(self, realm: str, query: Mapping[str, str], transport: Transport) -> bytes:
        """The token server's answer to ``POST grant_type=refresh_token`` with the identity token."""
        form = {"grant_type": "refresh_token", "refresh_token": self.password or "", "client_id": CLIENT_ID,
                **query}
        policy = transport.policy
        try:
            response = transport.session.post(
                realm, data=form, headers={"Accept": "application/json"}, allow_redirects=False, stream=True,
                timeout=(policy.connect_timeout_s, policy.read_timeout_s), verify=transport.verify)
        except requests.RequestException as exc:
            raise RegistryAuthError(f"token server {safe_url(realm)}: {type(exc).__name__}") from exc
        with response:
            if response.status_code != 200:
                raise RegistryAuthError(
                    f"token server {safe_url(realm)} refused the identity token for {self.registry} "
                    f"(HTTP {response.status_code})", status=response.status_code, fix=Fix.CREDENTIALS_REFUSED)
            body = response.raw.read(TOKEN_BODY_CAP + 1, decode_content=True)
        if len(body) > TOKEN_BODY_CAP:
            raise RegistryAuthError(f"token server {safe_url(realm)} answered over {TOKEN_BODY_CAP} bytes")
        return bytes(body)


def default_docker_config() -> Path:
    """``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``."""
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


class DockerConfigAuth:
    """Credentials of the docker ``config.json`` entry for the registry host.

    Reads ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json`` (or the
    given ``paths``), as oras-py does: ``auths[host].auth`` (base64
    ``user:password``), ``username``/``password``, ``registrytoken`` (sent as
    Bearer), then ``credHelpers[host]`` / ``credsStore`` through
    ``docker-credential-<name> get``. No entry: no header. Docker Hub's entry
    is ``https://index.docker.io/v1/`` (:func:`~doras_oras.reference.config_key`),
    whichever of its names is asked for.
    """

    def __init__(self, paths: Sequence[str | os.PathLike[str]] | None = None, *,
                 helper_timeout_s: float = 10.0) -> None:
        if paths is None:
            paths = [default_docker_config()]
        self.paths = [Path(p) for p in paths]
        self.helper_timeout_s = helper_timeout_s

    def _load(self) -> tuple[dict[str, Any], dict[str, str], str | None]:
        auths: dict[str, Any] = {}
        helpers: dict[str, str] = {}
        store: str | None = None
        for path in self.paths:
            try:
                with path.open("rb") as fh:
                    data = fh.read(CONFIG_CAP + 1)
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("cannot read docker config %s: %s", path, exc)
                continue
            try:
                cfg = json.loads(data) if len(data) <= CONFIG_CAP else None
            except ValueError:
                cfg = None
            if not isinstance(cfg, dict):
                log.warning("ignoring docker config %s: not a JSON object under 4 MiB", path)
                continue
            for key, entry in (cfg.get("auths") or {}).items():
                if isinstance(entry, dict):
                    auths[_config_host(key)] = entry
            helpers.update({_config_host(k): v for k, v in (cfg.get("credHelpers") or {}).items()
                            if isinstance(v, str)})
            if isinstance(cfg.get("credsStore"), str):
                store = cfg["credsStore"]
        return auths, helpers, store

    def authorization(self, registry: str) -> str | None:
        auths, helpers, store = self._load()
        key = config_key(registry)
        host = _config_host(key)
        entry = auths.get(host)
        if entry:
            token, encoded = entry.get("registrytoken"), entry.get("auth")
            if isinstance(token, str) and token:
                return "Bearer " + token
            if isinstance(encoded, str) and encoded:
                return "Basic " + encoded
            user, password = entry.get("username"), entry.get("password")
            if isinstance(user, str) and isinstance(password, str) and user and password:
                return basic_header(user, password)
        helper = helpers.get(host) or store
        if helper:
            return self._from_helper(helper, key if "://" in key else host)
        return None

    def _from_helper(self, helper: str, host: str) -> str | None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", helper):
            log.warning("ignoring credential helper with a strange name %r", helper[:50])
            return None
        try:
            proc = subprocess.run([f"docker-credential-{helper}", "get"], input=host.encode(),
                                  capture_output=True, check=True, timeout=self.helper_timeout_s)
            payload = json.loads(proc.stdout[:CONFIG_CAP])
            user, secret = payload["Username"], payload["Secret"]
        except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError) as exc:
            log.warning("credential helper docker-credential-%s gave nothing for %s: %s",
                        helper, host, type(exc).__name__)
            return None
        if not isinstance(user, str) or not isinstance(secret, str) or not secret:
            return None
        if user == "<token>":
            return "Bearer " + secret
        return basic_header(user, secret)


def _config_host(key: str) -> str:
    """``https://host:port/v1/`` and ``host:port`` name the same config entry."""
    text = key.strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    return text.split("/", 1)[0].lower()
