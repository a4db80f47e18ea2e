"""Verifying that a digest carries a cosign signature by a trusted key.

:func:`verify_signature` walks the signature manifests that
:mod:`.discovery` finds and, in each, the simple-signing layers (one per
``cosign sign``). For one layer, in this order:

1. its declared size is at most 1 MiB, its blob is fetched (at most 1 MiB)
   and must match the layer's digest and size (a tampered payload stops here);
2. the base64 signature in the annotation ``dev.cosignproject.cosign/signature``
   must verify over the exact payload bytes with one of the trusted keys;
3. only then is the payload read and its claims checked
   (:func:`.payload.check_claims`): type, digest, repository, annotations.

The first layer that passes all three wins; the config and the other layers
of its manifest are fetched too (capped, verified) so that the caller can keep
the whole signature manifest beside the image. When nothing passes, the
failure that got furthest decides the error (:class:`~doras_oras.errors.TrustError`
subclasses) and every failure is listed in its ``failures``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn

from ..descriptor import Descriptor, validate_digest
from ..errors import (
    AnnotationMismatchError,
    BodyTooLargeError,
    InvalidArgumentError,
    InvalidDigestError,
    MalformedSignatureError,
    PayloadMismatchError,
    SignatureInvalidError,
    SignatureLimitError,
    SignatureNotFoundError,
    TrustError,
)
from ..reference import Reference
from .discovery import Candidate, Failure, Stage, discover
from .forward import Decision
from .keys import KeyIdentity, TrustedKey
from .payload import SimpleSigningPayload, check_claims, parse_payload
from .policy import Requirement, Verification
from .source import MAX_SIGNATURE_BLOB_BYTES, MAX_SIGNATURE_LAYERS, CachingSource, SignatureSource

log = logging.getLogger(__name__)

SIMPLE_SIGNING_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"

_ERRORS: dict[Stage, type[TrustError]] = {
    Stage.NOT_FOUND: SignatureNotFoundError,
    Stage.MALFORMED: MalformedSignatureError,
    Stage.LIMIT: SignatureLimitError,
    Stage.BAD_SIGNATURE: SignatureInvalidError,
    Stage.ANNOTATION: AnnotationMismatchError,
    Stage.PAYLOAD: PayloadMismatchError,
}
_MAX_LISTED_FAILURES = 8


@dataclass(frozen=True)
class VerifiedSignature:
    """A signature that verified: who signed, what, where it was found, and its bytes to keep."""

    key: KeyIdentity
    """The trusted key that verified it."""
    target: Reference
    """The repository and digest that were verified (``target.digest``)."""
    signature_manifest: Descriptor
    """Media type, digest and size of the signature manifest."""
    found_via: str
    """``tag`` (legacy ``sha256-<hex>.sig``), ``referrers-api`` or ``referrers-tag`` (``sha256-<hex>`` index)."""
    location: str
    """The tag it was found under, or ``referrers API``."""
    manifest_body: bytes
    """The signature manifest's exact bytes (its digest is ``signature_manifest.digest``)."""
    blobs: Mapping[str, bytes]
    """Every blob of the signature manifest (config and layers), by digest, each verified."""
    payload: SimpleSigningPayload
    """The signed payload's checked fields (``payload.optional`` holds the annotations)."""
    layer_index: int = 0
    """Which layer (signature) of the manifest verified."""

    @property
    def digest(self) -> str:
        """The digest that was verified."""
        assert self.target.digest is not None
        return self.target.digest

    def to_json(self) -> dict[str, Any]:
        """For ``PullResult`` / ``--json``: key, signature manifest digest, where it was found."""
        return {
            "key": self.key.to_json(),
            "digest": self.digest,
            "signature": self.signature_manifest.digest,
            "found_via": self.found_via,
            "location": self.location,
        }


@dataclass(frozen=True)
class _Outcome:
    verified: VerifiedSignature | None = None
    failures: tuple[Failure, ...] = field(default_factory=tuple)


