"""Payload claims and the trust policy (pure: no registry), and the package's import boundary."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from doras_oras import schemas
from doras_oras.errors import (
    AnnotationMismatchError,
    MalformedSignatureError,
    PayloadMismatchError,
    TrustConfigError,
    UntrustedRepositoryError,
)
from doras_oras.reference import Reference
from doras_oras.trust import Requirement, load_policy, parse_annotation, same_repository
from doras_oras.trust.payload import check_claims, parse_payload
from doras_oras.trust.policy import compile_pattern

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32


def payload(reference: str = "registry.example.com/fleet/app", digest: str = DIGEST,
            kind: str = "cosign container image signature", optional: object = None) -> bytes:
    return json.dumps({"critical": {"identity": {"docker-reference": reference},
                                    "image": {"docker-manifest-digest": digest}, "type": kind},
                       "optional": optional}).encode()


TARGET = Reference.parse(f"registry.example.com/fleet/app@{DIGEST}")


# --- payload ----------------------------------------------------------------------

def test_claims_hold() -> None:
    check_claims(parse_payload(payload(optional={"channel": "stable"})), digest=DIGEST, target=TARGET,
                 annotations={"channel": "stable"})


@pytest.mark.parametrize("data, error, match", [
    (payload(digest=OTHER), PayloadMismatchError, "for digest"),
    (payload(reference="registry.example.com/fleet/other"), PayloadMismatchError, "for repository"),
    (payload(reference="other.example.com/fleet/app"), PayloadMismatchError, "for repository"),
    (payload(reference="not a reference"), PayloadMismatchError, "for repository"),
    (payload(kind="atomic container signature"), PayloadMismatchError, "critical.type"),
    (payload(optional={"channel": "beta"}), AnnotationMismatchError, "required 'stable'"),
    (payload(optional={"other": "x"}), AnnotationMismatchError, "lacks required annotation 'channel'"),
    (payload(optional={"channel": ["stable"]}), AnnotationMismatchError, "required"),
])
def test_claims_refused(data: bytes, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        check_claims(parse_payload(data), digest=DIGEST, target=TARGET, annotations={"channel": "stable"})


@pytest.mark.parametrize("data, match", [
    (b"not json", "not JSON"),
    (b"[]", "not a JSON object"),
    (b'{"critical": 1}', "no 'critical' object"),
    (json.dumps({"critical": {"identity": {}, "image": {"docker-manifest-digest": DIGEST}, "type": "t"}}).encode(),
     "docker-reference"),
    (json.dumps({"critical": {"identity": {"docker-reference": "a/b"}, "image": {}, "type": "t"}}).encode(),
     "docker-manifest-digest"),
    (json.dumps({"critical": {"identity": {"docker-reference": "a/b"},
                              "image": {"docker-manifest-digest": DIGEST}}}).encode(), "critical.type"),
    (payload(optional="x"), "'optional'"),
])
def test_malformed_payloads(data: bytes, match: str) -> None:
    with pytest.raises(MalformedSignatureError, match=match):
        parse_payload(data)


@pytest.mark.parametrize("claimed, target, same", [
    ("index.docker.io/library/busybox", "busybox", True),         # go-containerregistry's spelling
    ("docker.io/library/busybox", "index.docker.io/library/busybox", True),
    ("Registry.Example.com/fleet/app", "registry.example.com/fleet/app", True),
    ("registry.example.com/fleet/app:v1", "registry.example.com/fleet/app", True),  # --sign-container-identity
    (f"registry.example.com/fleet/app@{OTHER}", "registry.example.com/fleet/app", True),
    ("localhost:5000/fleet/app", "127.0.0.1:5000/fleet/app", False),
    ("registry.example.com:443/fleet/app", "registry.example.com/fleet/app", False),
    ("registry-1.docker.io/library/busybox", "busybox", False),
    ("registry.example.com/fleet/app/sub", "registry.example.com/fleet/app", False),
])
def test_same_repository(claimed: str, target: str, same: bool) -> None:
    assert same_repository(claimed, Reference.parse(target)) is same


# --- policy -----------------------------------------------------------------------

def write_key(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def write_policy(directory: Path, document: object) -> Path:
    path = directory / "policy" / "trust.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path


@pytest.fixture
def fleet_policy(tmp_path: Path) -> Path:
    write_key(tmp_path / "policy" / "keys" / "fleet.pub")
    write_key(tmp_path / "policy" / "keys" / "edge.pub")
    return write_policy(tmp_path, {"version": 1, "rules": [
        {"repository": "registry.example.com/fleet/critical", "keys": ["keys/edge.pub"],
         "annotations": {"channel": "stable"}},
        {"repository": "registry.example.com/fleet/*", "keys": ["keys/fleet.pub", "keys/edge.pub"]},
        {"repository": "tools/**", "keys": []},
    ]})


def requirement(policy: Path, reference: str) -> Requirement:
    return load_policy(policy).requirement_for(Reference.parse(reference))


def test_first_matching_rule_decides(fleet_policy: Path) -> None:
    critical = requirement(fleet_policy, "registry.example.com/fleet/critical:v1")
    assert [k.identity.name for k in critical.keys] == ["edge.pub"]
    assert critical.annotations == {"channel": "stable"} and critical.rule == "registry.example.com/fleet/critical"
    app = requirement(fleet_policy, "REGISTRY.example.com/fleet/app:v1")
    assert [k.identity.name for k in app.keys] == ["fleet.pub", "edge.pub"] and app.required


def test_keys_empty_means_no_signature_needed_on_any_registry(fleet_policy: Path) -> None:
    for name in ("tools/jq", "tools/a/b", "mirror.example.com:5000/tools/jq"):
        need = requirement(fleet_policy, name)
        assert not need.required and need.rule == "tools/**"


@pytest.mark.parametrize("name", [
    "registry.example.com/fleet/app/sub",     # * stays within a component
    "other.example.com/fleet/app",            # the rule names its registry
    "registry.example.com/tool/x",
    "registry.example.com/tools",             # tools/** needs a component after tools/
])
def test_unlisted_repository_refused(fleet_policy: Path, name: str) -> None:
    with pytest.raises(UntrustedRepositoryError, match="has no rule"):
        requirement(fleet_policy, name)


def test_catch_all_rule_allows_the_rest(tmp_path: Path) -> None:
    write_key(tmp_path / "policy" / "k.pub")
    path = write_policy(tmp_path, {"version": 1, "rules": [
        {"repository": "fleet/*", "keys": ["k.pub"]}, {"repository": "**", "keys": []}]})
    assert requirement(path, "registry.example.com/fleet/app").required
    assert not requirement(path, "registry.example.com/anything/else/deep").required


@pytest.mark.parametrize("pattern, name, matches", [
    ("fleet/*", "fleet/app", True),
    ("fleet/*", "fleet/app/x", False),
    ("fleet/**", "fleet/app/x", True),
    ("fleet/**", "fleet", False),
    ("**/app", "app", True),
    ("**/app", "a/b/app", True),
    ("fleet/app-?", "fleet/app-1", True),
    ("fleet/app-?", "fleet/app-10", False),
    ("fleet/a.b", "fleet/aXb", False),
])
def test_globs(pattern: str, name: str, matches: bool) -> None:
    assert (compile_pattern(pattern).fullmatch(name) is not None) is matches


@pytest.mark.parametrize("document, match", [
    ({"version": 1, "rules": [{"repository": "fleet/*", "key": ["k.pub"]}]}, "rules"),      # typo: key
    ({"version": 1, "rules": [{"repository": "fleet/*"}]}, "keys"),                         # keys required
    ({"version": 2, "rules": []}, "version"),
    ({"version": 1, "rules": [], "default": "allow"}, "default"),                          # no such field
    ({"version": 1, "rules": [{"repository": "fleet/*", "keys": [], "annotations": {"a": "b"}}]},
     "annotations need keys"),
    ({"version": 1, "rules": [{"repository": "fleet/*", "keys": ["missing.pub"]}]}, "cannot read"),
    ({"version": 1, "rules": [{"repository": "fleet app", "keys": []}]}, "repository"),
])
def test_bad_policies_refused(tmp_path: Path, document: object, match: str) -> None:
    with pytest.raises(TrustConfigError, match=match):
        load_policy(write_policy(tmp_path, document))


def test_policy_file_problems(tmp_path: Path) -> None:
    with pytest.raises(TrustConfigError, match="cannot read"):
        load_policy(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(TrustConfigError, match="not JSON"):
        load_policy(tmp_path / "bad.json")


def test_trust_policy_schema_is_a_kind() -> None:
    assert schemas.KINDS["trust-policy"] == "trust-policy.json"
    schemas.validate({"version": 1, "rules": [{"repository": "a/*", "keys": []}]}, "trust-policy")


def test_command_line_requirement() -> None:
    assert parse_annotation("channel=stable=really") == ("channel", "stable=really")
    with pytest.raises(TrustConfigError):
        parse_annotation("=x")
    with pytest.raises(TrustConfigError, match="without a key"):
        Requirement.from_keys([], {"channel": "stable"})
    assert not Requirement.from_keys([]).required


# --- the import boundary ----------------------------------------------------------

ALLOWED = {"descriptor", "reference", "errors", "schemas", "trust"}


def test_trust_imports_only_pure_modules_and_cryptography() -> None:
    package = Path(__file__).resolve().parents[1] / "doras_oras" / "trust"
    seen: set[str] = set()
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level == 2 or node.level == 0:  # from ..X import
                    seen.add((node.module or "").split(".")[0])
            elif isinstance(node, ast.Import):
                seen.update(alias.name.split(".")[0] for alias in node.names)
    project = {name for name in seen if name in {"doras_oras"} | {p.stem for p in package.parent.glob("*.py")}}
    assert project <= ALLOWED, project
    third_party = seen - project - {"__future__", "base64", "binascii", "collections", "dataclasses", "datetime", "enum",
                                    "hashlib", "json", "logging", "pathlib", "re", "typing"}
    assert third_party <= {"cryptography"}, third_party
