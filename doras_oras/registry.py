"""``DeltaRegistry``: oras-py's ``Registry`` with verified fetches and a verified full pull.

Everything of :class:`oras.provider.Registry` keeps working (``push``,
``pull``, ``get_tags``, auth backends, ``insecure`` = plain HTTP,
``tls_verify`` = bool or CA bundle path). Added here:

- :meth:`DeltaRegistry.resolve`: reference -> manifest descriptor;
- :meth:`DeltaRegistry.fetch_manifest`: the manifest bytes and media type,
  capped at 4 MiB, verified against the digest of the reference, schema-checked;
- :meth:`DeltaRegistry.open_blob`: a stream that checks size and digest and
  stops at ``size``;
- :meth:`DeltaRegistry.pull_full`: manifest, config and layers into an
  :class:`~doras_oras.layout.OCILayout`, ``index.json`` last.

``fetch_manifest`` and ``open_blob`` have the signatures of the edge client's
``ContentFetcher`` protocol. All blob HTTP goes through :meth:`DeltaRegistry._blob_response`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import platform as _platform
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import oras.provider
import requests

from . import schemas
from .descriptor import (
    ANNOTATION_PREFIX,
    EMPTY_DIGEST,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    Descriptor,
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
from .layout import ImageEntry, OCILayout
from .reference import Reference
from .verify import VerifyingReader

if TYPE_CHECKING:
    from .pull import PullResult

log = logging.getLogger(__name__)

ANNOTATION_SOURCE_INDEX = ANNOTATION_PREFIX + "source.index"
"""On an ``index.json`` entry: the registry image index the platform manifest was chosen from."""

ACCEPT_MANIFESTS = ", ".join((*MANIFEST_MEDIA_TYPES, *INDEX_MEDIA_TYPES))
MAX_REDIRECTS = 5
DEFAULT_TIMEOUT = (10.0, 60.0)

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
    if isinstance(exc, requests.exceptions.SSLError):
        return TransportError(f"TLS verification failed for {url}: {text}")
    if isinstance(exc, requests.exceptions.Timeout) or "timed out" in text.lower():
        return TransferTimeoutError(f"timeout talking to {url}: {text}")
    if isinstance(exc, requests.exceptions.ConnectionError):
        return ConnectError(f"cannot reach {url}: {text}")
    return TransportError(f"transfer from {url} failed: {text}")


class DeltaRegistry(oras.provider.Registry):  # type: ignore[misc]
    """An oras-py registry client with verified manifest/blob fetches and a verified full pull.

    ``insecure`` speaks plain HTTP; credentials (basic or token) are then sent
    only with ``allow_insecure_auth=True``. Redirects are followed only to the
    same host and scheme. ``timeout`` is requests' ``(connect, read)`` in seconds.
    """

    def __init__(
        self,
        hostname: str | None = None,
        insecure: bool = False,
        tls_verify: bool | str = True,
        auth_backend: str = "token",
        *,
        allow_insecure_auth: bool = False,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(hostname=hostname, insecure=insecure, tls_verify=tls_verify, auth_backend=auth_backend)
        self.allow_insecure_auth = allow_insecure_auth
        self.timeout = timeout
        self.bytes_received = 0

    # --- HTTP ------------------------------------------------------------------
    def _url(self, ref: Reference, kind: str, what: str) -> str:
        return f"{self.prefix}://{ref.registry}/v2/{ref.repository}/{kind}/{what}"

    def _auth_headers(self) -> dict[str, str]:
        token = getattr(self.auth, "token", None)
        if token:
            return {"Authorization": f"Bearer {token}"}
        return {}

    def _answer_challenge(self, response: requests.Response, headers: dict[str, str]) -> bool:
        challenge = response.headers.get("Www-Authenticate", "")
        basic = getattr(self.auth, "_basic_auth", None)
        if challenge.lower().startswith("basic"):
            if not basic:
                return False
            headers["Authorization"] = f"Basic {basic}"
            return True
        if self.prefix == "http" and basic and not self.allow_insecure_auth:
            raise InsecureTransportError(
                f"{response.url} asks for credentials over plain HTTP; refused (allow_insecure_auth)"
            )
        try:
            new_headers, changed = self.auth.authenticate_request(response, dict(headers))
        except requests.RequestException as exc:
            raise _translate(exc, response.url) from exc
        if changed:
            headers.update(new_headers)
        return bool(changed)

    def _send(self, method: str, url: str, headers: Mapping[str, str], *, stream: bool = False) -> requests.Response:
        """One request with auth, safe redirects and translated errors; the caller checks the status."""
        request_headers = {**self.headers, **dict(headers), **self._auth_headers()}
        origin = urllib.parse.urlsplit(url)
        authenticated = False
        for _ in range(MAX_REDIRECTS + 1):
            if self.prefix == "http" and "Authorization" in request_headers and not self.allow_insecure_auth:
                raise InsecureTransportError(f"refusing to send credentials over plain HTTP to {url}")
            try:
                response: requests.Response = self.session.request(
                    method, url, headers=request_headers, stream=stream, verify=self._tls_verify,
                    timeout=self.timeout, allow_redirects=False,
                )
            except requests.RequestException as exc:
                raise _translate(exc, url) from exc
            if response.status_code in (401, 403) and not authenticated:
                authenticated = True
                response.close()
                if self._answer_challenge(response, request_headers):
                    continue
                raise RegistryAuthError(f"{method} {url}: {response.status_code} (no usable credentials)",
                                        status=response.status_code)
            if response.status_code in (301, 302, 303, 307, 308):
                location = response.headers.get("Location", "")
                response.close()
                target = urllib.parse.urlsplit(urllib.parse.urljoin(url, location))
                if target.scheme != origin.scheme or target.netloc != origin.netloc:
                    raise InsecureTransportError(
                        f"{url} redirects to {target.scheme}://{target.netloc}: another host or scheme, refused"
                    )
                url = target.geturl()
                continue
            return response
        raise TransportError(f"too many redirects from {origin.geturl()}")

    @staticmethod
    def _check_status(response: requests.Response, what: str) -> None:
        if response.status_code == 200:
            return
        status = response.status_code
        detail = ""
        try:
            detail = response.raw.read(4096, decode_content=True).decode("utf-8", "replace").strip()
        except Exception:  # the error body is informative only
            detail = ""
        response.close()
        cls = RegistryAuthError if status in (401, 403) else RegistryError
        text = f"{what}: registry answered {status}"
        if detail:
            text += f": {detail[:300]}"
        raise cls(text, status=status)

    # --- manifests ---------------------------------------------------------------
    def resolve(self, ref: Reference | str) -> Descriptor:
        """The descriptor (media type, digest, size) of the manifest ``ref`` names.

        Taken from the HEAD headers when they are complete (the bytes are verified
        against it when fetched), else from the hashed body of a GET.
        """
        ref = Reference.parse(ref) if isinstance(ref, str) else ref
        self.auth.load_configs(self.get_container(str(ref)))
        url = self._url(ref, "manifests", ref.reference)
        response = self._send("HEAD", url, {"Accept": ACCEPT_MANIFESTS})
        response.close()
        if response.status_code == 200:
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
        parsed = self.fetch_parsed(ref)
        return parsed.descriptor

    def fetch_parsed(self, ref: Reference | str, *, expected: Descriptor | None = None) -> schemas.ParsedManifest:
        """GET a manifest or index, checked by :func:`doras_oras.schemas.parse_manifest`."""
        ref = Reference.parse(ref) if isinstance(ref, str) else ref
        self.auth.load_configs(self.get_container(str(ref)))
        target = expected.digest if expected is not None else ref.reference
        url = self._url(ref, "manifests", target)
        response = self._send("GET", url, {"Accept": ACCEPT_MANIFESTS}, stream=True)
        self._check_status(response, f"manifest {ref}")
        with response:
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > schemas.MAX_MANIFEST_BYTES:
                raise BodyTooLargeError(f"manifest {ref}: {length} bytes, over the {schemas.MAX_MANIFEST_BYTES}-byte cap")
            try:
                body = response.raw.read(schemas.MAX_MANIFEST_BYTES + 1, decode_content=True)
            except Exception as exc:
                raise _translate(exc, url) from exc
            self.bytes_received += len(body)
        content_type = response.headers.get("Content-Type", "")
        if expected is None and ref.digest and len(body) <= schemas.MAX_MANIFEST_BYTES:
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
    def _blob_response(self, ref: Reference, descriptor: Descriptor, headers: Mapping[str, str]) -> requests.Response:
        """The (streamed, status 200/206) response for a blob: the one place blob HTTP happens."""
        self.auth.load_configs(self.get_container(str(ref)))
        url = self._url(ref, "blobs", descriptor.digest)
        response = self._send("GET", url, headers, stream=True)
        if response.status_code == 206:
            return response
        self._check_status(response, f"blob {descriptor.digest}")
        return response

    def open_blob(self, ref: Reference, descriptor: Descriptor) -> BinaryIO:
        """A stream of the blob that yields at most ``size`` bytes and fails on a wrong size or digest."""
        ref = Reference.parse(ref) if isinstance(ref, str) else ref
        validate_digest(descriptor.digest)
        if descriptor.data is not None:
            return io.BufferedReader(VerifyingReader(io.BytesIO(descriptor.data), descriptor.digest,
                                                     descriptor.size, what="inline blob"))
        response = self._blob_response(ref, descriptor, {})
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) != descriptor.size:
            response.close()
            raise SizeMismatchError(
                f"blob {descriptor.digest}: registry announces {length} bytes, descriptor says {descriptor.size}"
            )
        raw = _ResponseStream(response, self)
        return io.BufferedReader(_BlobReader(raw, descriptor.digest, descriptor.size, what="blob"))

    # --- full pull -------------------------------------------------------------------
    def _choose_platform(self, ref: Reference, parsed: schemas.ParsedManifest, wanted: str) -> Descriptor:
        os_name, arch, variant = _parse_platform(wanted)
        entries = [Descriptor.from_json(item) for item in parsed.document["manifests"]]
        available = []
        for entry in entries:
            plat = entry.platform or {}
            available.append("/".join(str(x) for x in (plat.get("os"), plat.get("architecture"), plat.get("variant")) if x))
            if plat.get("os") == os_name and plat.get("architecture") == arch and (
                variant is None or plat.get("variant") == variant
            ) and entry.media_type in MANIFEST_MEDIA_TYPES:
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
        prefetched: schemas.ParsedManifest | None = None,
    ) -> FullPullResult:
        """Verified full pull of ``ref`` into ``layout``; ``index.json`` is written last.

        An image index is resolved to the manifest of ``platform`` (``os/arch[/variant]``,
        default: this machine). Blobs already in the layout (and verified) are not fetched.
        ``prefetched``: what ``ref`` names, already fetched and checked (not fetched again).
        """
        ref = Reference.parse(ref) if isinstance(ref, str) else ref
        if platform is not None:
            _parse_platform(platform)
        start = self.bytes_received
        top = prefetched if prefetched is not None else self.fetch_parsed(ref)
        resolved = top.descriptor
        manifest = top
        notes: dict[str, str] = {}
        if top.is_index:
            chosen = self._choose_platform(ref, top, platform or host_platform())
            manifest = self.fetch_parsed(ref, expected=chosen)
            notes[ANNOTATION_SOURCE_INDEX] = resolved.digest
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
                        with self.open_blob(ref, blob) as stream:
                            layout.ingest(blob, stream)
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


def set_credentials(registry: DeltaRegistry, username: str, password: str) -> None:
    """Use basic credentials for ``registry`` (also to obtain bearer tokens)."""
    registry.auth.set_basic_auth(username, password)

