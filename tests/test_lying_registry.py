"""A registry that lies (a tiny hand-made HTTP server: faults no real registry makes).

Every lie must give a clear error naming what was wrong, and leave the layout untouched.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from doras_oras.errors import (
    BodyTooLargeError,
    DigestMismatchError,
    DiskSpaceError,
    DorasOrasError,
    InsecureTransportError,
    MediaTypeMismatchError,
    SchemaValidationError,
    SizeMismatchError,
)
from doras_oras.layout import OCILayout
from doras_oras.registry import DeltaRegistry
from tests.layout_support import cli, sha256

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
GOOD_LAYER = b"the real layer content " * 100
EMPTY = {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(b"{}"), "size": 2}


@dataclass
class Case:
    """What the liar serves for one repository."""

    manifest: bytes
    content_type: str = MANIFEST
    blob: bytes = GOOD_LAYER
    blob_length: int | None = None  # Content-Length to announce; None = exact; -1 = none
    manifest_headers: dict[str, str] = field(default_factory=dict)
    blob_status: int = 200
    blob_headers: dict[str, str] = field(default_factory=dict)


def manifest_with(layer: dict[str, object] | None = None, **extra: object) -> bytes:
    layer = layer or {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(GOOD_LAYER),
                      "size": len(GOOD_LAYER)}
    return json.dumps({"schemaVersion": 2, "mediaType": MANIFEST, "config": EMPTY, "layers": [layer], **extra}).encode()


CASES: dict[str, tuple[Case, type[DorasOrasError], str]] = {
    "wrong-digest": (Case(manifest_with(), blob=b"X" * len(GOOD_LAYER)), DigestMismatchError, "expected sha256:"),
    "wrong-size": (Case(manifest_with(), blob=GOOD_LAYER[:-10]), SizeMismatchError, "announces"),
    "short-unannounced": (Case(manifest_with(), blob=GOOD_LAYER[:-10], blob_length=-1), SizeMismatchError,
                          "expected 2300"),
    "longer-body": (Case(manifest_with(), blob=GOOD_LAYER + b"more"), SizeMismatchError, "announces"),
    "longer-unannounced": (Case(manifest_with(), blob=GOOD_LAYER + b"more" * 1000, blob_length=-1),
                           SizeMismatchError, "more than"),
    "media-type-mismatch": (Case(manifest_with(), content_type=INDEX), MediaTypeMismatchError, "Content-Type"),
    "layers-and-manifests": (Case(manifest_with(manifests=[])), SchemaValidationError, "both 'layers' and 'manifests'"),
    "five-mib-manifest": (Case(manifest_with(annotations={"pad": "x" * (5 << 20)})), BodyTooLargeError, "cap"),
    "five-mib-unannounced": (Case(manifest_with(annotations={"pad": "x" * (5 << 20)}),
                                  manifest_headers={"Content-Length": ""}), BodyTooLargeError, "cap"),
    "dot-dot-digest": (Case(manifest_with({"mediaType": "a/b", "digest": "sha256:../../x", "size": 4})),
                       SchemaValidationError, r"layers[0].digest"),
    "upper-case-hex": (Case(manifest_with({"mediaType": "a/b", "digest": "sha256:" + "AB" * 32, "size": 4})),
                       SchemaValidationError, r"layers[0].digest"),
    "header-digest-lie": (Case(manifest_with(), manifest_headers={"Docker-Content-Digest": sha256(b"other")}),
                          DigestMismatchError, "registry says"),
    "nested-too-deep": (Case(b"[" * 20_000 + b"]" * 20_000), SchemaValidationError, "not JSON"),
    # A layer claimed larger than any disk, served as zeros until the connection closes: refused before
    # its first byte (a 1 PiB claim: more than this machine's free space, whatever it is).
    "pebibyte-layer": (Case(manifest_with({"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                           "digest": sha256(b"never"), "size": 1 << 50}),
                            blob=bytes(1 << 20), blob_length=-1), DiskSpaceError, "needs 11258999068"),
    # Redirects to other hosts are followed without credentials (blob storage); these are not.
    "redirect-to-file": (Case(manifest_with(), blob_status=307, blob_headers={"Location": "file:///etc/passwd"}),
                         InsecureTransportError, "unsupported URL scheme"),
    "redirect-loop": (Case(manifest_with(), blob_status=307,
                           blob_headers={"Location": f"/v2/lie/redirect-loop/blobs/{sha256(GOOD_LAYER)}"}),
                      InsecureTransportError, "more than 10 redirects"),
}


class Liar(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    cases: ClassVar[dict[str, Case]] = {}

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str], length: int | None = None) -> None:
        self.send_response(status)
        for key, value in headers.items():
            if value:
                self.send_header(key, value)
        if length is None:
            length = len(body)
        if length >= 0 and headers.get("Content-Length", "x") != "":
            self.send_header("Content-Length", str(length))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)

    def do_GET(self) -> None:
        parts = self.path.split("/")
        if self.path == "/v2/":
            self._send(200, b"{}", {"Content-Type": "application/json"})
            return
        # /v2/lie/<case>/(manifests|blobs)/<ref>
        case = self.cases.get(parts[3]) if len(parts) == 6 else None
        if case is None:
            self._send(404, b'{"errors":[{"code":"NAME_UNKNOWN"}]}', {"Content-Type": "application/json"})
        elif parts[4] == "manifests":
            self._send(200, case.manifest, {"Content-Type": case.content_type, **case.manifest_headers})
        else:
            self._send(case.blob_status, case.blob, {"Content-Type": "application/octet-stream", **case.blob_headers},
                       length=case.blob_length if case.blob_length is not None else None)

    do_HEAD = do_GET


@pytest.fixture(scope="module")
def liar() -> Iterator[str]:
    Liar.cases = {name: case for name, (case, _e, _m) in CASES.items()}
    server = ThreadingHTTPServer(("127.0.0.1", 0), Liar)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_lies_are_refused_and_nothing_is_written(liar: str, tmp_path: Path, name: str) -> None:
    _case, error, message = CASES[name]
    layout = OCILayout.open(tmp_path / "L")
    with layout.lock():
        pass  # create the lock file so the snapshot is comparable
    before = snapshot(tmp_path / "L")
    client = DeltaRegistry(insecure=True, timeout=(5, 10))
    with pytest.raises(error) as info:
        client.pull_full(f"{liar}/lie/{name}:v1", layout)
    assert message in str(info.value)
    assert snapshot(tmp_path / "L") == before
    assert layout.images() == []


def test_the_liar_serves_a_good_image_too(liar: str, tmp_path: Path) -> None:
    """The control: the same server with honest answers gives a good pull."""
    Liar.cases["honest"] = Case(manifest_with())
    layout = OCILayout.open(tmp_path / "L")
    result = DeltaRegistry(insecure=True).pull_full(f"{liar}/lie/honest:v1", layout)
    assert result.manifest.digest == sha256(manifest_with())
    assert layout.blob_path(sha256(GOOD_LAYER)).read_bytes() == GOOD_LAYER


def test_cli_names_the_problem(liar: str, tmp_path: Path) -> None:
    proc = cli("pull", f"{liar}/lie/upper-case-hex:v1", "--oci-layout", str(tmp_path / "L"), "--plain-http",
               timeout=60)
    assert proc.returncode == 1
    assert "layers[0].digest" in proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "L").exists()  # nothing written: no empty layout left behind either
