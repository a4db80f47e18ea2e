"""The delta-aware pull: plan, execute, fall back, report.

:func:`pull_delta` updates an OCI image layout to a target image by
downloading only a delta from a Doras server when it can, and a verified full
pull when it cannot. The layout is never left invalid and the old image stays
until the new one is committed (``index.json`` is written last, under the
layout's lock). Every decision is reported in :class:`PullResult`.

The steps (DESIGN.md §1):

1. resolve the target to its manifest (fetched, verified, schema-checked);
2. check the limits (``max_size``, download budget) before downloading;
3. find the base: the newest image of the same repository in the layout, or
   the one ``from_ref`` names; none → full pull; same digest → up to date;
4. verify the stored base layer (a rotted base means a full pull);
5. choose the algorithms that can be applied *and verified* (:mod:`.plan`);
6. ask the Doras server (polling with backoff, or once with ``wait=False``);
7. fetch and check the delta manifest, download the delta blob (verified);
8. apply it to the base layer, verify the result against the target;
9. store blobs, then commit ``index.json``.

Anything that makes the delta unusable (server down, 4xx/5xx, timeout,
corrupt or unverifiable delta, a delta of a kind that was not asked for)
falls back to a verified full pull, and the result says why.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import plan as _plan
from .budget import DownloadBudget, check_max_size
from .codecs import DeltaAlgorithm, apply_delta
from .descriptor import INDEX_MEDIA_TYPES, Descriptor
from .edgeapi import BasicAuth, EdgeClient, check_delta_manifest, check_response
from .errors import (
    BackoffExhausted,
    CodecError,
    DocumentError,
    DorasOrasError,
    DorasServerError,
    ImagesIdenticalError,
    TransportError,
    VerificationError,
)
from .layout import ImageEntry, OCILayout
from .reference import Reference
from .registry import ANNOTATION_SOURCE_INDEX
from .schemas import ParsedManifest

if TYPE_CHECKING:
    from .registry import DeltaRegistry

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
"""``progress(phase, done_bytes, total_bytes)``; phases: ``delta``, ``apply``, ``full``."""

STATUS_DELTA = "delta"
STATUS_FULL = "full"
STATUS_UP_TO_DATE = "up-to-date"
STATUS_PENDING = "pending"


@dataclass(frozen=True)
class PullResult:
    """What a pull did and why. ``to_json()`` gives the CLI's ``--json`` object."""

    status: str
    """``delta``, ``full``, ``up-to-date`` or ``pending``."""
    reference: str
    reason: str
    """Why this status (the fallback reason for ``full``)."""
    from_digest: str | None
    to_digest: str | None
    algorithm: str | None
    """The delta algorithm applied (``bsdiff+zstd``, ``tardiff``, ...), if any."""
    bytes_received: int
    """Bytes received from the registry and the Doras server during this pull."""
    full_size: int
    """What a full pull of the target costs: manifest + config + layers."""
    duration_s: float
    stored_digest: str | None = None
    """The digest of the manifest recorded in the layout (differs from ``to_digest``
    when a tar-diff result was stored as an uncompressed tar)."""
    verified: bool = True
    """False only for a tar-diff result accepted with ``allow_unverified``."""
    delta_size: int | None = None

    @property
    def updated(self) -> bool:
        return self.status in (STATUS_DELTA, STATUS_FULL)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Fallback(Exception):
    """Internal: the delta path cannot continue; do a full pull for ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class _Target:
    ref: Reference
    descriptor: Descriptor
    body: bytes
    document: dict[str, Any]
    parsed: ParsedManifest

    @property
    def layers(self) -> list[Descriptor]:
        return [Descriptor.from_json(x) for x in self.document.get("layers", [])]

    @property
    def config(self) -> Descriptor:
        return Descriptor.from_json(self.document["config"])

    @property
    def full_size(self) -> int:
        if "config" not in self.document:  # an image index: its platform manifest is not chosen yet
            return self.descriptor.size
        return self.descriptor.size + self.config.size + sum(layer.size for layer in self.layers)


def _stored_manifest(layout: OCILayout, image: ImageEntry) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(layout.read_blob(image.descriptor))
    return document


def _stands_for(image: ImageEntry) -> tuple[str, ...]:
    """The registry digests a stored image stands for: its manifest's, and the index it came from."""
    index = image.descriptor.annotations.get(ANNOTATION_SOURCE_INDEX)
    return (image.source_digest, index) if index else (image.source_digest,)


