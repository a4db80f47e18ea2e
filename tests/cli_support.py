"""Running the command on a pseudo-terminal (progress is drawn on a terminal only)."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

from tests.layout_support import REPO_ROOT


def on_terminal(*args: str, stdout_tty: bool = False, stderr_tty: bool = True) -> tuple[int, str, str]:
    """Run the command with stderr (and/or stdout) on a pty; return (code, stdout, stderr) as text."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "doras_oras", *args], cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
        stdout=slave if stdout_tty else subprocess.PIPE, stderr=slave if stderr_tty else subprocess.PIPE,
    )
    os.close(slave)
    seen = bytearray()
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every writer of the terminal is gone
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    out, err = proc.communicate(timeout=120)
    tty = seen.decode("utf-8", "replace")
    stdout = tty if stdout_tty else out.decode()
    stderr = tty if stderr_tty else err.decode()
    return proc.returncode, stdout, stderr
