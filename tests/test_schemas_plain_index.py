"""The plain-index check (``schemas._plain_index``): it lets ``index.json`` be read without jsonschema,
so it must accept nothing the ``index`` schema refuses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from doras_oras import schemas
from doras_oras.errors import SchemaValidationError

H64 = "a" * 64
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
ENTRY = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + H64, "size": 583,
         "annotations": {"org.opencontainers.image.ref.name": "v1"}, "artifactType": "application/vnd.x+type",
         "platform": {"architecture": "amd64", "os": "linux"}}
INDEX = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [ENTRY]}

# Values that are valid somewhere in an index, and some that are valid nowhere.
scalars = st.sampled_from([
    None, True, False, 0, 2, -1, 2.0, 583, 9223372036854775807, 9223372036854775808, "", "v1", "linux", "sha256:",
    "sha256:" + H64, "sha256:" + H64.upper(), "sha256:" + H64 + "\n", "sha512:" + "b" * 128,
    "application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json", "a/b", "a/b; charset=x", "/b",
])
KEYS = ["schemaVersion", "mediaType", "manifests", "annotations", "digest", "size", "artifactType", "platform",
        "architecture", "os", "variant", "os.version", "layers", "config", "subject", "urls", "data", "x"]
documents = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                         | st.dictionaries(st.sampled_from(KEYS), inner, max_size=6), max_leaves=20)


def mutations(draw: st.DrawFn) -> Any:
    """The valid index with one value somewhere replaced, added or removed."""
    document: Any = json.loads(json.dumps(INDEX))
    node: Any = document
    path = draw(st.lists(st.sampled_from(["manifests", 0, "annotations", "platform", "size", "digest",
                                          "mediaType", "os", "schemaVersion", "artifactType"]), max_size=4))
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


media_types = st.sampled_from(["application/vnd.oci.image.manifest.v1+json", "a/b", "a/b+c", "x", "a/b c", "/b"])
digests = st.sampled_from(["sha256:" + H64, "sha256:" + H64, "sha512:" + "b" * 128, "sha256:" + H64 + "\n", "sha256:ab", "md5:00"])
sizes = st.sampled_from([0, 583, 583, 583, 9223372036854775807, 9223372036854775808, -1, 2.0, True, "3"])
strings = st.dictionaries(st.sampled_from(["a", "b.c", ""]), st.sampled_from(["", "v1"]) | scalars, max_size=2)
platforms = st.fixed_dictionaries({}, optional={
    "architecture": st.sampled_from(["amd64", "", 1]), "os": st.sampled_from(["linux", "", None]),
    "variant": st.sampled_from(["v7", ""]), "os.version": st.just("10"), "features": st.just(["x"])})
entries = st.fixed_dictionaries({"mediaType": media_types, "digest": digests, "size": sizes}, optional={
    "annotations": strings,
    "artifactType": media_types, "platform": platforms, "urls": st.just(["http://x"]), "data": st.just("AA==")})
indexes = st.fixed_dictionaries({"schemaVersion": st.sampled_from([2, 2, 2, 1, 2.0, True, "2"]),
                                 "manifests": st.lists(entries, max_size=2)}, optional={
    "mediaType": st.sampled_from(["application/vnd.oci.image.index.v1+json", MANIFEST_TYPE, ""]),
    "annotations": strings, "layers": st.just([])})


def schema_accepts(document: Any) -> bool:
    try:
        schemas._validator("index").validate(document)
    except Exception:  # jsonschema's ValidationError
        return False
    return True


@settings(max_examples=400, deadline=None)
@given(st.composite(mutations)() | documents | indexes)
def test_the_plain_check_accepts_only_what_the_schema_accepts(document: Any) -> None:
    if schemas._plain_index(document):
        assert schema_accepts(document), document


def test_the_plain_check_accepts_an_index_json_as_written() -> None:
    assert schemas._plain_index(INDEX) and schema_accepts(INDEX)
    assert schemas._plain_index({"schemaVersion": 2, "manifests": []})


def test_a_refused_index_still_gets_the_validators_message() -> None:
    bad = json.loads(json.dumps(INDEX))
    bad["manifests"][0]["digest"] = "sha256:" + H64.upper()
    assert not schemas._plain_index(bad)
    try:
        schemas.validate(bad, "index")
    except SchemaValidationError as exc:
        assert "manifests[0].digest" in str(exc)
    else:
        raise AssertionError("an upper-case digest passed")


def test_reading_an_index_json_does_not_load_jsonschema(tmp_path: Path) -> None:
    (tmp_path / "index.json").write_text(json.dumps(INDEX))
    code = f"""
import sys
from doras_oras.layout.index import read_index
read_index(__import__("pathlib").Path({str(tmp_path / "index.json")!r}))
print("jsonschema" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
