"""The registry as a :class:`~doras_oras.trust.SignatureSource`: signature reads over the project's transport.

:class:`RegistrySignatureSource` asks through a
:class:`~doras_oras.registry_client.RegistryClient`, so every read has its
auth, TLS settings, redirect rules, retries, deadline and byte count
(docs/network.md). It answers ``None`` for a 404 only; any other failure (a
5xx after retries, a timeout, a 401) raises a
:class:`~doras_oras.errors.TransportError`, which is not a trust decision:
the pull then fails, it does not fall back (docs/trust.md).

The referrers API (``GET /v2/<name>/referrers/<digest>?artifactType=...``)
may answer in pages linked by ``Link: <...>; rel="next"``; the pages are
followed and merged into one index within the caps: all pages together at
most ``max_bytes``, at most :data:`MAX_REFERRER_PAGES` pages, and no more
pages once the entries exceed :data:`~doras_oras.trust.MAX_REFERRERS` (the
verifier then refuses the answer without looking at any entry). A ``Link``
must stay on the registry and on the same referrers path; a page that is not
an index is handed on as it is (the verifier refuses it as malformed).
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

from ..descriptor import OCI_INDEX, Descriptor, validate_digest
from ..errors import BodyTooLargeError, InsecureTransportError, InvalidArgumentError, RegistryError
from ..reference import Reference, api_host
from ..registry_client import ACCEPT_MANIFESTS, RegistryClient
from ..trust import MAX_REFERRERS, FetchedManifest

MAX_REFERRER_PAGES = 32
"""At most this many pages of one referrers answer are read."""

_LINK_RE = re.compile(r'<([^>]*)>\s*((?:;\s*[^;,]*)*)')
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


def _checked_reference(reference: str) -> str:
    """A tag or a digest, checked before it goes into a URL."""
    if ":" in reference:
        validate_digest(reference)
    elif not _TAG_RE.fullmatch(reference):
        raise InvalidArgumentError(f"bad tag {reference[:100]!r}")
    return reference


def next_link(header: str | None) -> str | None:
    """The target of ``rel="next"`` in a ``Link`` header (RFC 8288), or ``None``."""
    if not header:
        return None
    for match in _LINK_RE.finditer(header):
        params = [p.strip() for p in match.group(2).split(";") if p.strip()]
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "rel" and "next" in value.strip().strip('"').lower().split():
                return match.group(1).strip()
    return None


def _entries(page: FetchedManifest) -> list[Any] | None:
    """The ``manifests`` of a referrers page, or ``None`` when it is not an index."""
    if page.content_type.split(";", 1)[0].strip() != OCI_INDEX:
        return None
    try:
        document = json.loads(page.body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(document, dict) or not isinstance(document.get("manifests"), list):
        return None
    entries: list[Any] = document["manifests"]
    return entries


class RegistrySignatureSource:
    """Signature manifests, referrers and blobs of a repository, read from its registry."""

    def __init__(self, client: RegistryClient) -> None:
        self.client = client

    def fetch_manifest(self, repository: Reference, reference: str, *, max_bytes: int) -> FetchedManifest | None:
        """``GET /v2/<name>/manifests/<reference>`` with the manifest ``Accept``; ``None`` on 404."""
        got = self.client.get_optional(repository, f"/v2/{repository.repository}/manifests/{_checked_reference(reference)}",
                                       max_bytes=max_bytes, accept=ACCEPT_MANIFESTS)
        if got is None:
            return None
        body, headers = got
        return FetchedManifest(body=body, content_type=headers.get("Content-Type", ""))

    def fetch_blob(self, repository: Reference, descriptor: Descriptor, *, max_bytes: int) -> bytes | None:
        """``GET /v2/<name>/blobs/<digest>``, at most ``max_bytes``; ``None`` on 404."""
        validate_digest(descriptor.digest)
        got = self.client.get_optional(repository, f"/v2/{repository.repository}/blobs/{descriptor.digest}",
                                       max_bytes=max_bytes)
        return None if got is None else got[0]

    def fetch_referrers(
        self, repository: Reference, digest: str, *, artifact_type: str | None, max_bytes: int
    ) -> FetchedManifest | None:
        """The referrers API's answer (its pages merged); ``None`` when it answers 404 (no API)."""
        validate_digest(digest)
        base = f"/v2/{repository.repository}/referrers/{digest}"
        path = base + (f"?artifactType={quote(artifact_type, safe='')}" if artifact_type else "")
        got = self.client.get_optional(repository, path, max_bytes=max_bytes)
        if got is None:
            return None
        body, headers = got
        first = FetchedManifest(body=body, content_type=headers.get("Content-Type", ""))
        link = next_link(headers.get("Link"))
        if link is None:
            return first
        entries = _entries(first)
        if entries is None:
            return first
        received = len(body)
        pages = 1
        while link is not None and len(entries) <= MAX_REFERRERS:
            if pages >= MAX_REFERRER_PAGES:
                raise BodyTooLargeError(f"referrers of {repository.name}@{digest}: more than "
                                        f"{MAX_REFERRER_PAGES} pages")
            path = self._page_path(repository, base, path, link)
            got = self.client.get_optional(repository, path, max_bytes=max(0, max_bytes - received))
            if got is None:
                raise RegistryError(f"referrers of {repository.name}@{digest}: the next page {path} "
                                    "answered 404", status=404)
            body, headers = got
            received += len(body)
            pages += 1
            page = FetchedManifest(body=body, content_type=headers.get("Content-Type", ""))
            more = _entries(page)
            if more is None:
                return page
            entries.extend(more)
            link = next_link(headers.get("Link"))
        merged = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        return FetchedManifest(body=json.dumps(merged, separators=(",", ":")).encode(), content_type=OCI_INDEX)

    def _page_path(self, repository: Reference, base: str, current: str, link: str) -> str:
        """The path of a ``Link`` target: on the registry, under the same referrers path."""
        origin = f"{self.client.prefix}://{api_host(repository.registry)}"
        target = urlsplit(urljoin(origin + current, link))
        if f"{target.scheme}://{target.netloc}".lower() != origin.lower() or target.path != base:
            raise InsecureTransportError(
                f"referrers of {repository.name}: a Link to {link[:200]!r} leaves the referrers of this digest; refused")
        return target.path + (f"?{target.query}" if target.query else "")
