"""Writing to a registry (distribution API v2): blobs and manifests, for publishing deltas.

:class:`RegistryWriter` sits on a :class:`~doras_oras.registry_client.RegistryClient` and
uses its session, TLS setting, transfer policy and registry auth (the same challenges
are answered, so a bearer token is renewed with the ``push`` scope the registry asks for):

- :meth:`RegistryWriter.push_blob`: ``HEAD`` the blob and skip it when the registry has
  it; else a monolithic upload, ``POST /v2/<repo>/blobs/uploads/`` then ``PUT <Location>
  ?digest=...`` with the whole body;
- :meth:`RegistryWriter.push_manifest`: ``PUT /v2/<repo>/manifests/<tag>`` with the
  manifest's media type as ``Content-Type``; the registry's ``Docker-Content-Digest`` must
  be the digest of the bytes sent.

Writes are not retried (an upload is cheap to start again: run the command again). A
``Location`` on another origin is refused: credentials never leave the registry.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit

import requests

from ..descriptor import OCI_MANIFEST, Descriptor
from ..errors import (
    DigestMismatchError,
    Fix,
    InsecureTransportError,
    RegistryAuthError,
    RegistryError,
)
from ..reference import Reference
from ..registry_client import RegistryClient
from ..transport.failures import NETWORK_ERRORS, error_body, release, translate
from ..urls import origin, safe_url

log = logging.getLogger(__name__)

__all__ = ["RegistryWriter"]


class RegistryWriter:
    """Blob and manifest writes through ``client``'s connection settings and credentials."""

    def __init__(self, client: RegistryClient) -> None:
        self.client = client
        self.bytes_sent = 0
        """Body bytes of blobs and manifests sent so far."""

    def _url(self, ref: Reference, path: str) -> str:
        return f"{self.client.prefix}://{ref.registry}/v2/{ref.repository}/{path}"

    def _send(self, method: str, url: str, *, data: bytes | None = None,
              headers: Mapping[str, str] | None = None) -> requests.Response:
        """One request with the client's auth (one challenge round); an error status raises."""
        transport = self.client.transport
        auth = transport.auth
        for _round in range(2):
            send = dict(headers or {})
            if auth is not None:
                send.update(auth.headers_for(url))
            try:
                response = transport.session.request(
                    method, url, data=data, headers=send, allow_redirects=False, verify=transport.verify,
                    timeout=(transport.policy.connect_timeout_s, transport.policy.read_timeout_s),
                )
            except NETWORK_ERRORS as exc:
                raise translate(exc, url, method=method) from exc
            if response.status_code == 401 and auth is not None and _round == 0:
                retry = auth.on_unauthorized(url, response, transport)
                if retry:
                    release(response)
                    continue
            break
        if 200 <= response.status_code < 300:
            return response
        message = f"{method} {safe_url(url)} answered {response.status_code}"
        body = error_body(response)
        if body:
            message += f": {body[:300]}"
        if response.status_code in (401, 403):
            raise RegistryAuthError(message, status=response.status_code, fix=Fix.REGISTRY_CREDENTIALS)
        raise RegistryError(message, status=response.status_code)

    def blob_exists(self, ref: Reference, descriptor: Descriptor) -> bool:
        """Whether the repository of ``ref`` holds the blob (a ``HEAD``; its size must match)."""
        self.client.credentials_for(ref.registry)  # make the registry's credentials known
        try:
            response = self._send("HEAD", self._url(ref, f"blobs/{descriptor.digest}"))
        except RegistryError as exc:
            if exc.status == 404:
                return False
            raise
        release(response)
        length = response.headers.get("Content-Length", "")
        return not length.isdigit() or int(length) == descriptor.size

    def push_blob(self, ref: Reference, data: bytes, media_type: str = "application/octet-stream") -> Descriptor:
        """Store ``data`` as a blob of ``ref``'s repository (skipped when it is there); its descriptor."""
        descriptor = Descriptor(media_type=media_type, digest="sha256:" + hashlib.sha256(data).hexdigest(),
                                size=len(data))
        if self.blob_exists(ref, descriptor):
            log.info("blob %s is already in %s", descriptor.digest, ref.repository)
            return descriptor
        start = self._url(ref, "blobs/uploads/")
        response = self._send("POST", start, headers={"Content-Length": "0"})
        release(response)
        location = response.headers.get("Location")
        if not location:
            raise RegistryError(f"POST {safe_url(start)} answered {response.status_code} without a Location")
        upload = urljoin(start, location)
        if origin(upload) != origin(start):
            raise InsecureTransportError(f"the registry sent the upload to another origin: {safe_url(upload)}")
        parts = urlsplit(upload)
        query = parts.query + ("&" if parts.query else "") + urlencode({"digest": descriptor.digest})
        self._put(urlunsplit(parts._replace(query=query)), data, "application/octet-stream", descriptor,
                  what="blob upload")
        return descriptor

    def push_manifest(self, ref: Reference, tag: str, body: bytes, media_type: str = OCI_MANIFEST) -> Descriptor:
        """Store the manifest ``body`` under ``tag`` in ``ref``'s repository; its descriptor."""
        self.client.credentials_for(ref.registry)
        descriptor = Descriptor(media_type=media_type, digest="sha256:" + hashlib.sha256(body).hexdigest(),
                                size=len(body))
        url = self._url(ref, f"manifests/{tag}")
        self._put(url, body, media_type, descriptor, what=f"manifest {tag}")
        return descriptor

    def _put(self, url: str, data: bytes, content_type: str, descriptor: Descriptor, *, what: str) -> None:
        """PUT ``data``; the digest the registry says it stored must be ``descriptor``'s."""
        response = self._send("PUT", url, data=data, headers={"Content-Type": content_type,
                                                              "Content-Length": str(len(data))})
        release(response)
        self.bytes_sent += len(data)
        stored = response.headers.get("Docker-Content-Digest")
        if stored and stored != descriptor.digest:
            raise DigestMismatchError(f"{what}: the registry stored {stored}, expected {descriptor.digest}")
