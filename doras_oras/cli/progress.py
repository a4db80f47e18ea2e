"""What a terminal user sees while a pull works: a progress bar, and a spinner while the server builds.

:class:`Display` draws on a stream (stderr) and only when asked to: the pull
command makes one only when stderr is a terminal and neither ``--json`` nor
``--no-progress`` is given, so scripts and logs never see it, and stdout
never does.

- :meth:`Display.progress` (the pull's ``progress(phase, done, total)``): one
  line ``  full [#######-------]  1.2 MiB / 4.0 MiB``, redrawn at most ten
  times a second, ended by a newline when the phase completes;
- :meth:`Display.waiting` (the pull's ``on_wait(requests, seconds)``): from the
  first 202 of the Doras server on, a spinner with the time waited, redrawn by
  a background thread every :data:`TICK_S` until the next progress or
  :meth:`Display.close` (the server's answers come seconds apart: the line
  keeps moving meanwhile);
- :meth:`Display.busy`: the same spinner for work of this machine that has no byte count
  (``publish-delta`` building a delta), with its own words.
"""

from __future__ import annotations

import threading
import time
from typing import TextIO

from .output import human_size

TICK_S = 0.2
"""How often the spinner is redrawn."""
WIDTH = 30
"""Characters of the bar."""
_FRAMES = "|/-\\"
_NAMES = {"full": "pulling", "delta": "delta", "apply": "applying", "push": "pushing"}


class Display:
    """The progress bar and the spinner of one command, on ``stream``."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._last_draw = 0.0
        self._open_line = False
        self._finished: tuple[str, int] | None = None
        self._waiting_since: float | None = None
        self._requests = 0
        self._label: str | None = None
        self._frame = 0
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    # --- the bar ---------------------------------------------------------------
    def progress(self, phase: str, done: int, total: int) -> None:
        """Draw the bar of ``phase`` (``full``, ``delta``, ``apply``): ``done`` of ``total`` bytes."""
        self._stop_spinner()
        now = time.monotonic()
        complete = done >= total
        with self._lock:
            if not complete and now - self._last_draw < 0.1:
                return
            if complete and self._finished == (phase, total):  # already drawn complete
                return
            self._finished = (phase, total) if complete else None
            self._last_draw = now
            filled = WIDTH * done // total if total else WIDTH
            bar = "#" * filled + "-" * (WIDTH - filled)
            name = _NAMES.get(phase, phase)
            self._write(f"\r{name:>8} [{bar}] {human_size(done):>10} / {human_size(total)}\033[K")
            if complete:
                self._write("\n")
            self._open_line = not complete

    # --- the spinner ------------------------------------------------------------
    def waiting(self, requests_sent: int, seconds_waited: float) -> None:
        """The Doras server answered 202 (``requests_sent`` so far): show the spinner."""
        with self._lock:
            if self._waiting_since is None:
                self._waiting_since = time.monotonic() - seconds_waited
            self._requests = requests_sent
        if self._ticker is None:
            self._stop.clear()
            self._ticker = threading.Thread(target=self._tick, name="doras-oras-spinner", daemon=True)
            self._ticker.start()

    def busy(self, label: str) -> None:
        """Show the spinner with ``label`` and the time spent, until the next progress or :meth:`close`."""
        with self._lock:
            self._label = label
        self.waiting(0, 0.0)

    def _tick(self) -> None:
        while True:
            with self._lock:
                if self._waiting_since is not None:
                    waited = time.monotonic() - self._waiting_since
                    frame = _FRAMES[self._frame % len(_FRAMES)]
                    self._frame += 1
                    if self._label is not None:
                        self._write(f"\r{frame} {self._label}: {waited:.0f} s\033[K")
                    else:
                        self._write(f"\r{frame} the Doras server is building the delta: {waited:.0f} s "
                                    f"({self._requests} request{'s' if self._requests != 1 else ''})\033[K")
                    self._open_line = True
            if self._stop.wait(TICK_S):
                return

    def _stop_spinner(self) -> None:
        ticker = self._ticker
        if ticker is None:
            return
        self._stop.set()
        ticker.join()
        self._ticker = None
        with self._lock:
            if self._waiting_since is not None:
                self._write("\r\033[K")
                self._open_line = False
            self._waiting_since = None
            self._label = None

    # --- the end -----------------------------------------------------------------
    def close(self) -> None:
        """Stop the spinner and end an open line, so that what follows starts on its own line."""
        self._stop_spinner()
        with self._lock:
            if self._open_line:
                self._write("\n")
                self._open_line = False

    def _write(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):  # the terminal went away: drawing is not worth an error
            pass
