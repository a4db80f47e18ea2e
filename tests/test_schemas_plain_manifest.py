"""The plain-manifest check (``schemas._plain_manifest``): it lets a delta pull validate the
manifests it reads without jsonschema, so it must accept nothing the ``manifest`` schema refuses."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from doras_oras import schemas
from doras_oras.errors import SchemaValidationError

H64 = "a" * 64
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
EMPTY = {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2, "data": "e30=",
         "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}
LAYER = {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "sha256:" + H64, "size": 4194304,
         "annotations": {"org.opencontainers.image.title": "app.bin"}}
#: As the oras CLI pushes an artifact, and a Doras server stores a delta (with its annotations).
MANIFEST = {"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "artifactType": "application/vnd.unknown.artifact.v1",
            "config": EMPTY, "layers": [LAYER], "annotations": {"org.opencontainers.image.created": "2026"}}

scalars = st.sampled_from([
    None, True, False, 0, 2, -1, 2.0, 583, 9223372036854775807, 9223372036854775808, "", "v1", "e30=", "e30",
    "e30=\n", "sha256:" + H64, "sha256:" + H64.upper(), "sha256:" + H64 + "\n", "sha512:" + "b" * 128,
    MANIFEST_TYPE, "application/vnd.docker.distribution.manifest.v2+json", "application/vnd.oci.image.index.v1+json",
    "a/b", "a/b; charset=x", "/b",
])
KEYS = ["schemaVersion", "mediaType", "artifactType", "config", "layers", "subject", "annotations", "manifests",
        "digest", "size", "data", "platform", "architecture", "os", "urls", "x"]
documents = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                         | st.dictionaries(st.sampled_from(KEYS), inner, max_size=6), max_leaves=20)


def mutations(draw: st.DrawFn) -> Any:
    """The valid manifest with one value somewhere replaced, added or removed."""
    document: Any = json.loads(json.dumps(MANIFEST))
    node: Any = document
    path = draw(st.lists(st.sampled_from(["config", "layers", 0, "annotations", "subject", "size", "digest",
                                          "data", "mediaType", "schemaVersion", "artifactType"]), max_size=4))
    for step in path:
        if isinstance(node, dict) and step in node and isinstance(node[step], (dict, list)):
            node = node[step]
        elif isinstance(node, list) and isinstance(step, int) and node:
            node = node[0]
    if isinstance(node, dict):
        key = draw(st.sampled_from([*node.keys(), *KEYS]))
        if draw(st.booleans()) and key in node:
            del node[key]
        else:
            node[key] = draw(documents)
    elif isinstance(node, list):
        node.append(draw(documents))
    return document


media_types = st.sampled_from([MANIFEST_TYPE, "a/b", "a/b+c", "x", "a/b c", "/b"])
digests = st.sampled_from(["sha256:" + H64, "sha512:" + "b" * 128, "sha256:" + H64 + "\n", "sha256:ab", "md5:00"])
sizes = st.sampled_from([0, 583, 583, 9223372036854775807, 9223372036854775808, -1, 2.0, True, "3"])
strings = st.dictionaries(st.sampled_from(["a", "b.c", ""]), st.sampled_from(["", "v1"]) | scalars, max_size=2)
platforms = st.fixed_dictionaries({}, optional={
    "architecture": st.sampled_from(["amd64", "", 1]), "os": st.sampled_from(["linux", "", None]),
    "variant": st.sampled_from(["v7", ""]), "features": st.just(["x"])})
descriptors = st.fixed_dictionaries({"mediaType": media_types, "digest": digests, "size": sizes}, optional={
    "annotations": strings, "artifactType": media_types, "platform": platforms, "urls": st.just(["http://x"]),
    "data": st.sampled_from(["e30=", "e30", "", "AA==\n", "A===", 3])})
manifests = st.fixed_dictionaries({"schemaVersion": st.sampled_from([2, 2, 2, 1, 2.0, True, "2"]),
                                   "config": descriptors, "layers": st.lists(descriptors, max_size=2)}, optional={
    "mediaType": st.sampled_from([MANIFEST_TYPE, "application/vnd.oci.image.index.v1+json", ""]),
    "artifactType": media_types, "subject": descriptors, "annotations": strings, "manifests": st.just([])})


def schema_accepts(document: Any) -> bool:
    try:
        schemas._validator("manifest").validate(document)
    except Exception:  # jsonschema's ValidationError
        return False
    return True


@settings(max_examples=400, deadline=None)
@given(st.composite(mutations)() | documents | manifests)
def test_the_plain_check_accepts_only_what_the_schema_accepts(document: Any) -> None:
    if schemas._plain_manifest(document):
        assert schema_accepts(document), document


def test_the_plain_check_accepts_a_manifest_as_registries_serve_it() -> None:
    subject = {"mediaType": MANIFEST_TYPE, "digest": "sha256:" + "b" * 64, "size": 591}
    for document in (MANIFEST, {"schemaVersion": 2, "config": EMPTY, "layers": []}, {**MANIFEST, "subject": subject}):
        assert schemas._plain_manifest(document) and schema_accepts(document)


def test_a_refused_manifest_still_gets_the_validators_message() -> None:
    bad = json.loads(json.dumps(MANIFEST))
    bad["layers"][0]["size"] = -1
    assert not schemas._plain_manifest(bad)
    try:
        schemas.validate(bad, "manifest")
    except SchemaValidationError as exc:
        assert "layers[0].size" in str(exc)
    else:
        raise AssertionError("a negative size passed")


def test_parsing_a_plain_manifest_does_not_load_jsonschema() -> None:
    code = f"""
import json, sys
from doras_oras.schemas import parse_manifest
parse_manifest(json.dumps({MANIFEST!r}).encode(), {MANIFEST_TYPE!r}, kind="manifest")
print("jsonschema" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
