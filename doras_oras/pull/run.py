"""The delta-aware pull's orchestration: :func:`pull_delta` and the steps of one run (see the package)."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Unpack

from .. import plan as _plan
from ..algorithms import Compression
from ..auth import IDENTITY_TOKEN_USER
from ..budget import DownloadBudget, check_free_space, check_max_size
from ..descriptor import INDEX_MEDIA_TYPES, OCI_LAYER_TAR, Descriptor
from ..errors import (
    BackoffExhausted,
    BaseNotFoundError,
    CodecError,
    CorruptLayoutError,
    DiskSpaceError,
    DocumentError,
    DorasOrasError,
    DorasServerError,
    FallbackRefusedError,
    Fix,
    ImagesIdenticalError,
    IncompatibleArtifactsError,
    LimitExceededError,
    RegistryAuthError,
    RegistryError,
    TransportError,
    TrustError,
    VerificationError,
)
from ..full import pull_full
from ..layout import (
    ANNOTATION_PULLED_BY,
    ANNOTATION_SOURCE_INDEX,
    ANNOTATION_SOURCE_PLATFORM,
    Attachment,
    ImageEntry,
    OCILayout,
    recover_index,
)
from ..plan import ReasonCode
from ..platforms import host_platform, platform_matches
from ..reference import Reference
from ..registry_client import RegistryClient, SupportsRegistryClient, registry_client_of
from ..schemas import ParsedManifest
from .options import Fallback, PullKeywords, PullOptions, check_base_ref
from .result import PullResult, Status

if TYPE_CHECKING:  # the codecs, the edge API and extraction load when a pull needs them (an up-to-date
    # poll needs none of them: tests/test_startup.py)
    from ..edgeapi import Delta
    from ..trust import TrustResult

log = logging.getLogger(__name__)

_REGISTRY, _SERVER = "registry", "server"
"""Where a delta came from (``PullResult.delta_source``)."""

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


class _Held(Exception):
    """Internal: another process installed the target while this pull downloaded it."""

    def __init__(self, image: ImageEntry) -> None:
        super().__init__(f"{image.descriptor.digest} was installed meanwhile")
        self.image = image


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


def _stored_full_size(layout: OCILayout, held: ImageEntry, digest: str) -> int | None:
    """What a full pull of ``digest`` costs, read from the layout's copy (no request); None when the
    layout stores another manifest (a tar-diff result as its uncompressed tar, a platform of an index)."""
    if held.descriptor.digest != digest:
        return None
    document = json.loads(layout.read_blob(held.descriptor))
    if not isinstance(document, dict):
        return None
    parts = [document.get("config") or {}, *(document.get("layers") or [])]
    return held.descriptor.size + sum(int(part.get("size", 0)) for part in parts)


def find_base(layout: OCILayout, target: Reference, from_ref: Reference | None) -> ImageEntry | None:
    """The layout's image to patch: ``from_ref`` if given, else the newest of the repository.

    Images doras-oras stored are preferred; else an entry another tool wrote that belongs to
    the repository (:meth:`OCILayout.images_of`).
    """
    images = layout.images_of(target.name)
    if from_ref is None:
        return images[-1] if images else None
    check_base_ref(target, from_ref)
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
    **options: Unpack[PullKeywords],
) -> PullResult:
    """Update ``oci_layout`` to ``target``, by delta when possible. See the module docstring.

    ``doras_url`` None (and no ``edge_client``) means no server: a verified full pull,
    or up to date. ``budget`` is ``(limit_bytes, period_s)``. ``platform``
    (``os/arch[/variant]``) chooses from an image index target (default: this machine).
    ``on_timeout`` is what to do when ``timeout_s`` runs out while the server builds:
    ``"full"`` or ``"pending"``. ``from_ref``: a tag (``v1``), a digest (``sha256:...``) or a
    reference of the target's repository. ``output_dir``: also write the image's files there,
    as ``oras pull -o`` does, before ``index.json`` is committed (also when up to date, unless
    ``refresh_output=False``; not when pending). Bad arguments raise :class:`InvalidArgumentError` before anything
    is sent. ``verify`` (a :class:`~doras_oras.trust.Verification`, or keys as a
    :class:`~doras_oras.trust.Requirement`, or a :class:`~doras_oras.trust.TrustPolicy`):
    refuse the target with a :class:`~doras_oras.errors.TrustError` unless its signature
    verifies, before a delta is asked for or a blob fetched (docs/trust.md); a verified target
    older than the installed image of its repository is refused too (a rollback, unless
    ``allow_downgrade``), and so is one older than ``Verification.max_age_s``. A layout this
    call created is removed again when the pull fails and leaves nothing in it (no partial
    download to resume, no budget record). A missing or corrupt ``index.json`` is rebuilt
    from the blobs first (:func:`~doras_oras.layout.recover_index`: the old file is kept as
    ``index.json.corrupt``, the recovered images are tagged ``recovered-<hex12>``).
    """
    client = registry_client_of(registry)
    settings = PullOptions.of(target, doras_url=doras_url, **options)
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
    budget = settings.budget
    run = _PullRun(client, layout, settings, DownloadBudget(layout, budget[0], budget[1]) if budget else None)
    try:
        with client.pull_deadline():
            _recover_index_if_unusable(layout, settings.lock_timeout_s)
            return run.execute()
    except BaseException:
        if created is not None:
            layout.remove_if_unused(remove_root=created)
        raise


def _recover_index_if_unusable(layout: OCILayout, lock_timeout_s: float) -> None:
    """A lost or corrupt ``index.json`` is rebuilt (the old file kept as ``index.json.corrupt``), under
    the lock; a readable one costs no lock."""
    try:
        layout.read_index()
    except CorruptLayoutError:
        with layout.lock(timeout=lock_timeout_s):
            recover_index(layout)


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


@dataclass
class _PullRun:
    """One pull: its settings, what it received so far, and its steps."""

    registry: RegistryClient
    layout: OCILayout
    options: PullOptions
    ledger: DownloadBudget | None
    written: list[str] | None = None
    started: float = field(default_factory=time.monotonic)
    edge_received: int = 0
    recorded: bool = False
    trust: TrustResult | None = None
    verified: str | None = None
    """The digest whose signature verified: the only one this pull may install."""
    keep: list[Attachment] = field(default_factory=list)
    """The signature manifests to commit beside the target."""
    notes: dict[str, str] = field(default_factory=dict)
    """The signed order values to record on the target's entry (``io.doras-oras.signed.*``)."""
    resolved: Descriptor | None = None
    """What the target resolved to, once the pull decided to install it."""

    def __post_init__(self) -> None:
        self.received_at_start = self.registry.bytes_received

    @property
    def received(self) -> int:
        """Bytes received from the registry and the Doras server during this pull."""
        return self.registry.bytes_received - self.received_at_start + self.edge_received

    def _record(self) -> None:
        if self.ledger is not None and not self.recorded and self.received:
            with self.layout.lock(timeout=self.options.lock_timeout_s):
                self.ledger.record(self.received)
        self.recorded = True

    def result(self, status: Status, code: ReasonCode, reason: str, tgt: _Target | None, *,
               from_digest: str | None, to_digest: str | None = None, algorithm: str | None = None,
               delta_source: str | None = None,
               stored_digest: str | None = None, verified: bool = True, delta_size: int | None = None,
               blobs_fetched: int | None = None, blobs_reused: int | None = None, fix: Fix | None = None,
               full_size: int | None = None) -> PullResult:
        """The final report (and the budget ledger's record of what was received); ``to_digest``: the target's,
        ``full_size``: the target's (given only when there is no target manifest: up to date)."""
        self._record()
        return PullResult(
            status=status, reference=str(self.options.target), reason=reason, reason_code=code,
            from_digest=from_digest, to_digest=to_digest or (tgt.descriptor.digest if tgt else None),
            algorithm=algorithm, bytes_received=self.received, full_size=tgt.full_size if tgt else full_size,
            duration_s=round(time.monotonic() - self.started, 3), stored_digest=stored_digest, verified=verified,
            delta_size=delta_size, blobs_fetched=blobs_fetched, blobs_reused=blobs_reused, trust=self.trust,
            output=self.written, fix=fix, delta_source=delta_source,
        )

    def install_check(self, manifest: Descriptor) -> None:
        """In the install transaction: :class:`_Held` when another process installed the target since
        the pull began (it is then up to date); else :meth:`before_commit`."""
        if self.resolved is not None:
            held = _holding(self.layout, self.options.target, self.resolved.digest, self.options.platform or host_platform())
            if held is not None:
                raise _Held(held)
        self.before_commit(manifest)

    def before_commit(self, manifest: Descriptor) -> None:
        """Write the files of the stored ``manifest`` to ``output_dir`` (all or nothing), if asked."""
        if self.options.output_dir is not None:
            from ..extract import extract_image

            self.written = [str(path) for path in extract_image(self.layout, manifest, self.options.output_dir,
                                                                max_bytes=self.options.max_size)]

    def check_space(self, tgt: _Target, layout_needs: list[tuple[Path, int]], *, what: str) -> None:
        """:class:`DiskSpaceError` before the first blob byte when ``layout_needs`` and the
        files for ``output_dir`` do not fit (an index target's files are not known yet)."""
        needs = list(layout_needs)
        if self.options.output_dir is not None and "config" in tgt.document:
            from ..extract import output_needs

            needs += output_needs(tgt.layers, self.options.output_dir)
        check_free_space(needs, what=what)

    def execute(self) -> PullResult:
        """Decide and do (each write to the layout takes its lock for the install alone)."""
        try:
            return self._execute()
        except BaseException:
            try:
                self._record()  # what a failed pull received still counts against the budget
            except DorasOrasError as exc:  # the lock or the disk: the pull's own error is the one to report
                log.warning("the download ledger was not updated: %s", exc)
            raise

    def _execute(self) -> PullResult:
        target, layout = self.options.target, self.layout
        platform = self.options.platform or host_platform()
        # One GET, conditional on what the layout holds: a device polling for updates gets a 304, no body.
        installed = _installed(layout, target, platform)
        fetched = self.resolve_target(installed)  # None: the target still names `installed`
        digest = fetched.descriptor.digest if fetched is not None else installed
        base = find_base(layout, target, self.options.from_ref)
        held = _holding(layout, target, digest, platform) if digest is not None else None
        if held is not None and digest is not None:
            return self.up_to_date(held, digest, fetched)
        if fetched is None:  # the image `installed` named left the layout meanwhile (a gc): ask again
            fetched = self.resolve_target(None)
            assert fetched is not None  # an unconditional GET answers with the manifest
        try:
            return self._update(fetched, base)
        except _Held as race:  # another process installed the target meanwhile
            self.trust, self.keep, self.notes = None, [], {}
            return self.up_to_date(race.image, fetched.descriptor.digest, fetched)

    def up_to_date(self, held: ImageEntry, digest: str, fetched: ParsedManifest | None) -> PullResult:
        """The layout holds the target (the registry ``digest``; ``fetched``: its manifest, when it was
        sent): (re)verify, write the files, record a new tag or signatures."""
        target, layout = self.options.target, self.layout
        attachments = self.verify_held(held, digest, fetched)
        unrecorded = any(held.descriptor.annotations.get(k) != v for k, v in self.notes.items())
        if (held.tag != target.tag and target.tag) or attachments or unrecorded:
            notes = {key: value for key, value in held.descriptor.annotations.items()
                     if key in (ANNOTATION_SOURCE_INDEX, ANNOTATION_SOURCE_PLATFORM, ANNOTATION_PULLED_BY)}
            notes.update(self.notes)
            with layout.install(timeout=self.options.lock_timeout_s) as install:
                install.commit(held.descriptor, before_commit=self.before_commit, repository=target.name,
                               tag=target.tag or held.tag, source_digest=held.source_digest,
                               annotations=notes or None, attachments=attachments)
        elif self.options.output_dir is not None and self.options.refresh_output:
            with layout.lock(timeout=self.options.lock_timeout_s):  # the image's blobs stay while its files are written
                self.before_commit(held.descriptor)
        return self.result(Status.UP_TO_DATE, ReasonCode.UP_TO_DATE, "the layout already holds this image",
                           None, from_digest=None, stored_digest=held.descriptor.digest, to_digest=digest,
                           full_size=_stored_full_size(layout, held, digest))

    def _update(self, fetched: ParsedManifest, base: ImageEntry | None) -> PullResult:
        target, layout = self.options.target, self.layout
        tgt = _Target(target, fetched)  # the body's own digest is what is verified and installed
        self.resolved = tgt.descriptor
        self.verify(tgt.descriptor.digest)  # a TrustError here: no delta asked, no blob fetched, nothing written
        self.go_forward(tgt.body, tgt.descriptor.digest, None)  # a rollback or stale target: refused, nothing fetched
        self.keep = self.attachments(tgt)  # the verified signatures, committed with the target
        if tgt.descriptor.media_type in INDEX_MEDIA_TYPES:
            return self.full(tgt, ReasonCode.INDEX_TARGET, "the target is an image index; Doras deltas are "
                             "for single-manifest artifacts", base=base)
        check_max_size(tgt.full_size, self.options.max_size, what=str(target))
        if self.options.from_ref is not None and base is None:
            raise BaseNotFoundError(f"from_ref {self.options.from_ref}: no such image in {layout.root}",
                                    base=str(self.options.from_ref))
        if base is None:
            return self.full(tgt, ReasonCode.NO_BASE, f"no image of {target.name} in the layout to patch",
                             base=None)
        if not self._has_server() and not self.options.registry_deltas:
            return self.full(tgt, ReasonCode.NO_SERVER, "no Doras server given", base=base)
        refused: FallbackRefusedError | None = None
        try:
            return self.delta(tgt, base)
        except _Pending as pending:
            return self.result(Status.PENDING, pending.code, pending.reason, tgt, from_digest=base.source_digest)
        except _Fallback as fallback:
            refused = self._refusal(fallback)
            if refused is not None and fallback.code is not ReasonCode.BASE_CORRUPT:
                raise refused from fallback  # nothing to tidy: the layout is as it was
            if refused is None:
                log.warning("falling back to a full pull: %s", fallback.reason)
                result = self.full(tgt, fallback.code, fallback.reason, base=base, fix=fallback.fix)
        with layout.lock(timeout=self.options.lock_timeout_s):  # a base found corrupt loses its entry
            lost = self._forget_if_lost(base)
        if refused is not None:
            raise refused
        if lost:
            result = replace(result, reason=result.reason + f"; the damaged image {base.tag or base.source_digest} "
                             "(its layer was lost) was dropped from the layout's index")
        return result

    def _has_server(self) -> bool:
        return self.options.doras_url is not None or self.options.edge_client is not None

    def _refusal(self, fallback: _Fallback) -> FallbackRefusedError | None:
        """The error that replaces a full pull for ``fallback`` when the settings refuse it, else None.

        ``fallback="never"`` and ``wait=False`` (a pull that never blocks) refuse a full download that
        replaces a delta which was possible in principle (:func:`~doras_oras.plan.delta_possible`); a
        first install, an image index, a multi-layer or non-diffable pair still pull in full.
        """
        if not _plan.delta_possible(fallback.code):
            return None
        if self.options.fallback == Fallback.NEVER:
            why = "full downloads instead of a delta are refused"
        elif not self.options.wait:
            why = "a pull that does not wait never downloads in full instead of a delta"
        else:
            return None
        return FallbackRefusedError(f"{self.options.target}: not downloaded ({why}): {fallback.reason}",
                                    reason_code=fallback.code.value, reason=fallback.reason, fix=fallback.fix)

    def resolve_target(self, installed: str | None) -> ParsedManifest | None:
        """The target's manifest, in one GET conditional on ``installed`` (None: it still names
        ``installed``; :meth:`RegistryClient.fetch_if_changed`); a 404 says the reference is not
        found, a 401/403 after credentials were given says the registry refused that user (not that
        credentials are missing)."""
        target = self.options.target
        try:
            return self.registry.fetch_if_changed(target, installed)
        except RegistryAuthError as exc:
            given = self.registry.credentials_for(target.registry)
            if given is None:
                raise
            who = "the identity token" if given[0] == IDENTITY_TOKEN_USER else f"the credentials of user {given[0]!r}"
            raise RegistryAuthError(f"{target.registry} refused {who} for {target.repository} "
                                    f"(HTTP {exc.status})", status=exc.status, fix=Fix.CREDENTIALS_REFUSED) from exc
        except RegistryError as exc:
            if exc.status != 404:
                raise
            raise RegistryError(f"{target}: not found (HTTP 404)", status=404, fix=Fix.NOT_FOUND) from exc

    def verify(self, digest: str) -> None:
        """With ``verify``: refuse ``digest`` unless its signature verifies in the registry (:class:`TrustError`).

        A transport error while reading signatures propagates too: the pull fails, it never falls back.
        """
        if self.options.verification is None:
            return
        from ..signatures import verify_in_registry  # cryptography loads only for a verified pull

        self.trust = verify_in_registry(self.registry, self.options.target.with_digest(digest), self.options.verification)
        self.verified = digest

    def go_forward(self, body: bytes, digest: str, held: ImageEntry | None) -> None:
        """With ``verify``: the target (``body``, the bytes of the signed ``digest``; or the layout's
        ``held`` image) must not be older than the installed image, nor stale (docs/trust.md)."""
        if self.options.verification is None or self.trust is None:
            return
        from ..signatures import check_forward, standing_of, target_standing

        standing = standing_of(self.layout, held) if held is not None else target_standing(self.trust, body, digest)
        self.trust, self.notes = check_forward(self.layout, self.options.target, self.trust, self.options.verification, standing,
                                               allow_downgrade=self.options.allow_downgrade)

    def verify_held(self, held: ImageEntry, digest: str, fetched: ParsedManifest | None) -> list[Attachment]:
        """Up to date, with ``verify``: the stored copy of the signature is checked again (no request).

        When the layout keeps none that passes (the image was stored before
        verification was asked for, or the keys changed), the registry's is
        checked and returned, to be kept beside the image.
        """
        if self.options.verification is None:
            return []
        from ..signatures import (  # cryptography loads only for a verified pull
            attachments_of,
            verify_in_layout,
        )

        try:
            self.trust = verify_in_layout(self.layout, self.options.target.with_digest(digest), self.options.verification)
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
            fetched or self.registry.fetch_parsed(self.options.target.with_digest(digest))).body
        return attachments_of(self.trust, signed)

    def attachments(self, tgt: _Target) -> list[Attachment]:
        """The verified signature manifests to commit beside ``tgt``; ``tgt`` must be the verified digest."""
        if self.options.verification is None or self.trust is None:
            return []
        if tgt.descriptor.digest != self.verified:
            raise VerificationError(f"{tgt.ref}: about to install {tgt.descriptor.digest}, but "
                                    f"{self.verified} is the digest that was verified")
        from ..signatures import attachments_of

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
        check_max_size(tgt.full_size, self.options.max_size, what=str(tgt.ref))
        if self.ledger is not None:
            self.ledger.check(tgt.full_size, what=f"a full pull of {tgt.ref}")
        if "config" in tgt.document:
            missing = [blob for blob in (tgt.descriptor, tgt.config, *tgt.layers)
                       if not self.layout.blob_present(blob)]
            self.check_space(tgt, [(self.layout.root, blob.size) for blob in missing],
                             what=f"a full pull of {tgt.ref}")
        pulled = pull_full(self.registry, tgt.ref, self.layout, parsed=tgt.parsed, platform=self.options.platform,
                           progress=self.options.progress, attachments=self.keep, before_commit=self.install_check,
                           annotations=self.notes, lock_timeout_s=self.options.lock_timeout_s)
        return self.result(Status.FULL, code, reason, tgt, from_digest=base.source_digest if base else None,
                           stored_digest=pulled.manifest.digest, blobs_fetched=pulled.blobs_fetched,
                           blobs_reused=pulled.blobs_reused, fix=fix)

    def delta(self, tgt: _Target, base: ImageEntry) -> PullResult:
        """Patch ``base`` into the target; :class:`_Fallback` when a delta cannot be used."""
        base_layer, target_layer = self._single_layers(tgt, base)
        planned = _plan.choose_accepted(base_is_registry_blob=not base.rewritten, target_layer=target_layer,
                                        allow_unverified=self.options.allow_unverified, requested=self.options.accepted_algorithms)
        if planned.mode is _plan.Mode.FULL:
            raise _Fallback(planned.code, planned.reason)
        from_image = tgt.ref.with_digest(base.source_digest)
        to_image = tgt.ref.with_digest(tgt.descriptor.digest)
        delta, source = self._find(from_image, to_image, planned)
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
        try:
            image = self._apply_and_commit(tgt, base_layer, target_layer, delta, expected)
        except _Fallback as fallback:
            if source == _REGISTRY:
                fallback.reason += f" (the delta stored in the registry as {delta.manifest_ref.digest})"
            raise
        verified = expected.digest is not None
        reason = ("patched the stored image with a delta stored in the registry" if source == _REGISTRY
                  else "patched the stored image with a delta from the Doras server")
        if not verified:
            reason += " (tar-diff result NOT verified: the target layer has no content digest)"
        return self.result(Status.DELTA, ReasonCode.PATCHED, reason, tgt, from_digest=base.source_digest,
                           algorithm=delta.algorithm.value, stored_digest=image.descriptor.digest,
                           verified=verified, delta_size=delta.layer.size, delta_source=source)

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
        if self.options.allow_unverified:
            return self.layout.has_blob(layer)
        return self.layout.blob_present(layer)

    def _find(self, from_image: Reference, to_image: Reference, planned: _plan.DeltaPlan) -> tuple[Delta, str]:
        """The delta and where it came from: first one stored in the registry (unless ``registry_deltas``
        is off: a hit means no Doras conversation at all), then the server's; :class:`_Fallback` when there
        is no server to ask."""
        if self.options.registry_deltas:
            stored = self._stored(from_image, to_image, planned.accepted)
            if stored is not None:
                return stored, _REGISTRY
        if not self._has_server():
            raise _Fallback(ReasonCode.NO_SERVER, "no Doras server given and no delta stored in the registry "
                            "for this pair")
        return self._ask(from_image, to_image, planned), _SERVER

    def _stored(self, from_image: Reference, to_image: Reference, accepted: tuple[str, ...]) -> Delta | None:
        """A delta stored in the registry for the pair (one ``HEAD`` per usable kind); a registry that fails
        the lookup is logged and counts as a miss (the server, or the fallback, comes next)."""
        from ..stored_deltas import find_stored_delta  # loads the edge API: only when needed

        try:
            return find_stored_delta(self.registry, from_image, to_image, accepted)
        except (TransportError, LimitExceededError, DocumentError, VerificationError) as exc:
            log.warning("looking for a delta stored in the registry failed: %s", _detail(exc))
            return None

    def _ask(self, from_image: Reference, to_image: Reference, planned: _plan.DeltaPlan) -> Delta:
        """The Doras conversation: the checked delta, or :class:`_Pending` / :class:`_Fallback`."""
        from ..edgeapi import EdgeClient  # the Doras client loads only when a delta is asked for

        client = self.options.edge_client or EdgeClient.for_registry(self.registry, self.options.doras_url or "",
                                                                         to_image.registry)
        before = client.bytes_received
        try:
            delta = client.fetch_delta(from_image, to_image, planned.accepted, self.registry, wait=self.options.wait,
                                       deadline_s=self.options.timeout_s, on_wait=self.options.on_wait)
            if delta is None:
                raise _Pending(ReasonCode.BUILDING, "the Doras server is building the delta; ask again later")
            return delta
        except BackoffExhausted as exc:
            reason = f"the delta was not ready in time: {_detail(exc)}"
            if self.options.on_timeout == Status.PENDING:
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
            raise _Fallback(ReasonCode.SERVER_UNREACHABLE, f"the Doras server at {client.server_url} is unreachable: "
                            f"{_detail(exc)}", _fix(exc)) from exc
        except LimitExceededError as exc:
            raise _Fallback(ReasonCode.ANSWER_TOO_LARGE, f"delta unavailable: {_detail(exc)}") from exc
        except (DocumentError, VerificationError, CodecError) as exc:
            raise _Fallback(ReasonCode.BAD_DELTA, f"delta unavailable: {_detail(exc)}", _fix(exc)) from exc
        finally:
            self.edge_received += client.bytes_received - before
            if self.options.edge_client is None:
                client.close()

    def _apply_and_commit(self, tgt: _Target, base_layer: Descriptor, target_layer: Descriptor,
                          delta: Delta, expected: _plan.Expected) -> ImageEntry:
        """Download the delta (resumable) and the config, then in the install transaction: apply the
        delta to the base into a blob writer (verified), store, commit."""
        from ..codecs import apply_delta

        layout, registry = self.layout, self.registry
        keep_partial = False
        with layout.partial_writer(delta.layer, what="delta") as download, contextlib.ExitStack() as stack:
            try:
                try:
                    registry.download(delta.manifest_ref, delta.layer, download,
                                      on_progress=self._reporter("delta", delta.layer.size))
                except (TransportError, KeyboardInterrupt):
                    keep_partial = True  # a dropped or stalled link, Ctrl-C, SIGTERM: the next run resumes it
                    raise
            except TransportError as exc:
                raise _Fallback(ReasonCode.DELTA_DOWNLOAD_FAILED, f"the delta could not be applied: {_detail(exc)}",
                                _fix(exc)) from exc
            except (CodecError, VerificationError, OSError) as exc:
                raise self._unusable(exc, base_layer) from exc
            finally:
                if not keep_partial and download.digest_written is None:
                    download.discard()  # refused: of no further use
            config = None
            stack.callback(download.discard)  # used or not, the delta is of no further use after this
            if not layout.has_blob(tgt.config):
                config = stack.enter_context(layout.partial_writer(tgt.config))
                stack.callback(config.discard)  # stored by the install, or of no use: nothing of it stays
                registry.download(tgt.ref, tgt.config, config)
            with layout.install(timeout=self.options.lock_timeout_s) as install:
                try:
                    with layout.temp_writer(digest=expected.digest, size=expected.size, what="delta output") as out, \
                            download.path.open("rb") as patch, \
                            layout.blob_path(base_layer.digest).open("rb") as base:
                        apply_delta(delta.algorithm, base, patch, out, expected_size=expected.size,
                                    scratch=layout.scratch_file)
                        stored = install.store(out)  # the digest was computed while writing: no second pass
                except (CodecError, VerificationError, OSError) as exc:
                    raise self._unusable(exc, base_layer) from exc
                if self.options.progress is not None:
                    self.options.progress("apply", stored.size, stored.size)
                if config is not None:
                    install.store(config)
                if expected.is_registry_blob:
                    install.put(tgt.descriptor, tgt.body)
                    manifest = tgt.descriptor
                else:  # the tar as gzip: what the oras CLI unpacks (the tar itself goes once committed)
                    placed = install.store_gzip(stored)
                    layer = _plan.rewritten_layer(target_layer, placed.digest, placed.size)
                    manifest = install.put_rewritten(tgt.body, layer, source_digest=tgt.descriptor.digest)
                image = install.commit(manifest, before_commit=self.install_check, repository=tgt.ref.name,
                                       tag=tgt.ref.tag, source_digest=tgt.descriptor.digest,
                                       annotations={ANNOTATION_PULLED_BY: f"delta {delta.algorithm.value}",
                                                    **self.notes},
                                       attachments=self.keep)
                if not expected.is_registry_blob:
                    layout.discard_unreferenced([stored.digest])
                return image

    def _unusable(self, exc: BaseException, base_layer: Descriptor) -> _Fallback:
        """The fallback for a delta that did not give the target: a corrupt base, or the delta's fault."""
        if not self.layout.has_blob(base_layer):
            return _Fallback(ReasonCode.BASE_CORRUPT, f"the stored base layer {base_layer.digest} is missing or "
                             f"corrupt (the delta did not give the target: {_detail(exc)})")
        return _Fallback(ReasonCode.DELTA_FAILED, f"the delta could not be applied: {_detail(exc)}")

    def _reporter(self, phase: str, total: int) -> Callable[[int], None] | None:
        progress = self.options.progress
        if progress is None:
            return None
        return lambda done: progress(phase, done, total)
