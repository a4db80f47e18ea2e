"""Signed updates only go forward (issue #20, part 2): rollback, freeze and mix-and-match at the pull.

The real registry behind a counting proxy, the Doras test server, and the real ``cosign sign``
(v2.6.5, ``--tlog-upload=false``). Versions are pushed with the oras CLI and an explicit
``org.opencontainers.image.created`` (what ``oras push`` sets by default, to the second), signed by
digest. Every refusal must exit 5 with its own reason, ask the Doras server nothing, fetch no blob of
the target and leave the layout byte for byte as it was.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from doras_oras.layout import ANNOTATION_SIGNED_CREATED, ANNOTATION_SIGNED_PREFIX, OCILayout
from doras_oras.testing.registry import find_tool
from tests.layout_support import cli, error_json, one_json, run
from tests.pull_support import edit, payload
from tests.trust_pull_support import TrustBed, layout_state, trust_bed
from tests.trust_support import KeyPair, generate_cosign_key

JAN, FEB, MAR = "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z"


@dataclass
class Env:
    bed: TrustBed
    key: KeyPair


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("forward")
    with trust_bed(work / "bed") as bed:
        yield Env(bed=bed, key=generate_cosign_key(bed.cosign, work / "key"))


def push(e: Env, repo: str, tag: str, data: bytes, created: str, workdir: Path) -> str:
    """``oras push`` of one file with this creation time; its digest."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "app.bin").write_bytes(data)
    run(find_tool("oras"), "push", "--plain-http", "--annotation", f"org.opencontainers.image.created={created}",
        f"{e.bed.registry.host}/{repo}:{tag}", "app.bin", cwd=workdir)
    return e.bed.digest(repo, tag)


def retag(e: Env, repo: str, digest: str, tag: str) -> None:
    run(find_tool("oras"), "tag", "--plain-http", f"{e.bed.registry.host}/{repo}@{digest}", tag)


def release(e: Env, name: str, tmp_path: Path, dates: tuple[str, ...] = (JAN, FEB),
            annotations: tuple[dict[str, str], ...] | None = None) -> tuple[str, list[str]]:
    """``repo`` with v1, v2, ... of one file created at ``dates``, each signed with cosign."""
    repo = e.bed.repo(name)
    data = payload(200_000, 5)
    digests = []
    for number, created in enumerate(dates, 1):
        digest = push(e, repo, f"v{number}", edit(data, number, 9), created, tmp_path / f"push{number}")
        e.bed.cosign_sign(e.key.private, repo, digest,
                          annotations=annotations[number - 1] if annotations else None)
        digests.append(digest)
    return repo, digests


def pull(e: Env, repo: str, tag: str, layout: Path, *args: str) -> tuple[int, dict[str, object]]:
    proc = e.bed.pull_cli(f"{e.bed.host}/{repo}:{tag}", layout, "--verify-key", str(e.key.public), *args)
    return proc.returncode, (error_json(proc) if proc.returncode not in (0, 3) else one_json(proc))


def assert_refused_untouched(e: Env, repo: str, tag: str, layout: Path, reason: str, *args: str) -> dict[str, object]:
    """Pull ``tag``: exit 5 with ``reason``; no delta asked, no blob of the target, the layout unchanged."""
    before = layout_state(layout)
    asked = e.bed.server.delta_requests
    e.bed.proxy.reset_counters()
    code, failure = pull(e, repo, tag, layout, *args)
    assert code == 5 and failure["reason"] == reason, failure
    assert layout_state(layout) == before
    assert e.bed.server.delta_requests == asked
    manifest = json.loads(run(find_tool("oras"), "manifest", "fetch", "--plain-http",
                              f"{e.bed.registry.host}/{repo}:{tag}").stdout)
    fetched = {r.path.rsplit("/", 1)[1] for r in e.bed.blob_requests()}
    assert not fetched & {manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])}
    return failure


# ----------------------------------------------------------------------------- rollback


