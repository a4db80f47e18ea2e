"""JSON Schemas of the documents doras-oras reads and writes, and their validation.

The schemas live in ``schemas/*.json`` at the top of the repository (the
source); ``doras_oras/_schemas`` is a symbolic link to it so that the files
ship inside the installed package. Kinds:

``descriptor``, ``manifest``, ``index``, ``oci-layout``,
``delta-response`` (Doras 200 body), ``doras-error`` (Doras error bodies),
``trust-policy`` (the ``--trust-policy`` file, docs/trust.md).

:func:`validate` raises :class:`SchemaValidationError` naming the field
(``layers[0].digest``). :func:`parse_manifest` is the one gate every manifest
or index from the network passes: size cap, digest/size against the expected
descriptor, ``mediaType`` against Content-Type, schema, manifest XOR index.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .descriptor import (
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    validate_digest,
)
from .errors import (
    BodyTooLargeError,
    DigestMismatchError,
    DorasOrasError,
    InvalidArgumentError,
    MediaTypeMismatchError,
    SchemaValidationError,
    SizeMismatchError,
)

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
"""Cap of a manifest, index or any JSON body (DESIGN.md §5)."""
MAX_JSON_BYTES = MAX_MANIFEST_BYTES
"""Cap of any other JSON body (a Doras answer): the same 4 MiB."""

KINDS: dict[str, str] = {
    "descriptor": "descriptor.json",
    "manifest": "image-manifest.json",
    "index": "image-index.json",
    "oci-layout": "oci-layout.json",
    "delta-response": "doras-delta-response.json",
    "doras-error": "doras-error.json",
    "trust-policy": "trust-policy.json",
}

_BASE_URI = "https://doras-oras.invalid/schemas/"


def schema_dir() -> Path:
    """The directory the schemas are loaded from (packaged copy first, then the checkout)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_schemas", here.parent / "schemas"):
        if (candidate / "descriptor.json").is_file():
            return candidate
    raise DorasOrasError("doras-oras schemas not found (expected doras_oras/_schemas/*.json)")


_compiled: dict[str, Any] = {}
_compile_lock = threading.Lock()


def _jsonschema() -> Any:
    """``jsonschema``, imported on first use (~70 ms on a small device): only for a document no plain check accepts."""
    import jsonschema

    return jsonschema


@lru_cache(maxsize=1)
def _registry() -> Any:
    from referencing import Registry, Resource

    resources = []
    directory = schema_dir()
    for name in sorted(set(KINDS.values())):
        contents = json.loads((directory / name).read_text(encoding="utf-8"))
        resources.append((_BASE_URI + name, Resource.from_contents(contents)))
    return Registry().with_resources(resources)


def _validator(kind: str) -> Any:
    """The compiled validator of ``kind``, made once per process (thread-safe)."""
    # The schemas are checked against their metaschema by the tests
    # (tests/test_schemas.py), not in every process: that check costs ~15 ms of start-up.
    validator = _compiled.get(kind)
    if validator is not None:
        return validator
    if kind not in KINDS:
        raise InvalidArgumentError(f"unknown schema kind {kind!r}; known: {', '.join(sorted(KINDS))}")
    with _compile_lock:
        validator = _compiled.get(kind)
        if validator is None:
            schema = _registry().contents(_BASE_URI + KINDS[kind])
            cls = _jsonschema().validators.validator_for(schema)
            validator = _compiled[kind] = cls(schema, registry=_registry(), format_checker=None)
    return validator


def check_schemas() -> None:
    """Check every schema against its metaschema (raises ``jsonschema.SchemaError``)."""
    for kind in KINDS:
        validator = _validator(kind)
        validator.check_schema(validator.schema)


def schema(kind: str) -> Mapping[str, Any]:
    """The schema document of ``kind``."""
    return _validator(kind).schema  # type: ignore[no-any-return]


