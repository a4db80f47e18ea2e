"""``RegistryClient``: verified, resilient reads from OCI registries (distribution API v2).

- :meth:`RegistryClient.resolve`: reference -> manifest descriptor (a ``HEAD``);
- :meth:`RegistryClient.fetch_if_changed`: the manifest unless it is still the digest the
  caller has (one conditional ``GET``: a ``304`` carries no body), what a pull asks first;
- :meth:`RegistryClient.fetch_parsed` / :meth:`RegistryClient.fetch_manifest`:
  the manifest bytes and media type, capped at 4 MiB, verified against the
  digest of the reference, schema-checked;
- :meth:`RegistryClient.open_blob`: a stream that checks size and digest and
  stops at ``size``;
- :meth:`RegistryClient.download`: fill a :class:`~doras_oras.layout.BlobWriter`
  resumably (the layout's partial file, or a file of the caller's with
  :meth:`RegistryClient.download_to`); :meth:`RegistryClient.fetch_into` stores a
  blob in a layout unless it is there.

Every request goes through one :class:`~doras_oras.transport.Transport` under
one :class:`~doras_oras.transport.TransferPolicy`, with
:class:`~doras_oras.auth.RegistryAuth` answering the registry's challenges.
This module does not import oras-py: :class:`~doras_oras.registry.DeltaRegistry`
(the oras-py facade) and the ``doras-oras`` command both build on it. See
``docs/network.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

import requests

from . import schemas
from .auth import RegistryAuth
from .descriptor import (
    EMPTY_DIGEST,
    EMPTY_JSON,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    Descriptor,
    validate_digest,
)
from .errors import (
    BodyTooLargeError,
    DigestMismatchError,
    Fix,
    InsecureTransportError,
    InvalidArgumentError,
    RegistryAuthError,
    RegistryError,
    SizeMismatchError,
    VerificationError,
)
from .layout import OCILayout
from .reference import DOCKER_HUB_AUTH, Reference, api_host, is_docker_hub
from .stream import verifying_stream
from .transport import ByteCounter, RetryBudget, TransferPolicy, Transport
from .transport.failures import NETWORK_ERRORS, REGISTRY_PEER, translate
from .urls import origin, safe_url

if TYPE_CHECKING:
    from .layout import BlobWriter

log = logging.getLogger(__name__)

ACCEPT_MANIFESTS = ", ".join((*MANIFEST_MEDIA_TYPES, *INDEX_MEDIA_TYPES))

Credentials = tuple[str, str]
"""``(username, password)``."""


class SupportsRegistryClient(Protocol):
    """Something that has a :class:`RegistryClient` (the oras-py facade ``DeltaRegistry``)."""

    @property
    def client(self) -> RegistryClient: ...


class _AuthHook:
    """The transport's auth hook: one :class:`RegistryAuth` per registry.

    Refuses to answer a challenge with credentials over plain HTTP unless the
    client allows it (``allow_insecure_auth``).
    """

    def __init__(self, owner: RegistryClient) -> None:
        self._owner = owner

    def _auth_for(self, url: str) -> RegistryAuth | None:
        for auth in self._owner._auths.values():
            if auth.serves(url):
                return auth
        return None

    def headers_for(self, url: str) -> Mapping[str, str]:
        auth = self._auth_for(url)
        return auth.headers_for(url) if auth is not None else {}

    def on_unauthorized(self, url: str, response: requests.Response, transport: Transport) -> bool:
        auth = self._auth_for(url)
        if auth is None:
            return False
        if origin(url)[0] == "http" and auth.has_credentials and not self._owner.allow_insecure_auth:
            raise InsecureTransportError(
                f"{safe_url(url)} asks for credentials over plain HTTP; refused", fix=Fix.INSECURE_AUTH
            )
        return auth.on_unauthorized(url, response, transport)


class RegistryClient:
    """Verified, resumable reads from registries.

    ``plain_http`` speaks HTTP instead of HTTPS; credentials (basic or token) are
    then sent only with ``allow_insecure_auth=True``. ``tls_verify`` is True,
    False or a CA bundle path. ``policy`` bounds every transfer (default
    :class:`TransferPolicy`). Credentials: ``credentials()`` (called before each
    request, so they may change; e.g. oras-py's ``auth.set_basic_auth``), else the
    docker ``config.json`` files in ``registry_configs`` (plus
    ``~/.docker/config.json``) and their credential helpers.
    ``allowed_realm_hosts``: other hosts whose token realms are trusted.
    ``extra_headers()``: headers sent with every request (never ``Authorization``).
    Redirects to other hosts (blob storage) are followed without credentials;
    never from https to http.
    """

    def __init__(
        self,
        *,
        plain_http: bool = False,
        tls_verify: bool | str = True,
        allow_insecure_auth: bool = False,
        policy: TransferPolicy | None = None,
        registry_configs: Sequence[str | os.PathLike[str]] = (),
        allowed_realm_hosts: Iterable[str] = (),
        credentials: Callable[[], Credentials | None] | Credentials | None = None,
        session: requests.Session | None = None,
        extra_headers: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        base = policy if policy is not None else TransferPolicy()
        self.policy = dataclasses.replace(base, allow_http=bool(plain_http))
        self.plain_http = bool(plain_http)
        self.tls_verify = tls_verify
        self.allow_insecure_auth = allow_insecure_auth
        self.registry_configs = [str(c) for c in registry_configs]
        for config in self.registry_configs:
            if not os.path.isfile(config):
                raise InvalidArgumentError(f"registry config {config} does not exist")
        self.allowed_realm_hosts = tuple(allowed_realm_hosts)
        if credentials is None or callable(credentials):
            self._credentials: Callable[[], Credentials | None] = credentials or (lambda: None)
        else:
            fixed = credentials
            self._credentials = lambda: fixed
        self._extra_headers = extra_headers or dict
        self._auths: dict[str, RegistryAuth] = {}
        self._auth_sources: dict[str, Credentials | None] = {}
        self.session = session if session is not None else requests.Session()
        self._own_session = session is None
        self.transport = Transport(self.session, self.policy, verify=tls_verify, auth=_AuthHook(self),
                                   peer=REGISTRY_PEER)
        self.bytes_received = 0
        """Body bytes of manifests and blobs received so far (exact; retries and restarts included)."""
        self._deadline: float | None = None
        self.unconditional: set[str] = set()
        """Registry hosts seen ignoring ``If-None-Match``: :meth:`fetch_if_changed` asks them with a ``HEAD``."""

    @property
    def prefix(self) -> str:
        """``http`` or ``https``."""
        return "http" if self.plain_http else "https"

    @property
    def client(self) -> RegistryClient:
        """This client (so that it is a :class:`SupportsRegistryClient` too)."""
        return self

    def close(self) -> None:
        """Close the HTTP session if this client made it."""
        if self._own_session:
            self.session.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- deadline and credentials ------------------------------------------------------
    @contextlib.contextmanager
    def pull_deadline(self, seconds: float | None = None) -> Iterator[float | None]:
        """Share one overall deadline among every request made inside the block.

        ``seconds`` defaults to ``policy.deadline_s``; nested blocks keep the
        outer deadline. Yields the :func:`time.monotonic` instant (None: none).
        Outside such a block each request gets ``policy.deadline_s`` of its own.
        """
        if self._deadline is not None:
            yield self._deadline
            return
        limit = seconds if seconds is not None else self.policy.deadline_s
        self._deadline = None if limit is None else time.monotonic() + limit
        try:
            yield self._deadline
        finally:
            self._deadline = None

    def _prepare(self, ref: Reference) -> None:
        """Make sure credentials for ``ref``'s registry are known to the transport."""
        host = ref.registry
        explicit = self._credentials()
        if host in self._auths and self._auth_sources.get(host) == explicit:
            return
        realms = (*self.allowed_realm_hosts, *((DOCKER_HUB_AUTH,) if is_docker_hub(host) else ()))
        if explicit is not None:
            user, password = explicit
            auth = RegistryAuth(api_host(host), username=user, password=password, allowed_realm_hosts=realms)
        else:
            auth = RegistryAuth.from_docker_config(api_host(host), configs=self.registry_configs,
                                                   allowed_realm_hosts=realms)
        self._auths[host] = auth
        self._auth_sources[host] = explicit

    def credentials_for(self, registry_host: str) -> Credentials | None:
        """The ``(username, password)`` this client uses for ``registry_host``, if any.

        From ``credentials`` or the docker config files and credential helpers;
        the Doras server is given the same credentials (it reads the registry with them).
        """
        self._prepare(Reference(registry_host, "x"))
        auth = self._auths.get(registry_host)
        if auth is None or auth.username is None:
            return None
        return auth.username, auth.password or ""

    def _url(self, ref: Reference, kind: str, what: str) -> str:
        return f"{self.prefix}://{api_host(ref.registry)}/v2/{ref.repository}/{kind}/{what}"

    def _headers(self, extra: Mapping[str, str]) -> dict[str, str]:
        base = {k: v for k, v in dict(self._extra_headers()).items() if k.lower() != "authorization"}
        base.update(extra)
        return base

    # --- manifests ---------------------------------------------------------------
    def resolve(self, ref: Reference | str) -> Descriptor:
        """The descriptor (media type, digest, size) of the manifest ``ref`` names.

        Taken from the HEAD headers when they are complete (the bytes are verified
        against it when fetched), else from the hashed body of a GET.
        """
        ref = Reference.parse(ref) if isinstance(ref, str) else ref
        self._prepare(ref)
        url = self._url(ref, "manifests", ref.reference)
        chain = self.transport.budget(self._deadline)  # the HEAD and a GET after it share one budget
        try:
            response = self.transport.head(url, headers=self._headers({"Accept": ACCEPT_MANIFESTS}), budget=chain)
        except RegistryAuthError:
            raise
        except RegistryError as exc:
            if chain.spent:  # the registry kept failing: a GET would only wait more
                raise
            log.debug("HEAD %s answered %s; asking with GET", safe_url(url), exc.status)
            return self.fetch_parsed(ref, budget=chain).descriptor
        digest = response.headers.get("Docker-Content-Digest", "")
        media_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip()
        length = response.headers.get("Content-Length", "")
        try:
            validate_digest(digest)
            size = int(length)
        except ValueError:
            size = -1
        if size >= 0 and media_type in (*MANIFEST_MEDIA_TYPES, *INDEX_MEDIA_TYPES):
            if ref.digest and digest != ref.digest:
                raise DigestMismatchError(f"{ref}: registry says {digest}")
            if size > schemas.MAX_MANIFEST_BYTES:
                raise BodyTooLargeError(f"manifest {ref}: {size} bytes, over the cap")
            return Descriptor(media_type=media_type, digest=digest, size=size)
        return self.fetch_parsed(ref, budget=chain).descriptor

    def fetch_parsed(self, ref: Reference | str, *, expected: Descriptor | None = None,
                     budget: RetryBudget | None = None, accept: str = ACCEPT_MANIFESTS) -> schemas.ParsedManifest:
        """GET a manifest or index (at most 4 MiB), checked by :func:`doras_oras.schemas.parse_manifest`.

        ``budget``: the retry budget of the chain this read belongs to (default: its own).
        ``accept``: the media types asked for (a shorter list makes a cheaper request).
        """
        parsed = self._get_manifest(ref, expected=expected, budget=budget, accept=accept)
        if parsed is None:  # a 304 is an error unless the GET was conditional: not reached
            raise RegistryError(f"manifest {ref}: 304 Not Modified to an unconditional GET", status=304)
        return parsed

    def fetch_if_changed(self, ref: Reference | str, held: str | None) -> schemas.ParsedManifest | None:
        """The manifest or index ``ref`` names, in one request; ``None`` when it still names ``held``.

        With ``held`` (the registry digest the caller has) the GET is conditional:
        ``If-None-Match: "<held>"``, the ``ETag`` distribution gives a manifest, whose
        ``304 Not Modified`` answer (no body) means that ``ref`` names ``held``. Without
        ``held``, a plain GET. The body is checked as :meth:`fetch_parsed` checks it and its
        own digest is what it is: a tag that moves meanwhile cannot mix versions.

        A registry that ignores the condition (a 200 with ``held``'s bytes) is remembered
        (:attr:`unconditional`): later calls for its host ask with a ``HEAD`` first
        (:meth:`resolve`) and fetch the body only when it changed.
        """
        ref = Reference.parse(ref) if isinstance(ref, str) else ref
        if held is None:
            return self._get_manifest(ref)
        validate_digest(held)
        if ref.registry in self.unconditional:
            resolved = self.resolve(ref)
            return None if resolved.digest == held else self.fetch_parsed(ref, expected=resolved)
        parsed = self._get_manifest(ref, if_none_match=held)
        if parsed is not None and parsed.descriptor.digest == held:
            log.debug("%s ignores If-None-Match: asking with HEAD from now on", ref.registry)
            self.unconditional.add(ref.registry)
            return None
        return parsed

    def _get_manifest(self, ref: Reference | str, *, expected: Descriptor | None = None,
                      budget: RetryBudget | None = None, if_none_match: str | None = None,
                      accept: str = ACCEPT_MANIFESTS) -> schemas.ParsedManifest | None:
        """The GET of :meth:`fetch_parsed`; with ``if_none_match`` (a digest) conditional: None on a 304."""
        ref = Reference.parse(ref) if isinstance(ref, str) else ref
        self._prepare(ref)
        target = expected.digest if expected is not None else ref.reference
        url = self._url(ref, "manifests", target)
        headers = {"Accept": accept}
        if if_none_match is not None:
            headers["If-None-Match"] = f'"{if_none_match}"'
        body, response = self.transport.get_bytes(
            url, max_bytes=schemas.MAX_MANIFEST_BYTES, headers=self._headers(headers),
            budget=budget if budget is not None else self.transport.budget(self._deadline),
            not_modified=if_none_match is not None,
        )
        self.bytes_received += len(body)
        header = response.headers.get("Docker-Content-Digest")
        if response.status_code == 304:
            if header and header != if_none_match:
                raise DigestMismatchError(f"manifest {ref}: not modified from {if_none_match}, "
                                          f"but the registry says {header}")
            return None
        content_type = response.headers.get("Content-Type", "")
        if expected is None and ref.digest:
            media_type = content_type.split(";", 1)[0].strip()
            expected = Descriptor(media_type=media_type, digest=ref.digest, size=len(body))
        parsed = schemas.parse_manifest(body, content_type, expected=expected, what=f"manifest {ref}")
        if expected is None and header and header.startswith("sha256:") and header != parsed.descriptor.digest:
            raise DigestMismatchError(
                f"manifest {ref}: body hashes to {parsed.descriptor.digest}, registry says {header}"
            )
        return parsed

    def manifest_exists(self, ref: Reference, *, accept: str = ACCEPT_MANIFESTS) -> bool:
        """Whether the registry has a manifest under ``ref``: one ``HEAD``, no body; 404 is False.

        ``accept``: the media types asked for (a shorter list makes a cheaper request).
        """
        self._prepare(ref)
        url = self._url(ref, "manifests", ref.reference)
        try:
            self.transport.head(url, headers=self._headers({"Accept": accept}),
                                budget=self.transport.budget(self._deadline))
        except RegistryAuthError:
            raise
        except RegistryError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def fetch_manifest(self, ref: Reference) -> tuple[bytes, str]:
        """The manifest bytes and their media type (verified, capped, schema-checked)."""
        parsed = self.fetch_parsed(ref)
        return parsed.body, parsed.descriptor.media_type

    def get_optional(self, ref: Reference, path: str, *, max_bytes: int,
                     accept: str | None = None) -> tuple[bytes, Mapping[str, str]] | None:
        """GET ``path`` (``/v2/...``) of ``ref``'s registry: the body (at most ``max_bytes``) and the headers.

        ``None`` when the registry answers 404 (a read that may find nothing:
        a signature tag, the referrers API). Any other failure raises as
        every request does (:class:`RegistryError`, :class:`TransportError`,
        :class:`BodyTooLargeError`); the body is not checked here (the caller
        verifies it). Counted in :attr:`bytes_received`.
        """
        if not path.startswith("/v2/"):
            raise InvalidArgumentError(f"registry path {path[:100]!r} does not start with /v2/")
        self._prepare(ref)
        url = f"{self.prefix}://{api_host(ref.registry)}{path}"
        headers = self._headers({"Accept": accept} if accept else {})
        try:
            body, response = self.transport.get_bytes(url, max_bytes=max_bytes, headers=headers,
                                                      budget=self.transport.budget(self._deadline))
        except RegistryAuthError:
            raise
        except RegistryError as exc:
            if exc.status == 404:
                return None
            raise
        self.bytes_received += len(body)
        return body, response.headers

    # --- blobs -----------------------------------------------------------------------
    def open_blob(self, ref: Reference | str, descriptor: Descriptor) -> BinaryIO:
        """A stream of the blob that yields at most ``size`` bytes and fails on a wrong size or digest.

        Not resumable (use :meth:`download` for that).
        """
        ref = Reference.parse(ref) if isinstance(ref, str) else ref
        validate_digest(descriptor.digest)
        if descriptor.data is not None:
            return verifying_stream(io.BytesIO(descriptor.data), descriptor.digest, descriptor.size,
                                    what="inline blob")
        self._prepare(ref)
        url = self._url(ref, "blobs", descriptor.digest)
        response = self.transport.get(url, headers=self._headers({"Accept-Encoding": "identity"}), stream=True,
                                      budget=self.transport.budget(self._deadline))
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) != descriptor.size:
            response.close()
            raise SizeMismatchError(
                f"blob {descriptor.digest}: registry announces {length} bytes, descriptor says {descriptor.size}"
            )
        response.raw.decode_content = False  # the blob's bytes as sent

        def count(n: int) -> None:
            self.bytes_received += n

        def network_error(exc: Exception) -> Exception:
            return translate(exc, response.url) if isinstance(exc, NETWORK_ERRORS) else exc

        return verifying_stream(response.raw, descriptor.digest, descriptor.size, what="blob",
                                on_read=count, on_error=network_error)

    def download(
        self, ref: Reference | str, descriptor: Descriptor, writer: BlobWriter, *,
        on_progress: Callable[[int], None] | None = None,
    ) -> str:
        """Fill ``writer`` with the blob (resuming what it holds), verified; return the digest.

        A dropped, stalled or timed-out link after the policy's retries raises a
        :class:`TransportError` and leaves the writer's bytes for the next call
        (close it to keep a partial file); a digest or size mismatch discards them.
        ``on_progress`` is called with the bytes of the blob held so far (a resumed
        download starts at what the writer held, not at 0).
        """
        ref = Reference.parse(ref) if isinstance(ref, str) else ref
        validate_digest(descriptor.digest)
        known = descriptor.data if descriptor.data is not None else (
            EMPTY_JSON if descriptor.digest == EMPTY_DIGEST and descriptor.size == len(EMPTY_JSON) else None)
        if known is not None:  # inline data, or the empty descriptor: no need to ask
            writer.restart()
            writer.write(known)
            return writer.finish()
        self._prepare(ref)
        url = self._url(ref, "blobs", descriptor.digest)
        counter = ByteCounter(on_progress=(lambda _received: on_progress(writer.offset)) if on_progress else None)
        try:
            return self.transport.download(url, writer, headers=self._headers({}), counter=counter,
                                           budget=self.transport.budget(self._deadline), exact_length=True)
        except VerificationError:
            writer.discard()
            raise
        finally:
            self.bytes_received += counter.received

    def download_to(self, ref: Reference | str, descriptor: Descriptor, path_partial: Path, *,
                    on_progress: Callable[[int], None] | None = None) -> Path:
        """Download the blob into a file of the caller's, resuming what is there; return it verified.

        ``path_partial`` and its ``.meta`` sidecar belong to this call: a drop,
        stall or kill leaves them for the next call to resume; a digest or size
        mismatch removes them.
        """
        from .layout import BlobWriter

        path_partial = Path(path_partial)
        with BlobWriter.partial(path_partial, digest=descriptor.digest, size=descriptor.size) as writer:
            self.download(ref, descriptor, writer, on_progress=on_progress)
        return path_partial

    def fetch_into(self, ref: Reference | str, descriptor: Descriptor, layout: OCILayout, *,
                   on_progress: Callable[[int], None] | None = None) -> Path:
        """Store the blob in ``layout`` (resumable through its ``ingest/``) unless it is there; return its path.

        Downloads without the layout lock; takes it (re-entrant) to place the blob.
        """
        if layout.has_blob(descriptor):
            return layout.blob_path(descriptor.digest)
        with layout.partial_writer(descriptor) as writer:  # a failed link keeps what arrived
            self.download(ref, descriptor, writer, on_progress=on_progress)
            with layout.lock():
                layout.store(writer)
        return layout.blob_path(descriptor.digest)


def registry_client_of(registry: RegistryClient | SupportsRegistryClient) -> RegistryClient:
    """The :class:`RegistryClient` of ``registry`` (itself, or the one of an oras-py facade)."""
    return registry if isinstance(registry, RegistryClient) else registry.client