def test_a_tag_moved_back_to_an_older_signed_digest_is_refused_before_any_delta(env: Env, tmp_path: Path) -> None:
    repo, (v1, v2) = release(env, "rollback", tmp_path)
    retag(env, repo, v2, "stable")
    layout = tmp_path / "L"
    assert pull(env, repo, "stable", layout)[0] == 0
    retag(env, repo, v1, "stable")  # the registry moves the tag back to a validly signed older release
    failure = assert_refused_untouched(env, repo, "stable", layout, "rollback")
    assert failure["error"] == "RollbackError" and "older than the installed" in str(failure["message"])
    assert [i.source_digest for i in OCILayout.open(layout).images()] == [v2]


def test_allow_downgrade_installs_the_older_version_and_says_which_rule_decided(env: Env, tmp_path: Path) -> None:
    repo, (v1, v2) = release(env, "downgrade", tmp_path)
    layout = tmp_path / "L"
    assert pull(env, repo, "v2", layout)[0] == 0
    code, result = pull(env, repo, "v1", layout, "--allow-downgrade")
    assert code == 0 and result["to_digest"] == v1 and result["status"] == "delta", result
    order = result["trust"]["order"]  # type: ignore[index]
    assert order == {"rule": "created", "outcome": "downgrade-allowed", "target": JAN, "installed": FEB,
                     "installed_digest": v2, "max_age_s": None, "age_s": None}


def test_a_forward_pull_records_the_order_and_the_next_pull_compares_with_it(env: Env, tmp_path: Path) -> None:
    repo, (v1, _v2) = release(env, "forward", tmp_path)
    layout = tmp_path / "L"
    code, first = pull(env, repo, "v1", layout)
    assert code == 0 and first["trust"]["order"]["outcome"] == "first"  # type: ignore[index]
    code, second = pull(env, repo, "v2", layout)
    assert code == 0 and second["status"] == "delta"
    assert second["trust"]["order"]["outcome"] == "newer"  # type: ignore[index]
    assert second["trust"]["order"]["installed_digest"] == v1  # type: ignore[index]
    entry = OCILayout.open(layout).images_of(f"{env.bed.host}/{repo}")[-1]
    assert entry.descriptor.annotations[ANNOTATION_SIGNED_CREATED] == FEB


def test_the_recorded_order_is_what_counts_after_gc_offline(env: Env, tmp_path: Path) -> None:
    """gc drops v1's blobs; the record on v2's entry alone still refuses v1 (no stored manifest read)."""
    repo, (_v1, v2) = release(env, "after-gc", tmp_path)
    layout = tmp_path / "L"
    assert pull(env, repo, "v1", layout)[0] == 0
    assert pull(env, repo, "v2", layout)[0] == 0
    gc = cli("gc", "--oci-layout", str(layout), "--keep", "1")
    assert gc.returncode == 0, gc.stderr
    assert [i.source_digest for i in OCILayout.open(layout).images()] == [v2]
    assert_refused_untouched(env, repo, "v1", layout, "rollback")


# ----------------------------------------------------------------------------- mix-and-match and tag binding


def test_an_older_digest_served_under_a_new_tag_is_refused_even_when_the_layout_holds_it(env: Env,
                                                                                        tmp_path: Path) -> None:
    """The layout holds v1 and v2; ``v3`` pointed at v1's digest is not 'up to date': it goes back."""
    repo, (v1, _v2) = release(env, "mix", tmp_path)
    layout = tmp_path / "L"
    assert pull(env, repo, "v1", layout)[0] == 0
    assert pull(env, repo, "v2", layout)[0] == 0
    retag(env, repo, v1, "v3")
    assert_refused_untouched(env, repo, "v3", layout, "rollback")
    assert "v3" not in [i.tag for i in OCILayout.open(layout).images()]


