"""The signed image-pull script of docs/quickstart.md, run as written against the real registry, the test
Doras server and the test bed's signer: signed v1 (full), signed v2 (delta), unsigned v3 (refused, exit 5,
v2 and its files stay)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from doras_oras.layout import OCILayout
from doras_oras.testing.pytest_plugin import SignArtifact
from doras_oras.testing.registry import RegistryServer
from doras_oras.testing.server import DorasServer
from doras_oras.testing.signing import SigningKey
from tests.layout_support import REPO_ROOT
from tests.pull_support import (
    check_layout,
    edit,
    manifest_of,
    oras_pull,
    oras_push_dir,
    payload,
    tree,
    unique,
)


def docs_script() -> str:
    text = (REPO_ROOT / "docs" / "quickstart.md").read_text()
    section = text.split("### A complete signed image-pull script", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


def test_the_documented_script_installs_signed_updates_only(oci_registry: RegistryServer, doras_server: DorasServer,
                                                             sign_artifact: SignArtifact, signing_key: SigningKey,
                                                             tmp_path: Path) -> None:
    script = tmp_path / "update.py"
    script.write_text(docs_script())
    repo = unique("quickstart")
    ref = f"{oci_registry.host}/{repo}:stable"
    env = {**os.environ, "APP_REF": ref, "APP_LAYOUT": str(tmp_path / "oci"), "APP_FILES": str(tmp_path / "files"),
           "DORAS_URL": doras_server.url, "APP_PLAIN_HTTP": "1", "PYTHONPATH": str(REPO_ROOT),
           "APP_KEYS": f"{tmp_path / 'missing-is-fine-later.pub'}:{signing_key.public_path}",
           "APP_CHANNEL": "stable"}

    def run_script() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)

    # a key file that cannot be read is a trust failure too: nothing is pulled
    refused = run_script()
    assert refused.returncode == 5 and "refused (config)" in refused.stderr, refused.stderr
    env["APP_KEYS"] = f"{SigningKey.generate(tmp_path / 'old').public_path}:{signing_key.public_path}"

    files = {f"f{n}.bin": payload(20000, n) for n in range(4)}

    def publish(version: str, *, signed: bool) -> str:
        oras_push_dir(oci_registry.host, f"{repo}:stable", tmp_path / version, "app", files)
        digest = manifest_of(oci_registry, repo, "stable")[1]
        if signed:
            sign_artifact(repo, digest, annotations={"channel": "stable"})
        return digest

    publish("v1", signed=True)
    first = run_script()
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(f"full: {ref} sha256:") and "signed with cosign.pub" in first.stdout
    files["f2.bin"] = edit(files["f2.bin"], 5, 1)
    v2 = publish("v2", signed=True)
    second = run_script()
    assert second.returncode == 0 and second.stdout.startswith(f"delta: {ref} {v2}"), second.stderr
    oras_pull(oci_registry.host, f"{repo}:stable", tmp_path / "oras")
    assert tree(tmp_path / "files") == tree(tmp_path / "oras") != {}
    files["f0.bin"] = edit(files["f0.bin"], 5, 2)
    publish("v3", signed=False)
    third = run_script()
    assert third.returncode == 5 and "refused (not-found)" in third.stderr, third.stderr
    assert tree(tmp_path / "files") == tree(tmp_path / "oras")  # v2's files stay
    image = OCILayout.open(tmp_path / "oci").get_image(f"{oci_registry.host}/{repo}", "stable")
    assert image.source_digest == v2
    check_layout(tmp_path / "oci", "stable")
    assert run_script().returncode == 5  # and stays refused until a signed version comes


def test_the_documented_policy_is_valid(signing_key: SigningKey, tmp_path: Path) -> None:
    from doras_oras.reference import Reference
    from doras_oras.trust import parse_policy

    text = (REPO_ROOT / "docs" / "quickstart.md").read_text()
    match = re.search(r"A fleet ships a trust policy.*?```json\n(.*?)```", text, re.S)
    assert match is not None
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "release.pub").write_bytes(signing_key.public_path.read_bytes())
    import json

    policy = parse_policy(json.loads(match.group(1)), base_dir=tmp_path)
    fleet = policy.requirement_for(Reference.parse("registry.example:5000/fleet/firmware:v2"))
    assert fleet.required and fleet.keys[0].identity.name == "release.pub"
    assert not policy.requirement_for(Reference.parse("registry.example:5000/tools/jq:1")).required
