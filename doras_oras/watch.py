"""The update agent's loop: poll images on a jittered schedule, back off on errors, run a hook.

:class:`Watcher` polls each of its :class:`Target` s for ever (until its
``stop`` event is set, or an exception such as ``KeyboardInterrupt`` leaves
the loop): one call of ``poll(target, ping)`` per poll, which returns the
:class:`~doras_oras.pull.PullResult` of one pull or raises a
:class:`~doras_oras.errors.DorasOrasError`. The caller builds that call (the
command calls the pull as ``doras-oras pull`` does), so one registry client, and
its kept-alive connections, can serve the whole life of the process.

- **Schedule** (:class:`Schedule`): after a poll the next one of that target
  is due in ``interval ± jitter`` (uniform, from an injectable random source),
  so a fleet started together drifts apart instead of polling in lockstep.
- **Failures**: a poll that raises is reported and retried, except for
  :data:`FATAL` errors (a setting is wrong: no retry helps), which leave the loop.
- **Backoff**: after the ``n``-th failure in a row the wait is
  :func:`doras_oras.backoff.next_delay` (the project's one formula) with the
  interval as its base, ``interval * 2**(n-1)`` ±50 %, capped at
  ``max_backoff_s``; a poll that succeeds resets it.
- **Hook**: after a poll that updated the layout, ``hook`` (a shell command)
  runs once with :func:`hook_environment`; its output goes to stderr; a hook
  that fails is reported (an event) and changes nothing: the layout keeps the
  new image and the next poll is up to date.
- **systemd** (:class:`~doras_oras.sdnotify.Notifier`): ``READY=1`` after the first
  poll of every target, ``WATCHDOG=1`` at each poll and every half watchdog
  period while waiting (and, through ``ping``, while a long pull makes
  progress), ``STATUS=`` lines, ``STOPPING=1`` on the way out.

Every poll, hook run and failure is reported to ``on_event`` as a
:class:`WatchEvent`; the loop itself prints nothing.
"""

from __future__ import annotations

import logging
import os
import random as _random
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .backoff import next_delay
from .errors import DorasOrasError, InvalidArgumentError, NotALayoutError, TrustConfigError
from .pull import PullResult
from .reference import Reference
from .sdnotify import Notifier

log = logging.getLogger(__name__)

DEFAULT_MAX_BACKOFF_S = 3600.0
"""The longest wait after failures in a row, unless the interval is longer."""

HOOK_SHELL = "/bin/sh"

FATAL: tuple[type[DorasOrasError], ...] = (InvalidArgumentError, NotALayoutError, TrustConfigError)
"""Failures no retry can fix (a bad argument, a layout path holding something else, an unusable key or
policy): they leave the loop. Every other :class:`DorasOrasError` of a poll is reported and retried."""


@dataclass(frozen=True)
class Schedule:
    """When the next poll of a target is due: ``interval_s ± jitter_s``, or a backoff after failures."""

    interval_s: float
    jitter_s: float = 0.0
    max_backoff_s: float = DEFAULT_MAX_BACKOFF_S

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise InvalidArgumentError("the interval must be > 0 seconds")
        if not 0 <= self.jitter_s <= self.interval_s:
            raise InvalidArgumentError("the jitter must be between 0 and the interval")
        if not self.max_backoff_s > 0:
            raise InvalidArgumentError("the longest backoff must be > 0 seconds")

    def after_poll(self, draw: float) -> float:
        """The wait after a poll that worked, for ``draw`` uniform in ``[0, 1)``."""
        return self.interval_s + (2.0 * draw - 1.0) * self.jitter_s

    def after_failure(self, failures: int, draw: float) -> float:
        """The wait after ``failures`` (>= 1) failed polls in a row, for ``draw`` uniform in ``[0, 1)``."""
        return next_delay(failures - 1, base_delay_s=self.interval_s,
                          max_delay_s=max(self.max_backoff_s, self.interval_s), jitter=draw)


@dataclass
class Target:
    """One image to keep current: what to pull, where its files go (``output``), its poll state."""

    reference: Reference
    output: str | None = None
    due: float = 0.0
    """When its next poll is due (the watcher's clock)."""
    failures: int = 0
    """Failed polls in a row."""
    polled: bool = False
    current: bool = False
    """A poll succeeded: the layout (and ``output``) hold the image; later up-to-date polls rewrite nothing."""


@dataclass(frozen=True)
class WatchEvent:
    """What happened: ``kind`` is ``poll`` (``result``), ``error`` (``error``) or ``hook`` (``hook_exit``)."""

    kind: str
    target: Target
    result: PullResult | None = None
    error: DorasOrasError | None = None
    next_poll_s: float | None = None
    """Seconds until this target's next poll (``poll`` and ``error``)."""
    cpu_s: float | None = None
    """CPU time of this process during the poll (``time.process_time``), for ``poll`` and ``error``."""
    hook_exit: int | None = None
    """The hook's exit status (negative: killed by that signal); ``None`` when it could not start."""
    hook_error: str | None = None


PollCall = Callable[[Target, Callable[[], None]], PullResult]
"""``poll(target, ping)``: one pull of ``target``; ``ping()`` may be called while it makes progress."""