def test_tag_binding_refuses_a_signature_made_for_another_tag(env: Env, tmp_path: Path) -> None:
    repo, (v1, v2) = release(env, "binding", tmp_path, annotations=({"tag": "v1"}, {"tag": "v2"}))
    layout = tmp_path / "L"
    code, result = pull(env, repo, "v1", layout, "--verify-annotation", "tag={tag}")
    assert code == 0 and result["to_digest"] == v1, result
    retag(env, repo, v2, "v3")  # a newer signed release, served as a tag it was not signed for
    failure = assert_refused_untouched(env, repo, "v3", layout, "annotation", "--verify-annotation", "tag={tag}")
    assert "tag='v2'" in str(failure["message"]) and "'v3'" in str(failure["message"])


# ----------------------------------------------------------------------------- freeze


def test_a_target_older_than_max_age_is_refused(env: Env, tmp_path: Path) -> None:
    repo, _ = release(env, "stale", tmp_path, dates=("2020-01-01T00:00:00Z",))
    layout = tmp_path / "L"
    OCILayout.open(layout)  # an empty layout, so that "untouched" can be compared
    failure = assert_refused_untouched(env, repo, "v1", layout, "stale", "--max-age", "30d")
    assert failure["error"] == "StaleTargetError"


def test_up_to_date_is_refused_too_when_the_held_image_is_stale(env: Env, tmp_path: Path) -> None:
    """A registry that keeps answering the same old digest: 'up to date' is not reported forever."""
    repo, _ = release(env, "frozen", tmp_path, dates=("2020-01-01T00:00:00Z",))
    layout = tmp_path / "L"
    assert pull(env, repo, "v1", layout)[0] == 0
    before = layout_state(layout)
    code, failure = pull(env, repo, "v1", layout, "--max-age", "30d")
    assert code == 5 and failure["reason"] == "stale", failure
    assert layout_state(layout) == before
    verify = cli("verify", f"{env.bed.host}/{repo}:v1", "--oci-layout", str(layout), "--verify-key",
                 str(env.key.public), "--max-age", "30d", "--json")
    assert verify.returncode == 5 and error_json(verify)["reason"] == "stale"


def test_a_fresh_target_passes_max_age_and_reports_its_age(env: Env, tmp_path: Path) -> None:
    repo, _ = release(env, "fresh", tmp_path, dates=(FEB,))
    layout = tmp_path / "L"
    code, result = pull(env, repo, "v1", layout, "--max-age", "36500d")
    assert code == 0 and result["trust"]["order"]["max_age_s"] == 36500 * 86400  # type: ignore[index]
    assert result["trust"]["order"]["age_s"] > 0  # type: ignore[index]


# ----------------------------------------------------------------------------- a policy's own order


def test_a_policy_orders_by_a_signed_version_not_by_created(env: Env, tmp_path: Path) -> None:
    """v2 is created later but signed as version 1 (after v1's version 2): the policy's rule decides."""
    repo, (_v1, _v2) = release(env, "policy-version", tmp_path, annotations=({"version": "2"}, {"version": "1"}))
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"version": 1, "rules": [
        {"repository": f"{env.bed.host}/{repo}", "keys": [str(env.key.public)],
         "order": {"annotation": "version", "compare": "integer"}}]}))
    layout = tmp_path / "L"
    proc = env.bed.pull_cli(f"{env.bed.host}/{repo}:v1", layout, "--trust-policy", str(policy))
    assert proc.returncode == 0, proc.stderr
    entry = OCILayout.open(layout).images()[-1]
    assert entry.descriptor.annotations[ANNOTATION_SIGNED_PREFIX + "version"] == "2"
    before = layout_state(layout)
    refused = env.bed.pull_cli(f"{env.bed.host}/{repo}:v2", layout, "--trust-policy", str(policy))
    assert refused.returncode == 5 and error_json(refused)["reason"] == "rollback"
    assert "version (integer) 1" in refused.stderr
    assert layout_state(layout) == before


