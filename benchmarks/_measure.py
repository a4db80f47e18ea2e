"""Wall time and peak RSS of a child process, shared by the benchmark scripts.

The measured program is forked from a tiny launcher (``python -S``), because a
child spawned straight from a big benchmark process would inherit its peak
RSS in ``ru_maxrss``. Floor of the method: the launcher's own ~8 MiB.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

_LAUNCH = """
import os, sys, time
out = sys.argv[1]
t = time.perf_counter()
pid = os.fork()
if pid == 0:
    if out:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 2)
    else:
        fd = os.open(os.devnull, os.O_WRONLY)
    os.dup2(fd, 1)
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
print(os.waitstatus_to_exitcode(status), time.perf_counter() - t, usage.ru_maxrss * 1024,
      usage.ru_utime + usage.ru_stime)
"""


def run_child(argv: list[str], *, output: Path | None = None, env: dict[str, str] | None = None,
              timeout_s: float = 3600) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of ``argv``; raises if it fails.

    With ``output`` its stdout and stderr go to that file; without, stdout is
    dropped and stderr kept for the error message.
    """
    wall, rss, _cpu = run_child_usage(argv, output=output, env=env, timeout_s=timeout_s)
    return wall, rss


def run_child_usage(argv: list[str], *, output: Path | None = None, env: dict[str, str] | None = None,
                    timeout_s: float = 3600) -> tuple[float, int, float]:
    """:func:`run_child` plus the CPU seconds (user + system) of the program and its threads,
    which a machine shared with other work inflates far less than the wall time."""
    # The launcher and the measured program get a process group of their own, so that a
    # timeout (or an interrupted benchmark) stops the program too, not just the launcher.
    with subprocess.Popen([sys.executable, "-S", "-c", _LAUNCH, str(output or ""), *argv], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as launcher:
        try:
            stdout, stderr = launcher.communicate(timeout=timeout_s)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(launcher.pid, signal.SIGKILL)
            raise
    if launcher.returncode != 0:
        raise RuntimeError(f"the launcher of {' '.join(argv[:4])} ... failed: {stderr[-2000:]}")
    code, wall, rss, cpu = stdout.split()
    if int(code) != 0:
        tail = output.read_text()[-2000:] if output is not None else stderr[-2000:]
        raise RuntimeError(f"{' '.join(argv[:4])} ... failed with {code}: {tail}")
    return float(wall), int(rss), float(cpu)
