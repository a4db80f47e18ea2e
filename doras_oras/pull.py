"""The delta-aware pull: plan, execute, fall back, report.

:func:`pull_delta` updates an OCI image layout to a target image by
downloading only a delta from a Doras server when it can, and a verified full
pull when it cannot (or when no server is given). The layout is never left
invalid and the old image stays until the new one is committed
(``index.json`` is written last, under the layout's lock). Every decision is
reported in :class:`PullResult`, as a sentence (``reason``) and as a code
(``reason_code``, a :class:`~doras_oras.plan.ReasonCode`).

The steps (DESIGN.md §1), one forward walk
``pull → (registry fetch | edge conversation) → codecs → layout``:

1. fetch the target manifest in one ``GET``, conditional on the digest the layout's
   image of it stands for (``If-None-Match``: a ``304`` without a body means up to date;
   :meth:`RegistryClient.fetch_if_changed`); an image of the layout that stands for the
   digest received means up to date too;
   with ``verify``: the resolved digest's signature must verify now, before
   anything else is asked for (docs/trust.md); every later step works on
   that digest, the fallbacks too;
2. the manifest received is verified and schema-checked; its own digest is the one
   verified and installed; check the limits (``max_size``, download budget) before downloading;
3. find the base: the newest image of the same repository in the layout, or
   the one ``from_ref`` names; none → full pull;
4. check the stored base layer (a missing base means a full pull);
5. choose the algorithms that can be applied *and verified* (:mod:`.plan`);
6. the Doras conversation (:meth:`EdgeClient.fetch_delta`): ask (polling with
   backoff, or once with ``wait=False``), check the answer and the delta manifest;
7. download the delta blob into the layout's ``ingest/`` (verified, resumable);
8. apply it to the base layer into a blob writer of the layout (verified), store;
9. with ``output_dir``, write the image's files there (all or nothing), then commit
   ``index.json``: a failure to write the files leaves the layout as it was, so the
   next run does the update again (and says so).

The base may be an entry that another tool wrote (``oras copy --to-oci-layout``,
``skopeo copy ... oci:DIR:TAG``): it is recognised by its ``ref.name``
(:meth:`~doras_oras.layout.ImageEntry.belongs_to`).

Anything that makes the delta unusable (server down, 4xx/5xx, timeout,
corrupt or unverifiable delta, a delta of a kind that was not asked for)
falls back to a verified full pull, and the result says why.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import plan as _plan
from . import schemas
from .algorithms import Compression, check_algorithm_names
from .budget import DownloadBudget, check_free_space, check_max_size
from .descriptor import INDEX_MEDIA_TYPES, OCI_LAYER_TAR, Descriptor
from .errors import (
    BackoffExhausted,
    CodecError,
    DiskSpaceError,
    DocumentError,
    DorasOrasError,
    DorasServerError,
    Fix,
    ImageNotFoundError,
    ImagesIdenticalError,
    IncompatibleArtifactsError,
    InsecureTransportError,
    InvalidArgumentError,
    LimitExceededError,
    TransportError,
    TrustError,
    VerificationError,
)
from .full import Progress, pull_full
from .layout import (
    ANNOTATION_PULLED_BY,
    ANNOTATION_SOURCE_INDEX,
    ANNOTATION_SOURCE_PLATFORM,
    Attachment,
    ImageEntry,
    OCILayout,
)
from .plan import ReasonCode
from .platforms import host_platform, parse_platform, platform_matches
from .reference import Reference
from .registry_client import RegistryClient, SupportsRegistryClient, registry_client_of
from .schemas import ParsedManifest
from .urls import safe_url

if TYPE_CHECKING:  # the codecs, the edge API and extraction load when a pull needs them (an up-to-date
    # poll needs none of them: tests/test_startup.py)
    from .edgeapi import Delta, EdgeClient
    from .trust import Requirement, TrustPolicy, TrustResult, Verification

log = logging.getLogger(__name__)

__all__ = [
    "STATUS_DELTA",
    "STATUS_FULL",
    "STATUS_PENDING",
    "STATUS_UP_TO_DATE",
    "Progress",
    "PullResult",
    "ReasonCode",
    "edge_client_for",
    "find_base",
    "pull_delta",
]

STATUS_DELTA = "delta"
STATUS_FULL = "full"
STATUS_UP_TO_DATE = "up-to-date"
STATUS_PENDING = "pending"

Waiting = Callable[[int, float], None]
"""``on_wait(requests_sent, seconds_waited)``: called while the server builds the delta."""


@dataclass(frozen=True)
class PullResult:
    """What a pull did and why. ``to_json()`` gives the CLI's ``--json`` object."""

    status: str
    """``delta``, ``full``, ``up-to-date`` or ``pending``."""
    reference: str
    reason: str
    """Why this status, in words (the fallback reason for ``full``)."""
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
    when a tar-diff result was stored: a manifest rewritten for its layer)."""
    verified: bool = True
    """False only for a tar-diff result accepted with ``allow_unverified``."""
    delta_size: int | None = None
    blobs_fetched: int | None = None
    """For a full pull: blobs downloaded (None otherwise)."""
    blobs_reused: int | None = None
    """For a full pull: blobs already in the layout, not downloaded."""
    reason_code: str = ReasonCode.PATCHED.value
    """Why this status, as a :class:`~doras_oras.plan.ReasonCode` value (stable, for scripts)."""
    trust: dict[str, Any] | None = None
    """With ``verify``: the signature check (``TrustResult.to_json()``: which key verified, which
    signature manifest, where it was found, ``origin`` registry or layout); ``None`` without."""
    output: list[str] | None = None
    """With ``output_dir``: the files and directories written there (None without)."""
    fix: Fix | None = None
    """For a fallback that a setting would have avoided (a TLS or credentials problem with the
    Doras server, ...): the :class:`~doras_oras.errors.Fix`; ``fix.hint`` words it. Its value in JSON."""

    @property
    def updated(self) -> bool:
        return self.status in (STATUS_DELTA, STATUS_FULL)

    @property
    def fallback(self) -> str | None:
        """The reason code of a full pull (why no delta was used); None otherwise."""
        return self.reason_code if self.status == STATUS_FULL else None

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["fix"] = self.fix.value if self.fix is not None else None
        return document


class _Fallback(Exception):
    """Internal: the delta path cannot continue; do a full pull for ``reason`` (``fix`` would avoid it)."""

    def __init__(self, code: ReasonCode, reason: str, fix: Fix | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.fix = fix


def _detail(exc: BaseException) -> str:
    """What went wrong, without the library's wording of the fix (that travels as ``PullResult.fix``)."""
    return exc.detail if isinstance(exc, DorasOrasError) else str(exc)


