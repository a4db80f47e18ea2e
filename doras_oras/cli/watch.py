"""``doras-oras watch``: the update agent, one process that keeps images current (docs/fleet.md).

Each REF is pulled as ``doras-oras pull`` pulls it (the same flags,
:func:`.pull.call_pull`), every ``--interval`` ± ``--jitter``, by one
registry client whose connections stay open between polls; after an update
``--exec CMD`` runs. The loop is :class:`doras_oras.watch.Watcher`; this
module parses, prints one line per poll (``--json``: one object per event)
and stops cleanly on SIGTERM or SIGINT (exit 0, after a last ``stopped``
event). Under systemd ``Type=notify`` it reports READY, WATCHDOG and STATUS.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..edgeapi import EdgeClient
from ..errors import InvalidArgumentError
from ..pull import PullResult
from ..reference import Reference
from ..sdnotify import Notifier
from ..watch import DEFAULT_MAX_BACKOFF_S, Schedule, Target, Watcher, WatchEvent
from .exits import EXIT_OK, exit_code_for
from .options import credentials_from_args, duration, registry_from_args
from .output import PREFIX, describe, error_object, hint
from .pull import _describe, add_pull_options, call_pull, check_paths, check_pull_args, understood

NAME = "watch"
HELP = "the update agent: keep images current in an OCI image layout, polling every --interval"

#: Fields of an ``--output`` template.
TEMPLATE_FIELDS = ("registry", "repository", "name", "tag")


def _duration_or_zero(text: str) -> float:
    return 0.0 if text.strip() in ("0", "0s", "0.0") else duration(text)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("references", metavar="REF", nargs="+", help="registry/repository[:tag][@digest]; repeat")
    parser.add_argument("--interval", type=duration, required=True, metavar="DURATION",
                        help="time between two polls of a REF (90s, 15m, 6h, 1d)")
    parser.add_argument("--jitter", type=_duration_or_zero, metavar="DURATION",
                        help="move each poll by up to this much, at random, either way (default: a tenth of "
                             "--interval; at most --interval), so a fleet does not poll in lockstep")
    parser.add_argument("--max-backoff", type=duration, default=DEFAULT_MAX_BACKOFF_S, metavar="DURATION",
                        help="longest wait after failed polls in a row (default 1h, or --interval if longer)")
    parser.add_argument("--exec", dest="hook", metavar="CMD",
                        help="a shell command to run after each update (DORAS_ORAS_* variables: docs/cli.md)")
    parser.add_argument("--output", "-o", action="append", default=[], metavar="DIR",
                        help="also write the files of each image to DIR: once per REF, in order, or once "
                             "as a template ({registry}, {repository}, {name}, {tag})")
    parser.add_argument("--json", action="store_true", help="one JSON object per event on stdout")
    add_pull_options(parser)


def _outputs(outputs: list[str], refs: list[Reference]) -> list[str | None]:
    """The output directory of each REF (``None``: none)."""
    if not outputs:
        return [None] * len(refs)
    if len(outputs) == len(refs) and (len(refs) > 1 or "{" not in outputs[0]):
        chosen = outputs
    elif len(outputs) == 1:
        try:
            chosen = [outputs[0].format(registry=ref.registry, repository=ref.repository,
                                        name=ref.repository.rsplit("/", 1)[-1], tag=ref.tag or "latest")
                      for ref in refs]
        except (KeyError, IndexError, ValueError) as exc:
            raise InvalidArgumentError(f"--output {outputs[0]}: not a template of "
                                       f"{{{'}, {'.join(TEMPLATE_FIELDS)}}} ({exc})") from None
    else:
        raise InvalidArgumentError(f"give --output once per REF ({len(refs)}) or once as a template, "
                                   f"not {len(outputs)} times")
    if len(set(chosen)) < len(chosen):
        raise InvalidArgumentError("two REFs would write their files to the same --output directory: "
                                   "give one per REF or a template that tells them apart ({repository}, {tag})")
    return list(chosen)


class _Stop(KeyboardInterrupt):
    """SIGTERM or SIGINT: leave the loop (and a pull in progress, as Ctrl-C does) and exit 0."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.signal_name = name


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Turn the first SIGTERM or SIGINT into :class:`_Stop`; later ones are ignored while stopping."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    seen: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if not seen:
            seen.append(signum)
            raise _Stop(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _print(args: argparse.Namespace, obj: dict[str, Any] | None, text: str | None, *, error: bool = False) -> None:
    """One event: its JSON object with ``--json`` (stdout), else its line (stderr for a failure)."""
    if args.json:
        if obj is not None:
            print(json.dumps(obj, sort_keys=True), flush=True)
        if error and text:
            print(PREFIX + text, file=sys.stderr, flush=True)
    elif text:
        print(text if not error else PREFIX + text, file=sys.stderr if error else sys.stdout, flush=True)


def _reporter(args: argparse.Namespace) -> Callable[[WatchEvent], None]:
    def report(event: WatchEvent) -> None:
        ref = str(event.target.reference)
        if event.kind == "poll" and event.result is not None:
            obj = {"event": "poll", **event.result.to_json(), "layout": str(args.oci_layout),
                   "hint": hint(event.result.fix, args), "next_poll_s": round(event.next_poll_s or 0, 3),
                   "cpu_s": round(event.cpu_s or 0, 6)}
            _print(args, obj, f"{_describe(event.result, args)}; next poll in {event.next_poll_s or 0:.1f} s")
        elif event.kind == "error" and event.error is not None:
            code = exit_code_for(event.error)
            obj = {"event": "error", "reference": ref, **error_object(event.error, code, args),
                   "failures": event.target.failures, "next_poll_s": round(event.next_poll_s or 0, 3),
                   "cpu_s": round(event.cpu_s or 0, 6)}
            _print(args, obj, f"{ref}: {describe(event.error, args)}; failure {event.target.failures} in a row, "
                              f"next poll in {event.next_poll_s or 0:.1f} s", error=True)
        elif event.kind == "hook" and event.result is not None:
            ok = event.hook_exit == 0
            obj = {"event": "hook", "reference": ref, "status": "ok" if ok else "failed",
                   "exit_code": event.hook_exit, "to_digest": event.result.to_digest,
                   "message": event.hook_error}
            text = (f"{ref}: hook done for {event.result.to_digest}" if ok else
                    f"{ref}: {event.hook_error} after the update to {event.result.to_digest} "
                    "(the layout keeps the new image)")
            _print(args, obj, text, error=not ok)

    return report


def run(args: argparse.Namespace) -> int:
    refs = [Reference.parse(text) for text in args.references]
    outputs = _outputs(list(args.output), refs)
    for output in outputs:
        check_paths(args.oci_layout, output)
    jitter = args.interval / 10 if args.jitter is None else args.jitter
    if jitter > args.interval:
        raise InvalidArgumentError("--jitter must not be longer than --interval")
    schedule = Schedule(args.interval, jitter, args.max_backoff)
    verification = check_pull_args(args)
    credentials = credentials_from_args(args)
    registry = registry_from_args(args, credentials)
    for text, ref in zip(args.references, refs, strict=True):
        understood(text, ref)
    edges = {ref.registry: EdgeClient.for_registry(registry, args.server, ref.registry) for ref in refs} \
        if args.server else {}
    notifier = Notifier.from_environment()

    def poll(target: Target, ping: Callable[[], None]) -> PullResult:
        return call_pull(args, registry, edges.get(target.reference.registry), target.reference,
                         verification=verification, output=target.output,
                         progress=lambda *_: ping(), on_wait=lambda *_: ping(),
                         refresh_output=not target.current)  # files written once are rewritten only by updates

    watcher = Watcher([Target(ref, output) for ref, output in zip(refs, outputs, strict=True)], poll, schedule,
                      args.oci_layout, _reporter(args), hook=args.hook, notifier=notifier)
    stopped_by: str | None = None
    try:
        with _stop_on_signals():
            try:
                watcher.run()
            except _Stop as stop:
                stopped_by = stop.signal_name
    finally:
        for edge in edges.values():
            edge.close()
        registry.close()
        notifier.close()
    summary = {"event": "stopped", "signal": stopped_by, "polls": watcher.polls, "updates": watcher.updates,
               "errors": watcher.failures, "hook_failures": watcher.hook_failures, "exit_code": EXIT_OK}
    _print(args, summary, f"stopped ({stopped_by or 'stop'}) after {watcher.polls} poll(s): {watcher.updates} "
                          f"update(s), {watcher.failures} failed poll(s), {watcher.hook_failures} failed hook(s)")
    return EXIT_OK
