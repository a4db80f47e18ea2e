"""Verified pulls (issue #12): resolve, verify, and only then ask for a delta, download, apply, commit.

Against the real registry (behind a counting proxy, as the devices name it), the Doras test server
and the test bed's signer (its output is checked against the real cosign in
test_testbed_signing.py; the side-by-side cases with cosign's own signatures are in
test_pull_trust_cosign.py). Every refusal must leave the layout byte for byte as it was, ask the
Doras server nothing, and fetch nothing of the target but its signature.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from doras_oras import errors
from doras_oras.layout import OCILayout
from doras_oras.pull import pull_delta
from doras_oras.registry_client import RegistryClient
from doras_oras.testing.registry import find_tool
from doras_oras.trust import Requirement, load_public_key, signature_tag
from tests.layout_support import (
    build_container_layout,
    cli,
    error_json,
    name_of,
    one_json,
    push_layout,
    run,
)
from tests.pull_support import check_layout, edit, payload
from tests.trust_pull_support import TrustBed, layout_state, trust_bed
from tests.trust_support import get_manifest, put_manifest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrustBed]:
    with trust_bed(tmp_path_factory.mktemp("trust-bed")) as made:
        yield made


def keys(bed: TrustBed) -> Requirement:
    return Requirement.from_keys([load_public_key(bed.key.public_path)])


def versions(bed: TrustBed, name: str, *, size: int = 300_000, sign: bool = True,
             mode: str = "tag") -> tuple[str, str, str]:
    """``repo`` with v1 and v2 of one file (v2: a few edits); both signed by key A unless ``sign`` is off."""
    repo = bed.repo(name)
    data = payload(size, 11)
    v1 = bed.push_file(repo, "v1", data)
    v2 = bed.push_file(repo, "v2", edit(data, 20, 12))
    if sign:
        bed.sign(repo, v1, mode=mode)
        bed.sign(repo, v2, mode=mode)
    return repo, v1, v2


def pulled_v1(bed: TrustBed, repo: str, tmp_path: Path) -> Path:
    layout = tmp_path / "L"
    first = bed.pull_cli(f"{bed.host}/{repo}:v1", layout, "--verify-key", str(bed.key.public_path))
    assert first.returncode == 0, first.stderr
    return layout


def sig_blob(registry_url: str, repo: str, digest: str) -> bytes:
    return get_manifest(registry_url, repo, signature_tag(digest))[0]


# ----------------------------------------------------------------------------- what is accepted


def test_signed_delta_pull_of_a_file_costs_two_requests_and_keeps_the_signature(bed: TrustBed,
                                                                                tmp_path: Path) -> None:
    repo, _v1, v2 = versions(bed, "delta-file")
    layout = pulled_v1(bed, repo, tmp_path)
    bed.proxy.reset_counters()
    proc = bed.pull_cli(f"{bed.host}/{repo}:v2", layout, "--verify-key", str(bed.key.public_path))
    assert proc.returncode == 0, proc.stderr
    result = one_json(proc)
    assert (result["status"], result["to_digest"]) == ("delta", v2)
    signature = result["trust"]["signature"]
    assert signature["key"]["name"] == "cosign.pub" and signature["digest"] == v2
    assert signature["key"]["fingerprint"] == load_public_key(bed.key.public_path).identity.fingerprint
    assert (signature["found_via"], signature["location"]) == ("tag", signature_tag(v2))
    assert result["trust"]["origin"] == "registry" and result["trust"]["required"] is True
    # the signature cost one manifest and one blob (cosign's config is rebuilt, not fetched)
    sig_paths = [r.path for r in bed.proxy.requests() if r.path.endswith(".sig")]
    assert sig_paths == [f"/v2/{repo}/manifests/{signature_tag(v2)}"]
    body = sig_blob(bed.registry.url, repo, v2)
    document = json.loads(body)
    fetched = [r.path.rsplit("/", 1)[1] for r in bed.blob_requests()]
    assert fetched.count(document["layers"][0]["digest"]) == 1 and document["config"]["digest"] not in fetched
    assert not [r for r in bed.proxy.requests() if "/referrers/" in r.path]
    # the layout keeps the signature manifest under its tag, as skopeo and oras read it
    raw = run("skopeo", "inspect", "--raw", f"oci:{layout}:{signature_tag(v2)}").stdout.encode()
    assert raw == body
    check_layout(layout, "v2")
    images = OCILayout.open(layout).images()
    assert [i.tag for i in images] == ["v1", "v2"]  # signatures are never images
    verify = cli("verify", f"{bed.host}/{repo}:v2", "--oci-layout", str(layout),
                 "--verify-key", str(bed.key.public_path), "--json")
    assert verify.returncode == 0, verify.stderr
    assert one_json(verify)["signed_digest"] == v2


def test_the_text_line_names_the_key_that_verified(bed: TrustBed, tmp_path: Path) -> None:
    repo, _v1, v2 = versions(bed, "text-line")
    layout = pulled_v1(bed, repo, tmp_path)
    proc = cli("pull", f"{bed.host}/{repo}:v2", "--oci-layout", str(layout), "--plain-http",
               "--server", bed.server.url, "--verify-key", str(bed.key.public_path))
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    assert f"updated to {v2} by delta" in line and line.endswith(f"; signed by {bed.key.public_path.name}"), line
    unsigned = cli("pull", f"{bed.host}/{repo}:v1", "--oci-layout", str(tmp_path / "plain"), "--plain-http")
    assert unsigned.returncode == 0 and "signed by" not in unsigned.stdout, unsigned.stdout


def test_signed_delta_of_a_directory_is_rewritten_and_still_verifies_offline(bed: TrustBed, tmp_path: Path) -> None:
    repo = bed.repo("delta-dir")
    files = {f"etc/{i}.conf": payload(4000, i) for i in range(10)}
    v1 = bed.push_dir(repo, "v1", files)
    files["etc/3.conf"] = edit(files["etc/3.conf"], 3, 4)
    v2 = bed.push_dir(repo, "v2", files)
    bed.sign(repo, v1, mode="referrers")
    bed.sign(repo, v2, mode="referrers")
    layout = pulled_v1(bed, repo, tmp_path)
    proc = bed.pull_cli(f"{bed.host}/{repo}:v2", layout, "--verify-key", str(bed.key.public_path))
    assert proc.returncode == 0, proc.stderr
    result = one_json(proc)
    assert (result["status"], result["algorithm"]) == ("delta", "tardiff")
    assert result["stored_digest"] != v2 and result["trust"]["signature"]["found_via"] == "referrers-tag"
    # the registry's manifest (what was signed) is kept beside the rewritten one
    assert (layout / "blobs" / "sha256" / v2.split(":")[1]).is_file()
    ok = cli("verify", f"{bed.host}/{repo}:v2", "--oci-layout", str(layout), "--verify-key",
             str(bed.key.public_path))
    assert ok.returncode == 0, ok.stderr
    (layout / "blobs" / "sha256" / v2.split(":")[1]).unlink()
    broken = cli("verify", f"{bed.host}/{repo}:v2", "--oci-layout", str(layout), "--verify-key",
                 str(bed.key.public_path), "--json")
    assert broken.returncode == 5 and error_json(broken)["error"] == "TrustChainError", broken.stderr


def test_signed_full_pull_of_a_referrer_is_stored_as_oras_copy_r_stores_it(bed: TrustBed, tmp_path: Path) -> None:
    repo, _v1, _ = versions(bed, "full-referrer", size=50_000, mode="referrers")
    layout = tmp_path / "L"
    proc = bed.pull_cli(f"{bed.host}/{repo}:v1", layout, "--verify-key", str(bed.key.public_path), server=False)
    assert proc.returncode == 0, proc.stderr
    assert one_json(proc)["trust"]["signature"]["found_via"] == "referrers-tag"
    entries = json.loads((layout / "index.json").read_text())["manifests"]
    referrer = [e for e in entries if e.get("artifactType") == "application/vnd.dev.cosign.artifact.sig.v1+json"]
    assert len(referrer) == 1 and "org.opencontainers.image.ref.name" not in referrer[0]["annotations"]
    discovered = run(find_tool("oras"), "discover", "--oci-layout", f"{layout}:{name_of(layout, 'v1')}").stdout
    assert referrer[0]["digest"] in discovered
    check_layout(layout, "v1")
    # the layout is a complete copy: oras copies image and signature out, cosign verifies the copy
    copy = f"{bed.host}/{repo}-copy:v1"
    run(find_tool("oras"), "copy", "-r", "--from-oci-layout", f"{layout}:{name_of(layout, 'v1')}", "--to-plain-http",
        copy)
    accepted, stderr = bed.cosign.verify(bed.key.public_path, copy)
    assert accepted, stderr


def test_an_index_is_verified_by_its_digest_then_the_platform_manifest_through_it(bed: TrustBed,
                                                                                 tmp_path: Path) -> None:
    repo = bed.repo("index")
    build_container_layout(tmp_path / "src", "v1", {"hello.txt": b"hello\n"}, platforms=("linux/amd64", "linux/arm64"))
    push_layout(tmp_path / "src", "v1", bed.registry.host, f"{repo}:v1")
    index = bed.digest(repo, "v1")
    children = [m["digest"] for m in json.loads(get_manifest(bed.registry.url, repo, "v1")[0])["manifests"]]
    for child in children:  # the platform manifests are signed, the index is not: refused
        bed.sign(repo, child)
    layout = tmp_path / "L"
    ref = f"{bed.host}/{repo}:v1"
    refused = bed.pull_cli(ref, layout, "--verify-key", str(bed.key.public_path), "--platform", "linux/arm64")
    assert refused.returncode == 5 and "no signature" in refused.stderr
    bed.sign(repo, index)
    proc = bed.pull_cli(ref, layout, "--verify-key", str(bed.key.public_path), "--platform", "linux/arm64")
    assert proc.returncode == 0, proc.stderr
    result = one_json(proc)
    assert result["to_digest"] == index and result["stored_digest"] in children
    assert result["trust"]["signature"]["digest"] == index
    ok = cli("verify", ref, "--oci-layout", str(layout), "--verify-key", str(bed.key.public_path), "--json")
    assert ok.returncode == 0 and one_json(ok)["signed_digest"] == index, ok.stderr
    check_layout(layout, "v1")


def test_the_python_api_reports_the_key_and_pull_full_verifies_too(bed: TrustBed, tmp_path: Path) -> None:
    from doras_oras.full import pull_full

    repo, v1, _v2 = versions(bed, "api", size=20_000)
    with RegistryClient(plain_http=True) as client:
        layout = OCILayout.open(tmp_path / "L")
        full = pull_full(client, f"{bed.host}/{repo}:v1", layout, verify=keys(bed))
        assert full.trust is not None and full.trust.signature is not None
        assert full.trust.signature.key.name == "cosign.pub" and full.manifest.digest == v1
        with pytest.raises(errors.SignatureInvalidError):
            pull_full(client, f"{bed.host}/{repo}:v2", layout,
                      verify=Requirement.from_keys([load_public_key(bed.other.public_path)]))
        result = pull_delta(client, f"{bed.host}/{repo}:v2", layout, doras_url=bed.server.url, verify=keys(bed))
    assert result.status == "delta" and result.trust is not None
    assert result.trust.signature is not None and result.trust.signature.key.name == "cosign.pub"
    assert result.to_json()["trust"] == result.trust.to_json()


# ----------------------------------------------------------------------------- what is refused


def _unsigned(bed: TrustBed, repo: str, v1: str, v2: str) -> None:
    return None


def _wrong_key(bed: TrustBed, repo: str, v1: str, v2: str) -> None:
    bed.sign(repo, v2, bed.other)


def _moved_from_another_image(bed: TrustBed, repo: str, v1: str, v2: str) -> None:
    body = sig_blob(bed.registry.url, repo, v1)
    put_manifest(bed.registry.url, repo, signature_tag(v2), body, OCI_MANIFEST)


def _for_another_repository(bed: TrustBed, repo: str, v1: str, v2: str) -> None:
    bed.sign(repo, v2, reference=f"{bed.host}/{repo}-elsewhere")


def _malformed(bed: TrustBed, repo: str, v1: str, v2: str) -> None:
    bed.sign(repo, v2)
    document = json.loads(sig_blob(bed.registry.url, repo, v2))
    del document["layers"][0]["annotations"]
    put_manifest(bed.registry.url, repo, signature_tag(v2), json.dumps(document).encode(), OCI_MANIFEST)


def _tag_moved_to_an_unsigned_digest(bed: TrustBed, repo: str, v1: str, v2: str) -> None:
    bed.sign(repo, v2)
    bed.push_file(repo, "v2", payload(300_000, 99))  # v2 now names a digest nobody signed


REFUSALS: dict[str, tuple[Callable[[TrustBed, str, str, str], None], tuple[str, ...], type[errors.TrustError], str]] = {
    "unsigned": (_unsigned, (), errors.SignatureNotFoundError, "no signature found"),
    "wrong key": (_wrong_key, (), errors.SignatureInvalidError, "does not verify"),
    "signature moved from another image": (_moved_from_another_image, (), errors.PayloadMismatchError, "for digest"),
    "payload for another repository": (_for_another_repository, (), errors.PayloadMismatchError, "for repository"),
    "malformed signature manifest": (_malformed, (), errors.MalformedSignatureError, "no base64"),
    "re-signed tag pointing at an unsigned digest": (_tag_moved_to_an_unsigned_digest, (),
                                                     errors.SignatureNotFoundError, "no signature found"),
    "required annotation missing": (lambda b, r, v1, v2: b.sign(r, v2), ("--verify-annotation", "channel=stable"),
                                    errors.AnnotationMismatchError, "channel"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refused_before_any_delta_download_or_write(bed: TrustBed, tmp_path: Path, case: str) -> None:
    spoil, extra, error, words = REFUSALS[case]
    repo, v1, v2 = versions(bed, "refused", sign=False)
    bed.sign(repo, v1)
    layout = pulled_v1(bed, repo, tmp_path)
    spoil(bed, repo, v1, v2)
    before = layout_state(layout)
    asked = bed.server.delta_requests
    bed.proxy.reset_counters()
    proc = bed.pull_cli(f"{bed.host}/{repo}:v2", layout, "--verify-key", str(bed.key.public_path), *extra)
    assert proc.returncode == 5, proc.stderr
    failure = error_json(proc)
    assert failure["error"] == error.__name__ and words in str(failure["message"]), failure
    assert "refusing" in proc.stderr and error.reason != "trust"
    assert layout_state(layout) == before  # nothing written; the old image is intact
    assert bed.server.delta_requests == asked  # no delta asked
    target = bed.digest(repo, "v2")
    seen = [f"{r.method} {r.path}" for r in bed.proxy.requests()]
    assert f"GET /v2/{repo}/manifests/{target}" not in seen  # not even the target manifest
    try:
        payloads = {layer["digest"] for layer in json.loads(sig_blob(bed.registry.url, repo, target))["layers"]}
    except requests.HTTPError:  # unsigned: no signature manifest at all
        payloads = set()
    assert {r.path.rsplit("/", 1)[1] for r in bed.blob_requests()} <= payloads  # only signature payloads
    check_layout(layout, "v1")


def test_a_transport_error_while_reading_signatures_fails_the_pull_without_fallback(bed: TrustBed,
                                                                                    tmp_path: Path) -> None:
    repo, _v1, _v2 = versions(bed, "transport")
    layout = pulled_v1(bed, repo, tmp_path)
    before = layout_state(layout)
    asked = bed.server.delta_requests
    fault = bed.proxy.add("status", path=r"\.sig$", status=500)
    try:
        proc = bed.pull_cli(f"{bed.host}/{repo}:v2", layout, "--verify-key", str(bed.key.public_path))
    finally:
        bed.proxy.clear()
    assert fault.applied >= 1
    assert proc.returncode == 1, proc.stderr
    assert error_json(proc)["error"] == "RegistryError"
    assert layout_state(layout) == before and bed.server.delta_requests == asked
    # a 500 from the referrers API of an unsigned image: the same (404 is "no API"; 500 is not)
    repo2, _, _ = versions(bed, "transport-referrers", size=10_000, sign=False)
    bed.proxy.add("status", path=r"/referrers/", status=500)
    try:
        proc = bed.pull_cli(f"{bed.host}/{repo2}:v1", tmp_path / "L2", "--verify-key", str(bed.key.public_path))
    finally:
        bed.proxy.clear()
    assert proc.returncode == 1 and error_json(proc)["error"] == "RegistryError", proc.stderr


def test_fallbacks_install_exactly_the_verified_digest(bed: TrustBed, tmp_path: Path) -> None:
    repo, _, v2 = versions(bed, "fallback")
    layout = pulled_v1(bed, repo, tmp_path)
    # the server is down: a full pull, of the verified digest, with its signature kept
    down = bed.pull_cli(f"{bed.host}/{repo}:v2", layout, "--verify-key", str(bed.key.public_path),
                        "--server", "http://127.0.0.1:9", server=False)
    assert down.returncode == 0, down.stderr
    result = one_json(down)
    assert (result["status"], result["reason_code"], result["stored_digest"]) == ("full", "server-unreachable", v2)
    assert result["trust"]["signature"]["digest"] == v2
    # the tag moves to an unsigned digest while the server builds; the fallback installs what was verified
    repo, _v1, v2 = versions(bed, "fallback-moved")
    layout = pulled_v1(bed, repo, tmp_path / "second")
    from tests.trust_pull_support import ProxiedDoras

    with ProxiedDoras(bed.registry.url, bed.proxy.host, fail_builds=True) as slow, \
            RegistryClient(plain_http=True) as client:
        moved: list[str] = []

        def on_wait(sent: int, waited: float) -> None:
            if not moved:
                moved.append(bed.push_file(repo, "v2", payload(300_000, 77)))

        result2 = pull_delta(client, f"{bed.host}/{repo}:v2", layout, doras_url=slow.url, verify=keys(bed),
                             timeout_s=1.5, on_wait=on_wait)
    assert moved and moved[0] != v2
    assert (result2.status, result2.reason_code) == ("full", "delta-timeout")
    assert result2.stored_digest == v2 == result2.to_digest
    assert result2.trust is not None and result2.trust.signature is not None
    assert result2.trust.signature.digest == v2
    entry = OCILayout.open(layout).get_image(f"{bed.host}/{repo}", "v2")
    assert entry.descriptor.digest == v2


def test_up_to_date_is_checked_against_the_stored_signature_without_a_request(bed: TrustBed,
                                                                              tmp_path: Path) -> None:
    repo, _v1, _ = versions(bed, "uptodate", size=20_000)
    layout = pulled_v1(bed, repo, tmp_path)
    bed.proxy.reset_counters()
    again = bed.pull_cli(f"{bed.host}/{repo}:v1", layout, "--verify-key", str(bed.key.public_path))
    assert again.returncode == 3, again.stderr
    result = one_json(again)
    assert result["status"] == "up-to-date" and result["trust"]["origin"] == "layout"
    assert result["trust"]["signature"]["key"]["name"] == "cosign.pub"
    assert [f"{r.method} {r.path} {r.status}" for r in bed.proxy.requests()] == [f"GET /v2/{repo}/manifests/v1 304"]
    # another key now: the stored signature does not pass, the registry's is asked and refused
    before = layout_state(layout)
    other = bed.pull_cli(f"{bed.host}/{repo}:v1", layout, "--verify-key", str(bed.other.public_path))
    assert other.returncode == 5 and error_json(other)["error"] == "SignatureInvalidError"
    assert layout_state(layout) == before


def test_an_image_stored_unverified_gets_its_signature_checked_and_kept(bed: TrustBed, tmp_path: Path) -> None:
    repo, v1, _ = versions(bed, "unverified-first", size=20_000, sign=False)
    layout = tmp_path / "L"
    assert bed.pull_cli(f"{bed.host}/{repo}:v1", layout).returncode == 0
    before = layout_state(layout)
    unsigned = bed.pull_cli(f"{bed.host}/{repo}:v1", layout, "--verify-key", str(bed.key.public_path))
    assert unsigned.returncode == 5 and layout_state(layout) == before, unsigned.stderr
    bed.sign(repo, v1)
    signed = bed.pull_cli(f"{bed.host}/{repo}:v1", layout, "--verify-key", str(bed.key.public_path))
    assert signed.returncode == 3, signed.stderr
    assert one_json(signed)["trust"]["origin"] == "registry"
    stored = OCILayout.open(layout)
    assert [a.tag for a in stored.attachments(f"{bed.host}/{repo}")] == [signature_tag(v1)]
    assert [i.tag for i in stored.images()] == ["v1"]
    bed.proxy.reset_counters()
    assert one_json(bed.pull_cli(f"{bed.host}/{repo}:v1", layout, "--verify-key",
                                 str(bed.key.public_path)))["trust"]["origin"] == "layout"
    assert bed.signature_requests() == []


# ----------------------------------------------------------------------------- policy and keys


def test_trust_policy_per_repository_glob_and_how_it_combines_with_keys(bed: TrustBed, tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    (keys_dir / "fleet.pub").write_bytes(bed.key.public_path.read_bytes())
    policy = tmp_path / "trust.json"
    policy.write_text(json.dumps({"version": 1, "rules": [
        {"repository": "trust-pull/fleet-*", "keys": ["keys/fleet.pub"]},
        {"repository": "trust-pull/tools-*", "keys": []},
    ]}))
    fleet = bed.repo("fleet")
    fleet_v1 = bed.push_file(fleet, "v1", payload(10_000, 1))
    tools = bed.repo("tools")
    bed.push_file(tools, "v1", payload(10_000, 2))
    other = bed.repo("other")
    bed.push_file(other, "v1", payload(10_000, 3))
    layout = tmp_path / "L"

    def pull(repo: str, *args: str) -> Any:
        return bed.pull_cli(f"{bed.host}/{repo}:v1", tmp_path / f"L-{repo.rsplit('/', 1)[1]}-{len(args)}",
                            "--trust-policy", str(policy), *args, server=False)

    unsigned = pull(fleet)
    assert unsigned.returncode == 5 and error_json(unsigned)["error"] == "SignatureNotFoundError"
    bed.sign(fleet, fleet_v1, bed.other)
    assert error_json(pull(fleet))["error"] == "SignatureInvalidError"
    bed.sign(fleet, fleet_v1)
    ok = one_json(pull(fleet))
    assert ok["trust"]["rule"] == "trust-pull/fleet-*" and ok["trust"]["signature"]["key"]["name"] == "fleet.pub"
    free = pull(tools)
    assert free.returncode == 0, free.stderr
    assert one_json(free)["trust"] == {"required": False, "rule": "trust-pull/tools-*", "signature": None,
                                       "origin": "registry", "checks": [], "order": None}
    untrusted = pull(other)
    assert untrusted.returncode == 5 and error_json(untrusted)["error"] == "UntrustedRepositoryError"
    assert not (tmp_path / "L-other-0" / "blobs" / "sha256").exists() or not any(
        (tmp_path / "L-other-0" / "blobs" / "sha256").iterdir())
    # with --verify-key too, both must pass: the command line adds a requirement, never waives one
    stricter = pull(tools, "--verify-key", str(bed.key.public_path))
    assert stricter.returncode == 5 and error_json(stricter)["error"] == "SignatureNotFoundError"
    needs_b = pull(fleet, "--verify-key", str(bed.other.public_path))
    assert needs_b.returncode == 0, needs_b.stderr  # fleet_v1 carries signatures by both keys
    both = one_json(needs_b)["trust"]
    assert [c["signature"]["key"]["name"] for c in both["checks"]] == ["fleet.pub", "cosign.pub"]
    assert {c["signature"]["key"]["fingerprint"] for c in both["checks"]} == {
        load_public_key(bed.key.public_path).identity.fingerprint,
        load_public_key(bed.other.public_path).identity.fingerprint}
    assert layout  # (each pull above has a layout of its own)


def test_trust_options_usage_and_config_errors(bed: TrustBed, tmp_path: Path) -> None:
    ref = f"{bed.host}/trust-pull/none:v1"
    layout = str(tmp_path / "L")
    no_key = cli("pull", ref, "--oci-layout", layout, "--verify-annotation", "channel=stable", "--json")
    assert no_key.returncode == 2 and "needs --verify-key" in no_key.stderr
    bad = cli("pull", ref, "--oci-layout", layout, "--verify-key", str(bed.key.public_path),
              "--verify-annotation", "channel")
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr
    missing = cli("pull", ref, "--oci-layout", layout, "--verify-key", str(tmp_path / "nope.pub"), "--json")
    assert missing.returncode == 5 and error_json(missing)["error"] == "TrustConfigError"
    policy = tmp_path / "p.json"
    policy.write_text(json.dumps({"version": 1, "rules": [{"repository": "**", "key": []}]}))
    typo = cli("pull", ref, "--oci-layout", layout, "--trust-policy", str(policy), "--json")
    assert typo.returncode == 5 and error_json(typo)["error"] == "TrustConfigError"
    verify = cli("verify", ref, "--oci-layout", layout)
    assert verify.returncode == 2 and "--verify-key" in verify.stderr
    assert not (tmp_path / "L").exists()  # nothing was even created


# ----------------------------------------------------------------------------- offline re-verification


def test_offline_verification_refuses_tampered_stored_bytes(bed: TrustBed, tmp_path: Path) -> None:
    repo, v1, _ = versions(bed, "offline", size=30_000)
    layout = pulled_v1(bed, repo, tmp_path)
    ref = f"{bed.host}/{repo}:v1"

    def verify(*args: str) -> Any:
        return cli("verify", ref, "--oci-layout", str(layout), "--json", *args)

    good = verify("--verify-key", str(bed.key.public_path))
    assert good.returncode == 0, good.stderr
    assert one_json(good)["trust"]["origin"] == "layout"
    assert verify("--verify-key", str(bed.other.public_path)).returncode == 5
    assert verify("--verify-key", str(bed.key.public_path), "--verify-annotation", "a=b").returncode == 5
    assert cli("verify", f"{bed.host}/{repo}:v9", "--oci-layout", str(layout), "--verify-key",
               str(bed.key.public_path)).returncode == 1
    # a stored signature payload changed: refused (and nothing removed: verify only reads)
    signature = json.loads(run("skopeo", "inspect", "--raw", f"oci:{layout}:{signature_tag(v1)}").stdout)
    payload_path = layout / "blobs" / "sha256" / signature["layers"][0]["digest"].split(":")[1]
    original = payload_path.read_bytes()
    payload_path.write_bytes(original.replace(b"cosign", b"cosigN"))
    tampered = verify("--verify-key", str(bed.key.public_path))
    assert tampered.returncode == 5 and error_json(tampered)["error"] == "MalformedSignatureError"
    assert payload_path.is_file()
    payload_path.write_bytes(original)
    # a stored layer changed: the image no longer matches what was signed
    manifest = json.loads(run("skopeo", "inspect", "--raw", f"oci:{layout}:{name_of(layout, 'v1')}").stdout)
    layer_path = layout / "blobs" / "sha256" / manifest["layers"][0]["digest"].split(":")[1]
    data = bytearray(layer_path.read_bytes())
    data[100] ^= 1
    layer_path.write_bytes(bytes(data))
    rotten = verify("--verify-key", str(bed.key.public_path))
    assert rotten.returncode == 5 and error_json(rotten)["error"] == "TrustChainError"
    assert hashlib.sha256(layer_path.read_bytes()).hexdigest() != manifest["layers"][0]["digest"].split(":")[1]


def test_gc_keeps_signatures_with_their_images(bed: TrustBed, tmp_path: Path) -> None:
    repo, v1, v2 = versions(bed, "gc", size=20_000)
    layout = pulled_v1(bed, repo, tmp_path)
    assert bed.pull_cli(f"{bed.host}/{repo}:v2", layout, "--verify-key", str(bed.key.public_path)).returncode == 0
    stored = OCILayout.open(layout)
    assert sorted(a.subject or "" for a in stored.attachments()) == sorted([v1, v2])
    assert cli("gc", "--oci-layout", str(layout), "--keep", "1").returncode == 0
    stored = OCILayout.open(layout)
    assert [a.subject for a in stored.attachments()] == [v2]
    check_layout(layout, "v2")
    assert cli("verify", f"{bed.host}/{repo}:v2", "--oci-layout", str(layout), "--verify-key",
               str(bed.key.public_path)).returncode == 0
    assert cli("gc", "--oci-layout", str(layout), "--keep", "0", "--force").returncode == 0
    stored = OCILayout.open(layout)
    assert stored.attachments() == [] and stored.images() == []
    assert list((layout / "blobs" / "sha256").iterdir()) == []


def test_the_reference_for_verification_is_the_resolved_digest(bed: TrustBed, tmp_path: Path) -> None:
    """A pull by digest verifies that digest; by tag, the digest the tag resolves to right then."""
    repo, v1, _v2 = versions(bed, "by-digest", size=10_000)
    proc = bed.pull_cli(f"{bed.host}/{repo}@{v1}", tmp_path / "L", "--verify-key", str(bed.key.public_path),
                        server=False)
    assert proc.returncode == 0, proc.stderr
    assert one_json(proc)["trust"]["signature"]["digest"] == v1
