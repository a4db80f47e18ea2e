"""Signed updates only go forward: the layout's side of :func:`doras_oras.trust.forward.decide`.

What a verified pull compares (docs/trust.md, "Rollback, freeze, mix-and-match"):

- the **target**: ``org.opencontainers.image.created`` of the manifest (or
  index) bytes whose digest the signature names, and the signed payload's
  ``optional`` annotations (:func:`target_standing`);
- the **installed** image: the newest image of the repository in the layout,
  as recorded when it was pulled verified (``io.doras-oras.signed.created``,
  ``io.doras-oras.signed.annotation.NAME`` on its ``index.json`` entry), else
  the ``created`` of its stored manifest (:func:`standing_of`). The layout is
  trusted storage, so this works offline and after ``gc``.

:func:`check_forward` makes the decision and returns the annotations to record
on the new entry; it raises the :class:`~doras_oras.errors.TrustError` of a
refusal before anything of the target is downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from ..errors import DorasOrasError
from ..layout import ANNOTATION_SIGNED_CREATED, ANNOTATION_SIGNED_PREFIX, ImageEntry, OCILayout
from ..reference import Reference
from ..trust import (
    CREATED_ANNOTATION,
    Decision,
    OrderRule,
    Standing,
    TrustResult,
    Verification,
    decide,
)


def _created_in(body: bytes) -> str | None:
    try:
        document: Any = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    notes = document.get("annotations") if isinstance(document, dict) else None
    value = notes.get(CREATED_ANNOTATION) if isinstance(notes, dict) else None
    return value if isinstance(value, str) else None


def target_standing(trust: TrustResult, body: bytes, digest: str) -> Standing:
    """The target's signed values: ``created`` of ``body`` (the bytes of the signed digest) and the
    signed payload's string annotations (the policy check's signature when there are several)."""
    optional: Mapping[str, Any] = trust.signature.payload.optional if trust.signature is not None else {}
    return Standing(created=_created_in(body),
                    annotations={k: v for k, v in optional.items() if isinstance(v, str)}, digest=digest)


def standing_of(layout: OCILayout, image: ImageEntry) -> Standing:
    """An image of the layout as its entry recorded it, else its stored manifest's ``created``."""
    notes = image.descriptor.annotations
    created = notes.get(ANNOTATION_SIGNED_CREATED)
    if created is None:
        try:
            created = _created_in(layout.read_blob(image.descriptor))
        except (OSError, ValueError, DorasOrasError):
            created = None
    recorded = {key[len(ANNOTATION_SIGNED_PREFIX):]: value for key, value in notes.items()
                if key.startswith(ANNOTATION_SIGNED_PREFIX)}
    return Standing(created=created, annotations=recorded, digest=image.source_digest)


def record(standing: Standing, rule: OrderRule) -> dict[str, str]:
    """The entry annotations that keep ``standing`` for the next decision."""
    notes: dict[str, str] = {}
    if standing.created is not None:
        notes[ANNOTATION_SIGNED_CREATED] = standing.created
    if rule.annotation is not None and rule.annotation in standing.annotations:
        notes[ANNOTATION_SIGNED_PREFIX + rule.annotation] = standing.annotations[rule.annotation]
    return notes


def check_forward(
    layout: OCILayout, target: Reference, trust: TrustResult, verification: Verification, standing: Standing, *,
    allow_downgrade: bool = False, now: datetime | None = None,
) -> tuple[TrustResult, dict[str, str]]:
    """Decide ``standing`` (the target) against the newest image of ``target``'s repository.

    Returns ``trust`` with its :attr:`~doras_oras.trust.TrustResult.order` and the annotations to
    record on the new entry; without a signature (a policy rule with ``keys: []``) nothing is
    ordered. Raises :class:`~doras_oras.errors.RollbackError`, :class:`~doras_oras.errors.StaleTargetError`
    or :class:`~doras_oras.errors.MissingOrderError`.
    """
    if trust.signature is None:
        return trust, {}
    rule = verification.order_for(target)
    images = layout.images_of(target.name)
    installed = standing_of(layout, images[-1]) if images else None
    decision: Decision = decide(standing, installed, rule, now=now or datetime.now(UTC),
                                max_age_s=verification.max_age_s, allow_downgrade=allow_downgrade)
    return replace(trust, order=decision), record(standing, rule)
