"""The console script's fast exit: output delivered in full, exit codes kept, logs on stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import bsdiff4

from tests.layout_support import REPO_ROOT, cli, sha256


def test_output_and_exit_codes_survive_the_fast_exit(tmp_path: Path) -> None:
    base = bytes(range(256)) * 4096
    new = base[:1000] + b"changed!" + base[1008:]
    (tmp_path / "base").write_bytes(base)
    (tmp_path / "delta").write_bytes(bsdiff4.diff(base, new))
    ok = cli("-v", "apply", "--base", str(tmp_path / "base"), "--delta", str(tmp_path / "delta"),
             "--output", str(tmp_path / "out"), "--json", "--expect-digest", sha256(new))
    assert ok.returncode == 0, ok.stderr
    answer = json.loads(ok.stdout)  # one whole JSON object, flushed before the exit
    assert answer["size"] == len(new)
    assert (tmp_path / "out").read_bytes() == new
    assert "applied" in ok.stderr  # the -v log line reached stderr too

    bad = cli("apply", "--base", str(tmp_path / "base"), "--delta", str(tmp_path / "base"),
              "--output", str(tmp_path / "out2"), "--allow-unverified")
    assert bad.returncode == 1
    assert "error" in bad.stderr and not (tmp_path / "out2").exists()

    usage = cli("apply", "--base")
    assert usage.returncode == 2



def test_output_that_cannot_be_delivered_is_an_error_without_a_traceback(tmp_path: Path) -> None:
    base = bytes(range(256)) * 64
    (tmp_path / "base").write_bytes(base)
    (tmp_path / "delta").write_bytes(bsdiff4.diff(base, base[::-1]))
    reader, writer = os.pipe()
    os.close(reader)  # nobody reads stdout: flushing the JSON answer fails with EPIPE
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "doras_oras", "apply", "--base", str(tmp_path / "base"),
             "--delta", str(tmp_path / "delta"), "--output", str(tmp_path / "out"), "--json",
             "--allow-unverified"],
            stdout=writer, stderr=subprocess.PIPE, text=True, timeout=120, cwd=REPO_ROOT,
            # buffered stdout, as usual: the answer is written only by the final flush
            env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
        )
    finally:
        os.close(writer)
    assert proc.returncode == 1  # EXIT_ERROR (an interpreter shutdown flush failure would give 120)
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr


def test_bad_input_is_a_usage_error_without_a_traceback(tmp_path: Path) -> None:
    """Bad values found after the flags parsed (platform, server URL, files) are usage errors (2),
    named on stderr, and nothing is written: no traceback reaches the user."""
    layout = tmp_path / "L"
    ref = "127.0.0.1:9/app:v1"  # never contacted: the arguments are refused first
    cases = [
        (["pull", ref, "--oci-layout", str(layout), "--platform", "bad"], "invalid platform"),
        (["pull", ref, "--oci-layout", str(layout), "--platform", "linux/"], "invalid platform"),
        (["pull", ref, "--oci-layout", str(layout), "--server", "ftp://x"], "server URL"),
        (["pull", ref, "--oci-layout", str(layout), "--server", "https://x:99999"], "server URL"),
        (["pull", ref, "--oci-layout", str(layout), "--ca-file", str(tmp_path / "none.crt")], "--ca-file"),
        (["pull", ref, "--oci-layout", str(layout), "--registry-config", str(tmp_path / "no.json")],
         "--registry-config"),
        (["pull", ref, "--oci-layout", str(layout), "--insecure", "--ca-file", __file__], "contradict"),
        (["pull", ref, "--oci-layout", str(layout), "--lock-timeout", "nan"], "--lock-timeout"),
        (["pull", ref, "--oci-layout", str(layout), "--timeout", "-1"], "--timeout"),
        (["apply", "--base", __file__, "--delta", __file__, "--output", str(tmp_path / "no" / "out")],
         str(tmp_path / "no")),
        (["apply", "--base", __file__, "--delta", __file__, "--output", str(tmp_path / "o"),
          "--expect-digest", "sha256:XYZ"], "invalid digest"),
        (["gc", "--oci-layout", str(tmp_path), "--keep", "-1"], "--keep"),
    ]
    for argv, named in cases:
        proc = cli(*argv, timeout=60)
        assert proc.returncode == 2, (argv, proc.returncode, proc.stderr)
        assert named in proc.stderr, (argv, proc.stderr)
        assert "Traceback" not in proc.stderr, (argv, proc.stderr)
    assert not layout.exists() or not any((layout / "blobs" / "sha256").iterdir())
