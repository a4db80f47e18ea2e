"""Where signatures are read from and kept: the adapters of the trust core (docs/trust.md).

The verification itself (:mod:`doras_oras.trust`) does no I/O; this package
gives it its two sources and keeps what it verified:

- :mod:`.remote`: :class:`RegistrySignatureSource`, the registry over the
  project's transport (auth, TLS, redirects, retries, caps; referrers ``Link``
  pages followed within the caps; 404 = nothing there / no referrers API);
- :mod:`.stored`: :func:`attachments_of` (the signature manifests to commit
  beside the image), :class:`LayoutSignatureSource` and :func:`verify_stored`
  (offline re-verification, ``doras-oras verify``);
- :mod:`.forward`: :func:`check_forward`, the rollback and freshness decision
  against the installed image (signed updates only go forward).

:func:`verify_in_registry` is the step the pulls call after resolving the
target and before anything else is asked for.
"""

from __future__ import annotations

from ..reference import Reference
from ..registry_client import RegistryClient
from ..trust import ORIGIN_REGISTRY, TrustResult, Verification, check
from .forward import check_forward, standing_of, target_standing
from .remote import MAX_REFERRER_PAGES, RegistrySignatureSource, next_link
from .stored import (
    LayoutSignatureSource,
    StoredVerification,
    attachments_of,
    find_stored_image,
    verify_in_layout,
    verify_stored,
)


def verify_in_registry(client: RegistryClient, target: Reference, verification: Verification) -> TrustResult:
    """:func:`~doras_oras.trust.check` of ``target`` (which carries the digest being installed) in its registry.

    Raises a :class:`~doras_oras.errors.TrustError` when it must be refused; a
    transport or registry error while reading signatures propagates as it is.
    """
    return check(RegistrySignatureSource(client), target, verification, origin=ORIGIN_REGISTRY)


__all__ = [
    "MAX_REFERRER_PAGES",
    "LayoutSignatureSource",
    "RegistrySignatureSource",
    "StoredVerification",
    "attachments_of",
    "check_forward",
    "find_stored_image",
    "next_link",
    "standing_of",
    "target_standing",
    "verify_in_layout",
    "verify_in_registry",
    "verify_stored",
]