def edge_client_for(
    registry: DeltaRegistry, doras_url: str, registry_host: str | None = None
) -> EdgeClient:
    """An :class:`EdgeClient` of ``doras_url`` with the registry's settings.

    The registry's credentials for ``registry_host`` (basic credentials set on
    the client, or from docker config files) are passed on: the server reads
    the registry with them. Over plain ``http://`` only when the registry
    allows insecure auth; its TLS settings (``tls_verify`` False or a CA
    bundle) and transfer policy apply.
    """
    auth: BasicAuth | None = None
    credentials = registry.credentials_for(registry_host) if registry_host else None
    if credentials is None:
        basic = getattr(registry.auth, "_basic_auth", None)
        if basic:
            user, _sep, password = base64.b64decode(basic).decode().partition(":")
            credentials = (user, password)
    if credentials is not None:
        auth = BasicAuth(*credentials)
    plain = doras_url.startswith("http://")
    allow_http = plain and (auth is None or bool(registry.allow_insecure_auth))
    verify = getattr(registry, "_tls_verify", True)
    return EdgeClient(doras_url, allow_http=allow_http, auth=auth,
                      ca_file=verify if isinstance(verify, str) else None, insecure=verify is False,
                      policy=registry.policy)


def _holding(layout: OCILayout, target: Reference, digest: str) -> ImageEntry | None:
    """The newest image of ``target``'s repository that stands for the registry ``digest``, if any."""
    for image in reversed(layout.images()):
        if image.repository == target.name and digest in _stands_for(image):
            return image
    return None


def find_base(layout: OCILayout, target: Reference, from_ref: Reference | None) -> ImageEntry | None:
    """The layout's image to patch: ``from_ref`` if given, else the newest of the repository."""
    images = [image for image in layout.images() if image.repository == target.name]
    if from_ref is None:
        return images[-1] if images else None
    if not from_ref.same_repository(target):
        raise ValueError(f"--from {from_ref} is not in the repository of {target}")
    for image in reversed(images):
        if from_ref.digest and from_ref.digest in (*_stands_for(image), image.descriptor.digest):
            return image
        if not from_ref.digest and from_ref.tag and image.tag == from_ref.tag:
            return image
    return None


def pull_delta(
    registry: DeltaRegistry,
    target: str | Reference,
    oci_layout: str | Path | OCILayout,
    *,
    doras_url: str | None,
    from_ref: str | Reference | None = None,
    accepted_algorithms: Sequence[str] | None = None,
    wait: bool = True,
    timeout_s: float | None = None,
    on_timeout: str = STATUS_FULL,
    allow_unverified: bool = False,
    progress: Progress | None = None,
    max_size: int | None = None,
    budget: tuple[int, float] | None = None,
    edge_client: EdgeClient | None = None,
    lock_timeout_s: float = 300.0,
    platform: str | None = None,
) -> PullResult:
    """Update ``oci_layout`` to ``target``, by delta when possible. See the module docstring.

    ``doras_url`` None means no server: a verified full pull (or up to date).
    ``budget`` is ``(limit_bytes, period_s)``. ``platform`` (``os/arch[/variant]``) chooses
    from an image index target (default: this machine). ``on_timeout`` is what to do when
    ``timeout_s`` runs out while the server builds: ``"full"`` or ``"pending"``.
    """
    if on_timeout not in (STATUS_FULL, STATUS_PENDING):
        raise ValueError("on_timeout must be 'full' or 'pending'")
    started = time.monotonic()
    target_ref = Reference.parse(target) if isinstance(target, str) else target
    base_ref = Reference.parse(from_ref) if isinstance(from_ref, str) else from_ref
    layout = oci_layout if isinstance(oci_layout, OCILayout) else OCILayout.open(oci_layout)
    received_at_start = registry.bytes_received
    edge_received = [0]
    recorded = [False]
    ledger = DownloadBudget(layout.root, budget[0], budget[1]) if budget else None

    def result(status: str, reason: str, tgt: _Target | None, **extra: Any) -> PullResult:
        received = registry.bytes_received - received_at_start + edge_received[0]
        if ledger is not None and received:
            ledger.record(received)
        recorded[0] = True
        return PullResult(
            status=status,
            reference=str(target_ref),
            reason=reason,
            from_digest=extra.pop("from_digest", None),
            to_digest=extra.pop("to_digest", tgt.descriptor.digest if tgt else None),
            algorithm=extra.pop("algorithm", None),
            bytes_received=received,
            full_size=tgt.full_size if tgt else 0,
            duration_s=round(time.monotonic() - started, 3),
            **extra,
        )

    with layout.lock(timeout=lock_timeout_s):
        try:
            # A HEAD first: a device polling for updates pays no manifest body when up to date.
            resolved = registry.resolve(target_ref)
            base = find_base(layout, target_ref, base_ref)
            held = _holding(layout, target_ref, resolved.digest)
            if held is not None:
                if held.tag != target_ref.tag and target_ref.tag:
                    index = held.descriptor.annotations.get(ANNOTATION_SOURCE_INDEX)
                    layout.commit_image(held.descriptor, repository=target_ref.name, tag=target_ref.tag,
                                        source_digest=held.source_digest,
                                        annotations={ANNOTATION_SOURCE_INDEX: index} if index else None)
                return result(STATUS_UP_TO_DATE, "the layout already holds this image", None,
                              from_digest=held.source_digest, stored_digest=held.descriptor.digest,
                              to_digest=resolved.digest)
            parsed = registry.fetch_parsed(target_ref, expected=resolved)
            tgt = _Target(target_ref, parsed.descriptor, parsed.body, dict(parsed.document), parsed)
            if parsed.descriptor.media_type in INDEX_MEDIA_TYPES:
                reason = "the target is an image index; Doras deltas are for single-manifest artifacts"
                return _full(registry, layout, tgt, reason, ledger, max_size, result, base=base,
                             platform=platform)
            check_max_size(tgt.full_size, max_size, what=f"{target_ref}")
            if base is None:
                reason = f"no image of {target_ref.name} in the layout to patch"
                if base_ref is not None:
                    raise DorasOrasError(f"--from {base_ref}: no such image in {layout.root}")
                return _full(registry, layout, tgt, reason, ledger, max_size, result, base=None)
            if doras_url is None and edge_client is None:
                return _full(registry, layout, tgt, "no Doras server given", ledger, max_size, result, base=base)
            try:
                return _delta(registry, layout, tgt, base, doras_url, edge_client, accepted_algorithms,
                              wait, timeout_s, on_timeout, allow_unverified, ledger, progress, result,
                              edge_received)
            except _Fallback as fallback:
                log.warning("falling back to a full pull: %s", fallback.reason)
                return _full(registry, layout, tgt, fallback.reason, ledger, max_size, result, base=base)
        except BaseException:
            # what a failed pull received still counts against the budget
            if ledger is not None and not recorded[0]:
                ledger.record(registry.bytes_received - received_at_start + edge_received[0])
            raise


