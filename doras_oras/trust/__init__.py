"""Trusted updates (issue #12): refuse an artifact unless a cosign signature by a trusted key verifies.

Pure apart from reading key and policy files: registry reads go through a
:class:`SignatureSource` the caller supplies. What the pull calls::

    keys = load_public_keys(["cosign.pub"])                 # --verify-key (repeatable)
    requirement = Requirement.from_keys(keys, {"channel": "stable"})
    # or: requirement = load_policy("trust.json").requirement_for(reference)
    result = enforce(source, reference.with_digest(resolved_digest), requirement)
    # a policy and command-line keys together (both must pass):
    result = check(source, reference.with_digest(resolved_digest), Verification(policy=policy, keys=requirement))
    result.signature.key          # which key verified (KeyIdentity)
    result.signature.manifest_body, result.signature.blobs   # to keep beside the image

Modules: :mod:`.keys` (key files, algorithms, fingerprints), :mod:`.source`
(the protocol and the caps), :mod:`.discovery` (legacy tag, referrers API,
referrers tag), :mod:`.payload` (simple-signing payload and its claims),
:mod:`.verifier` (the walk over signatures, results), :mod:`.policy`
(requirements and the trust policy file), :mod:`.forward` (signed updates only
go forward: the rollback and freshness decision). Every refusal is a
:class:`~doras_oras.errors.TrustError` (CLI exit code :data:`EXIT_TRUST`);
docs/trust.md has the threat model.
"""

from __future__ import annotations

from .discovery import SIGNATURE_ARTIFACT_TYPE, referrers_tag, signature_tag
from .forward import CREATED_ANNOTATION, Decision, OrderRule, Standing, decide
from .keys import KeyIdentity, TrustedKey, load_public_key, load_public_keys, parse_public_key
from .payload import SIMPLE_SIGNING_TYPE, SimpleSigningPayload, same_repository
from .policy import (
    PolicyRule,
    Requirement,
    TrustPolicy,
    Verification,
    load_policy,
    parse_annotation,
    parse_policy,
)
from .source import (
    MAX_MANIFEST_BYTES,
    MAX_REFERRERS,
    MAX_SIGNATURE_BLOB_BYTES,
    MAX_SIGNATURE_LAYERS,
    MAX_SIGNATURE_MANIFESTS,
    CachingSource,
    FetchedManifest,
    SignatureSource,
)
from .verifier import (
    ORIGIN_LAYOUT,
    ORIGIN_REGISTRY,
    SIGNATURE_ANNOTATION,
    SIMPLE_SIGNING_MEDIA_TYPE,
    TrustResult,
    VerifiedSignature,
    check,
    cosign_config,
    enforce,
    verify_signature,
)

EXIT_TRUST = 5
"""The ``doras-oras`` exit code of every :class:`~doras_oras.errors.TrustError` (docs/cli.md, docs/trust.md)."""

__all__ = [
    "CREATED_ANNOTATION",
    "EXIT_TRUST",
    "MAX_MANIFEST_BYTES",
    "MAX_REFERRERS",
    "MAX_SIGNATURE_BLOB_BYTES",
    "MAX_SIGNATURE_LAYERS",
    "MAX_SIGNATURE_MANIFESTS",
    "ORIGIN_LAYOUT",
    "ORIGIN_REGISTRY",
    "SIGNATURE_ANNOTATION",
    "SIGNATURE_ARTIFACT_TYPE",
    "SIMPLE_SIGNING_MEDIA_TYPE",
    "SIMPLE_SIGNING_TYPE",
    "CachingSource",
    "Decision",
    "FetchedManifest",
    "KeyIdentity",
    "OrderRule",
    "PolicyRule",
    "Requirement",
    "SignatureSource",
    "SimpleSigningPayload",
    "Standing",
    "TrustPolicy",
    "TrustResult",
    "TrustedKey",
    "Verification",
    "VerifiedSignature",
    "check",
    "cosign_config",
    "decide",
    "enforce",
    "load_policy",
    "load_public_key",
    "load_public_keys",
    "parse_annotation",
    "parse_policy",
    "parse_public_key",
    "referrers_tag",
    "same_repository",
    "signature_tag",
    "verify_signature",
]
