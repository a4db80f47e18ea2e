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

import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
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
from .registry import (
    ANNOTATION_SOURCE_INDEX,
    ANNOTATION_SOURCE_PLATFORM,
    host_platform,
    platform_matches,
)
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


def _serves(image: ImageEntry, digest: str, platform: str) -> bool:
    """Whether ``image`` is what a pull of the registry ``digest`` for ``platform`` stores.

    Its own manifest digest always is; the index it was chosen from only for the
    same platform (images stored before platforms were recorded count as matching).
    """
    if image.source_digest == digest:
        return True
    notes = image.descriptor.annotations
    if notes.get(ANNOTATION_SOURCE_INDEX) != digest:
        return False
    recorded = notes.get(ANNOTATION_SOURCE_PLATFORM)
    return recorded is None or platform_matches(recorded, platform)


def edge_client_for(registry: DeltaRegistry, doras_url: str, registry_host: str) -> EdgeClient:
    """An :class:`EdgeClient` of ``doras_url`` with the registry's settings.

    The registry's credentials for ``registry_host`` (basic credentials set on
    the client, or from docker config files: :meth:`DeltaRegistry.credentials_for`)
    are passed on: the server reads the registry with them. Over plain
    ``http://`` only when the registry allows insecure auth; its TLS settings
    (``tls_verify`` False or a CA bundle) and transfer policy apply.
    """
    credentials = registry.credentials_for(registry_host)
    auth = BasicAuth(*credentials) if credentials is not None else None
    plain = doras_url.startswith("http://")
    allow_http = plain and (auth is None or bool(registry.allow_insecure_auth))
    verify = getattr(registry, "_tls_verify", True)
    return EdgeClient(doras_url, allow_http=allow_http, auth=auth,
                      ca_file=verify if isinstance(verify, str) else None, insecure=verify is False,
                      policy=registry.policy)


def _holding(layout: OCILayout, target: Reference, digest: str, platform: str) -> ImageEntry | None:
    """The newest image of ``target``'s repository that a pull of ``digest`` (for ``platform``,
    when ``digest`` is an index) would store, if any."""
    for image in reversed(layout.images()):
        if image.repository == target.name and _serves(image, digest, platform):
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
    layout = oci_layout if isinstance(oci_layout, OCILayout) else OCILayout.open(oci_layout)
    run = _PullRun(
        registry=registry,
        layout=layout,
        target=Reference.parse(target) if isinstance(target, str) else target,
        doras_url=doras_url,
        edge_client=edge_client,
        requested=accepted_algorithms,
        wait=wait,
        timeout_s=timeout_s,
        on_timeout=on_timeout,
        allow_unverified=allow_unverified,
        progress=progress,
        max_size=max_size,
        ledger=DownloadBudget(layout.root, budget[0], budget[1]) if budget else None,
        platform=platform,
    )
    base_ref = Reference.parse(from_ref) if isinstance(from_ref, str) else from_ref
    with layout.lock(timeout=lock_timeout_s):
        return run.execute(base_ref)


