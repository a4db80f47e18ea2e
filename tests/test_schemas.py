"""The JSON schemas: documents written from the spec, real documents from the real tools, parse_manifest."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import requests

from doras_oras import schemas
from doras_oras.descriptor import Descriptor
from doras_oras.errors import (
    BodyTooLargeError,
    DigestMismatchError,
    MediaTypeMismatchError,
    SchemaValidationError,
    SizeMismatchError,
)
from doras_oras.testing.registry import RegistryServer, find_tool
from tests.layout_support import build_container_layout, push_layout, run, vectors_dir

H64 = "a" * 64
MANIFEST_CT = "application/vnd.oci.image.manifest.v1+json"
INDEX_CT = "application/vnd.oci.image.index.v1+json"


def descriptor(**extra: Any) -> dict[str, Any]:
    return {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "sha256:" + H64, "size": 3, **extra}


def manifest(**extra: Any) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": MANIFEST_CT,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                   "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
                   "size": 2, "data": "e30="},
        "layers": [descriptor()],
        **extra,
    }


# --- written from the spec -------------------------------------------------------

VALID_DESCRIPTORS = [
    descriptor(),
    descriptor(digest="sha512:" + "0" * 128),
    descriptor(size=0),
    descriptor(urls=["https://example.com/blob"]),
    descriptor(annotations={"org.opencontainers.image.title": "x"}),
    descriptor(data="YWJj"),
    descriptor(artifactType="application/vnd.example+type"),
    descriptor(platform={"architecture": "arm64", "os": "linux", "variant": "v8", "os.features": ["x"]}),
]

INVALID_DESCRIPTORS = [
    (descriptor(digest="sha256:../../x"), "digest"),
    (descriptor(digest="sha256:" + "A" * 64), "digest"),
    (descriptor(digest="sha256:" + "a" * 63), "digest"),
    (descriptor(digest="md5:" + "a" * 32), "digest"),
    (descriptor(digest="sha512:" + "a" * 64), "digest"),
    (descriptor(size=-1), "size"),
    (descriptor(size="3"), "size"),
    (descriptor(size=1.5), "size"),
    (descriptor(mediaType="not a media type"), "mediaType"),
    (descriptor(mediaType="application/json; charset=utf-8"), "mediaType"),
    (descriptor(annotations={"k": 1}), "annotations.k"),
    (descriptor(data="not base64!"), "data"),
    (descriptor(urls="https://x"), "urls"),
    (descriptor(platform={"os": "linux"}), "platform"),
    ({"mediaType": "a/b", "size": 1}, "(document)"),
]


@pytest.mark.parametrize("document", VALID_DESCRIPTORS)
def test_valid_descriptors(document: dict[str, Any]) -> None:
    schemas.validate(document, "descriptor")


@pytest.mark.parametrize(("document", "field"), INVALID_DESCRIPTORS)
def test_invalid_descriptors_name_the_field(document: dict[str, Any], field: str) -> None:
    with pytest.raises(SchemaValidationError) as info:
        schemas.validate(document, "descriptor")
    assert f": {field}:" in str(info.value)


def test_manifest_errors_name_the_nested_field() -> None:
    doc = manifest()
    doc["layers"].append(descriptor(digest="sha256:../../x"))
    with pytest.raises(SchemaValidationError, match=r"layers\[1\]\.digest"):
        schemas.validate(doc, "manifest")
    doc = manifest(subject=descriptor(size=-5))
    with pytest.raises(SchemaValidationError, match=r"subject\.size"):
        schemas.validate(doc, "manifest")
    with pytest.raises(SchemaValidationError, match=r"schemaVersion"):
        schemas.validate(manifest(schemaVersion=1), "manifest")
    with pytest.raises(SchemaValidationError, match=r"config"):
        schemas.validate({k: v for k, v in manifest().items() if k != "config"}, "manifest")
    with pytest.raises(SchemaValidationError):
        schemas.validate(manifest(manifests=[]), "manifest")
    with pytest.raises(SchemaValidationError, match="artifactType"):
        schemas.validate(manifest(artifactType="nope"), "manifest")


def test_manifest_and_index_valid_shapes() -> None:
    schemas.validate(manifest(), "manifest")
    schemas.validate(manifest(layers=[], artifactType="application/vnd.example+type",
                              subject=descriptor(mediaType=MANIFEST_CT), annotations={"a": "b"}), "manifest")
    index = {"schemaVersion": 2, "mediaType": INDEX_CT,
             "manifests": [descriptor(mediaType=MANIFEST_CT, platform={"architecture": "amd64", "os": "linux"})]}
    schemas.validate(index, "index")
    for bad, field in ((dict(index, layers=[]), "(document)"), (dict(index, mediaType=MANIFEST_CT), "mediaType"),
                       ({"schemaVersion": 2}, "(document)")):
        with pytest.raises(SchemaValidationError, match=re_escape(field)):
            schemas.validate(bad, "index")


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_oci_layout_file() -> None:
    schemas.validate({"imageLayoutVersion": "1.0.0"}, "oci-layout")
    with pytest.raises(SchemaValidationError, match="imageLayoutVersion"):
        schemas.validate({"imageLayoutVersion": "2.0.0"}, "oci-layout")
    with pytest.raises(SchemaValidationError):
        schemas.validate({}, "oci-layout")


def test_doras_bodies_from_the_recordings() -> None:
    base = vectors_dir() / "doras-v0.20.2"
    cases = sorted(base.glob("*/exchange.json"))
    assert len(cases) == 7
    for exchange in cases:
        response = json.loads(exchange.read_text())["response"]
        assert response["status"] == 200
        schemas.validate(json.loads(response["body"]), "delta-response")
    errors = 0
    for name, recorded in json.loads((base / "exchanges.json").read_text()).items():
        body = recorded.get("body") or ""
        if recorded.get("status", 0) >= 400 and body.startswith("{"):
            schemas.validate(json.loads(body), "doras-error")
            errors += 1
        elif body.startswith("{"):
            with pytest.raises(SchemaValidationError):
                schemas.validate(json.loads(body), "doras-error")  # e.g. {"message":"pong"}
            assert name
    assert errors >= 5


def test_doras_response_and_error_shapes() -> None:
    schemas.validate({"to_image": "h/r@sha256:" + H64, "delta_image": "h/r@sha256:" + H64, "x": 1}, "delta-response")
    with pytest.raises(SchemaValidationError):
        schemas.validate({"delta_image": "h/r@sha256:" + H64}, "delta-response")
    with pytest.raises(SchemaValidationError, match="delta_image"):
        schemas.validate({"target_image": "x"}, "delta-response")
    schemas.validate({"type": "about:blank", "title": "Bad", "status": 400, "detail": "d", "instance": "/x"},
                     "doras-error")
    schemas.validate({"error": {"code": 404, "message": "failed to resolve", "context": "h/r@sha256:" + H64}},
                     "doras-error")
    for bad in ({"error": {"code": 400}}, {"error": "x"}, {}, {"status": 99}, []):
        with pytest.raises(SchemaValidationError):
            schemas.validate(bad, "doras-error")


def test_recorded_manifests_validate() -> None:
    base = vectors_dir() / "doras-v0.20.2"
    files = sorted(base.glob("**/*.manifest.json"))
    assert len(files) >= 15
    for path in files:
        body = path.read_bytes()
        parsed = schemas.parse_manifest(body, MANIFEST_CT)
        assert parsed.descriptor.digest == "sha256:" + hashlib.sha256(body).hexdigest()


# --- parse_manifest ------------------------------------------------------------------

def _body(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def test_parse_manifest_checks() -> None:
    body = _body(manifest())
    good = Descriptor(MANIFEST_CT, "sha256:" + hashlib.sha256(body).hexdigest(), len(body))
    assert schemas.parse_manifest(body, MANIFEST_CT + "; charset=utf-8", expected=good).descriptor == good
    with pytest.raises(DigestMismatchError):
        schemas.parse_manifest(body, MANIFEST_CT, expected=Descriptor(MANIFEST_CT, "sha256:" + H64, len(body)))
    with pytest.raises(SizeMismatchError):
        schemas.parse_manifest(body, MANIFEST_CT, expected=Descriptor(MANIFEST_CT, good.digest, len(body) + 1))
    with pytest.raises(MediaTypeMismatchError, match="Content-Type"):
        schemas.parse_manifest(body, INDEX_CT)
    with pytest.raises(MediaTypeMismatchError):
        schemas.parse_manifest(_body({k: v for k, v in manifest().items() if k != "mediaType"}), "application/json")
    with pytest.raises(SchemaValidationError, match="both 'layers' and 'manifests'"):
        schemas.parse_manifest(_body(manifest(manifests=[])), MANIFEST_CT)
    with pytest.raises(SchemaValidationError, match="not JSON"):
        schemas.parse_manifest(b"{nope", MANIFEST_CT)
    with pytest.raises(SchemaValidationError, match="not a JSON object"):
        schemas.parse_manifest(b"[]", MANIFEST_CT)
    big = _body(manifest(annotations={"pad": "x" * (5 * 1024 * 1024)}))
    with pytest.raises(BodyTooLargeError):
        schemas.parse_manifest(big, MANIFEST_CT)
    upper = copy.deepcopy(manifest())
    upper["layers"][0]["digest"] = "sha256:" + "A" * 64
    with pytest.raises(SchemaValidationError, match=r"layers\[0\]\.digest"):
        schemas.parse_manifest(_body(upper), MANIFEST_CT)


def test_every_schema_passes_its_metaschema(monkeypatch: pytest.MonkeyPatch) -> None:
    schemas.check_schemas()
    broken = copy.deepcopy(dict(schemas.schema("descriptor")))
    broken["properties"]["size"]["type"] = "a-number"  # not a JSON type: the metaschema refuses it
    with pytest.raises(jsonschema.SchemaError):
        jsonschema.validators.validator_for(broken).check_schema(broken)
    # and check_schemas() itself finds such a schema among the shipped ones
    real = schemas._validator

    def with_broken_descriptor(kind: str) -> Any:
        validator = real(kind)
        return type(validator)(broken) if kind == "descriptor" else validator

    monkeypatch.setattr(schemas, "_validator", with_broken_descriptor)
    with pytest.raises(jsonschema.SchemaError):
        schemas.check_schemas()


def test_schemas_ship_inside_the_package() -> None:
    directory = schemas.schema_dir()
    assert directory.name == "_schemas"
    repo_schemas = Path(__file__).resolve().parents[1] / "schemas"
    for kind, name in schemas.KINDS.items():
        assert (directory / name).read_bytes() == (repo_schemas / name).read_bytes()
        assert schemas.schema(kind)["$schema"].startswith("https://json-schema.org/")


# --- real documents from real tools -------------------------------------------------

def test_registry_skopeo_and_oras_documents_validate(oci_registry: RegistryServer, tmp_path: Path) -> None:
    oras = find_tool("oras")
    (tmp_path / "f.txt").write_text("hello\n")
    run(oras, "push", "--plain-http", f"{oci_registry.host}/schemas/art:v1", "f.txt", cwd=tmp_path)
    build_container_layout(tmp_path / "src", "v1", {"hello.txt": b"hi\n"}, platforms=("linux/amd64", "linux/arm64"))
    push_layout(tmp_path / "src", "v1", oci_registry.host, "schemas/img:v1")
    checked = 0
    for repo, media in (("art", MANIFEST_CT), ("img", INDEX_CT)):
        response = requests.get(f"{oci_registry.url}/v2/schemas/{repo}/manifests/v1",
                                headers={"Accept": f"{MANIFEST_CT}, {INDEX_CT}"}, timeout=10)
        assert response.headers["Content-Type"] == media
        parsed = schemas.parse_manifest(response.content, response.headers["Content-Type"])
        assert parsed.descriptor.digest == response.headers["Docker-Content-Digest"]
        checked += 1
    # a layout written by skopeo and one written by the oras CLI
    run("skopeo", "copy", "--all", "--src-tls-verify=false", f"docker://{oci_registry.host}/schemas/img:v1",
        f"oci:{tmp_path / 'by-skopeo'}:v1")
    run(oras, "copy", "--from-plain-http", f"{oci_registry.host}/schemas/art:v1",
        "--to-oci-layout", f"{tmp_path / 'by-oras'}:v1")
    for layout in (tmp_path / "by-skopeo", tmp_path / "by-oras"):
        schemas.validate(json.loads((layout / "oci-layout").read_text()), "oci-layout")
        index = json.loads((layout / "index.json").read_text())
        schemas.validate(index, "index")
        for blob in (layout / "blobs" / "sha256").iterdir():
            data = blob.read_bytes()
            try:
                doc = json.loads(data)
            except ValueError:
                continue
            if isinstance(doc, dict) and doc.get("mediaType") in (MANIFEST_CT, INDEX_CT):
                schemas.parse_manifest(data, doc["mediaType"])
                checked += 1
    assert checked >= 2 + 3 + 1


def test_jsonschema_is_loaded_only_when_a_document_needs_it() -> None:
    """Start-up of the command pays no validator: jsonschema loads at the first validation
    that needs it, and the one valid oci-layout file needs none."""
    import subprocess
    import sys

    code = """
import sys, time
import doras_oras.cli.main
from doras_oras import schemas
assert "jsonschema" not in sys.modules, "loaded at import"
schemas.validate({"imageLayoutVersion": "1.0.0"}, "oci-layout")
assert "jsonschema" not in sys.modules, "loaded for the common oci-layout"
try:
    schemas.validate({"imageLayoutVersion": "2.0.0"}, "oci-layout")
except schemas.SchemaValidationError as exc:
    print("refused:", exc)
assert "jsonschema" in sys.modules
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "refused: invalid oci-layout: imageLayoutVersion" in out.stdout

