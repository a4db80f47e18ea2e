"""``DeltaRegistry``: oras-py's ``Registry`` with verified fetches, a verified full pull and the delta pull.

A thin facade: everything of :class:`oras.provider.Registry` keeps working
(``push``, ``pull``, ``get_tags``, auth backends, ``insecure`` = plain HTTP,
``tls_verify`` = bool or CA bundle path); what it adds is done by the layers
below, sharing oras-py's session and its basic credentials
(``registry.auth.set_basic_auth``):

- :attr:`DeltaRegistry.client`, a :class:`~doras_oras.registry_client.RegistryClient`:
  ``resolve``, ``fetch_parsed``, ``fetch_manifest``, ``open_blob``,
  ``download_to`` (verified, capped, resumable; also offered here);
- :meth:`DeltaRegistry.pull_full`: :func:`doras_oras.full.pull_full`;
- :meth:`DeltaRegistry.pull_delta`: :func:`doras_oras.pull.pull_delta`.

This is the only module that imports oras-py.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Unpack

import oras.provider

from . import schemas
from .descriptor import Descriptor
from .full import FullPullResult, Progress, pull_full
from .layout import OCILayout
from .pull import PullKeywords, PullResult, pull_delta
from .reference import Reference
from .registry_client import RegistryClient
from .transport import TransferPolicy, Transport

if TYPE_CHECKING:
    from .trust import Requirement, TrustPolicy, Verification

__all__ = ["DeltaRegistry"]


class DeltaRegistry(oras.provider.Registry):  # type: ignore[misc]
    """An oras-py registry client with verified, resumable fetches, a verified full pull and delta pulls.

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
        self.client = RegistryClient(
            plain_http=insecure, tls_verify=tls_verify, allow_insecure_auth=allow_insecure_auth, policy=base,
            registry_configs=registry_configs, allowed_realm_hosts=allowed_realm_hosts,
            credentials=self._basic_credentials, session=self.session, extra_headers=self._oras_headers,
        )

    def _basic_credentials(self) -> tuple[str, str] | None:
        """The basic credentials set on oras-py's auth backend, if any."""
        basic = getattr(self.auth, "_basic_auth", None)
        if not isinstance(basic, str) or not basic:
            return None
        try:
            user, _, password = base64.b64decode(basic).decode("utf-8", "replace").partition(":")
        except (ValueError, binascii.Error):
            return None
        return user, password

    def _oras_headers(self) -> Mapping[str, str]:
        return dict(getattr(self, "headers", {}) or {})

    # --- what the client below does --------------------------------------------------
    @property
    def policy(self) -> TransferPolicy:
        """The :class:`TransferPolicy` of every transfer."""
        return self.client.policy

    @property
    def transport(self) -> Transport:
        return self.client.transport

    @property
    def allow_insecure_auth(self) -> bool:
        return self.client.allow_insecure_auth

    @property
    def registry_configs(self) -> list[str]:
        return self.client.registry_configs

    @property
    def bytes_received(self) -> int:
        """Body bytes of manifests and blobs received so far (exact; retries and restarts included)."""
        return self.client.bytes_received

    @property
    def timeout(self) -> tuple[float, float]:
        """``(connect, read)`` timeouts in seconds."""
        return self.policy.connect_timeout_s, self.policy.read_timeout_s

    def pull_deadline(self, seconds: float | None = None) -> contextlib.AbstractContextManager[float | None]:
        """One overall deadline for every request inside the block (see :meth:`RegistryClient.pull_deadline`)."""
        return self.client.pull_deadline(seconds)

    def credentials_for(self, registry_host: str) -> tuple[str, str] | None:
        """The ``(username, password)`` used for ``registry_host``, if any."""
        return self.client.credentials_for(registry_host)

    def resolve(self, ref: Reference | str) -> Descriptor:
        """The descriptor of the manifest ``ref`` names (see :meth:`RegistryClient.resolve`)."""
        return self.client.resolve(ref)

    def fetch_parsed(self, ref: Reference | str, *, expected: Descriptor | None = None) -> schemas.ParsedManifest:
        """A manifest or index, verified and schema-checked (see :meth:`RegistryClient.fetch_parsed`)."""
        return self.client.fetch_parsed(ref, expected=expected)

    def fetch_manifest(self, ref: Reference) -> tuple[bytes, str]:
        """The manifest bytes and their media type (verified, capped, schema-checked)."""
        return self.client.fetch_manifest(ref)

    def open_blob(self, ref: Reference | str, descriptor: Descriptor) -> BinaryIO:
        """A verifying stream of the blob (see :meth:`RegistryClient.open_blob`)."""
        return self.client.open_blob(ref, descriptor)

    def download_to(self, ref: Reference | str, descriptor: Descriptor, path_partial: Path) -> Path:
        """Download the blob into a file of the caller's, resumably (see :meth:`RegistryClient.download_to`)."""
        return self.client.download_to(ref, descriptor, path_partial)

    def download_blob(self, ref: Any, descriptor: Any, layout: Any) -> Any:
        """Store a verified blob in ``layout`` (resumable) unless it is there; return its path.

        Called with oras-py's arguments ``(container, digest, outfile)`` it is oras-py's own
        ``download_blob``.
        """
        if not (isinstance(descriptor, Descriptor) and isinstance(layout, OCILayout)):
            return super().download_blob(ref, descriptor, layout)
        return self.client.fetch_into(ref, descriptor, layout)

    # --- pulls -----------------------------------------------------------------------
    def pull_full(
        self,
        ref: Reference | str,
        layout: OCILayout,
        *,
        platform: str | None = None,
        lock_timeout_s: float = 300.0,
        parsed: schemas.ParsedManifest | None = None,
        progress: Progress | None = None,
        verify: Verification | Requirement | TrustPolicy | None = None,
        allow_downgrade: bool = False,
    ) -> FullPullResult:
        """Verified full pull of ``ref`` into ``layout`` (see :func:`doras_oras.full.pull_full`).

        ``verify``: a :class:`~doras_oras.trust.Verification`, ``Requirement`` or
        ``TrustPolicy``; the target is refused unless its signature verifies, and when it is
        older than the layout's newest image of its repository unless ``allow_downgrade`` (docs/trust.md).
        """
        return pull_full(self.client, ref, layout, platform=platform, lock_timeout_s=lock_timeout_s, parsed=parsed,
                         progress=progress, verify=verify, allow_downgrade=allow_downgrade)

    def pull_delta(
        self,
        target: Reference | str,
        oci_layout: str | os.PathLike[str] | OCILayout,
        *,
        doras_url: str | None,
        **options: Unpack[PullKeywords],
    ) -> PullResult:
        """Update ``oci_layout`` to ``target`` by a delta from the Doras server at ``doras_url``.

        Falls back to a verified full pull when a delta cannot be used; see
        :func:`doras_oras.pull.pull_delta` for the options (:class:`~doras_oras.pull.PullKeywords`;
        ``verify=`` among them: signed updates only) and :class:`PullResult`.
        """
        layout = oci_layout if isinstance(oci_layout, OCILayout) else Path(oci_layout)
        return pull_delta(self.client, target, layout, doras_url=doras_url, **options)
