"""The recordings of the real Go tools (``shared/vectors``) and their replay.

``vectors_dir()`` finds the shared vectors: ``<repo root>/../shared/vectors``
first (a clone with ``shared/`` beside it), then ``/work/shared/vectors``.
``push_recorded(...)`` uploads a recorded case's from/to manifests and
layers to a registry with the same digests (exact manifest bytes).
``localize(text, host)`` rewrites the recorded registry host to another.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import requests

RECORDED_HOST = "localhost:5443"
DORAS_VERSION_DIR = "doras-v0.20.2"


def vectors_dir() -> Path:
    """The directory of the shared test vectors (raise ``FileNotFoundError`` if absent)."""
    candidates = [
        Path(__file__).resolve().parents[2] / ".." / "shared" / "vectors",
        Path("/work/shared/vectors"),
    ]
    for candidate in candidates:
        if (candidate / "README.md").is_file():
            return candidate.resolve()
    raise FileNotFoundError(f"shared vectors not found in {', '.join(map(str, candidates))}")


def doras_vectors() -> Path:
    """``vectors/doras-v0.20.2``."""
    return vectors_dir() / DORAS_VERSION_DIR


def localize(text: str, host: str) -> str:
    """``text`` with the recorded registry host replaced by ``host``."""
    return text.replace(RECORDED_HOST, host)


def _put_blob(session: requests.Session, base: str, repository: str, data: bytes) -> None:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    head = session.head(f"{base}/v2/{repository}/blobs/{digest}", timeout=30, verify=session.verify)
    if head.status_code == 200:
        return
    start = session.post(f"{base}/v2/{repository}/blobs/uploads/", timeout=30, verify=session.verify)
    start.raise_for_status()
    location = start.headers["Location"]
    if location.startswith("/"):
        location = base + location
    sep = "&" if "?" in location else "?"
    put = session.put(f"{location}{sep}digest={digest}", data=data, timeout=60, verify=session.verify,
                      headers={"Content-Type": "application/octet-stream"})
    put.raise_for_status()


def push_manifest_bytes(session: requests.Session, base: str, repository: str, ref: str,
                        body: bytes) -> str:
    """PUT exact manifest bytes; return their digest."""
    media_type = json.loads(body)["mediaType"]
    response = session.put(f"{base}/v2/{repository}/manifests/{ref}", data=body, timeout=30,
                           verify=session.verify,
                           headers={"Content-Type": media_type})
    response.raise_for_status()
    return "sha256:" + hashlib.sha256(body).hexdigest()


def push_recorded(registry_url: str, case: Path, repository: str, *, to_tag: str = "v2",
                  from_tag: str = "v1", session: requests.Session | None = None) -> dict[str, Any]:
    """Upload ``case``'s from/to artifacts to ``repository`` (tags ``v1``/``v2``).

    Returns ``{"from_digest", "to_digest"}`` (the recorded manifest digests).
    ``session`` may carry auth or a CA bundle (``session.verify`` is passed on
    each request, so ``REQUESTS_CA_BUNDLE`` does not override it).
    """
    http = session or requests.Session()
    base = registry_url.rstrip("/")
    digests: dict[str, Any] = {}
    for side, tag in (("from", from_tag), ("to", to_tag)):
        body = (case / f"{side}.manifest.json").read_bytes()
        manifest = json.loads(body)
        _put_blob(http, base, repository, (case / f"{side}.layer").read_bytes())
        config = manifest["config"]
        if config["digest"] == "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a":
            _put_blob(http, base, repository, b"{}")
        digests[f"{side}_digest"] = push_manifest_bytes(http, base, repository, tag, body)
    return digests
