"""Planning which deltas can be applied and verified, and the download limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from doras_oras.budget import DownloadBudget, check_max_size
from doras_oras.descriptor import (
    ANNOTATION_CONTENT_DIGEST,
    ANNOTATION_UNPACK,
    OCI_LAYER_TAR,
    OCI_LAYER_TAR_GZIP,
    Descriptor,
)
from doras_oras.errors import ArtifactTooLargeError, BudgetExceededError, LayoutError
from doras_oras.layout import OCILayout
from doras_oras.plan import Mode, ReasonCode, choose_accepted, expected_result

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def layer(*, unpack: bool, content_digest: str | None) -> Descriptor:
    annotations = {}
    if unpack:
        annotations[ANNOTATION_UNPACK] = "true"
    if content_digest:
        annotations[ANNOTATION_CONTENT_DIGEST] = content_digest
    return Descriptor(OCI_LAYER_TAR_GZIP if unpack else OCI_LAYER_TAR, D1, 10, annotations)


def test_file_base_accepts_bsdiff_with_both_compressions_only() -> None:
    plan = choose_accepted(base_is_registry_blob=True, target_layer=layer(unpack=False, content_digest=None),
                           allow_unverified=False)
    assert plan.mode is Mode.DELTA
    assert plan.accepted == ("bsdiff", "zstd", "gzip")


def test_directory_with_content_digest_accepts_tardiff_first() -> None:
    plan = choose_accepted(base_is_registry_blob=True, target_layer=layer(unpack=True, content_digest=D2),
                           allow_unverified=False)
    assert plan.accepted == ("tardiff", "bsdiff", "zstd", "gzip")


def test_directory_without_content_digest_never_accepts_tardiff() -> None:
    plan = choose_accepted(base_is_registry_blob=True, target_layer=layer(unpack=True, content_digest=None),
                           allow_unverified=False)
    assert "tardiff" not in plan.accepted
    assert plan.mode is Mode.DELTA


def test_tar_base_accepts_only_tardiff_and_needs_a_digest() -> None:
    verifiable = choose_accepted(base_is_registry_blob=False,
                                 target_layer=layer(unpack=True, content_digest=D2), allow_unverified=False)
    assert verifiable.accepted == ("tardiff",)
    unverifiable = choose_accepted(base_is_registry_blob=False,
                                   target_layer=layer(unpack=True, content_digest=None), allow_unverified=False)
    assert unverifiable.mode is Mode.FULL
    assert unverifiable.code is ReasonCode.UNVERIFIABLE
    allowed = choose_accepted(base_is_registry_blob=False,
                              target_layer=layer(unpack=True, content_digest=None), allow_unverified=True)
    assert allowed.accepted == ("tardiff",)


def test_requested_algorithms_narrow_but_never_widen() -> None:
    plan = choose_accepted(base_is_registry_blob=True, target_layer=layer(unpack=False, content_digest=None),
                           allow_unverified=False, requested=["bsdiff", "gzip", "tardiff"])
    assert plan.accepted == ("bsdiff", "gzip")
    none_left = choose_accepted(base_is_registry_blob=False,
                                target_layer=layer(unpack=True, content_digest=D2),
                                allow_unverified=False, requested=["bsdiff"])
    assert none_left.mode is Mode.FULL
    with pytest.raises(ValueError, match="unknown algorithm"):
        choose_accepted(base_is_registry_blob=True, target_layer=layer(unpack=False, content_digest=None),
                        allow_unverified=False, requested=["xdelta"])


def test_expected_result_per_patch_kind() -> None:
    target = layer(unpack=True, content_digest=D2)
    assert expected_result("bsdiff", target).digest == D1
    assert expected_result("bsdiff", target).size == 10
    assert expected_result("tardiff", target).digest == D2
    assert expected_result("tardiff", target).size is None
    assert expected_result("tardiff", layer(unpack=True, content_digest="sha256:BAD")).digest is None


def test_max_size() -> None:
    check_max_size(100, 100, what="x")
    check_max_size(100, None, what="x")
    with pytest.raises(ArtifactTooLargeError, match="101 bytes"):
        check_max_size(101, 100, what="x")


def test_budget_counts_across_instances_and_expires(tmp_path: Path) -> None:
    now = [1000.0]
    layout = OCILayout.open(tmp_path / "L")
    budget = DownloadBudget(layout, limit_bytes=100, period_s=60, clock=lambda: now[0])
    budget.check(100, what="pull")
    with layout.lock():
        budget.record(70)
    again = DownloadBudget(OCILayout.open(tmp_path / "L"), limit_bytes=100, period_s=60, clock=lambda: now[0])
    assert again.consumed() == 70
    again.check(30, what="pull")
    with pytest.raises(BudgetExceededError, match="70 of the budget of 100"):
        again.check(31, what="pull")
    now[0] += 61
    assert again.consumed() == 0
    again.check(100, what="pull")
    assert (tmp_path / "L" / ".doras-oras" / "downloads.json").stat().st_mode & 0o777 == 0o644


def test_damaged_ledger_starts_a_new_period(tmp_path: Path) -> None:
    layout = OCILayout.open(tmp_path / "L")
    budget = DownloadBudget(layout, limit_bytes=10, period_s=60)
    (tmp_path / "L" / ".doras-oras").mkdir()
    (tmp_path / "L" / ".doras-oras" / "downloads.json").write_text("{not json")
    assert budget.consumed() == 0
    with layout.lock():
        budget.record(5)
    assert budget.consumed() == 5


def test_a_ledger_that_cannot_be_written_is_a_layout_error(tmp_path: Path) -> None:
    """The layout writes the ledger: a failed write names it, as a :class:`LayoutError` (not a bare ``OSError``)."""
    layout = OCILayout.open(tmp_path / "L")
    (tmp_path / "L" / ".doras-oras").write_text("a file where the ledger's directory belongs")
    budget = DownloadBudget(layout, limit_bytes=10, period_s=60)
    with layout.lock(), pytest.raises(LayoutError, match="download ledger"):
        budget.record(5)
