"""``DeltaRegistry``: oras-py's ``Registry`` with verified, resilient fetches and a verified full pull.

Everything of :class:`oras.provider.Registry` keeps working (``push``,
``pull``, ``get_tags``, auth backends, ``insecure`` = plain HTTP,
``tls_verify`` = bool or CA bundle path). Added here:

- :meth:`DeltaRegistry.resolve`: reference -> manifest descriptor (HEAD);
- :meth:`DeltaRegistry.fetch_manifest` / :meth:`DeltaRegistry.fetch_parsed`:
  the manifest bytes and media type, capped at 4 MiB, verified against the
  digest of the reference, schema-checked;
- :meth:`DeltaRegistry.open_blob`: a stream that checks size and digest and
  stops at ``size``;
- :meth:`DeltaRegistry.download_blob` / :meth:`DeltaRegistry.download_to`:
  resumable verified blob downloads (into the layout's ``blobs/``, or into a
  file of the caller's);
- :meth:`DeltaRegistry.pull_full`: manifest, config and layers into an
  :class:`~doras_oras.layout.OCILayout`, ``index.json`` last.

All HTTP of these goes through one :class:`~doras_oras.transport.Transport`
(timeouts, throughput floor, retries of 429/5xx with ``Retry-After``, safe
redirects, resume) under one :class:`~doras_oras.transport.TransferPolicy`,
with :class:`~doras_oras.auth.RegistryAuth` answering the registry's
challenges. ``fetch_manifest`` and ``open_blob`` have the signatures of the
edge client's ``ContentFetcher`` protocol. See ``docs/network.md``.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import logging
import os
import platform as _platform
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import oras.provider
import requests

from . import schemas
from .auth import RegistryAuth
from .descriptor import (
    ANNOTATION_PREFIX,
    EMPTY_DIGEST,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    Descriptor,
    new_hasher,
    validate_digest,
)
from .errors import (
    BodyTooLargeError,
    ConnectError,
    DigestMismatchError,
    ImageNotFoundError,
    InsecureTransportError,
    RegistryAuthError,
    RegistryError,
    SizeMismatchError,
    TransferTimeoutError,
    TransportError,
)
from .layout import ImageEntry, OCILayout, disk_error
from .reference import Reference
from .transport import ByteCounter, TransferPolicy, Transport, origin, safe_url
from .verify import VerifyingReader

if TYPE_CHECKING:
    from .pull import PullResult

log = logging.getLogger(__name__)

ANNOTATION_SOURCE_INDEX = ANNOTATION_PREFIX + "source.index"
"""On an ``index.json`` entry: the registry image index the platform manifest was chosen from."""
ANNOTATION_SOURCE_PLATFORM = ANNOTATION_PREFIX + "source.platform"
"""With ``source.index``: the platform (``os/arch[/variant]``) of the manifest chosen from it."""

ACCEPT_MANIFESTS = ", ".join((*MANIFEST_MEDIA_TYPES, *INDEX_MEDIA_TYPES))

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm"}


def host_platform() -> str:
    """``os/arch`` of this machine in OCI terms (e.g. ``linux/amd64``)."""
    machine = _platform.machine().lower()
    return f"{_platform.system().lower()}/{_ARCH.get(machine, machine)}"


@dataclass(frozen=True)
class FullPullResult:
    """What :meth:`DeltaRegistry.pull_full` did."""

    reference: Reference
    resolved: Descriptor
    """What the reference named (an index when the registry has several platforms)."""
    manifest: Descriptor
    """The image manifest stored and committed."""
    image: ImageEntry
    bytes_received: int
    """Bytes of manifests and blobs received from the registry."""
    blobs_fetched: int
    blobs_reused: int


def platform_matches(recorded: str, wanted: str) -> bool:
    """Whether an image of platform ``recorded`` is what ``wanted`` asks for (as an index entry
    is chosen: os and architecture equal, and the variant too when ``wanted`` names one)."""
    try:
        have, want = _parse_platform(recorded), _parse_platform(wanted)
    except ValueError:
        return False
    return have[:2] == want[:2] and (want[2] is None or have[2] == want[2])


def _platform_text(platform: Mapping[str, Any] | None) -> str:
    plat = platform or {}
    return "/".join(str(x) for x in (plat.get("os"), plat.get("architecture"), plat.get("variant")) if x)


def _parse_platform(text: str) -> tuple[str, str, str | None]:
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"invalid platform {text!r}: expected os/arch[/variant]")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


class _ResponseStream(io.RawIOBase):
    """Raw bytes of a streamed response (no content decoding); counts; closes the response."""

    def __init__(self, response: requests.Response, owner: DeltaRegistry) -> None:
        super().__init__()
        self._response = response
        self._owner = owner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        try:
            data = self._response.raw.read(len(view), decode_content=False)
        except Exception as exc:  # urllib3 errors vary by version
            raise _translate(exc, self._response.url) from exc
        n = len(data)
        view[:n] = data
        self._owner.bytes_received += n
        return n

    def close(self) -> None:
        if not self.closed:
            self._response.close()
        super().close()


class _BlobReader(VerifyingReader):
    """A :class:`VerifyingReader` that closes its source."""

    def close(self) -> None:
        if not self.closed:
            source = self._source
            if isinstance(source, io.IOBase):
                source.close()
        super().close()


def _translate(exc: BaseException, url: str) -> TransportError:
    text = str(exc)
    if isinstance(exc, requests.exceptions.Timeout) or "timed out" in text.lower():
        return TransferTimeoutError(f"timeout reading from {safe_url(url)}: {exc.__class__.__name__}")
    return ConnectError(f"transfer from {safe_url(url)} failed: {exc.__class__.__name__}")


class _AuthHook:
    """The transport's :class:`~doras_oras.transport.AuthHook`: one :class:`RegistryAuth` per registry.

    Refuses to answer a challenge with credentials over plain HTTP unless the
    registry client allows it (``allow_insecure_auth``).
    """

    def __init__(self, owner: DeltaRegistry) -> None:
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
                f"{safe_url(url)} asks for credentials over plain HTTP; refused "
                "(allow_insecure_auth / --allow-insecure-auth permits it)"
            )
        return auth.on_unauthorized(url, response, transport)


class DeltaRegistry(oras.provider.Registry):  # type: ignore[misc]
    """An oras-py registry client with verified, resumable fetches and a verified full pull.

    ``insecure`` speaks plain HTTP; credentials (basic or token) are then sent
    only with ``allow_insecure_auth=True``. ``tls_verify`` is True, False or a
    CA bundle path. ``policy`` bounds every transfer (default
    :class:`TransferPolicy`); ``timeout`` (``(connect, read)`` seconds)
    overrides its two timeouts. Credentials: those set on the oras-py auth
    backend (``registry.auth.set_basic_auth``), else the docker ``config.json``
    files in ``registry_configs`` (plus ``~/.docker/config.json``) and their
    credential helpers. ``allowed_realm_hosts``: other hosts whose token
    realms are trusted. Redirects to other hosts (blob storage) are followed
    without credentials; never from https to http.
    """

    def __init__(
        self,
        hostname: str | None = None,
        insecure: bool = False,
        tls_verify: bool | str = True,
        auth_backend: str = "token",
        *,
        allow_insecure_auth: bool = False,
        timeout: tuple[float, float] | None = None,
        policy: TransferPolicy | None = None,
        registry_configs: Sequence[str | os.PathLike[str]] = (),
        allowed_realm_hosts: Iterable[str] = (),
    ) -> None:
        super().__init__(hostname=hostname, insecure=insecure, tls_verify=tls_verify, auth_backend=auth_backend)
        base = policy if policy is not None else TransferPolicy()
        if timeout is not None:
            base = dataclasses.replace(base, connect_timeout_s=float(timeout[0]), read_timeout_s=float(timeout[1]))
        self.policy = dataclasses.replace(base, allow_http=bool(insecure))
        self.allow_insecure_auth = allow_insecure_auth
        self.registry_configs = [str(c) for c in registry_configs]
        for config in self.registry_configs:
            if not os.path.isfile(config):
                raise FileNotFoundError(f"registry config {config} does not exist")
        self.allowed_realm_hosts = tuple(allowed_realm_hosts)
        self._auths: dict[str, RegistryAuth] = {}
        self._auth_sources: dict[str, str | None] = {}
        self.transport = Transport(self.session, self.policy, verify=tls_verify, auth=_AuthHook(self))
        self.bytes_received = 0
        """Body bytes of manifests and blobs received so far (exact; retries and restarts included)."""
        self._deadline: float | None = None

    @property
    def timeout(self) -> tuple[float, float]:
        """``(connect, read)`` timeouts in seconds."""
        return self.policy.connect_timeout_s, self.policy.read_timeout_s

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

    def _explicit_basic(self) -> str | None:
        basic = getattr(self.auth, "_basic_auth", None)
        return basic if isinstance(basic, str) and basic else None

    def _prepare(self, ref: Reference) -> None:
        """Make sure credentials for ``ref``'s registry are known to the transport."""
        host = ref.registry
        basic = self._explicit_basic()
        if host in self._auths and self._auth_sources.get(host) == basic:
            return
        if basic is not None:
            user, _, password = base64.b64decode(basic).decode("utf-8", "replace").partition(":")
            auth = RegistryAuth(host, username=user, password=password, allowed_realm_hosts=self.allowed_realm_hosts)
        else:
            auth = RegistryAuth.from_docker_config(
                host, configs=self.registry_configs, allowed_realm_hosts=self.allowed_realm_hosts
            )
        self._auths[host] = auth
        self._auth_sources[host] = basic

    def credentials_for(self, registry_host: str) -> tuple[str, str] | None:
        """The ``(username, password)`` this client uses for ``registry_host``, if any.

        From ``auth.set_basic_auth`` or the docker config files and credential
        helpers; the Doras server is given the same credentials (it reads the
        registry with them).
        """
        self._prepare(Reference(registry_host, "x"))
        auth = self._auths.get(registry_host)
        if auth is None or auth.username is None:
            return None
        return auth.username, auth.password or ""

    def _url(self, ref: Reference, kind: str, what: str) -> str:
        return f"{self.prefix}://{ref.registry}/v2/{ref.repository}/{kind}/{what}"

    def _headers(self, extra: Mapping[str, str]) -> dict[str, str]:
        base = {k: v for k, v in dict(getattr(self, "headers", {}) or {}).items() if k.lower() != "authorization"}
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
        try:
            response = self.transport.head(url, headers=self._headers({"Accept": ACCEPT_MANIFESTS}),
                                           deadline=self._deadline)
        except RegistryAuthError:
            raise
        except RegistryError as exc:
            log.debug("HEAD %s answered %s; asking with GET", safe_url(url), exc.status)
            return self.fetch_parsed(ref).descriptor
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
        return self.fetch_parsed(ref).descriptor

    def fetch_parsed(self, ref: Reference | str, *, expected: Descriptor | None = None) -> schemas.ParsedManifest:
        """GET a manifest or index (at most 4 MiB), checked by :func:`doras_oras.schemas.parse_manifest`."""
        ref = Reference.parse(ref) if isinstance(ref, str) else ref
        self._prepare(ref)
        target = expected.digest if expected is not None else ref.reference
        url = self._url(ref, "manifests", target)
        body, response = self.transport.get_bytes(
            url, max_bytes=schemas.MAX_MANIFEST_BYTES, headers=self._headers({"Accept": ACCEPT_MANIFESTS}),
            deadline=self._deadline,
        )
        self.bytes_received += len(body)
        content_type = response.headers.get("Content-Type", "")
        if expected is None and ref.digest:
            media_type = content_type.split(";", 1)[0].strip()
            expected = Descriptor(media_type=media_type, digest=ref.digest, size=len(body))
        parsed = schemas.parse_manifest(body, content_type, expected=expected, what=f"manifest {ref}")
        header = response.headers.get("Docker-Content-Digest")
        if expected is None and header and header.startswith("sha256:") and header != parsed.descriptor.digest:
            raise DigestMismatchError(
                f"manifest {ref}: body hashes to {parsed.descriptor.digest}, registry says {header}"
            )
        return parsed

    def fetch_manifest(self, ref: Reference) -> tuple[bytes, str]:
        """The manifest bytes and their media type (verified, capped, schema-checked)."""
        parsed = self.fetch_parsed(ref)
        return parsed.body, parsed.descriptor.media_type

    # --- blobs -----------------------------------------------------------------------
    def open_blob(self, ref: Reference, descriptor: Descriptor) -> BinaryIO:
        """A stream of the blob that yields at most ``size`` bytes and fails on a wrong size or digest.

        Not resumable (use :meth:`download_blob` / :meth:`download_to` for that).
        """
        ref = Reference.parse(ref) if isinstance(ref, str) else ref
        validate_digest(descriptor.digest)
        if descriptor.data is not None:
            return io.BufferedReader(VerifyingReader(io.BytesIO(descriptor.data), descriptor.digest,
                                                     descriptor.size, what="inline blob"))
        self._prepare(ref)
        url = self._url(ref, "blobs", descriptor.digest)
        response = self.transport.get(url, headers=self._headers({"Accept-Encoding": "identity"}), stream=True,
                                      deadline=self._deadline)
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) != descriptor.size:
            response.close()
            raise SizeMismatchError(
                f"blob {descriptor.digest}: registry announces {length} bytes, descriptor says {descriptor.size}"
            )
        raw = _ResponseStream(response, self)
        return io.BufferedReader(_BlobReader(raw, descriptor.digest, descriptor.size, what="blob"))

    def download_to(
        self, ref: Reference | str, descriptor: Descriptor, path_partial: Path, *,
        on_progress: Callable[[int], None] | None = None,
    ) -> Path:
        """Download the blob into ``path_partial`` (resuming what is there); return it verified and fsynced.

        ``path_partial`` and its ``.meta`` sidecar belong to this call (see
        :meth:`Transport.download`): a drop, stall or kill leaves them for the
        next call to resume; a digest or size mismatch removes them. For blobs
        that must not go into ``blobs/`` (a delta blob, kept in ``ingest/``
        until applied): pass ``layout.partial_path(descriptor)``. ``on_progress``
        is called with the bytes received so far.
        """
        ref = Reference.parse(ref) if isinstance(ref, str) else ref
        validate_digest(descriptor.digest)
        path_partial = Path(path_partial)
        if descriptor.data is not None or (descriptor.digest == EMPTY_DIGEST and descriptor.size == 2):
            return _write_inline(descriptor, path_partial)
        self._prepare(ref)
        url = self._url(ref, "blobs", descriptor.digest)
        counter = ByteCounter(on_progress=on_progress)
        try:
            return self.transport.download(
                url, digest=descriptor.digest, size=descriptor.size, partial_path=path_partial,
                headers=self._headers({}), counter=counter, deadline=self._deadline, exact_length=True,
            )
        except OSError as exc:
            raise disk_error(f"blob {descriptor.digest}", exc) from exc
        except TransportError:
            _drop_if_empty(path_partial)
            raise
        finally:
            self.bytes_received += counter.received

    def download_blob(self, ref: Any, descriptor: Any, layout: Any) -> Any:
        """Download a verified blob into ``layout``'s ``blobs/`` (resumable); return its path.

        The bytes go to ``layout.partial_path(descriptor)`` first (kept across
        drops and restarts), then are moved into ``blobs/`` (fsync, rename,
        directory fsync, 0644). Takes the layout lock (re-entrant). A blob
        already in the layout is not fetched. Called with oras-py's arguments
        ``(container, digest, outfile)`` it is oras-py's own ``download_blob``.
        """
        if not (isinstance(descriptor, Descriptor) and isinstance(layout, OCILayout)):
            return super().download_blob(ref, descriptor, layout)
        ref = Reference.parse(ref) if isinstance(ref, str) else ref
        with layout.lock():
            if layout.has_blob(descriptor):
                return layout.blob_path(descriptor.digest)
            path = self.download_to(ref, descriptor, layout.partial_path(descriptor))
            return layout.adopt_partial(descriptor, path)

    # --- full pull -------------------------------------------------------------------
    def _choose_platform(self, ref: Reference, parsed: schemas.ParsedManifest, wanted: str) -> Descriptor:
        _parse_platform(wanted)  # a malformed platform is an error, not "no match"
        entries = [Descriptor.from_json(item) for item in parsed.document["manifests"]]
        available = []
        for entry in entries:
            text = _platform_text(entry.platform)
            available.append(text)
            if platform_matches(text, wanted) and entry.media_type in MANIFEST_MEDIA_TYPES:
                return entry
        raise ImageNotFoundError(
            f"{ref}: no manifest for platform {wanted} in the index (has: {', '.join(available) or 'none'})"
        )

    def pull_full(
        self,
        ref: Reference | str,
        layout: OCILayout,
        *,
        platform: str | None = None,
        lock_timeout: float = 300.0,
        parsed: schemas.ParsedManifest | None = None,
    ) -> FullPullResult:
        """Verified full pull of ``ref`` into ``layout``; ``index.json`` is written last.

        An image index is resolved to the manifest of ``platform`` (``os/arch[/variant]``,
        default: this machine). Blobs already in the layout (and verified) are not fetched;
        a blob interrupted by a previous run is resumed from its partial file. All requests
        share one deadline (``policy.deadline_s``, or the enclosing :meth:`pull_deadline`).
        ``parsed``: the manifest (or index) of ``ref`` as :meth:`fetch_parsed` already
        returned it, so it is not fetched again.
        """
        ref = Reference.parse(ref) if isinstance(ref, str) else ref
        if platform is not None:
            _parse_platform(platform)
        with self.pull_deadline():
            return self._pull_full(ref, layout, platform=platform, lock_timeout=lock_timeout, parsed=parsed)

    def _pull_full(
        self, ref: Reference, layout: OCILayout, *, platform: str | None, lock_timeout: float,
        parsed: schemas.ParsedManifest | None,
    ) -> FullPullResult:
        start = self.bytes_received
        if parsed is not None and ref.digest and parsed.descriptor.digest != ref.digest:
            raise ValueError(f"pull_full: the manifest given is {parsed.descriptor.digest}, {ref} names another")
        top = parsed if parsed is not None else self.fetch_parsed(ref)
        resolved = top.descriptor
        manifest = top
        notes: dict[str, str] = {}
        if top.is_index:
            chosen = self._choose_platform(ref, top, platform or host_platform())
            manifest = self.fetch_parsed(ref, expected=chosen)
            notes[ANNOTATION_SOURCE_INDEX] = resolved.digest
            notes[ANNOTATION_SOURCE_PLATFORM] = _platform_text(chosen.platform)
        document = manifest.document
        blobs = [Descriptor.from_json(document["config"])] + [Descriptor.from_json(x) for x in document["layers"]]
        own = Descriptor(
            media_type=manifest.descriptor.media_type,
            digest=manifest.descriptor.digest,
            size=manifest.descriptor.size,
            artifact_type=document.get("artifactType"),
        )
        fetched = reused = 0
        with layout.lock(timeout=lock_timeout):
            placed: list[str] = []
            try:
                for blob in [*blobs, own]:
                    if layout.has_blob(blob):
                        reused += blob is not own
                        continue
                    placed.append(blob.digest)
                    if blob is own:
                        layout.ingest_bytes(own, manifest.body)
                        continue
                    if blob.digest == EMPTY_DIGEST and blob.data is None:
                        # The empty descriptor: its content is known, no need to ask.
                        blob = Descriptor(blob.media_type, blob.digest, blob.size, data=b"{}")
                    if blob.data is not None:
                        layout.ingest_bytes(blob, blob.data)
                    else:
                        self.download_blob(ref, blob, layout)
                    fetched += 1
                image = layout.commit_image(
                    own, repository=ref.name, tag=ref.tag, source_digest=own.digest, annotations=notes
                )
            except BaseException:
                # Nothing of a failed pull stays in blobs/ (partials of dropped links stay in ingest/).
                with contextlib.suppress(Exception):
                    layout.discard_unreferenced(placed)
                raise
        received = self.bytes_received - start
        log.info("pulled %s (%s): %d blob(s) fetched, %d reused, %d bytes", ref, own.digest, fetched, reused, received)
        return FullPullResult(
            reference=ref, resolved=resolved, manifest=own, image=image,
            bytes_received=received, blobs_fetched=fetched, blobs_reused=reused,
        )


    # --- the delta-aware pull ------------------------------------------------------------
    def pull_delta(
        self,
        target: Reference | str,
        oci_layout: str | os.PathLike[str] | OCILayout,
        *,
        doras_url: str | None,
        **options: Any,
    ) -> PullResult:
        """Update ``oci_layout`` to ``target`` by a delta from the Doras server at ``doras_url``.

        Falls back to a verified full pull when a delta cannot be used; see
        :func:`doras_oras.pull.pull_delta` for the options and :class:`PullResult`.
        """
        from .pull import pull_delta  # the orchestration sits above this module

        layout = oci_layout if isinstance(oci_layout, OCILayout) else Path(oci_layout)
        return pull_delta(self, target, layout, doras_url=doras_url, **options)


def _write_inline(descriptor: Descriptor, path: Path) -> Path:
    """Write a blob whose bytes are known (inline data, the empty JSON) to ``path``, verified and fsynced."""
    data = descriptor.data if descriptor.data is not None else b"{}"
    hasher = new_hasher(descriptor.digest)
    hasher.update(data)
    if len(data) != descriptor.size or f"{descriptor.digest.split(':', 1)[0]}:{hasher.hexdigest()}" != descriptor.digest:
        raise DigestMismatchError(f"inline blob: does not match {descriptor.digest} ({descriptor.size} bytes)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise disk_error(f"blob {descriptor.digest}", exc) from exc
    return path


def _drop_if_empty(path: Path) -> None:
    """Remove a partial file (and its sidecar) that holds nothing worth resuming."""
    with contextlib.suppress(OSError):
        if path.stat().st_size == 0:
            path.unlink()
            path.with_name(path.name + ".meta").unlink(missing_ok=True)
