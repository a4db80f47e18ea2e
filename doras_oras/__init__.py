"""doras-oras: delta-aware pulls of OCI artifacts for oras-py.

See ``docs/`` for the guide. The public entry points are re-exported here as
they land.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