@dataclass
class _PullRun:
    """One pull: its settings, what it received so far, and its steps."""

    registry: DeltaRegistry
    layout: OCILayout
    target: Reference
    doras_url: str | None
    edge_client: EdgeClient | None
    requested: Sequence[str] | None
    wait: bool
    timeout_s: float | None
    on_timeout: str
    allow_unverified: bool
    progress: Progress | None
    max_size: int | None
    ledger: DownloadBudget | None
    platform: str | None
    started: float = field(default_factory=time.monotonic)
    edge_received: list[int] = field(default_factory=lambda: [0])
    recorded: bool = False

    def __post_init__(self) -> None:
        self.received_at_start = self.registry.bytes_received

    @property
    def received(self) -> int:
        """Bytes received from the registry and the Doras server during this pull."""
        return self.registry.bytes_received - self.received_at_start + self.edge_received[0]

    def _record(self) -> None:
        if self.ledger is not None and not self.recorded and self.received:
            self.ledger.record(self.received)
        self.recorded = True

    def result(self, status: str, reason: str, tgt: _Target | None, **extra: Any) -> PullResult:
        """The final report (and the budget ledger's record of what was received)."""
        self._record()
        return PullResult(
            status=status,
            reference=str(self.target),
            reason=reason,
            from_digest=extra.pop("from_digest", None),
            to_digest=extra.pop("to_digest", tgt.descriptor.digest if tgt else None),
            algorithm=extra.pop("algorithm", None),
            bytes_received=self.received,
            full_size=tgt.full_size if tgt else 0,
            duration_s=round(time.monotonic() - self.started, 3),
            **extra,
        )

    def execute(self, base_ref: Reference | None) -> PullResult:
        """Decide and do (the caller holds the layout lock)."""
        try:
            return self._execute(base_ref)
        except BaseException:
            self._record()  # what a failed pull received still counts against the budget
            raise

    def _execute(self, base_ref: Reference | None) -> PullResult:
        target, layout, registry = self.target, self.layout, self.registry
        # A HEAD first: a device polling for updates pays no manifest body when up to date.
        resolved = registry.resolve(target)
        base = find_base(layout, target, base_ref)
        held = _holding(layout, target, resolved.digest, self.platform or host_platform())
        if held is not None:
            if held.tag != target.tag and target.tag:
                notes = {key: value for key, value in held.descriptor.annotations.items()
                         if key in (ANNOTATION_SOURCE_INDEX, ANNOTATION_SOURCE_PLATFORM)}
                layout.commit_image(held.descriptor, repository=target.name, tag=target.tag,
                                    source_digest=held.source_digest, annotations=notes or None)
            return self.result(STATUS_UP_TO_DATE, "the layout already holds this image", None,
                               from_digest=held.source_digest, stored_digest=held.descriptor.digest,
                               to_digest=resolved.digest)
        parsed = registry.fetch_parsed(target, expected=resolved)
        tgt = _Target(target, parsed.descriptor, parsed.body, dict(parsed.document), parsed)
        if parsed.descriptor.media_type in INDEX_MEDIA_TYPES:
            return self.full(tgt, "the target is an image index; Doras deltas are for single-manifest "
                             "artifacts", base=base)
        check_max_size(tgt.full_size, self.max_size, what=str(target))
        if base is None:
            if base_ref is not None:
                raise DorasOrasError(f"--from {base_ref}: no such image in {layout.root}")
            return self.full(tgt, f"no image of {target.name} in the layout to patch", base=None)
        if self.doras_url is None and self.edge_client is None:
            return self.full(tgt, "no Doras server given", base=base)
        try:
            return self.delta(tgt, base)
        except _Fallback as fallback:
            log.warning("falling back to a full pull: %s", fallback.reason)
            result = self.full(tgt, fallback.reason, base=base)
        if self._forget_if_lost(base):
            result = replace(result, reason=result.reason + f"; the damaged image {base.tag or base.source_digest} "
                             "(its layer was lost) was dropped from the layout's index")
        return result

    def _forget_if_lost(self, image: ImageEntry) -> bool:
        """Drop ``image`` from the index when a blob it needs is gone (found corrupt and removed)."""
        try:
            needed = self.layout.references(image.descriptor)
        except DorasOrasError:  # its manifest itself is gone or unreadable
            return self.layout.forget_image(image)
        if all(self.layout.blob_path(blob.digest).is_file() for blob in needed if blob.data is None):
            return False
        return self.layout.forget_image(image)

    def full(self, tgt: _Target, reason: str, *, base: ImageEntry | None) -> PullResult:
        """A verified full pull of the target."""
        check_max_size(tgt.full_size, self.max_size, what=str(tgt.ref))
        if self.ledger is not None:
            self.ledger.check(tgt.full_size, what=f"a full pull of {tgt.ref}")
        pulled = self.registry.pull_full(tgt.ref, self.layout, parsed=tgt.parsed, platform=self.platform)
        return self.result(STATUS_FULL, reason, tgt, from_digest=base.source_digest if base else None,
                           stored_digest=pulled.manifest.digest)

    def delta(self, tgt: _Target, base: ImageEntry) -> PullResult:
        """Patch ``base`` into the target; raise :class:`_Fallback` when a delta cannot be used."""
        base_layer, target_layer = self._single_layers(tgt, base)
        planned = _plan.choose_accepted(base_is_registry_blob=not base.rewritten, target_layer=target_layer,
                                        allow_unverified=self.allow_unverified, requested=self.requested)
        if planned.mode is _plan.Mode.FULL:
            raise _Fallback(planned.reason)
        from_image = tgt.ref.with_digest(base.source_digest)
        to_image = tgt.ref.with_digest(tgt.descriptor.digest)
        asked = self._ask(from_image, to_image, planned)
        if isinstance(asked, str):
            return self.result(STATUS_PENDING, asked, tgt, from_digest=base.source_digest)
        delta_ref, delta_layer, algorithm = asked
        if algorithm.patch.value not in planned.accepted or (
            algorithm.compression.value != "none" and algorithm.compression.value not in planned.accepted
        ):
            raise _Fallback(f"the server sent a {algorithm.value} delta, which was not asked for "
                            f"(accepted: {', '.join(planned.accepted)})")
        if self.ledger is not None:
            self.ledger.check(delta_layer.size + tgt.config.size, what=f"the delta for {tgt.ref}")
        expected = _plan.expected_result(algorithm.patch.value, target_layer)
        image = self._apply_and_commit(tgt, base_layer, target_layer, delta_ref, delta_layer, algorithm,
                                       expected)
        verified = expected.digest is not None
        reason = "patched the stored image with a delta from the Doras server"
        if not verified:
            reason += " (tar-diff result NOT verified: the target layer has no content digest)"
        return self.result(STATUS_DELTA, reason, tgt, from_digest=base.source_digest,
                           algorithm=algorithm.value, stored_digest=image.descriptor.digest,
                           verified=verified, delta_size=delta_layer.size)

    def _single_layers(self, tgt: _Target, base: ImageEntry) -> tuple[Descriptor, Descriptor]:
        base_layers = [Descriptor.from_json(x) for x in _stored_manifest(self.layout, base).get("layers", [])]
        target_layers = tgt.layers
        if len(base_layers) != 1 or len(target_layers) != 1:
            raise _Fallback("Doras deltas need single-layer artifacts "
                            f"(base has {len(base_layers)}, target {len(target_layers)} layers)")
        if not self._base_usable(base_layers[0]):
            raise _Fallback(f"the stored base layer {base_layers[0].digest} is missing or corrupt")
        return base_layers[0], target_layers[0]

    def _base_usable(self, layer: Descriptor) -> bool:
        """Whether the stored base layer can be patched.

        When the result will be verified against the target (always, unless
        ``allow_unverified``), a rotted base cannot slip through: the result
        would not match, and :meth:`_apply_and_commit` then checks the base to
        name the cause. So only its presence and size are checked here, which
        saves hashing the whole base on every pull. With ``allow_unverified``
        the base is hashed first.
        """
        if self.allow_unverified:
            return self.layout.has_blob(layer)
        try:
            return self.layout.blob_path(layer.digest).stat().st_size == layer.size
        except FileNotFoundError:
            return False

    def _ask(self, from_image: Reference, to_image: Reference, planned: _plan.DeltaPlan
             ) -> tuple[Reference, Descriptor, DeltaAlgorithm] | str:
        """Ask the server; the delta's reference, layer and algorithm, or why it is pending."""
        client = self.edge_client or edge_client_for(self.registry, self.doras_url or "", to_image.registry)
        counter = _count_bodies(client, self.edge_received)
        try:
            if self.wait:
                answer = client.read_delta(from_image, to_image, planned.accepted, deadline_s=self.timeout_s)
            else:
                maybe, exists = client.read_delta_async(from_image, to_image, planned.accepted)
                if not exists or maybe is None:
                    return "the Doras server is building the delta; ask again later"
                answer = maybe
            check_response(answer, from_image, to_image)
            body, content_type = self.registry.fetch_manifest(answer.delta_image)
            delta_layer, algorithm = check_delta_manifest(body, content_type, answer, from_image)
            return answer.delta_image, delta_layer, algorithm
        except BackoffExhausted as exc:
            if self.on_timeout == STATUS_PENDING:
                return f"the delta was not ready in time: {exc}"
            raise _Fallback(f"the delta was not ready in time: {exc}") from exc
        except ImagesIdenticalError as exc:
            raise _Fallback(f"the server calls different digests identical: {exc}") from exc
        except (DorasServerError, TransportError, DocumentError, VerificationError, CodecError) as exc:
            raise _Fallback(f"delta unavailable: {exc}") from exc
        finally:
            with contextlib.suppress(ValueError):
                client.session.hooks["response"].remove(counter)
            if self.edge_client is None:
                client.close()

    def _apply_and_commit(self, tgt: _Target, base_layer: Descriptor, target_layer: Descriptor,
                          delta_ref: Reference, delta_layer: Descriptor, algorithm: DeltaAlgorithm,
                          expected: _plan.Expected) -> ImageEntry:
        """Download the delta (resumable), apply it, verify, store the blobs, commit ``index.json``."""
        layout, registry = self.layout, self.registry
        partial = layout.partial_path(delta_layer)
        output = layout.temp_dir() / f"result-{delta_layer.hex}.tmp"
        keep_partial = False
        try:
            try:
                try:
                    delta_file = registry.download_to(delta_ref, delta_layer, partial,
                                                      on_progress=self._reporter("delta", delta_layer.size))
                except TransportError:
                    keep_partial = True  # a dropped or stalled link: the next run resumes it
                    raise
                with delta_file.open("rb") as patch_stream:
                    digest, size = apply_delta(
                        algorithm, layout.blob_path(base_layer.digest), patch_stream, output,
                        expected_digest=expected.digest, expected_size=expected.size,
                        tmp_dir=layout.temp_dir(),
                    )
            except (CodecError, VerificationError, TransportError) as exc:
                if not isinstance(exc, TransportError) and not layout.has_blob(base_layer):
                    raise _Fallback(f"the stored base layer {base_layer.digest} is missing or corrupt "
                                    f"(the delta did not give the target: {exc})") from exc
                raise _Fallback(f"the delta could not be applied: {exc}") from exc
            if self.progress is not None:
                self.progress("apply", size, size)
            registry.download_blob(tgt.ref, tgt.config, layout)
            # apply_delta hashed the result while writing it: no second pass over it
            if expected.is_registry_blob:
                layout.adopt_partial(target_layer, output)
                layout.ingest_bytes(tgt.descriptor, tgt.body)
                return layout.commit_image(tgt.descriptor, repository=tgt.ref.name, tag=tgt.ref.tag,
                                           source_digest=tgt.descriptor.digest)
            stored = _plan.uncompressed_layer(target_layer, digest, size)
            layout.adopt_partial(stored, output)
            return layout.commit_rewritten(tgt.body, 0, stored, repository=tgt.ref.name,
                                           tag=tgt.ref.tag, source_digest=tgt.descriptor.digest)
        finally:
            output.unlink(missing_ok=True)
            if not keep_partial:  # the delta is used or refused: its download is of no further use
                partial.unlink(missing_ok=True)
                partial.with_name(partial.name + ".meta").unlink(missing_ok=True)

    def _reporter(self, phase: str, total: int) -> Callable[[int], None] | None:
        progress = self.progress
        if progress is None:
            return None
        return lambda done: progress(phase, done, total)


def _count_bodies(client: EdgeClient, total: list[int]) -> Callable[..., None]:
    """Add the body size of every answer of the Doras server to ``total[0]``; returns the hook."""

    def hook(response: Any, *_args: Any, **_kwargs: Any) -> None:
        length = str(response.headers.get("Content-Length", ""))
        if length.isdigit():
            total[0] += int(length)

    client.session.hooks["response"].append(hook)
    return hook


__all__ = ["PullResult", "edge_client_for", "find_base", "pull_delta"]