def _full(registry: DeltaRegistry, layout: OCILayout, tgt: _Target, reason: str,
          ledger: DownloadBudget | None, max_size: int | None,
          result: Callable[..., PullResult], *, base: ImageEntry | None,
          platform: str | None = None) -> PullResult:
    check_max_size(tgt.full_size, max_size, what=str(tgt.ref))
    if ledger is not None:
        ledger.check(tgt.full_size, what=f"a full pull of {tgt.ref}")
    pulled = registry.pull_full(tgt.ref, layout, parsed=tgt.parsed, platform=platform)
    return result(STATUS_FULL, reason, tgt, from_digest=base.source_digest if base else None,
                  stored_digest=pulled.manifest.digest)


def _count_bodies(client: EdgeClient, total: list[int]) -> Callable[..., None]:
    """Add the body size of every answer of the Doras server to ``total[0]``; returns the hook."""

    def hook(response: Any, *_args: Any, **_kwargs: Any) -> None:
        length = str(response.headers.get("Content-Length", ""))
        if length.isdigit():
            total[0] += int(length)

    client.session.hooks["response"].append(hook)
    return hook


def _patch_name(algorithm: DeltaAlgorithm) -> str:
    return _plan.TARDIFF if algorithm is DeltaAlgorithm.TARDIFF else _plan.BSDIFF