def test_a_target_without_the_policy_version_is_refused_unless_allowed(env: Env, tmp_path: Path) -> None:
    repo, _ = release(env, "policy-missing", tmp_path, annotations=({"version": "1"}, {}))
    rule = {"repository": f"{env.bed.host}/{repo}", "keys": [str(env.key.public)],
            "order": {"annotation": "version", "compare": "integer"}}
    strict, lenient = tmp_path / "strict.json", tmp_path / "lenient.json"
    strict.write_text(json.dumps({"version": 1, "rules": [rule]}))
    lenient.write_text(json.dumps({"version": 1, "rules": [
        {**rule, "order": {**rule["order"], "allow_missing": True}}]}))  # type: ignore[dict-item]
    layout = tmp_path / "L"
    assert env.bed.pull_cli(f"{env.bed.host}/{repo}:v1", layout, "--trust-policy", str(strict)).returncode == 0
    refused = env.bed.pull_cli(f"{env.bed.host}/{repo}:v2", layout, "--trust-policy", str(strict))
    assert refused.returncode == 5 and error_json(refused)["reason"] == "unordered"
    allowed = env.bed.pull_cli(f"{env.bed.host}/{repo}:v2", layout, "--trust-policy", str(lenient))
    assert allowed.returncode == 0, allowed.stderr
    assert one_json(allowed)["trust"]["order"]["outcome"] == "unordered"


# ----------------------------------------------------------------------------- usage


@pytest.mark.parametrize("flags", [("--allow-downgrade",), ("--max-age", "7d")])
def test_the_forward_flags_need_verification(env: Env, tmp_path: Path, flags: tuple[str, ...]) -> None:
    proc = env.bed.pull_cli(f"{env.bed.host}/x/y:v1", tmp_path / "L", *flags)
    assert proc.returncode == 2 and "needs --verify-key" in proc.stderr


@pytest.mark.parametrize("bad", ["0", "0d", "week", "nand"])
def test_max_age_must_be_a_positive_duration(env: Env, tmp_path: Path, bad: str) -> None:
    proc = env.bed.pull_cli(f"{env.bed.host}/x/y:v1", tmp_path / "L", "--verify-key", str(env.key.public),
                            "--max-age", bad)
    assert proc.returncode == 2 and "duration" in proc.stderr and "--max-age" in proc.stderr


# ----------------------------------------------------------------------------- the library, and older layouts


def test_pull_full_with_verify_refuses_a_rollback_unless_allowed(env: Env, tmp_path: Path) -> None:
    from doras_oras import errors
    from doras_oras.full import pull_full
    from doras_oras.trust import Requirement, load_public_key

    repo, (v1, v2) = release(env, "library", tmp_path)
    layout = OCILayout.open(tmp_path / "L")
    keys = Requirement.from_keys([load_public_key(env.key.public)])
    with env.bed.client() as client:
        assert pull_full(client, f"{env.bed.host}/{repo}:v2", layout, verify=keys).manifest.digest == v2
        with pytest.raises(errors.RollbackError):
            pull_full(client, f"{env.bed.host}/{repo}:v1", layout, verify=keys)
        assert [i.source_digest for i in layout.images()] == [v2]
        back = pull_full(client, f"{env.bed.host}/{repo}:v1", layout, verify=keys, allow_downgrade=True)
    assert back.manifest.digest == v1 and back.trust is not None and back.trust.order is not None
    assert back.trust.order.outcome == "downgrade-allowed"


def test_an_image_stored_without_verification_is_ordered_by_its_stored_created(env: Env, tmp_path: Path) -> None:
    """No record on the entry (pulled before verification was on): its stored manifest's created counts."""
    repo, _ = release(env, "unrecorded", tmp_path)
    layout = tmp_path / "L"
    plain = env.bed.pull_cli(f"{env.bed.host}/{repo}:v2", layout)
    assert plain.returncode == 0, plain.stderr
    assert ANNOTATION_SIGNED_CREATED not in OCILayout.open(layout).images()[-1].descriptor.annotations
    assert_refused_untouched(env, repo, "v1", layout, "rollback")