def _fetch_blob(source: SignatureSource, target: Reference, descriptor: Descriptor, what: str) -> bytes | Failure:
    if descriptor.size > MAX_SIGNATURE_BLOB_BYTES:
        return Failure(
            Stage.LIMIT, f"{what} {descriptor.digest}: declared size {descriptor.size} over the {MAX_SIGNATURE_BLOB_BYTES}-byte cap"
        )
    if descriptor.data is not None:
        data: bytes | None = descriptor.data
    else:
        try:
            data = source.fetch_blob(target, descriptor, max_bytes=MAX_SIGNATURE_BLOB_BYTES)
        except BodyTooLargeError as exc:
            return Failure(Stage.LIMIT, f"{what} {descriptor.digest}: {exc}")
    if data is None:
        return Failure(Stage.MALFORMED, f"{what} {descriptor.digest}: blob not found")
    if len(data) > MAX_SIGNATURE_BLOB_BYTES:
        return Failure(Stage.LIMIT, f"{what} {descriptor.digest}: {len(data)} bytes, over the {MAX_SIGNATURE_BLOB_BYTES}-byte cap")
    if len(data) != descriptor.size:
        return Failure(Stage.MALFORMED, f"{what} {descriptor.digest}: {len(data)} bytes, descriptor says {descriptor.size}")
    actual = hashlib.new(descriptor.algorithm, data).hexdigest()
    if actual != descriptor.hex:
        return Failure(Stage.MALFORMED, f"{what} {descriptor.digest}: content hashes to {descriptor.algorithm}:{actual}")
    return data


def _layers(candidate: Candidate) -> list[Descriptor] | Failure:
    document = candidate.manifest.document
    what = f"signature manifest {candidate.manifest.descriptor.digest} ({candidate.location})"
    raw_layers = document.get("layers") or []
    if not raw_layers:
        return Failure(Stage.MALFORMED, f"{what}: no layers (no signatures)")
    if len(raw_layers) > MAX_SIGNATURE_LAYERS:
        return Failure(Stage.LIMIT, f"{what}: {len(raw_layers)} layers, over the cap of {MAX_SIGNATURE_LAYERS}")
    layers: list[Descriptor] = []
    for position, raw in enumerate(raw_layers):
        try:
            layer = Descriptor.from_json(raw)
        except (ValueError, InvalidDigestError) as exc:
            return Failure(Stage.MALFORMED, f"{what}: layer {position}: {exc}")
        if layer.media_type != SIMPLE_SIGNING_MEDIA_TYPE:
            return Failure(
                Stage.MALFORMED, f"{what}: layer {position} has media type {layer.media_type[:100]!r}, not {SIMPLE_SIGNING_MEDIA_TYPE}"
            )
        layers.append(layer)
    return layers


def _decode_signature(layer: Descriptor) -> bytes | None:
    text = layer.annotations.get(SIGNATURE_ANNOTATION)
    if not isinstance(text, str) or not text:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _try_candidate(
    source: SignatureSource,
    target: Reference,
    digest: str,
    candidate: Candidate,
    keys: tuple[TrustedKey, ...],
    annotations: Mapping[str, str],
) -> _Outcome:
    what = f"signature manifest {candidate.manifest.descriptor.digest} ({candidate.location})"
    layers = _layers(candidate)
    if isinstance(layers, Failure):
        return _Outcome(failures=(layers,))
    failures: list[Failure] = []
    blobs: dict[str, bytes] = {}
    for position, layer in enumerate(layers):
        label = f"{what} layer {position}"
        signature = _decode_signature(layer)
        if signature is None:
            failures.append(Failure(Stage.MALFORMED, f"{label}: no base64 {SIGNATURE_ANNOTATION} annotation"))
            continue
        payload_bytes = _fetch_blob(source, target, layer, f"{label}: payload")
        if isinstance(payload_bytes, Failure):
            failures.append(payload_bytes)
            continue
        blobs[layer.digest] = payload_bytes
        key = next((k for k in keys if k.verify(signature, payload_bytes)), None)
        if key is None:
            names = ", ".join(k.identity.name for k in keys)
            failures.append(Failure(Stage.BAD_SIGNATURE, f"{label}: signature does not verify with any trusted key ({names})"))
            continue
        try:
            payload = parse_payload(payload_bytes)
            check_claims(payload, digest=digest, target=target, annotations=annotations)
        except MalformedSignatureError as exc:
            failures.append(Failure(Stage.MALFORMED, f"{label}: {exc}"))
            continue
        except AnnotationMismatchError as exc:
            failures.append(Failure(Stage.ANNOTATION, f"{label} (verified with {key.identity.name}): {exc}"))
            continue
        except PayloadMismatchError as exc:
            failures.append(Failure(Stage.PAYLOAD, f"{label} (verified with {key.identity.name}): {exc}"))
            continue
        stored = _complete_blobs(source, target, candidate, layers, blobs, what)
        if isinstance(stored, Failure):
            return _Outcome(failures=(*failures, stored))
        log.info(
            "signature of %s@%s verified with key %s (%s %s)",
            target.name, digest, key.identity, candidate.found_via, candidate.location,
        )
        verified = VerifiedSignature(
            key=key.identity,
            target=target.with_digest(digest),
            signature_manifest=candidate.manifest.descriptor,
            found_via=candidate.found_via,
            location=candidate.location,
            manifest_body=candidate.manifest.body,
            blobs=stored,
            payload=payload,
            layer_index=position,
        )
        return _Outcome(verified=verified, failures=tuple(failures))
    return _Outcome(failures=tuple(failures))


