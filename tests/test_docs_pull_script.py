"""The image-pull script of docs/pull.md, run as written against the real registry and the test server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from doras_oras.testing.registry import RegistryServer
from doras_oras.testing.server import DorasServer
from tests.layout_support import REPO_ROOT
from tests.pull_support import check_layout, edit, oras_pull, oras_push_dir, payload, tree, unique


def docs_script() -> str:
    text = (REPO_ROOT / "docs" / "pull.md").read_text()
    section = text.split("### A complete image-pull script", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


def test_the_documented_script_keeps_a_device_current(oci_registry: RegistryServer, doras_server: DorasServer,
                                                      tmp_path: Path) -> None:
    script = tmp_path / "update.py"
    script.write_text(docs_script())
    repo = unique("docs")
    ref = f"{oci_registry.host}/{repo}:latest"
    env = {**os.environ, "APP_REF": ref, "APP_LAYOUT": str(tmp_path / "oci"), "APP_FILES": str(tmp_path / "files"),
           "DORAS_URL": doras_server.url, "APP_PLAIN_HTTP": "1", "PYTHONPATH": str(REPO_ROOT)}

    def run_script() -> str:
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    files = {f"f{n}.bin": payload(20000, n) for n in range(5)}
    oras_push_dir(oci_registry.host, f"{repo}:latest", tmp_path / "v1", "app", files)
    assert run_script().startswith(f"full: {ref} sha256:")
    files["f3.bin"] = edit(files["f3.bin"], 5, 1)
    oras_push_dir(oci_registry.host, f"{repo}:latest", tmp_path / "v2", "app", files)
    out = run_script()
    assert out.startswith(f"delta: {ref} sha256:"), out
    oras_pull(oci_registry.host, f"{repo}:latest", tmp_path / "oras")
    assert tree(tmp_path / "files") == tree(tmp_path / "oras") != {}
    assert run_script().startswith(f"up-to-date: {ref} sha256:")
    check_layout(tmp_path / "oci", "latest")


def test_every_reason_code_is_documented() -> None:
    """Scripts read ``reason_code``: each one is in docs/pull.md, as a code in backquotes."""
    from doras_oras.plan import ReasonCode

    text = (REPO_ROOT / "docs" / "pull.md").read_text()
    assert [code.value for code in ReasonCode if f"`{code.value}`" not in text] == []
