"""The rollback and freshness decision (issue #20, part 2), as a pure function: doras_oras.trust.forward."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from doras_oras import errors
from doras_oras.reference import Reference
from doras_oras.trust import OrderRule, Requirement, Standing, Verification, decide, parse_policy
from doras_oras.trust.forward import order_key

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
CREATED = OrderRule()
VERSION = OrderRule(annotation="version", compare="integer")
SEMVER = OrderRule(annotation="version", compare="semver")


def made(created: str | None = None, digest: str = "sha256:t", **annotations: str) -> Standing:
    return Standing(created=created, annotations=annotations, digest=digest)


# ----------------------------------------------------------------------------- order by created


def test_an_older_creation_time_is_a_rollback() -> None:
    with pytest.raises(errors.RollbackError, match="older than the installed sha256:i"):
        decide(made("2026-01-01T00:00:00Z"), made("2026-02-01T00:00:00Z", "sha256:i"), CREATED, now=NOW)


def test_a_newer_creation_time_passes_and_says_so() -> None:
    decision = decide(made("2026-03-01T00:00:00Z"), made("2026-02-01T00:00:00Z", "sha256:i"), CREATED, now=NOW)
    assert (decision.rule, decision.outcome, decision.installed_digest) == ("created", "newer", "sha256:i")


def test_the_same_second_passes_as_same() -> None:
    """Two pushes in one second carry one ``created``: not older, so not a rollback."""
    same = "2026-02-01T00:00:00Z"
    assert decide(made(same), made(same, "sha256:i"), CREATED, now=NOW).outcome == "same"


def test_creation_times_compare_as_instants_not_text() -> None:
    # 01:00+02:00 is 23:00 the day before in UTC: older, though its text sorts after
    with pytest.raises(errors.RollbackError):
        decide(made("2026-02-02T01:00:00+02:00"), made("2026-02-01T23:30:00Z"), CREATED, now=NOW)


def test_allow_downgrade_lets_an_older_target_pass_and_says_so() -> None:
    decision = decide(made("2026-01-01T00:00:00Z"), made("2026-02-01T00:00:00Z"), CREATED, now=NOW,
                      allow_downgrade=True)
    assert decision.outcome == "downgrade-allowed"


def test_nothing_installed_is_the_first_install() -> None:
    assert decide(made("2026-01-01T00:00:00Z"), None, CREATED, now=NOW).outcome == "first"


def test_a_target_without_created_is_refused_when_something_is_installed() -> None:
    with pytest.raises(errors.MissingOrderError, match=r"org\.opencontainers\.image\.created"):
        decide(made(None), made("2026-02-01T00:00:00Z"), CREATED, now=NOW)


def test_an_unreadable_created_is_refused_like_a_missing_one() -> None:
    with pytest.raises(errors.MissingOrderError, match="unreadable"):
        decide(made("last tuesday"), made("2026-02-01T00:00:00Z"), CREATED, now=NOW)


def test_a_time_without_an_offset_is_unreadable() -> None:
    with pytest.raises(errors.MissingOrderError):
        decide(made("2026-03-01T00:00:00"), made("2026-02-01T00:00:00Z"), CREATED, now=NOW)


def test_allow_missing_lets_a_target_without_the_value_pass_unordered() -> None:
    rule = OrderRule(allow_missing=True)
    assert decide(made(None), made("2026-02-01T00:00:00Z"), rule, now=NOW).outcome == "unordered"


def test_an_installed_image_without_the_value_orders_nothing() -> None:
    assert decide(made("2026-01-01T00:00:00Z"), made(None), CREATED, now=NOW).outcome == "unordered"


# ----------------------------------------------------------------------------- order by a signed annotation


def test_integer_versions_compare_as_numbers() -> None:
    assert decide(made(version="10"), made(version="9"), VERSION, now=NOW).outcome == "newer"
    with pytest.raises(errors.RollbackError, match=r"version \(integer\) 9"):
        decide(made(version="9"), made(version="10"), VERSION, now=NOW)


def test_an_annotation_rule_ignores_created() -> None:
    decision = decide(made("2020-01-01T00:00:00Z", version="3"), made("2026-01-01T00:00:00Z", version="2"),
                      VERSION, now=NOW)
    assert (decision.rule, decision.target, decision.installed) == ("version (integer)", "3", "2")


def test_a_non_integer_version_is_refused() -> None:
    with pytest.raises(errors.MissingOrderError, match="signed annotation 'version'"):
        decide(made(version="-3"), made(version="2"), VERSION, now=NOW)


@pytest.mark.parametrize(("older", "newer"), [
    ("1.9.0", "1.10.0"),
    ("1.0.0-rc.1", "1.0.0"),
    ("1.0.0-alpha", "1.0.0-alpha.1"),
    ("1.0.0-alpha.1", "1.0.0-alpha.beta"),
    ("1.0.0-beta.2", "1.0.0-beta.11"),
    ("1.0.0-rc.1", "1.0.0-rc.1a"),
    ("v2.0.0", "2.0.1"),
])
def test_semver_precedence(older: str, newer: str) -> None:
    assert decide(made(version=newer), made(version=older), SEMVER, now=NOW).outcome == "newer"
    with pytest.raises(errors.RollbackError):
        decide(made(version=older), made(version=newer), SEMVER, now=NOW)


def test_semver_build_metadata_does_not_order() -> None:
    assert decide(made(version="1.0.0+b2"), made(version="1.0.0+b9"), SEMVER, now=NOW).outcome == "same"


@pytest.mark.parametrize("bad", ["1.0", "01.0.0", "1.0.0-", "1.0.0-01", "latest"])
def test_not_semver_is_refused(bad: str) -> None:
    with pytest.raises(errors.MissingOrderError):
        decide(made(version=bad), made(version="1.0.0"), SEMVER, now=NOW)


@given(st.integers(0, 10**30), st.integers(0, 10**30))
def test_integer_order_is_the_numbers_order(a: int, b: int) -> None:
    if a < b:
        with pytest.raises(errors.RollbackError):
            decide(made(version=str(a)), made(version=str(b)), VERSION, now=NOW)
    else:
        assert decide(made(version=str(a)), made(version=str(b)), VERSION, now=NOW).outcome in ("newer", "same")


versions = st.tuples(st.integers(0, 50), st.integers(0, 50), st.integers(0, 50),
                     st.one_of(st.none(), st.lists(st.one_of(st.integers(0, 20).map(str),
                                                             st.sampled_from(["alpha", "beta", "rc", "x-1"])),
                                                   min_size=1, max_size=3)))


def _text(v: tuple[int, int, int, list[str] | None]) -> str:
    return f"{v[0]}.{v[1]}.{v[2]}" + (("-" + ".".join(v[3])) if v[3] else "")


@given(versions, versions, versions)
def test_semver_order_is_a_total_order(a: tuple[int, int, int, list[str] | None],
                                       b: tuple[int, int, int, list[str] | None],
                                       c: tuple[int, int, int, list[str] | None]) -> None:
    ka, kb, kc = (order_key(SEMVER, _text(v)) for v in (a, b, c))
    assert None not in (ka, kb, kc)
    assert (ka < kb) + (kb < ka) + (ka == kb) == 1
    if ka <= kb <= kc:
        assert ka <= kc
    if a[:3] != b[:3]:  # the core decides before any pre-release
        assert (ka < kb) == (a[:3] < b[:3])


# ----------------------------------------------------------------------------- freshness


def test_a_target_older_than_max_age_is_stale() -> None:
    with pytest.raises(errors.StaleTargetError, match="older than"):
        decide(made("2026-05-01T12:00:00Z"), None, CREATED, now=NOW, max_age_s=30 * 86400)


def test_a_target_within_max_age_passes_with_its_age() -> None:
    decision = decide(made("2026-05-31T12:00:00Z"), None, CREATED, now=NOW, max_age_s=7 * 86400)
    assert decision.age_s == 86400 and decision.max_age_s == 7 * 86400


def test_freshness_needs_created_even_on_a_first_install_and_with_allow_missing() -> None:
    with pytest.raises(errors.MissingOrderError, match="freshness"):
        decide(made(None), None, OrderRule(allow_missing=True), now=NOW, max_age_s=86400)


def test_freshness_applies_under_an_annotation_order_too() -> None:
    with pytest.raises(errors.StaleTargetError):
        decide(made("2020-01-01T00:00:00Z", version="9"), made(version="1"), VERSION, now=NOW, max_age_s=86400)


@given(st.integers(0, 10**7), st.integers(1, 10**7))
def test_freshness_is_age_against_bound(age: int, bound: int) -> None:
    created = (NOW - timedelta(seconds=age)).strftime("%Y-%m-%dT%H:%M:%SZ")
    if age > bound:
        with pytest.raises(errors.StaleTargetError):
            decide(made(created), None, CREATED, now=NOW, max_age_s=bound)
    else:
        assert decide(made(created), None, CREATED, now=NOW, max_age_s=bound).age_s == age


def test_the_rollback_and_stale_reasons_are_their_own() -> None:
    assert (errors.RollbackError.reason, errors.StaleTargetError.reason, errors.MissingOrderError.reason) == (
        "rollback", "stale", "unordered")
    assert all(issubclass(c, errors.TrustError) for c in (errors.RollbackError, errors.StaleTargetError,
                                                         errors.MissingOrderError))


# ----------------------------------------------------------------------------- policy and tag binding


def _key_loader(path: Path) -> object:
    from doras_oras.testing.signing import SigningKey
    from doras_oras.trust import parse_public_key

    key = SigningKey.generate(path.parent / "generated")
    return parse_public_key(key.public_path.read_bytes(), name=path.name)


REF = Reference.parse("registry.example.com/fleet/app:v3")


def test_a_policy_rule_names_the_order_annotation(tmp_path: Path) -> None:
    policy = parse_policy({"version": 1, "rules": [
        {"repository": "fleet/*", "keys": ["k.pub"], "order": {"annotation": "build", "compare": "semver",
                                                               "allow_missing": True}}]},
        base_dir=tmp_path, load_key=_key_loader)  # type: ignore[arg-type]
    assert Verification(policy=policy).order_for(REF) == OrderRule("build", "semver", allow_missing=True)


def test_without_an_order_the_default_is_created(tmp_path: Path) -> None:
    policy = parse_policy({"version": 1, "rules": [{"repository": "fleet/*", "keys": ["k.pub"]}]},
                          base_dir=tmp_path, load_key=_key_loader)  # type: ignore[arg-type]
    assert Verification(policy=policy).order_for(REF) == CREATED


@pytest.mark.parametrize("order", [{"annotation": "v"}, {"compare": "integer"}, {"annotation": "v", "compare": "created"},
                                   {"by": "created"}, {"compare": "semver", "annotation": ""}])
def test_a_bad_order_is_refused_by_the_schema(tmp_path: Path, order: dict[str, str]) -> None:
    with pytest.raises(errors.TrustConfigError):
        parse_policy({"version": 1, "rules": [{"repository": "x", "keys": ["k.pub"], "order": order}]},
                     base_dir=tmp_path, load_key=_key_loader)  # type: ignore[arg-type]


def test_an_order_without_keys_is_refused(tmp_path: Path) -> None:
    with pytest.raises(errors.TrustConfigError, match="order needs keys"):
        parse_policy({"version": 1, "rules": [{"repository": "x", "keys": [], "order": {}}]}, base_dir=tmp_path)


def test_tag_placeholder_binds_the_pulled_tag(tmp_path: Path) -> None:
    key = _key_loader(tmp_path / "k.pub")
    verification = Verification(keys=Requirement.from_keys([key], {"tag": "{tag}", "channel": "stable"}),  # type: ignore[list-item]
                                tag="v3")
    (requirement,) = verification.requirements_for(REF)
    assert dict(requirement.annotations) == {"tag": "v3", "channel": "stable"}


def test_tag_placeholder_without_a_tag_is_refused(tmp_path: Path) -> None:
    key = _key_loader(tmp_path / "k.pub")
    verification = Verification(keys=Requirement.from_keys([key], {"tag": "{tag}"}))  # type: ignore[list-item]
    with pytest.raises(errors.AnnotationMismatchError, match="names no tag"):
        verification.requirements_for(REF.with_digest("sha256:" + "a" * 64))


@pytest.mark.parametrize("bad", [0, -1.0, float("nan")])
def test_a_max_age_that_is_not_positive_is_a_config_error(tmp_path: Path, bad: float) -> None:
    key = _key_loader(tmp_path / "k.pub")
    with pytest.raises(errors.TrustConfigError, match="max_age_s"):
        Verification(keys=Requirement.from_keys([key]), max_age_s=bad)  # type: ignore[list-item]