def hook_environment(target: Target, result: PullResult, layout: str | os.PathLike[str],
                     base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of the hook: ``base`` (default: this process's) and the ``DORAS_ORAS_*`` variables.

    ``DORAS_ORAS_REFERENCE`` (the reference polled), ``DORAS_ORAS_REGISTRY``,
    ``DORAS_ORAS_REPOSITORY`` (without the registry), ``DORAS_ORAS_TAG``,
    ``DORAS_ORAS_DIGEST`` (the new manifest digest in the registry),
    ``DORAS_ORAS_STORED_DIGEST`` (the manifest the layout records for it),
    ``DORAS_ORAS_PREVIOUS_DIGEST`` (the image patched; empty after a pull with no base),
    ``DORAS_ORAS_STATUS`` (``delta`` or ``full``), ``DORAS_ORAS_LAYOUT``,
    ``DORAS_ORAS_OUTPUT`` (where the files were written; empty without).
    """
    ref = target.reference
    env = dict(os.environ if base is None else base)
    env.update({
        "DORAS_ORAS_REFERENCE": str(ref),
        "DORAS_ORAS_REGISTRY": ref.registry,
        "DORAS_ORAS_REPOSITORY": ref.repository,
        "DORAS_ORAS_TAG": ref.tag or "",
        "DORAS_ORAS_DIGEST": result.to_digest or "",
        "DORAS_ORAS_STORED_DIGEST": result.stored_digest or result.to_digest or "",
        "DORAS_ORAS_PREVIOUS_DIGEST": result.from_digest or "",
        "DORAS_ORAS_STATUS": result.status,
        "DORAS_ORAS_LAYOUT": str(layout),
        "DORAS_ORAS_OUTPUT": str(Path(target.output).resolve()) if target.output else "",
    })
    return env


@dataclass
class Watcher:
    """The loop (see the module docstring); :meth:`run` until ``stop`` is set."""

    targets: Sequence[Target]
    poll: PollCall
    schedule: Schedule
    layout: str | os.PathLike[str]
    on_event: Callable[[WatchEvent], None]
    hook: str | None = None
    notifier: Notifier = field(default_factory=lambda: Notifier(None))
    random: _random.Random = field(default_factory=_random.Random)
    clock: Callable[[], float] = time.monotonic
    stop: threading.Event = field(default_factory=threading.Event)
    polls: int = 0
    updates: int = 0
    failures: int = 0
    hook_failures: int = 0
    _ready: bool = False
    _pinged: float = float("-inf")

    def __post_init__(self) -> None:
        if not self.targets:
            raise InvalidArgumentError("nothing to watch: give at least one reference")

    def run(self) -> None:
        """Poll until :attr:`stop` is set; ``STOPPING=1`` however the loop ends."""
        try:
            while not self.stop.is_set():
                target = min(self.targets, key=lambda t: t.due)
                if self._sleep(target.due - self.clock()):
                    break
                self._poll(target)
        finally:
            self.notifier.stopping("stopping")

    def _sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` (pinging the watchdog at its pace); True when stopped meanwhile."""
        step = self.notifier.ping_interval_s
        end = self.clock() + seconds
        while (left := end - self.clock()) > 0:
            if self.stop.wait(min(left, step) if step else left):
                return True
            self.ping()
        return self.stop.is_set()

    def ping(self) -> None:
        """``WATCHDOG=1``, at most every quarter watchdog period (called during pulls too)."""
        step = self.notifier.ping_interval_s
        if step is not None and self.clock() - self._pinged >= step / 2:
            self._pinged = self.clock()
            self.notifier.watchdog()

    def _poll(self, target: Target) -> None:
        self._pinged = float("-inf")
        self.ping()
        cpu = time.process_time()
        self.polls += 1
        try:
            result = self.poll(target, self.ping)
        except FATAL:
            raise
        except DorasOrasError as exc:
            spent = time.process_time() - cpu
            self.failures += 1
            target.failures += 1
            wait = self.schedule.after_failure(target.failures, self.random.random())
            target.due = self.clock() + wait
            target.polled = True
            self.notifier.status(f"{target.reference}: {exc.detail}; retrying in {wait:.0f} s")
            self.on_event(WatchEvent("error", target, error=exc, next_poll_s=wait, cpu_s=spent))
        else:
            spent = time.process_time() - cpu
            target.failures = 0
            wait = self.schedule.after_poll(self.random.random())
            target.due = self.clock() + wait
            target.polled = target.current = True
            self.notifier.status(f"{target.reference}: {result.status} ({result.to_digest})")
            self.on_event(WatchEvent("poll", target, result=result, next_poll_s=wait, cpu_s=spent))
            if result.updated:
                self.updates += 1
                if self.hook is not None:
                    self._run_hook(self.hook, target, result)
        if not self._ready and all(t.polled for t in self.targets):
            self._ready = True
            self.notifier.ready(f"watching {len(self.targets)} image(s)")

    def _run_hook(self, hook: str, target: Target, result: PullResult) -> None:
        """Run the hook once (its stdout goes to stderr: stdout is the events'); report its status."""
        env = hook_environment(target, result, self.layout)
        try:
            proc = subprocess.Popen([HOOK_SHELL, "-c", hook], env=env, stdin=subprocess.DEVNULL,
                                    stdout=2)
        except OSError as exc:
            self.hook_failures += 1
            self.on_event(WatchEvent("hook", target, result=result, hook_error=f"cannot start the hook: {exc}"))
            return
        try:
            while True:
                try:
                    code = proc.wait(self.notifier.ping_interval_s)
                    break
                except subprocess.TimeoutExpired:
                    self.ping()  # the hook takes its time; this process is alive
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if code != 0:
            self.hook_failures += 1
        self.on_event(WatchEvent("hook", target, result=result, hook_exit=code,
                                 hook_error=None if code == 0 else f"the hook exited with status {code}"))
