"""What a Doras server answers: the 200 body (:class:`ReadDeltaResponse`, with
:class:`ImageRef` strings), a checked delta (:class:`Delta`), the checks of an answer
against its request (:func:`check_response`) and of a delta manifest
(:func:`check_delta_manifest`), and error bodies (:func:`parse_error_body`). No I/O."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import schemas
from ..algorithms import DeltaAlgorithm
from ..descriptor import (
    ANNOTATION_DELTA_DUMMY,
    ANNOTATION_DELTA_FROM,
    ANNOTATION_DELTA_TO,
    OCI_MANIFEST,
    Descriptor,
)
from ..errors import (
    DeltaManifestError,
    InvalidReferenceError,
    SchemaValidationError,
    UnsupportedAlgorithmError,
)
from ..redact import shorten
from ..reference import Reference


class ImageRef(str):
    """An image reference exactly as the server sent it (it *is* that string), also parsed.

    Compares equal to the server's string, as the Go client's string fields do (and to
    an equal :class:`~doras_oras.reference.Reference`), and offers the :class:`~doras_oras.reference.Reference` view (``digest``,
    ``same_repository``, ...) through :attr:`ref`.
    """

    _ref: Reference

    def __new__(cls, text: str | Reference) -> ImageRef:
        ref = text if isinstance(text, Reference) else Reference.parse(str(text))
        obj = super().__new__(cls, str(text))
        obj._ref = ref
        return obj

    @property
    def ref(self) -> Reference:
        """The parsed reference."""
        return self._ref

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Reference):
            return self._ref == other
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = str.__hash__

    @property
    def registry(self) -> str:
        return self._ref.registry

    @property
    def repository(self) -> str:
        return self._ref.repository

    @property
    def name(self) -> str:
        return self._ref.name

    @property
    def tag(self) -> str | None:
        return self._ref.tag

    @property
    def digest(self) -> str | None:
        return self._ref.digest

    def same_repository(self, other: Reference | ImageRef) -> bool:
        """Whether both name the same registry and repository."""
        return self._ref.same_repository(other.ref if isinstance(other, ImageRef) else other)

    def with_digest(self, digest: str) -> Reference:
        """This repository at ``digest``."""
        return self._ref.with_digest(digest)


def _digest_reference(value: object, field: str) -> ImageRef:
    if isinstance(value, Reference):
        value = str(value)
    if not isinstance(value, str):
        raise SchemaValidationError(f"delta response: {field} missing or not a string")
    try:
        ref = ImageRef(value)
    except InvalidReferenceError as exc:
        raise SchemaValidationError(f"delta response: {field}: {exc}") from exc
    if ref.digest is None:
        raise SchemaValidationError(f"delta response: {field} {value[:200]!r} is not a digest reference")
    return ref


@dataclass(frozen=True)
class ReadDeltaResponse:
    """The 200 answer: the target image and the delta image, both digest references.

    The fields are :class:`ImageRef` strings, equal to what the server sent.
    """

    target_image: ImageRef
    delta_image: ImageRef

    def __post_init__(self) -> None:
        for field in ("target_image", "delta_image"):
            value = getattr(self, field)
            if not isinstance(value, ImageRef):
                object.__setattr__(self, field, _digest_reference(value, field))

    @classmethod
    def from_json(cls, obj: object) -> ReadDeltaResponse:
        """Parse the body; ``to_image`` is accepted for ``target_image``; unknown fields are ignored."""
        if not isinstance(obj, Mapping):
            raise SchemaValidationError("delta response: expected a JSON object")
        target = obj.get("target_image")
        if target is None:
            target = obj.get("to_image")
        return cls(
            target_image=_digest_reference(target, "target_image"),
            delta_image=_digest_reference(obj.get("delta_image"), "delta_image"),
        )

    @property
    def target_ref(self) -> Reference:
        return self.target_image.ref

    @property
    def delta_ref(self) -> Reference:
        return self.delta_image.ref

    def to_json(self) -> dict[str, str]:
        """The wire form (``target_image``, ``delta_image``)."""
        return {"target_image": str(self.target_image), "delta_image": str(self.delta_image)}


@dataclass(frozen=True)
class Delta:
    """A delta the server has ready, its manifest checked (:meth:`EdgeClient.fetch_delta`)."""

    response: ReadDeltaResponse
    layer: Descriptor
    """The delta layer (the bytes to download)."""
    algorithm: DeltaAlgorithm
    """Its kind, from the layer's media type; may be one that was not accepted (the server
    falls back to bsdiff): the caller checks."""

    @property
    def manifest_ref(self) -> Reference:
        """The delta manifest (``delta_image``)."""
        return self.response.delta_ref



def check_response(response: ReadDeltaResponse, from_ref: Reference, to_ref: Reference) -> None:
    """Check a 200 answer against the request: same repository, same target digest when asked by digest."""
    for field, ref in (("target_image", response.target_ref), ("delta_image", response.delta_ref)):
        if not ref.same_repository(to_ref):
            raise DeltaManifestError(
                f"server answered {field} {ref} outside the requested repository {to_ref.name}"
            )
    if to_ref.digest is not None and response.target_ref.digest != to_ref.digest:
        raise DeltaManifestError(
            f"server answered target {response.target_ref.digest}, requested {to_ref.digest}"
        )
    if response.delta_ref.digest in (from_ref.digest, response.target_ref.digest):
        raise DeltaManifestError("server named an image itself as the delta")


def check_delta_manifest(
    body: bytes, content_type: str, response: ReadDeltaResponse, from_ref: Reference
) -> tuple[Descriptor, DeltaAlgorithm]:
    """Check a delta manifest and return its layer's descriptor and algorithm.

    The manifest passes :func:`doras_oras.schemas.parse_manifest` as an image
    manifest of the digest ``response.delta_image`` names
    (:class:`~doras_oras.errors.DigestMismatchError`, schema and media type
    errors); then :class:`DeltaManifestError` for a placeholder, a delta for other
    images, not exactly one layer, or an unknown layer media type.
    """
    digest = response.delta_ref.digest
    assert digest is not None
    expected = Descriptor(OCI_MANIFEST, digest, len(body))
    parsed = schemas.parse_manifest(body, content_type, expected=expected, what="delta manifest",
                                    kind="manifest")
    manifest = parsed.document
    annotations: Mapping[str, str] = manifest.get("annotations", {})
    if annotations.get(ANNOTATION_DELTA_DUMMY, "").lower() == "true":
        raise DeltaManifestError(
            f"{response.delta_image} is the placeholder the server stores while building, not a delta"
        )
    _check_annotation(annotations, ANNOTATION_DELTA_FROM, from_ref.digest)
    _check_annotation(annotations, ANNOTATION_DELTA_TO, response.target_ref.digest)
    layers = manifest["layers"]
    if len(layers) != 1:
        raise DeltaManifestError(f"delta manifest has {len(layers)} layers, expected exactly 1")
    try:
        descriptor = Descriptor.from_json(layers[0])
    except (ValueError, TypeError) as exc:
        raise DeltaManifestError(f"delta manifest layer: {exc}") from exc
    try:
        algorithm = DeltaAlgorithm.from_media_type(descriptor.media_type)
    except UnsupportedAlgorithmError as exc:
        raise DeltaManifestError(f"delta manifest layer: {exc}") from exc
    return descriptor, algorithm


def _check_annotation(annotations: Mapping[str, str], key: str, digest: str | None) -> None:
    value = annotations.get(key)
    if value is None:
        raise DeltaManifestError(f"delta manifest lacks the annotation {key}")
    try:
        ref = Reference.parse(value)
    except InvalidReferenceError as exc:
        raise DeltaManifestError(f"delta manifest annotation {key}: {exc}") from exc
    if ref.digest != digest:
        raise DeltaManifestError(
            f"delta manifest is for other images: {key} is {value[:200]!r}, expected digest {digest}"
        )



def _field(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return shorten(value, 1000)
    return shorten(json.dumps(value, sort_keys=True), 1000)


def parse_error_body(data: bytes) -> tuple[str, str | None] | None:
    """``(message, context)`` from ``{"error": {...}}`` or RFC 9457 problem details, else ``None``."""
    try:
        obj: Any = json.loads(data)
    except (ValueError, RecursionError):  # nested deeper than the parser goes: not a Doras error document
        return None
    if not isinstance(obj, dict):
        return None
    error = obj.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return shorten(error["message"], 1000), _field(error.get("context"))
    if isinstance(error, str):
        return shorten(error, 1000), None
    title, detail = obj.get("title"), obj.get("detail")
    if isinstance(title, str) or isinstance(detail, str):
        message = title if isinstance(title, str) and title else str(detail)
        context = detail if isinstance(detail, str) and message != detail else None
        instance = obj.get("instance")
        if context is None and isinstance(instance, str):
            context = instance
        return shorten(message, 1000), _field(context)
    return None

