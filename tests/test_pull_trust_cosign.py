"""Verified pulls side by side with the real cosign CLI, on the same inputs.

Every case signs (or mis-signs) with ``cosign sign --key K --tlog-upload=false`` (v2.6.5; legacy tag
scheme, or ``--registry-referrers-mode oci-1-1``) on the real registry, then asks both
``cosign verify --key K --insecure-ignore-tlog --experimental-oci11 REF`` and
``doras-oras pull REF --verify-key K`` (with the Doras server, into a layout that already holds the
previous version when the case is about the delta path). Each case states the outcome; both tools
must give it; doras-oras must also take the path the case names (delta or full) when it accepts,
and refuse with the named error, having asked no delta and written nothing, when it refuses.
docs/trust.md has the table.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from doras_oras.testing.registry import find_tool
from doras_oras.trust import signature_tag
from tests.layout_support import build_container_layout, one_json, push_layout, run
from tests.pull_support import edit, payload
from tests.trust_pull_support import TrustBed, layout_state, trust_bed
from tests.trust_support import (
    KeyPair,
    blob_path,
    generate_cosign_key,
    get_manifest,
    import_key,
    put_manifest,
    rsa_private_pem,
)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@dataclass
class Keys:
    a: KeyPair
    b: KeyPair
    rsa: KeyPair


@dataclass
class Env:
    bed: TrustBed
    keys: Keys
    work: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("cosign-pull")
    with trust_bed(work / "bed") as bed:
        keys = Keys(a=generate_cosign_key(bed.cosign, work / "a"), b=generate_cosign_key(bed.cosign, work / "b"),
                    rsa=import_key(bed.cosign, work / "rsa", rsa_private_pem()))
        yield Env(bed=bed, keys=keys, work=work)


@dataclass
class Case:
    ref: str
    key: Path
    accept: bool
    path: str = "full"
    """``delta`` or ``full``: how doras-oras installs it when it accepts."""
    error: str | None = None
    """The TrustError class doras-oras refuses with."""
    annotations: dict[str, str] = field(default_factory=dict)
    layout: Path | None = None
    """A layout already holding the previous version (the delta path), else a new one."""


def _file_versions(e: Env, name: str, *, sign: str | None, oci11: bool = False,
                   key: KeyPair | None = None) -> tuple[str, str, str, Path]:
    """v1 and v2 of a file; v1 signed by key A and pulled (verified) into a layout; v2 signed as asked."""
    bed = e.bed
    repo = bed.repo(name)
    data = payload(200_000, 5)
    v1 = bed.push_file(repo, "v1", data)
    v2 = bed.push_file(repo, "v2", edit(data, 10, 6))
    bed.cosign_sign(e.keys.a.private, repo, v1, oci11=oci11)
    layout = e.work / "layouts" / repo.replace("/", "_")
    done = bed.pull_cli(f"{bed.host}/{repo}:v1", layout, "--verify-key", str(e.keys.a.public))
    assert done.returncode == 0, done.stderr
    if sign is not None:
        bed.cosign_sign((key or e.keys.a).private, repo, v2, oci11=oci11)
    return repo, v1, v2, layout


def _dir_versions(e: Env, name: str, *, oci11: bool) -> Case:
    bed = e.bed
    repo = bed.repo(name)
    files = {f"conf/{i}.txt": payload(3000, i) for i in range(8)}
    v1 = bed.push_dir(repo, "v1", files)
    files["conf/2.txt"] = edit(files["conf/2.txt"], 2, 3)
    v2 = bed.push_dir(repo, "v2", files)
    for digest in (v1, v2):
        bed.cosign_sign(e.keys.a.private, repo, digest, oci11=oci11)
    layout = e.work / "layouts" / repo.replace("/", "_")
    assert bed.pull_cli(f"{bed.host}/{repo}:v1", layout, "--verify-key", str(e.keys.a.public)).returncode == 0
    return Case(f"{bed.host}/{repo}:v2", e.keys.a.public, True, "delta", layout=layout)


def case_legacy_file_delta(e: Env) -> Case:
    repo, _, _, layout = _file_versions(e, "legacy-file", sign="a")
    return Case(f"{e.bed.host}/{repo}:v2", e.keys.a.public, True, "delta", layout=layout)


def case_oci11_file_full(e: Env) -> Case:
    repo = e.bed.repo("oci11-full")
    digest = e.bed.push_file(repo, "v1", payload(50_000, 7))
    e.bed.cosign_sign(e.keys.a.private, repo, digest, oci11=True)
    return Case(f"{e.bed.host}/{repo}:v1", e.keys.a.public, True, "full")


def case_legacy_directory_delta(e: Env) -> Case:
    return _dir_versions(e, "legacy-dir", oci11=False)


def case_oci11_directory_delta(e: Env) -> Case:
    return _dir_versions(e, "oci11-dir", oci11=True)


def case_rsa_full(e: Env) -> Case:
    repo = e.bed.repo("rsa")
    digest = e.bed.push_file(repo, "v1", payload(40_000, 8))
    e.bed.cosign_sign(e.keys.rsa.private, repo, digest)
    return Case(f"{e.bed.host}/{repo}:v1", e.keys.rsa.public, True, "full")


def case_wrong_key_legacy(e: Env) -> Case:
    repo, _, _, layout = _file_versions(e, "wrong-legacy", sign="b", key=e.keys.b)
    return Case(f"{e.bed.host}/{repo}:v2", e.keys.a.public, False, error="SignatureInvalidError", layout=layout)


def case_wrong_key_oci11(e: Env) -> Case:
    repo, _, _, layout = _file_versions(e, "wrong-oci11", sign="b", key=e.keys.b, oci11=True)
    return Case(f"{e.bed.host}/{repo}:v2", e.keys.a.public, False, error="SignatureInvalidError", layout=layout)


def case_unsigned(e: Env) -> Case:
    repo, _, _, layout = _file_versions(e, "unsigned", sign=None)
    return Case(f"{e.bed.host}/{repo}:v2", e.keys.a.public, False, error="SignatureNotFoundError", layout=layout)


def case_signature_moved_from_another_image(e: Env) -> Case:
    repo, v1, v2, layout = _file_versions(e, "moved", sign=None)
    body, _ = get_manifest(e.bed.registry.url, repo, signature_tag(v1))
    put_manifest(e.bed.registry.url, repo, signature_tag(v2), body, OCI_MANIFEST)
    return Case(f"{e.bed.host}/{repo}:v2", e.keys.a.public, False, error="PayloadMismatchError", layout=layout)


def case_re_signed_tag_points_at_an_unsigned_digest(e: Env) -> Case:
    repo, _, _, layout = _file_versions(e, "repointed", sign="a")
    e.bed.push_file(repo, "v2", payload(200_000, 55))  # v2 moves to content nobody signed
    return Case(f"{e.bed.host}/{repo}:v2", e.keys.a.public, False, error="SignatureNotFoundError", layout=layout)


def _annotated(e: Env, name: str, given: dict[str, str] | None, wanted: dict[str, str], accept: bool) -> Case:
    repo = e.bed.repo(name)
    digest = e.bed.push_file(repo, "v1", payload(20_000, 9))
    e.bed.cosign_sign(e.keys.a.private, repo, digest, annotations=given)
    return Case(f"{e.bed.host}/{repo}:v1", e.keys.a.public, accept, "full",
                error=None if accept else "AnnotationMismatchError", annotations=wanted)


def case_annotation_present(e: Env) -> Case:
    return _annotated(e, "ann-ok", {"channel": "stable"}, {"channel": "stable"}, True)


def case_annotation_absent(e: Env) -> Case:
    return _annotated(e, "ann-none", None, {"channel": "stable"}, False)


def case_annotation_other_value(e: Env) -> Case:
    return _annotated(e, "ann-beta", {"channel": "beta"}, {"channel": "stable"}, False)


def _index(e: Env, name: str) -> tuple[str, str, list[str]]:
    repo = e.bed.repo(name)
    source = e.work / "src" / repo.replace("/", "_")
    build_container_layout(source, "v1", {"hello.txt": name.encode()}, platforms=("linux/amd64", "linux/arm64"))
    push_layout(source, "v1", e.bed.registry.host, f"{repo}:v1")
    index = e.bed.digest(repo, "v1")
    children = [m["digest"] for m in json.loads(get_manifest(e.bed.registry.url, repo, "v1")[0])["manifests"]]
    return repo, index, children


def case_index_signed(e: Env) -> Case:
    repo, index, _ = _index(e, "index")
    e.bed.cosign_sign(e.keys.a.private, repo, index)
    return Case(f"{e.bed.host}/{repo}:v1", e.keys.a.public, True, "full")


def case_only_the_platform_manifests_signed(e: Env) -> Case:
    repo, _, children = _index(e, "index-children")
    for child in children:
        e.bed.cosign_sign(e.keys.a.private, repo, child)
    return Case(f"{e.bed.host}/{repo}:v1", e.keys.a.public, False, error="SignatureNotFoundError")


def case_payload_changed_in_the_registry_storage(e: Env) -> Case:
    repo, _, v2, layout = _file_versions(e, "tampered", sign="a")
    manifest = json.loads(get_manifest(e.bed.registry.url, repo, signature_tag(v2))[0])
    path = blob_path(e.bed.registry.storage, manifest["layers"][0]["digest"])
    path.write_bytes(path.read_bytes().replace(b"cosign container image signature", b"cosign container image signaturE"))
    return Case(f"{e.bed.host}/{repo}:v2", e.keys.a.public, False, error="MalformedSignatureError", layout=layout)


def case_signature_layer_lost_its_annotation(e: Env) -> Case:
    repo, _, v2, layout = _file_versions(e, "no-annotation", sign="a")
    document = json.loads(get_manifest(e.bed.registry.url, repo, signature_tag(v2))[0])
    del document["layers"][0]["annotations"]
    put_manifest(e.bed.registry.url, repo, signature_tag(v2), json.dumps(document).encode(), OCI_MANIFEST)
    return Case(f"{e.bed.host}/{repo}:v2", e.keys.a.public, False, error="MalformedSignatureError", layout=layout)


CASES: dict[str, Callable[[Env], Case]] = {
    name.removeprefix("case_"): fn for name, fn in globals().items() if name.startswith("case_") and callable(fn)
}


def cosign_accepts(e: Env, case: Case) -> tuple[bool, str]:
    return e.bed.cosign.verify(case.key, case.ref, annotations=case.annotations)


def doras_pull(e: Env, case: Case, layout: Path) -> tuple[int, dict[str, object]]:
    args = ["--verify-key", str(case.key)]
    for key, value in case.annotations.items():
        args += ["--verify-annotation", f"{key}={value}"]
    proc = e.bed.pull_cli(case.ref, layout, *args)
    return proc.returncode, one_json(proc)


@pytest.mark.parametrize("name", sorted(CASES))
def test_side_by_side_with_cosign(env: Env, name: str) -> None:
    case = CASES[name](env)
    layout = case.layout or env.work / "layouts" / f"new-{name}"
    before = layout_state(layout) if layout.exists() else {}
    asked = env.bed.server.delta_requests
    cosign_ok, cosign_err = cosign_accepts(env, case)
    code, answer = doras_pull(env, case, layout)
    assert cosign_ok == case.accept, f"cosign: {cosign_err}"
    assert (code == 0) == case.accept, answer
    if case.accept:
        assert answer["status"] == case.path, answer
        trust = answer["trust"]
        assert isinstance(trust, dict) and trust["signature"]["key"]["name"] == case.key.name
    else:
        assert code == 5 and answer["error"] == case.error, answer
        assert env.bed.server.delta_requests == asked
        if before:
            assert layout_state(layout) == before
        else:  # a first pull that is refused leaves no layout behind (it made the directory)
            assert not layout.exists(), sorted(str(p) for p in layout.rglob("*"))


def test_same_image_in_another_repository_cosign_accepts_we_refuse(env: Env) -> None:
    """The one documented difference: cosign does not check ``critical.identity.docker-reference``."""
    bed = env.bed
    repo = bed.repo("origin")
    digest = bed.push_file(repo, "v1", payload(10_000, 10))
    bed.cosign_sign(env.keys.a.private, repo, digest)
    copy = bed.repo("copy")
    oras = find_tool("oras")
    run(oras, "cp", "--from-plain-http", "--to-plain-http", f"{bed.registry.host}/{repo}:v1",
        f"{bed.registry.host}/{copy}:v1")
    run(oras, "cp", "--from-plain-http", "--to-plain-http", f"{bed.registry.host}/{repo}:{signature_tag(digest)}",
        f"{bed.registry.host}/{copy}:{signature_tag(digest)}")
    case = Case(f"{bed.host}/{copy}:v1", env.keys.a.public, True)
    assert cosign_accepts(env, case)[0]
    code, answer = doras_pull(env, case, env.work / "layouts" / "copy")
    assert code == 5 and answer["error"] == "PayloadMismatchError" and "for repository" in str(answer["message"])


def test_there_are_at_least_ten_cases_on_both_paths() -> None:
    built = {name: CASES[name] for name in CASES}
    assert len(built) >= 10
    assert {"legacy_file_delta", "oci11_file_full", "legacy_directory_delta", "index_signed"} <= set(built)