def _delta(registry: DeltaRegistry, layout: OCILayout, tgt: _Target, base: ImageEntry,
           doras_url: str | None, edge_client: EdgeClient | None,
           requested: Sequence[str] | None, wait: bool, timeout_s: float | None, on_timeout: str,
           allow_unverified: bool, ledger: DownloadBudget | None, progress: Progress | None,
           result: Callable[..., PullResult], edge_received: list[int]) -> PullResult:
    # -- the base, as stored
    base_manifest = _stored_manifest(layout, base)
    base_layers = [Descriptor.from_json(x) for x in base_manifest.get("layers", [])]
    target_layers = tgt.layers
    if len(base_layers) != 1 or len(target_layers) != 1:
        raise _Fallback("Doras deltas need single-layer artifacts "
                        f"(base has {len(base_layers)}, target {len(target_layers)} layers)")
    base_layer, target_layer = base_layers[0], target_layers[0]
    if not layout.has_blob(base_layer):
        raise _Fallback(f"the stored base layer {base_layer.digest} is missing or corrupt")
    planned = _plan.choose_accepted(base_is_registry_blob=not base.rewritten, target_layer=target_layer,
                                    allow_unverified=allow_unverified, requested=requested)
    if planned.mode is _plan.Mode.FULL:
        raise _Fallback(planned.reason)

    # -- ask the server
    from_image = tgt.ref.with_digest(base.source_digest)
    to_image = tgt.ref.with_digest(tgt.descriptor.digest)
    client = edge_client or edge_client_for(registry, doras_url or "", tgt.ref.registry)
    counter = _count_bodies(client, edge_received)
    try:
        if wait:
            answer = client.read_delta(from_image, to_image, planned.accepted, deadline_s=timeout_s)
        else:
            maybe, exists = client.read_delta_async(from_image, to_image, planned.accepted)
            if not exists or maybe is None:
                return result(STATUS_PENDING, "the Doras server is building the delta; ask again later",
                              tgt, from_digest=base.source_digest)
            answer = maybe
        check_response(answer, from_image, to_image)
        body, content_type = registry.fetch_manifest(answer.delta_image)
        delta_layer, algorithm = check_delta_manifest(body, content_type, answer, from_image)
    except BackoffExhausted as exc:
        if on_timeout == STATUS_PENDING:
            return result(STATUS_PENDING, f"the delta was not ready in time: {exc}", tgt,
                          from_digest=base.source_digest)
        raise _Fallback(f"the delta was not ready in time: {exc}") from exc
    except ImagesIdenticalError as exc:
        raise _Fallback(f"the server calls different digests identical: {exc}") from exc
    except (DorasServerError, TransportError, DocumentError, VerificationError, CodecError) as exc:
        raise _Fallback(f"delta unavailable: {exc}") from exc
    finally:
        with contextlib.suppress(ValueError):
            client.session.hooks["response"].remove(counter)
        if edge_client is None:
            client.close()
    patch = _patch_name(algorithm)
    compression = algorithm.compression.value
    if patch not in planned.accepted or (compression != "none" and compression not in planned.accepted):
        raise _Fallback(f"the server sent a {algorithm.value} delta, which was not asked for "
                        f"(accepted: {', '.join(planned.accepted)})")
    if ledger is not None:
        ledger.check(delta_layer.size + tgt.config.size, what=f"the delta for {tgt.ref}")

    # -- download, apply, verify
    expected = _plan.expected_result(patch, target_layer)
    if expected.digest is None and not allow_unverified:  # pragma: no cover - excluded by the plan
        raise _Fallback("the delta result could not be verified")
    temp = layout.temp_dir()
    delta_file = temp / f"delta-{delta_layer.hex}.tmp"
    output = temp / f"result-{delta_layer.hex}.tmp"
    try:
        try:
            _download(registry, answer.delta_image, delta_layer, delta_file, progress)
            with delta_file.open("rb") as patch_stream:
                digest, size = apply_delta(
                    algorithm, layout.blob_path(base_layer.digest), patch_stream, output,
                    expected_digest=expected.digest, expected_size=expected.size, tmp_dir=temp,
                )
        except (CodecError, VerificationError, TransportError) as exc:
            raise _Fallback(f"the delta could not be applied: {exc}") from exc
        if progress is not None:
            progress("apply", size, size)
        # -- store, then commit (index.json last)
        config = tgt.config
        _ensure_blob(registry, layout, tgt.ref, config)
        if expected.is_registry_blob:
            layout.ingest_file(target_layer, output)
            layout.ingest_bytes(tgt.descriptor, tgt.body)
            image = layout.commit_image(tgt.descriptor, repository=tgt.ref.name, tag=tgt.ref.tag,
                                        source_digest=tgt.descriptor.digest)
        else:
            stored = _plan.uncompressed_layer(target_layer, digest, size)
            layout.ingest_file(stored, output)
            image = layout.commit_rewritten(tgt.body, 0, stored, repository=tgt.ref.name,
                                            tag=tgt.ref.tag, source_digest=tgt.descriptor.digest)
    finally:
        for leftover in (delta_file, output):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
    verified = expected.digest is not None
    reason = "patched the stored image with a delta from the Doras server"
    if not verified:
        reason += " (tar-diff result NOT verified: the target layer has no content digest)"
    return result(STATUS_DELTA, reason, tgt, from_digest=base.source_digest, algorithm=algorithm.value,
                  stored_digest=image.descriptor.digest, verified=verified, delta_size=delta_layer.size)


def _ensure_blob(registry: DeltaRegistry, layout: OCILayout, ref: Reference, blob: Descriptor) -> None:
    if layout.has_blob(blob):
        return
    if blob.data is not None:
        layout.ingest_bytes(blob, blob.data)
        return
    with registry.open_blob(ref, blob) as stream:
        layout.ingest(blob, stream)


def _download(registry: DeltaRegistry, ref: Reference, blob: Descriptor, path: Path,
              progress: Progress | None) -> None:
    """Fetch ``blob`` into ``path``, verified (digest and size) while written."""
    done = 0
    with registry.open_blob(ref, blob) as stream, path.open("wb") as out:
        while chunk := stream.read(1 << 16):
            out.write(chunk)
            done += len(chunk)
            if progress is not None:
                progress("delta", done, blob.size)


__all__ = ["PullResult", "edge_client_for", "find_base", "pull_delta"]
