"""Shared helpers of the test-server tests: unique repositories, polling, recorded cases."""

from __future__ import annotations

import json
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import requests

from doras_oras.testing.vectors import RECORDED_HOST, doras_vectors, localize

CASES = sorted(p.name for p in doras_vectors().iterdir() if p.is_dir())
EXCHANGES: dict[str, Any] = json.loads((doras_vectors() / "exchanges.json").read_text())


def unique_repo(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def case_dir(name: str) -> Path:
    return doras_vectors() / name


def exchange(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((case_dir(name) / "exchange.json").read_text())
    return data


def recorded_repo(request: list[list[str]]) -> str:
    """The repository a recorded request names (``localhost:5443/REPO@...``)."""
    ref = request[0][1]
    return ref.split("/", 1)[1].split("@")[0].split(":")[0]


def replay_query(request: list[list[str]], host: str, repo: str | None = None) -> list[tuple[str, str]]:
    """The recorded query with the registry host (and optionally the repository) replaced."""
    out = []
    for key, value in request:
        value = localize(value, host)
        if repo is not None:
            value = value.replace(f"{host}/{recorded_repo(request)}", f"{host}/{repo}")
        out.append((key, value))
    return out


def localize_quoted(text: str, host: str) -> str:
    """Like ``localize`` for a percent-encoded text."""
    return text.replace(urllib.parse.quote(RECORDED_HOST, safe=""), urllib.parse.quote(host, safe=""))


def ask(server_url: str, query: list[tuple[str, str]], **kwargs: Any) -> requests.Response:
    return requests.get(server_url + "/api/v1/delta/", params=query, timeout=30,
                        allow_redirects=False, **kwargs)


def ask_until_ready(server_url: str, query: list[tuple[str, str]], *, timeout: float = 60,
                    **kwargs: Any) -> tuple[requests.Response, int]:
    """Ask until the answer is not 202; return it and the number of 202s seen."""
    deadline = time.monotonic() + timeout
    accepted = 0
    while True:
        response = ask(server_url, query, **kwargs)
        if response.status_code != 202:
            return response, accepted
        accepted += 1
        if time.monotonic() > deadline:
            raise AssertionError(f"still 202 after {timeout} s")
        time.sleep(0.05)


def get_manifest(registry_url: str, repo: str, ref: str, **kwargs: Any) -> bytes:
    response = requests.get(f"{registry_url}/v2/{repo}/manifests/{ref}", timeout=30,
                            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}, **kwargs)
    response.raise_for_status()
    return response.content


def get_blob(registry_url: str, repo: str, digest: str, **kwargs: Any) -> bytes:
    response = requests.get(f"{registry_url}/v2/{repo}/blobs/{digest}", timeout=30, **kwargs)
    response.raise_for_status()
    return response.content