def _fix(exc: BaseException) -> Fix | None:
    return exc.fix if isinstance(exc, DorasOrasError) else None


class _Pending(Exception):
    """Internal: the delta is not ready and the caller asked to be told so."""

    def __init__(self, code: ReasonCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class _Target:
    ref: Reference
    parsed: ParsedManifest

    @property
    def descriptor(self) -> Descriptor:
        return self.parsed.descriptor

    @property
    def body(self) -> bytes:
        return self.parsed.body

    @property
    def document(self) -> Any:
        return self.parsed.document

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


def _serves(image: ImageEntry, digest: str, platform: str) -> bool:
    """Whether ``image`` is what a pull of the registry ``digest`` for ``platform`` stores.

    Its own manifest digest always is; the index it was chosen from only for the
    same platform (images stored before platforms were recorded count as matching).
    """
    if image.source_digest == digest:
        return True
    if image.source_index != digest:
        return False
    recorded = image.descriptor.annotations.get(ANNOTATION_SOURCE_PLATFORM)
    return recorded is None or platform_matches(recorded, platform)


def edge_client_for(registry: RegistryClient | SupportsRegistryClient, doras_url: str,
                    registry_host: str) -> EdgeClient:
    """An :class:`EdgeClient` of ``doras_url`` with the registry's settings.

    The registry's credentials for ``registry_host`` (basic credentials set on
    the client, or from docker config files: :meth:`RegistryClient.credentials_for`)
    are passed on: the server reads the registry with them. Over plain
    ``http://`` only when the registry allows insecure auth; its TLS settings
    (``tls_verify`` False or a CA bundle) and transfer policy apply.
    """
    from .edgeapi import BasicAuth, EdgeClient

    client = registry_client_of(registry)
    credentials = client.credentials_for(registry_host)
    auth = BasicAuth(*credentials) if credentials is not None else None
    plain = doras_url.startswith("http://")
    if plain and auth is not None and not client.allow_insecure_auth:
        raise InsecureTransportError(
            f"the credentials for {registry_host} would go to the Doras server {safe_url(doras_url)} over plain "
            "HTTP; refused", fix=Fix.INSECURE_AUTH)
    verify = client.tls_verify
    return EdgeClient(doras_url, plain, auth, ca_file=verify if isinstance(verify, str) else None,
                      insecure=verify is False, policy=client.policy)


def _holding(layout: OCILayout, target: Reference, digest: str, platform: str) -> ImageEntry | None:
    """The newest image of ``target``'s repository that a pull of ``digest`` (for ``platform``,
    when ``digest`` is an index) would store, if any."""
    for image in reversed(layout.images_of(target.name)):
        if _serves(image, digest, platform):
            return image
    return None


def _installed(layout: OCILayout, target: Reference, platform: str) -> str | None:
    """The registry digest ``target`` named when the layout's image of it was pulled (None: none held).

    The newest image of the repository with the target's tag (else the newest of the repository):
    the index it was chosen from when that was for ``platform``, else its manifest. What the
    conditional GET sends; :func:`_holding` finds that image by it.
    """
    if target.digest:
        return target.digest if _holding(layout, target, target.digest, platform) is not None else None
    images = layout.images_of(target.name)
    tagged = [image for image in images if image.tag == target.tag] or images
    if not tagged:
        return None
    image = tagged[-1]
    index = image.source_index
    return index if index is not None and _serves(image, index, platform) else image.source_digest


def find_base(layout: OCILayout, target: Reference, from_ref: Reference | None) -> ImageEntry | None:
    """The layout's image to patch: ``from_ref`` if given, else the newest of the repository.

    Images doras-oras stored are preferred; else an entry another tool wrote that belongs to
    the repository (:meth:`OCILayout.images_of`).
    """
    images = layout.images_of(target.name)
    if from_ref is None:
        return images[-1] if images else None
    if not from_ref.same_repository(target):
        raise InvalidArgumentError(f"--from {from_ref} is not in the repository of {target}")
    for image in reversed(images):
        if from_ref.digest and from_ref.digest in (*image.stands_for, image.descriptor.digest):
            return image
        if not from_ref.digest and from_ref.tag and image.tag == from_ref.tag:
            return image
    return None


def pull_delta(
    registry: RegistryClient | SupportsRegistryClient,
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
    on_wait: Waiting | None = None,
    max_size: int | None = None,
    budget: tuple[int, float] | None = None,
    edge_client: EdgeClient | None = None,
    lock_timeout_s: float = 300.0,
    platform: str | None = None,
    verify: Verification | Requirement | TrustPolicy | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    allow_downgrade: bool = False,
) -> PullResult:
    """Update ``oci_layout`` to ``target``, by delta when possible. See the module docstring.

    ``doras_url`` None (and no ``edge_client``) means no server: a verified full pull,
    or up to date. ``budget`` is ``(limit_bytes, period_s)``. ``platform``
    (``os/arch[/variant]``) chooses from an image index target (default: this machine).
    ``on_timeout`` is what to do when ``timeout_s`` runs out while the server builds:
    ``"full"`` or ``"pending"``. ``from_ref``: a tag (``v1``), a digest (``sha256:...``) or a
    reference of the target's repository. ``output_dir``: also write the image's files there,
    as ``oras pull -o`` does, before ``index.json`` is committed (also when up to date;
    not when pending). Bad arguments raise :class:`InvalidArgumentError` before anything
    is sent. ``verify`` (a :class:`~doras_oras.trust.Verification`, or keys as a
    :class:`~doras_oras.trust.Requirement`, or a :class:`~doras_oras.trust.TrustPolicy`):
    refuse the target with a :class:`~doras_oras.errors.TrustError` unless its signature
    verifies, before a delta is asked for or a blob fetched (docs/trust.md); a verified target
    older than the installed image of its repository is refused too (a rollback, unless
    ``allow_downgrade``), and so is one older than ``Verification.max_age_s``. A layout this
    call created is removed again when the pull fails and leaves nothing in it (no partial
    download to resume, no budget record). A missing or corrupt ``index.json`` is rebuilt
    from the blobs first (:meth:`OCILayout.recover_index`: the old file is kept as
    ``index.json.corrupt``, the recovered images are tagged ``recovered-<hex12>``).
    """
    client = registry_client_of(registry)
    if on_timeout not in (STATUS_FULL, STATUS_PENDING):
        raise InvalidArgumentError("on_timeout must be 'full' or 'pending'")
    if platform is not None:
        parse_platform(platform)
    requested = check_algorithm_names(accepted_algorithms) if accepted_algorithms is not None else None
    target_ref = Reference.parse(target) if isinstance(target, str) else target
    base_ref = Reference.parse_relative(from_ref, target_ref) if isinstance(from_ref, str) else from_ref
    if base_ref is not None and not base_ref.same_repository(target_ref):
        raise InvalidArgumentError(f"--from {base_ref} is not in the repository of {target_ref}")
    verification = _verification(verify, target_ref.tag)
    # A layout this call creates (None: one that exists, or the caller's object) is removed
    # again if the pull fails: True when the directory is new too, False when it was empty.
    created: bool | None = None
    if not isinstance(oci_layout, OCILayout):
        root = Path(oci_layout)
        if not root.exists():
            created = True
        elif root.is_dir() and not any(root.iterdir()):
            created = False
    layout = oci_layout if isinstance(oci_layout, OCILayout) else OCILayout.open(oci_layout, require_index=False)
    run = _PullRun(
        registry=client,
        layout=layout,
        target=target_ref,
        doras_url=doras_url,
        edge_client=edge_client,
        requested=requested,
        wait=wait,
        timeout_s=timeout_s,
        on_timeout=on_timeout,
        allow_unverified=allow_unverified,
        progress=progress,
        on_wait=on_wait,
        max_size=max_size,
        ledger=DownloadBudget(layout.root, budget[0], budget[1]) if budget else None,
        platform=platform,
        verification=verification,
        output_dir=Path(output_dir) if output_dir is not None else None,
        allow_downgrade=allow_downgrade,
    )
    try:
        with layout.lock(timeout=lock_timeout_s), client.pull_deadline():
            layout.recover_index()  # a lost or corrupt index.json is rebuilt (kept as index.json.corrupt)
            return run.execute(base_ref)
    except BaseException:
        if created is not None:
            layout.remove_if_unused(remove_root=created)
        raise


def _apply_needs(root: Path, delta: Delta, base_layer: Descriptor, target_layer: Descriptor,
                 config: Descriptor) -> list[tuple[Path, int]]:
    """What a delta pull writes into the layout, at least: the delta blob, its result (the target
    layer's size: a tar-diff result, the uncompressed tar, is larger), the config, and the scratch
    of the apply (a compressed bsdiff patch spooled decompressed, a compressed tar-diff base spooled
    as a tar: at least their compressed sizes)."""
    needs = [(root, delta.layer.size), (root, target_layer.size), (root, config.size)]
    if delta.algorithm.compression is not Compression.NONE:
        needs.append((root, delta.layer.size))  # bsdiff+zstd, bsdiff+gzip: the patch is spooled
    if not delta.algorithm.is_bsdiff and base_layer.media_type != OCI_LAYER_TAR:
        needs.append((root, base_layer.size))
    return needs


def _verification(verify: Verification | Requirement | TrustPolicy | None, tag: str | None) -> Verification | None:
    """The one shape of ``verify``, bound to the tag being pulled (``{tag}`` in required annotations)."""
    if verify is None:
        return None
    from .trust import Verification  # cryptography loads only for a verified pull

    return replace(Verification.of(verify), tag=tag)


@dataclass
class _PullRun:
    """One pull: its settings, what it received so far, and its steps."""

    registry: RegistryClient
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
    on_wait: Waiting | None
    max_size: int | None
    ledger: DownloadBudget | None
    platform: str | None
    verification: Verification | None = None
    output_dir: Path | None = None
    written: list[str] | None = None
    started: float = field(default_factory=time.monotonic)
    edge_received: int = 0
    recorded: bool = False
    trust: TrustResult | None = None
    verified: str | None = None
    """The digest whose signature verified: the only one this pull may install."""
    keep: list[Attachment] = field(default_factory=list)
    """The signature manifests to commit beside the target."""
    allow_downgrade: bool = False
    notes: dict[str, str] = field(default_factory=dict)
    """The signed order values to record on the target's entry (``io.doras-oras.signed.*``)."""

    def __post_init__(self) -> None:
        self.received_at_start = self.registry.bytes_received

    @property
    def received(self) -> int:
        """Bytes received from the registry and the Doras server during this pull."""
        return self.registry.bytes_received - self.received_at_start + self.edge_received

    def _record(self) -> None:
        if self.ledger is not None and not self.recorded and self.received:
            self.ledger.record(self.received)
        self.recorded = True

    def result(self, status: str, code: ReasonCode, reason: str, tgt: _Target | None, **extra: Any) -> PullResult:
        """The final report (and the budget ledger's record of what was received)."""
        self._record()
        return PullResult(
            status=status,
            reference=str(self.target),
            reason=reason,
            reason_code=code.value,
            from_digest=extra.pop("from_digest", None),
            to_digest=extra.pop("to_digest", tgt.descriptor.digest if tgt else None),
            algorithm=extra.pop("algorithm", None),
            bytes_received=self.received,
            full_size=tgt.full_size if tgt else 0,
            duration_s=round(time.monotonic() - self.started, 3),
            trust=self.trust.to_json() if self.trust is not None else None,
            output=self.written,
            **extra,
        )

    def before_commit(self, manifest: Descriptor) -> None:
        """Write the files of the stored ``manifest`` to ``output_dir`` (all or nothing), if asked."""
        if self.output_dir is not None:
            from .extract import extract_image

            self.written = [str(path) for path in extract_image(self.layout, manifest, self.output_dir,
                                                                max_bytes=self.max_size)]

    def check_space(self, tgt: _Target, layout_needs: list[tuple[Path, int]], *, what: str) -> None:
        """:class:`DiskSpaceError` before the first blob byte when ``layout_needs`` and the
        files for ``output_dir`` do not fit (an index target's files are not known yet)."""
        needs = list(layout_needs)
        if self.output_dir is not None and "config" in tgt.document:
            from .extract import output_needs

            needs += output_needs(tgt.layers, self.output_dir)
        check_free_space(needs, what=what)

    def execute(self, base_ref: Reference | None) -> PullResult:
        """Decide and do (the caller holds the layout lock)."""
        try:
            return self._execute(base_ref)
        except BaseException:
            self._record()  # what a failed pull received still counts against the budget
            raise

    def _execute(self, base_ref: Reference | None) -> PullResult:
        target, layout, registry = self.target, self.layout, self.registry
        platform = self.platform or host_platform()
        # One GET, conditional on what the layout holds: a device polling for updates gets a 304, no body.
        installed = _installed(layout, target, platform)
        if installed is None:  # a first pull: a manifest will come; an up-to-date poll needs no validator
            schemas.warm_up()  # compile the validators while the request travels
        fetched = registry.fetch_if_changed(target, installed)  # None: the target is still `installed`
        digest = fetched.descriptor.digest if fetched is not None else installed
        base = find_base(layout, target, base_ref)
        held = _holding(layout, target, digest, platform) if digest is not None else None
        if held is not None and digest is not None:
            attachments = self.verify_held(held, digest, fetched)
            self.before_commit(held.descriptor)
            unrecorded = any(held.descriptor.annotations.get(k) != v for k, v in self.notes.items())
            if (held.tag != target.tag and target.tag) or attachments or unrecorded:
                notes = {key: value for key, value in held.descriptor.annotations.items()
                         if key in (ANNOTATION_SOURCE_INDEX, ANNOTATION_SOURCE_PLATFORM, ANNOTATION_PULLED_BY)}
                notes.update(self.notes)
                layout.commit_image(held.descriptor, repository=target.name, tag=target.tag or held.tag,
                                    source_digest=held.source_digest, annotations=notes or None,
                                    attachments=attachments)
            return self.result(STATUS_UP_TO_DATE, ReasonCode.UP_TO_DATE, "the layout already holds this image",
                               None, from_digest=held.source_digest, stored_digest=held.descriptor.digest,
                               to_digest=digest)
        if fetched is None:  # not reached: `installed` names an image of the layout
            fetched = registry.fetch_parsed(target)
        tgt = _Target(target, fetched)  # the body's own digest is what is verified and installed
        self.verify(tgt.descriptor.digest)  # a TrustError here: no delta asked, no blob fetched, nothing written
        self.go_forward(tgt.body, tgt.descriptor.digest, None)  # a rollback or stale target: refused
        self.keep = self.attachments(tgt)  # the verified signatures, committed with the target
        if tgt.descriptor.media_type in INDEX_MEDIA_TYPES:
            return self.full(tgt, ReasonCode.INDEX_TARGET, "the target is an image index; Doras deltas are "
                             "for single-manifest artifacts", base=base)
        check_max_size(tgt.full_size, self.max_size, what=str(target))
        if base_ref is not None and base is None:
            raise ImageNotFoundError(f"--from {base_ref}: no such image in {layout.root}")
        if base is None:
            return self.full(tgt, ReasonCode.NO_BASE, f"no image of {target.name} in the layout to patch",
                             base=None)
        if self.doras_url is None and self.edge_client is None:
            return self.full(tgt, ReasonCode.NO_SERVER, "no Doras server given", base=base)
        try:
            return self.delta(tgt, base)
        except _Pending as pending:
            return self.result(STATUS_PENDING, pending.code, pending.reason, tgt, from_digest=base.source_digest)
        except _Fallback as fallback:
            log.warning("falling back to a full pull: %s", fallback.reason)
            result = self.full(tgt, fallback.code, fallback.reason, base=base, fix=fallback.fix)
        if self._forget_if_lost(base):
            result = replace(result, reason=result.reason + f"; the damaged image {base.tag or base.source_digest} "
                             "(its layer was lost) was dropped from the layout's index")
        return result

    def verify(self, digest: str) -> None:
        """With ``verify``: refuse ``digest`` unless its signature verifies in the registry (:class:`TrustError`).

        A transport error while reading signatures propagates too: the pull fails, it never falls back.
        """
        if self.verification is None:
            return
        from .signatures import verify_in_registry  # cryptography loads only for a verified pull

        self.trust = verify_in_registry(self.registry, self.target.with_digest(digest), self.verification)
        self.verified = digest

    def go_forward(self, body: bytes, digest: str, held: ImageEntry | None) -> None:
        """With ``verify``: the target (``body``, the bytes of the signed ``digest``; or the layout's
        ``held`` image) must not be older than the installed image, nor stale (docs/trust.md)."""
        if self.verification is None or self.trust is None:
            return
        from .signatures import check_forward, standing_of, target_standing

        standing = standing_of(self.layout, held) if held is not None else target_standing(self.trust, body, digest)
        self.trust, self.notes = check_forward(self.layout, self.target, self.trust, self.verification, standing,
                                               allow_downgrade=self.allow_downgrade)

    def verify_held(self, held: ImageEntry, digest: str, fetched: ParsedManifest | None) -> list[Attachment]:
        """Up to date, with ``verify``: the stored copy of the signature is checked again (no request).

        When the layout keeps none that passes (the image was stored before
        verification was asked for, or the keys changed), the registry's is
        checked and returned, to be kept beside the image.
        """
        if self.verification is None:
            return []
        from .signatures import (  # cryptography loads only for a verified pull
            attachments_of,
            verify_in_layout,
        )

        try:
            self.trust = verify_in_layout(self.layout, self.target.with_digest(digest), self.verification)
            self.verified = digest
            self.go_forward(b"", digest, held)
            return []
        except TrustError as exc:
            if self.trust is not None:  # the signature passed; the order or freshness did not
                raise
            log.info("the layout's copy of the signature does not pass (%s); checking the registry's", exc)
        self.verify(digest)
        assert self.trust is not None
        self.go_forward(b"", digest, held)
        signed = None if digest == held.descriptor.digest else (  # an index, a rewritten original
            fetched or self.registry.fetch_parsed(self.target.with_digest(digest))).body
        return attachments_of(self.trust, signed)

    def attachments(self, tgt: _Target) -> list[Attachment]:
        """The verified signature manifests to commit beside ``tgt``; ``tgt`` must be the verified digest."""
        if self.verification is None or self.trust is None:
            return []
        if tgt.descriptor.digest != self.verified:
            raise VerificationError(f"{tgt.ref}: about to install {tgt.descriptor.digest}, but "
                                    f"{self.verified} is the digest that was verified")
        from .signatures import attachments_of

        return attachments_of(self.trust, tgt.body)

    def _forget_if_lost(self, image: ImageEntry) -> bool:
        """Drop ``image`` from the index when a blob it needs is gone (found corrupt and removed)."""
        try:
            needed = self.layout.references(image.descriptor)
        except DorasOrasError:  # its manifest itself is gone or unreadable
            return self.layout.forget_image(image)
        if all(self.layout.blob_path(blob.digest).is_file() for blob in needed if blob.data is None):
            return False
        return self.layout.forget_image(image)

    def full(self, tgt: _Target, code: ReasonCode, reason: str, *, base: ImageEntry | None,
             fix: Fix | None = None) -> PullResult:
        """A verified full pull of the target."""
        check_max_size(tgt.full_size, self.max_size, what=str(tgt.ref))
        if self.ledger is not None:
            self.ledger.check(tgt.full_size, what=f"a full pull of {tgt.ref}")
        if "config" in tgt.document:
            missing = [blob for blob in (tgt.descriptor, tgt.config, *tgt.layers)
                       if not self.layout.blob_present(blob)]
            self.check_space(tgt, [(self.layout.root, blob.size) for blob in missing],
                             what=f"a full pull of {tgt.ref}")
        pulled = pull_full(self.registry, tgt.ref, self.layout, parsed=tgt.parsed, platform=self.platform,
                           progress=self.progress, attachments=self.keep, before_commit=self.before_commit,
                           annotations=self.notes)
        return self.result(STATUS_FULL, code, reason, tgt, from_digest=base.source_digest if base else None,
                           stored_digest=pulled.manifest.digest, blobs_fetched=pulled.blobs_fetched,
                           blobs_reused=pulled.blobs_reused, fix=fix)

    def delta(self, tgt: _Target, base: ImageEntry) -> PullResult:
        """Patch ``base`` into the target; :class:`_Fallback` when a delta cannot be used."""
        base_layer, target_layer = self._single_layers(tgt, base)
        planned = _plan.choose_accepted(base_is_registry_blob=not base.rewritten, target_layer=target_layer,
                                        allow_unverified=self.allow_unverified, requested=self.requested)
        if planned.mode is _plan.Mode.FULL:
            raise _Fallback(planned.code, planned.reason)
        from_image = tgt.ref.with_digest(base.source_digest)
        to_image = tgt.ref.with_digest(tgt.descriptor.digest)
        delta = self._ask(from_image, to_image, planned)
        if not delta.algorithm.accepted_by(planned.accepted):
            raise _Fallback(ReasonCode.UNEXPECTED_ALGORITHM,
                            f"the server sent a {delta.algorithm.value} delta, which was not asked for "
                            f"(accepted: {', '.join(planned.accepted)})")
        if self.ledger is not None:
            self.ledger.check(delta.layer.size + tgt.config.size, what=f"the delta for {tgt.ref}")
        expected = _plan.expected_result(delta.algorithm.patch.value, target_layer)
        try:  # a full pull may fit where the delta, its result and its scratch do not
            self.check_space(tgt, _apply_needs(self.layout.root, delta, base_layer, target_layer, tgt.config),
                             what=f"the delta for {tgt.ref}")
        except DiskSpaceError as exc:
            raise _Fallback(ReasonCode.DELTA_NO_SPACE, f"no room for the delta: {_detail(exc)}", _fix(exc)) from exc
        image = self._apply_and_commit(tgt, base_layer, target_layer, delta, expected)
        verified = expected.digest is not None
        reason = "patched the stored image with a delta from the Doras server"
        if not verified:
            reason += " (tar-diff result NOT verified: the target layer has no content digest)"
        return self.result(STATUS_DELTA, ReasonCode.PATCHED, reason, tgt, from_digest=base.source_digest,
                           algorithm=delta.algorithm.value, stored_digest=image.descriptor.digest,
                           verified=verified, delta_size=delta.layer.size)

    def _single_layers(self, tgt: _Target, base: ImageEntry) -> tuple[Descriptor, Descriptor]:
        stored: dict[str, Any] = json.loads(self.layout.read_blob(base.descriptor))
        base_layers = [Descriptor.from_json(x) for x in stored.get("layers", [])]
        target_layers = tgt.layers
        if len(base_layers) != 1 or len(target_layers) != 1:
            raise _Fallback(ReasonCode.MULTI_LAYER, "Doras deltas need single-layer artifacts "
                            f"(base has {len(base_layers)}, target {len(target_layers)} layers)")
        if not self._base_usable(base_layers[0]):
            raise _Fallback(ReasonCode.BASE_MISSING,
                            f"the stored base layer {base_layers[0].digest} is missing or corrupt")
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
        return self.layout.blob_present(layer)

    def _ask(self, from_image: Reference, to_image: Reference, planned: _plan.DeltaPlan) -> Delta:
        """The Doras conversation: the checked delta, or :class:`_Pending` / :class:`_Fallback`."""
        client = self.edge_client or edge_client_for(self.registry, self.doras_url or "", to_image.registry)
        before = client.bytes_received
        try:
            delta = client.fetch_delta(from_image, to_image, planned.accepted, self.registry, wait=self.wait,
                                       deadline_s=self.timeout_s, on_wait=self.on_wait)
            if delta is None:
                raise _Pending(ReasonCode.BUILDING, "the Doras server is building the delta; ask again later")
            return delta
        except BackoffExhausted as exc:
            reason = f"the delta was not ready in time: {_detail(exc)}"
            if self.on_timeout == STATUS_PENDING:
                raise _Pending(ReasonCode.DELTA_TIMEOUT, reason) from exc
            raise _Fallback(ReasonCode.DELTA_TIMEOUT, reason) from exc
        except ImagesIdenticalError as exc:
            raise _Fallback(ReasonCode.SERVER_IDENTICAL,
                            f"the server calls different digests identical: {_detail(exc)}") from exc
        except IncompatibleArtifactsError as exc:
            raise _Fallback(ReasonCode.INCOMPATIBLE, f"delta unavailable: {_detail(exc)}", _fix(exc)) from exc
        except DorasServerError as exc:
            raise _Fallback(ReasonCode.SERVER_ERROR, f"delta unavailable: {_detail(exc)}", _fix(exc)) from exc
        except TransportError as exc:
            raise _Fallback(ReasonCode.SERVER_UNREACHABLE, f"delta unavailable: {_detail(exc)}", _fix(exc)) from exc
        except LimitExceededError as exc:
            raise _Fallback(ReasonCode.ANSWER_TOO_LARGE, f"delta unavailable: {_detail(exc)}") from exc
        except (DocumentError, VerificationError, CodecError) as exc:
            raise _Fallback(ReasonCode.BAD_DELTA, f"delta unavailable: {_detail(exc)}", _fix(exc)) from exc
        finally:
            self.edge_received += client.bytes_received - before
            if self.edge_client is None:
                client.close()

    def _apply_and_commit(self, tgt: _Target, base_layer: Descriptor, target_layer: Descriptor,
                          delta: Delta, expected: _plan.Expected) -> ImageEntry:
        """Download the delta (resumable), apply it into a blob writer (verified), store, commit."""
        from .codecs import apply_delta

        layout, registry = self.layout, self.registry
        keep_partial = False
        with layout.partial_writer(delta.layer, what="delta") as download:
            try:
                try:
                    registry.download(delta.manifest_ref, delta.layer, download,
                                      on_progress=self._reporter("delta", delta.layer.size))
                except (TransportError, KeyboardInterrupt):
                    keep_partial = True  # a dropped or stalled link, Ctrl-C, SIGTERM: the next run resumes it
                    raise
                with layout.temp_writer(digest=expected.digest, size=expected.size, what="delta output") as out, \
                        download.path.open("rb") as patch, \
                        layout.blob_path(base_layer.digest).open("rb") as base:
                    apply_delta(delta.algorithm, base, patch, out, expected_size=expected.size,
                                scratch=layout.scratch_file)
                    stored = layout.store(out)  # the digest was computed while writing: no second pass
            except TransportError as exc:
                raise _Fallback(ReasonCode.DELTA_DOWNLOAD_FAILED, f"the delta could not be applied: {_detail(exc)}",
                                _fix(exc)) from exc
            except (CodecError, VerificationError, OSError) as exc:
                if not layout.has_blob(base_layer):
                    raise _Fallback(ReasonCode.BASE_CORRUPT,
                                    f"the stored base layer {base_layer.digest} is missing or corrupt "
                                    f"(the delta did not give the target: {_detail(exc)})") from exc
                raise _Fallback(ReasonCode.DELTA_FAILED, f"the delta could not be applied: {_detail(exc)}") from exc
            finally:
                if not keep_partial:  # the delta is used or refused: its download is of no further use
                    download.discard()
        if self.progress is not None:
            self.progress("apply", stored.size, stored.size)
        registry.fetch_into(tgt.ref, tgt.config, layout)
        attachments = self.keep
        if expected.is_registry_blob:
            layout.ingest_bytes(tgt.descriptor, tgt.body)
            manifest = tgt.descriptor
        else:  # the tar as gzip: what the oras CLI unpacks (the tar itself goes once committed)
            placed = layout.store_gzip(stored)
            layer = _plan.rewritten_layer(target_layer, placed.digest, placed.size)
            manifest = layout.store_rewritten(tgt.body, 0, layer, source_digest=tgt.descriptor.digest)
        try:
            self.before_commit(manifest)
            return layout.commit_image(manifest, repository=tgt.ref.name, tag=tgt.ref.tag,
                                       source_digest=tgt.descriptor.digest,
                                       annotations={ANNOTATION_PULLED_BY: f"delta {delta.algorithm.value}",
                                                    **self.notes},
                                       attachments=attachments)
        except BaseException:  # files not written or the commit failed: nothing of this pull stays in blobs/
            layout.discard_unreferenced([manifest.digest, stored.digest, tgt.config.digest])
            raise
        finally:
            if not expected.is_registry_blob:
                layout.discard_unreferenced([stored.digest, placed.digest])

    def _reporter(self, phase: str, total: int) -> Callable[[int], None] | None:
        progress = self.progress
        if progress is None:
            return None
        return lambda done: progress(phase, done, total)