def cosign_config(layers: list[Descriptor]) -> bytes:
    """The config blob ``cosign sign`` v2.6.5 writes for a signature manifest of these layers.

    go-containerregistry derives it from the layers alone (one history entry and
    one ``diff_id`` per layer, zero times), in both referrers modes; only its
    media type differs. When these bytes hash to the manifest's config digest,
    the config need not be fetched (one request less per pull); otherwise it is.
    """
    history = ",".join('{"created":"0001-01-01T00:00:00Z"}' for _ in layers)
    diff_ids = ",".join(f'"{layer.digest}"' for layer in layers)
    return (
        '{"architecture":"","created":"0001-01-01T00:00:00Z","history":[' + history + '],"os":"",'
        '"rootfs":{"type":"layers","diff_ids":[' + diff_ids + ']},"config":{}}'
    ).encode()


def _predicted(config: Descriptor, layers: list[Descriptor]) -> bytes | None:
    """The config's bytes when they are cosign's own (checked against the digest), else ``None``."""
    data = cosign_config(layers)
    if len(data) == config.size and hashlib.new(config.algorithm, data).hexdigest() == config.hex:
        return data
    return None


def _complete_blobs(
    source: SignatureSource,
    target: Reference,
    candidate: Candidate,
    layers: list[Descriptor],
    blobs: dict[str, bytes],
    what: str,
) -> dict[str, bytes] | Failure:
    """Fetch the config and the layers not fetched yet, so the whole manifest can be stored.

    A config that cosign derived from the layers (:func:`cosign_config`) is rebuilt, not fetched.
    """
    try:
        config = Descriptor.from_json(candidate.manifest.document.get("config") or {})
    except (ValueError, InvalidDigestError) as exc:
        return Failure(Stage.MALFORMED, f"{what}: config: {exc}")
    out = dict(blobs)
    rebuilt = _predicted(config, layers)
    if rebuilt is not None:
        out[config.digest] = rebuilt
    for position, descriptor in [(-1, config), *enumerate(layers)]:
        if descriptor.digest in out:
            continue
        label = f"{what}: config" if position < 0 else f"{what} layer {position}: payload"
        data = _fetch_blob(source, target, descriptor, label)
        if isinstance(data, Failure):
            return data
        out[descriptor.digest] = data
    return out


def _raise(failures: list[Failure], target: Reference, digest: str) -> NoReturn:
    if not failures:  # pragma: no cover - discovery always yields something
        failures = [Failure(Stage.NOT_FOUND, "no signature found")]
    worst = max(failures, key=lambda f: f.stage)
    cls = _ERRORS[worst.stage]
    listed = [f.message for f in failures if f.stage == worst.stage][:_MAX_LISTED_FAILURES]
    headline = {
        Stage.NOT_FOUND: "no signature found",
        Stage.MALFORMED: "malformed signature",
        Stage.LIMIT: "signature data over a cap",
        Stage.BAD_SIGNATURE: "no signature verifies with the trusted keys",
        Stage.ANNOTATION: "required annotation missing from the signed payload",
        Stage.PAYLOAD: "signed payload is for another image",
    }[worst.stage]
    message = f"refusing {target.name}@{digest}: {headline}: " + "; ".join(listed)
    raise cls(message, failures=tuple(f.message for f in failures))