def field_path(parts: Iterable[str | int]) -> str:
    """``["layers", 0, "digest"]`` -> ``layers[0].digest``; empty -> ``(document)``."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text or "(document)"


def _deepest(error: Any) -> Any:
    # For oneOf/anyOf failures, point at the most specific sub-error.
    best_match = _jsonschema().exceptions.best_match
    best = best_match([error])
    while best.context:
        nxt = best_match(best.context)
        if nxt is None or len(nxt.absolute_path) < len(best.absolute_path):
            break
        best = nxt
    return best


#: Documents so common that they are checked by equality, without the validator.
_KNOWN_VALID = {"oci-layout": ({"imageLayoutVersion": "1.0.0"},)}

_PLAIN_INDEX_KEYS = frozenset({"schemaVersion", "mediaType", "manifests", "annotations"})
_PLAIN_MANIFEST_KEYS = frozenset({"schemaVersion", "mediaType", "artifactType", "config", "layers", "subject",
                                  "annotations"})
_PLAIN_DESCRIPTOR_KEYS = frozenset({"mediaType", "digest", "size", "annotations", "artifactType", "platform",
                                    "data"})
_PLAIN_PLATFORM_KEYS = frozenset({"architecture", "os", "variant", "os.version"})
_MAX_SIZE = 9223372036854775807


@dataclass(frozen=True)
class _PlainRules:
    """The patterns and enumerations of the schema files that the plain checks apply."""

    media_type: re.Pattern[str]
    digest: re.Pattern[str]
    base64: re.Pattern[str]
    index_types: frozenset[str]
    manifest_types: frozenset[str]


@lru_cache(maxsize=1)
def _plain_rules() -> _PlainRules:
    """The rules of the plain checks, read from the schema files (one source of truth)."""
    directory = schema_dir()

    def load(kind: str) -> Any:
        return json.loads((directory / KINDS[kind]).read_text(encoding="utf-8"))

    defs = load("descriptor")["$defs"]
    return _PlainRules(re.compile(defs["mediaType"]["pattern"]), re.compile(defs["digest"]["pattern"]),
                       re.compile(defs["base64"]["pattern"]),
                       frozenset(load("index")["properties"]["mediaType"]["enum"]),
                       frozenset(load("manifest")["properties"]["mediaType"]["enum"]))


def _strings(value: Any) -> bool:
    return type(value) is dict and all(type(k) is str and type(v) is str for k, v in value.items())


def _plain_descriptor(entry: Any, rules: _PlainRules) -> bool:
    """Whether ``entry`` is a descriptor of the plain shape (a subset of what ``descriptor.json`` accepts)."""
    if type(entry) is not dict or not entry.keys() <= _PLAIN_DESCRIPTOR_KEYS:
        return False
    kind, hexdigest, size = entry.get("mediaType"), entry.get("digest"), entry.get("size")
    if type(kind) is not str or not rules.media_type.search(kind):
        return False
    if type(hexdigest) is not str or not rules.digest.search(hexdigest):
        return False
    if type(size) is not int or not 0 <= size <= _MAX_SIZE:
        return False
    if "annotations" in entry and not _strings(entry["annotations"]):
        return False
    if "artifactType" in entry and (type(entry["artifactType"]) is not str
                                    or not rules.media_type.search(entry["artifactType"])):
        return False
    if "data" in entry and (type(entry["data"]) is not str or not rules.base64.search(entry["data"])):
        return False
    if "platform" in entry:
        platform = entry["platform"]
        if not _strings(platform) or not platform.keys() <= _PLAIN_PLATFORM_KEYS:
            return False
        if not platform.get("architecture") or not platform.get("os"):
            return False
    return True


def _plain_top(document: Any, keys: frozenset[str], media_types: frozenset[str]) -> bool:
    """The fields an index and a manifest share: the keys allowed, ``schemaVersion``, ``mediaType``, ``annotations``."""
    if type(document) is not dict or not document.keys() <= keys:
        return False
    if type(document.get("schemaVersion")) is not int or document["schemaVersion"] != 2:
        return False
    if "mediaType" in document and (type(document["mediaType"]) is not str
                                    or document["mediaType"] not in media_types):
        return False
    return "annotations" not in document or _strings(document["annotations"])


def _plain_index(document: Any) -> bool:
    """Whether ``document`` is an index of the plain shape an ``index.json`` has, checked without jsonschema.

    It accepts only documents the ``index`` schema accepts (a subset of them, with the schema's
    own patterns; anything else goes to the validator), so that an up-to-date poll reads
    ``index.json`` without importing jsonschema (~70 ms on a small device).
    """
    rules = _plain_rules()
    if not _plain_top(document, _PLAIN_INDEX_KEYS, rules.index_types):
        return False
    manifests = document.get("manifests")
    return type(manifests) is list and all(_plain_descriptor(entry, rules) for entry in manifests)


def _plain_manifest(document: Any) -> bool:
    """Whether ``document`` is an image manifest of the plain shape, checked without jsonschema.

    The shape registries serve and Doras servers store (``config``, ``layers``, optional
    ``artifactType``, ``subject``, ``annotations``): a subset of what the ``manifest`` schema
    accepts, with the schema's own patterns; anything else goes to the validator. A delta pull
    then validates every manifest it reads without importing jsonschema (issue #24).
    """
    rules = _plain_rules()
    if not _plain_top(document, _PLAIN_MANIFEST_KEYS, rules.manifest_types):
        return False
    if "artifactType" in document and (type(document["artifactType"]) is not str
                                       or not rules.media_type.search(document["artifactType"])):
        return False
    if "subject" in document and not _plain_descriptor(document["subject"], rules):
        return False
    layers = document.get("layers")
    return (_plain_descriptor(document.get("config"), rules) and type(layers) is list
            and all(_plain_descriptor(layer, rules) for layer in layers))


#: The kinds with a plain check: what it accepts, the schema accepts (the property tests).
_PLAIN = {"index": _plain_index, "manifest": _plain_manifest}


def validate(document: Any, kind: str) -> None:
    """Raise :class:`SchemaValidationError` (naming the field) unless ``document`` is a valid ``kind``."""
    if document in _KNOWN_VALID.get(kind, ()):
        return  # the one valid oci-layout file: no need to load the validator to say so
    plain = _PLAIN.get(kind)
    if plain is not None and plain(document):
        return  # an index.json or a manifest of the usual shape: valid without the validator
    validator = _validator(kind)
    errors = sorted(validator.iter_errors(document), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    if not errors:
        return
    error = _deepest(errors[0])
    path = field_path(error.absolute_path)
    message = error.message
    if len(message) > 300:
        message = message[:300] + "..."
    raise SchemaValidationError(f"invalid {kind}: {path}: {message}")


@dataclass(frozen=True)
class ParsedManifest:
    """A manifest or index that passed :func:`parse_manifest`."""

    descriptor: Descriptor
    """Its own descriptor: media type, digest and size of the exact bytes."""
    document: Mapping[str, Any]
    body: bytes

    @property
    def is_index(self) -> bool:
        """Whether this is an image index (or Docker manifest list)."""
        return self.descriptor.media_type in INDEX_MEDIA_TYPES


def _media_type_of(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def parse_manifest(
    body: bytes,
    content_type: str,
    *,
    expected: Descriptor | None = None,
    what: str = "manifest",
    kind: str | None = None,
) -> ParsedManifest:
    """Check and parse a manifest or index served with ``content_type``.

    Refuses (with a message naming the problem): a body over 4 MiB, a digest
    or size that differs from ``expected``, a body that is not a JSON object,
    a ``mediaType`` that differs from the Content-Type, an unknown media type,
    a document with both ``layers`` and ``manifests``, a schema violation.
    ``kind`` (``"manifest"`` or ``"index"``) demands that kind: the document is
    checked against its schema first, and an empty ``content_type`` then means
    the document's own ``mediaType``.
    """
    if len(body) > MAX_MANIFEST_BYTES:
        raise BodyTooLargeError(f"{what}: {len(body)} bytes, over the {MAX_MANIFEST_BYTES}-byte cap")
    if expected is not None:
        algorithm, hexpart = validate_digest(expected.digest)
        if expected.size > MAX_MANIFEST_BYTES:
            raise BodyTooLargeError(
                f"{what} {expected.digest}: declared size {expected.size} over the {MAX_MANIFEST_BYTES}-byte cap"
            )
        if len(body) != expected.size:
            raise SizeMismatchError(f"{what} {expected.digest}: got {len(body)} bytes, expected {expected.size}")
        actual = hashlib.new(algorithm, body).hexdigest()
        if actual != hexpart:
            raise DigestMismatchError(f"{what}: expected {expected.digest}, got {algorithm}:{actual}")
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # nested too deep: RecursionError
        raise SchemaValidationError(f"invalid {what}: not JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise SchemaValidationError(f"invalid {what}: (document): not a JSON object")
    if "layers" in document and "manifests" in document:
        raise SchemaValidationError(f"invalid {what}: has both 'layers' and 'manifests' (ambiguous)")
    declared = document.get("mediaType")
    if kind is not None:
        validate(document, kind)
        if not content_type:
            content_type = str(declared) if declared else (OCI_MANIFEST if kind == "manifest" else OCI_INDEX)
    served = _media_type_of(content_type)
    if declared is not None and declared != served:
        raise MediaTypeMismatchError(f"{what}: mediaType {str(declared)[:100]!r} but Content-Type {served!r}")
    wanted = MANIFEST_MEDIA_TYPES if kind == "manifest" else INDEX_MEDIA_TYPES if kind == "index" else None
    if wanted is not None and served not in wanted:
        raise MediaTypeMismatchError(f"{what}: Content-Type {served!r} is not an image {kind}")
    if served in MANIFEST_MEDIA_TYPES:
        if kind is None:
            validate(document, "manifest")
    elif served in INDEX_MEDIA_TYPES:
        if kind is None:
            validate(document, "index")
    else:
        raise MediaTypeMismatchError(f"{what}: Content-Type {served!r} is neither a manifest nor an index")
    digest = expected.digest if expected is not None else "sha256:" + hashlib.sha256(body).hexdigest()
    own = Descriptor(media_type=served, digest=digest, size=len(body))
    return ParsedManifest(descriptor=own, document=document, body=body)
