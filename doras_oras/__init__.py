"""doras-oras: delta-aware pulls of OCI artifacts for oras-py.

The public entry points (imported lazily, so that ``doras_oras.codecs`` alone
stays light on small devices)::

    from doras_oras import DeltaRegistry
    registry = DeltaRegistry(hostname="registry.example:5000")
    result = registry.pull_delta("registry.example:5000/app:v2", "/var/lib/app/oci",
                                 doras_url="https://doras.example:8080")

    # signed updates only (docs/trust.md):
    from doras_oras import Requirement, load_public_keys
    result = registry.pull_delta(..., verify=Requirement.from_keys(load_public_keys(["cosign.pub"])))

See ``docs/`` for the guide.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "DeltaRegistry": "registry",
    "DorasOrasError": "errors",
    "EdgeClient": "edgeapi",
    "OCILayout": "layout",
    "PullResult": "pull",
    "Reference": "reference",
    "RegistryClient": "registry_client",
    "Requirement": "trust",
    "TrustError": "errors",
    "TrustPolicy": "trust",
    "Verification": "trust",
    "load_policy": "trust",
    "load_public_keys": "trust",
    "pull_delta": "pull",
    "pull_full": "full",
}

if TYPE_CHECKING:
    from .edgeapi import EdgeClient
    from .errors import DorasOrasError, TrustError
    from .full import pull_full
    from .layout import OCILayout
    from .pull import PullResult, pull_delta
    from .reference import Reference
    from .registry import DeltaRegistry
    from .registry_client import RegistryClient
    from .trust import Requirement, TrustPolicy, Verification, load_policy, load_public_keys


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'doras_oras' has no attribute {name!r}")
    return getattr(import_module(f".{module}", __name__), name)


__all__ = [
    "DeltaRegistry",
    "DorasOrasError",
    "EdgeClient",
    "OCILayout",
    "PullResult",
    "Reference",
    "RegistryClient",
    "Requirement",
    "TrustError",
    "TrustPolicy",
    "Verification",
    "__version__",
    "load_policy",
    "load_public_keys",
    "pull_delta",
    "pull_full",
]