def verify_signature(
    source: SignatureSource,
    target: Reference,
    keys: tuple[TrustedKey, ...] | list[TrustedKey],
    *,
    annotations: Mapping[str, str] | None = None,
) -> VerifiedSignature:
    """Verify that ``target.digest`` in ``target``'s repository is signed by one of ``keys``.

    ``target`` must carry the digest being installed (for an image index:
    the index digest). ``annotations`` must all be in the signed payload's
    ``optional`` map. Returns the first signature that passes; raises a
    :class:`~doras_oras.errors.TrustError` subclass naming the reason
    otherwise. Errors of the source other than "not found" (transport,
    registry errors) propagate unchanged: the artifact is then not verified
    and must not be installed.
    """
    if target.digest is None:
        raise InvalidArgumentError("verify_signature needs the digest being installed (target.digest)")
    digest = target.digest
    validate_digest(digest)
    keys = tuple(keys)
    if not keys:
        raise InvalidArgumentError("verify_signature needs at least one trusted key")
    wanted = dict(annotations or {})
    failures: list[Failure] = []
    for item in discover(source, target, digest):
        if isinstance(item, Failure):
            failures.append(item)
            continue
        outcome = _try_candidate(source, target, digest, item, keys, wanted)
        failures.extend(outcome.failures)
        if outcome.verified is not None:
            return outcome.verified
    for failure in failures:
        log.debug("signature of %s@%s: %s", target.name, digest, failure.message)
    _raise(failures, target, digest)


ORIGIN_REGISTRY = "registry"
ORIGIN_LAYOUT = "layout"


@dataclass(frozen=True)
class TrustResult:
    """What the trust check decided for one artifact (for ``PullResult.trust`` and ``--json``)."""

    required: bool
    """Whether a signature was required (``False``: the policy's ``keys: []`` or no trust options)."""
    rule: str | None = None
    """The policy pattern that decided, ``None`` for command-line keys or no check."""
    signature: VerifiedSignature | None = None
    """The signature that verified, when one was required (with several checks: the first)."""
    checks: tuple[TrustResult, ...] = ()
    """With a policy *and* command-line keys: each check's own result (policy first); else empty."""
    origin: str = ORIGIN_REGISTRY
    """Where the signatures were read: ``registry``, or ``layout`` (the copy kept beside the image)."""
    order: Decision | None = None
    """The rollback/freshness decision (:func:`~.forward.decide`) of a pull, when it made one."""

    @property
    def signatures(self) -> tuple[VerifiedSignature, ...]:
        """Every signature that verified (one per check; the same manifest once)."""
        found: dict[str, VerifiedSignature] = {}
        for result in (self, *self.checks):
            if result.signature is not None:
                found.setdefault(result.signature.signature_manifest.digest, result.signature)
        return tuple(found.values())

    def to_json(self) -> dict[str, Any]:
        """``{"required", "rule", "signature": {...} | null, "origin", "checks": [...], "order": {...} | null}``."""
        return {
            "order": self.order.to_json() if self.order is not None else None,
            "required": self.required,
            "rule": self.rule,
            "signature": self.signature.to_json() if self.signature is not None else None,
            "origin": self.origin,
            "checks": [
                {"required": c.required, "rule": c.rule,
                 "signature": c.signature.to_json() if c.signature is not None else None}
                for c in self.checks
            ],
        }


def enforce(source: SignatureSource, target: Reference, requirement: Requirement) -> TrustResult:
    """Apply ``requirement`` to ``target`` (which carries the digest being installed).

    With no keys in the requirement, nothing is fetched and the result says
    so; otherwise :func:`verify_signature` must pass (it raises otherwise).
    """
    if not requirement.required:
        log.info("no signature required for %s (rule %s)", target.name, requirement.rule)
        return TrustResult(required=False, rule=requirement.rule)
    verified = verify_signature(source, target, requirement.keys, annotations=requirement.annotations)
    return TrustResult(required=True, rule=requirement.rule, signature=verified)


def check(
    source: SignatureSource, target: Reference, verification: Verification, *, origin: str = ORIGIN_REGISTRY
) -> TrustResult:
    """Every requirement of ``verification`` for ``target`` must pass (:class:`~.policy.Verification`).

    ``target`` carries the digest being installed. The source is read through
    a cache, so two requirements met by one signature manifest cost its
    requests once. Raises the first requirement's :class:`~doras_oras.errors.TrustError`.
    """
    if target.digest is None:
        raise InvalidArgumentError("check needs the digest being installed (target.digest)")
    requirements = verification.requirements_for(target)
    cached = CachingSource(source)
    results = [enforce(cached, target, requirement) for requirement in requirements]
    if len(results) == 1:
        return replace(results[0], origin=origin)
    signed = next((r.signature for r in results if r.signature is not None), None)
    return TrustResult(
        required=any(r.required for r in results),
        rule=next((r.rule for r in results if r.rule is not None), None),
        signature=signed,
        checks=tuple(results),
        origin=origin,
    )
