"""The README's two commands around the code (issue #15): a quiet bootstrap, a demo that proves something.

The bootstrap runs in a scratch copy of the checkout with stand-ins for ``go`` and the tools it would
build (nothing is installed); the demo runs for real against the test bed.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.layout_support import REPO_ROOT

FAKE_GO = """#!/bin/sh
echo "go: downloading github.com/some/module v1.2.3 (noise)"
echo "go: more noise on stderr" >&2
[ -n "$FAIL" ] && exit 7
name=$(basename "${2%@*}")
case $name in
  oras) printf '#!/bin/sh\\necho "Version:    1.3.6"\\n' > "$GOBIN/oras" ;;
  cosign) printf '#!/bin/sh\\necho "GitVersion:    v2.6.5"\\n' > "$GOBIN/cosign" ;;
esac
chmod +x "$GOBIN/$name"
"""


def _checkout(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A scratch checkout (the script and pyproject.toml) whose .venv is already installed, and a PATH
    with a fake ``go``."""
    root = tmp_path / "clone"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "scripts" / "bootstrap.sh", root / "scripts" / "bootstrap.sh")
    shutil.copy(REPO_ROOT / "pyproject.toml", root / "pyproject.toml")
    stamp = hashlib.sha256((root / "pyproject.toml").read_bytes()).hexdigest()[:16]
    (root / ".venv").mkdir()
    (root / ".venv" / f".installed-{stamp}").touch()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "go").write_text(FAKE_GO)
    (bin_dir / "go").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return root, env


def test_bootstrap_keeps_the_noise_in_its_log(tmp_path: Path) -> None:
    root, env = _checkout(tmp_path)
    done = subprocess.run(["bash", "scripts/bootstrap.sh"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert all(line.startswith("bootstrap: ") for line in done.stderr.splitlines()), done.stderr
    assert "noise" not in done.stderr
    log = (root / ".tools" / "bootstrap.log").read_text()
    assert "go: downloading" in log and "more noise on stderr" in log
    again = subprocess.run(["bash", "scripts/bootstrap.sh"], cwd=root, env=env, capture_output=True, text=True,
                           timeout=60)
    assert again.returncode == 0 and again.stderr.splitlines() == [
        "bootstrap: ready: .venv/bin/python, .tools/bin/oras"]


def test_bootstrap_builds_cosign_only_when_asked(tmp_path: Path) -> None:
    """The demo's bootstrap does not spend minutes on cosign; the tests' (``--with-cosign``) does."""
    root, env = _checkout(tmp_path)
    plain = subprocess.run(["bash", "scripts/bootstrap.sh"], cwd=root, env=env, capture_output=True, text=True,
                           timeout=60)
    assert plain.returncode == 0 and "cosign" not in plain.stderr, plain.stderr
    assert not (root / ".tools" / "bin" / "cosign").exists()
    asked = subprocess.run(["bash", "scripts/bootstrap.sh", "--with-cosign"], cwd=root, env=env,
                           capture_output=True, text=True, timeout=60)
    assert asked.returncode == 0 and "go install github.com/sigstore/cosign/v2/cmd/cosign@v2.6.5" in asked.stderr
    assert (root / ".tools" / "bin" / "cosign").is_file()
    assert "cosign" not in (REPO_ROOT / "scripts" / "demo.sh").read_text()
    assert "bootstrap.sh --with-cosign" in (REPO_ROOT / "scripts" / "test.sh").read_text()


def test_bootstrap_shows_the_log_when_a_step_fails(tmp_path: Path) -> None:
    root, env = _checkout(tmp_path)
    done = subprocess.run(["bash", "scripts/bootstrap.sh"], cwd=root, env={**env, "FAIL": "1"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "bootstrap: failed: go install oras.land/oras/cmd/oras@v1.3.6" in done.stderr
    assert "go: downloading" in done.stderr and "more noise on stderr" in done.stderr  # the log's end


def test_the_demo_proves_its_result_and_keeps_its_logs_apart(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{REPO_ROOT / '.tools' / 'bin'}:{Path(sys.executable).parent}:{os.environ['PATH']}",
           "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "doras_oras.testing", "demo", "--keep"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""  # the server's and the pulls' logs went to the log file
    out = done.stdout
    assert "INFO" not in out and "doras-testbed" not in out
    for name, tag in (("firmware", "v1"), ("firmware", "v2"), ("config", "v1"), ("config", "v2")):
        assert re.search(rf"skopeo reads oci:device/oci/{name}:127\.0\.0\.1_[0-9]+/demo/{name}/{tag} "
                         rf"as demo/{name}:{tag}", out), out
    assert "the 200 extracted file(s) of demo/config:v2 have the sha256 of what was published" in out
    assert "all checks passed" in out
    kept = Path(re.search(r"kept (\S+):", out).group(1))  # type: ignore[union-attr]
    assert (kept / "device" / "oci" / "firmware" / "index.json").is_file()
    assert "Doras test server on" in (kept / "logs" / "demo.log").read_text()
    shutil.rmtree(kept)
    plain = subprocess.run([sys.executable, "-m", "doras_oras.testing", "demo"], cwd=REPO_ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0 and "kept" not in plain.stdout
    assert str(tmp_path) not in plain.stdout  # it names no log (or other file) that it then deletes
    assert not list(tmp_path.glob("doras-oras-demo-*"))  # without --keep nothing stays
