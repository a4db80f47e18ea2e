"""Client of the Doras edge API (``GET /api/v1/delta/``), port of Doras v0.20.2 ``pkg/client/edgeapi``.

Modules: :mod:`.client` (:class:`EdgeClient`: the requests, polling, the conversation
:meth:`EdgeClient.fetch_delta`), :mod:`.answers` (what the server answers and its checks),
:mod:`.credentials` (what the server is given). See :mod:`.client` for the rules.
"""

from __future__ import annotations

from ..algorithms import ALGORITHM_NAMES, DeltaAlgorithm
from ..auth import DockerConfigAuth
from .answers import (
    Delta,
    ImageRef,
    ReadDeltaResponse,
    check_delta_manifest,
    check_response,
    parse_error_body,
)
from .client import (
    API_DELTA_PATH,
    DEFAULT_TIMEOUT_S,
    EDGE_RETRY_STATUSES,
    MAX_ERROR_BODY_BYTES,
    MAX_REDIRECTS,
    ContentFetcher,
    EdgeClient,
)
from .credentials import AuthArg, AuthProvider, BasicAuth, BearerAuth

__all__ = [
    "ALGORITHM_NAMES",
    "API_DELTA_PATH",
    "DEFAULT_TIMEOUT_S",
    "EDGE_RETRY_STATUSES",
    "MAX_ERROR_BODY_BYTES",
    "MAX_REDIRECTS",
    "AuthArg",
    "AuthProvider",
    "BasicAuth",
    "BearerAuth",
    "ContentFetcher",
    "Delta",
    "DeltaAlgorithm",
    "DockerConfigAuth",
    "EdgeClient",
    "ImageRef",
    "ReadDeltaResponse",
    "check_delta_manifest",
    "check_response",
    "parse_error_body",
]
