"""The ``doras-oras`` command: the parser, the command list, the one error boundary.

The commands are listed in :data:`COMMANDS` (each a module with ``NAME``,
``HELP``, ``configure(parser)`` and ``run(args) -> exit code``), imported
only when named: ``doras-oras pull`` loads neither the codecs (``apply``) nor
the other commands (``doras-oras --help`` loads them all). :func:`main`
parses, sets up logging to stderr, runs the command and turns every failure
into one message (``doras-oras: error: ...``, and a JSON object with
``--json``) and an exit code (:mod:`.exits`). The command package is the only
place that prints.

The parser's errors (bad flags) take the same way: :class:`_Parser` raises
:class:`UsageError` instead of exiting, so a usage error prints the
subcommand's usage, the one error line, and with ``--json`` the one JSON
object; so does an argument a command refuses (exit 2). Unknown flags are reported by the subcommand they follow; ``-v`` and
``-q`` are accepted before and after the subcommand; long flags are never
abbreviated.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Sequence
from importlib import import_module
from types import ModuleType
from typing import NoReturn

from .. import __version__
from ..errors import DorasOrasError
from .exits import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, EXIT_USAGE, exit_code_for
from .output import report_error

COMMANDS: dict[str, str] = {"pull": "pull", "watch": "watch", "delta": "delta", "apply": "apply",
                            "publish-delta": "publish", "gc": "gc", "fsck": "fsck", "verify": "verify",
                            "list": "listing"}
"""The subcommands (name: module of this package), in the order ``--help`` lists them."""


def command(name: str) -> ModuleType:
    """The module of subcommand ``name`` (imported now)."""
    return import_module(f".{COMMANDS[name]}", __package__)


def _named(words: Sequence[str]) -> str | None:
    """The subcommand ``words`` name: the first word that is not a flag (the top level has no flag values)."""
    for word in words:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None

EPILOG = ("exit codes: 0 success, 1 error, 2 usage error, 3 up to date, 4 pending, "
          "5 trust failure, 130 interrupted (Ctrl-C; the layout is unchanged), 143 terminated (SIGTERM); "
          "see docs/cli.md")


class UsageError(Exception):
    """Raised instead of argparse's exit: bad flags of ``parser`` (its usage is printed)."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser
        self.message = message


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors reach :func:`main` (one error format, JSON with ``--json``)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self, message)


def _add_log_flags(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """``-v``/``-q``: before the subcommand or after it (counted together)."""
    suffix = "" if top else "_after"
    default: object = 0 if top else argparse.SUPPRESS
    parser.add_argument("-v", "--verbose", dest="verbose" + suffix, action="count", default=default,
                        help="more logs on stderr (-vv: debug)")
    parser.add_argument("-q", "--quiet", dest="quiet" + suffix, action="store_true",
                        default=False if top else argparse.SUPPRESS, help="only errors on stderr")


def build_parser(only: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser of the command line (abbreviated long flags are not accepted).

    ``only``: configure these subcommands alone (the others are listed by name, their modules
    not imported); default: all of them.
    """
    parser = _Parser(prog="doras-oras", description="Delta-aware pulls of OCI artifacts through a Doras delta "
                     "server.", epilog=EPILOG, allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"doras-oras {__version__}")
    _add_log_flags(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        if only is not None and name not in only:
            sub.add_parser(name, allow_abbrev=False)
            continue
        module = command(name)
        child = sub.add_parser(name, help=module.HELP, description=module.HELP, epilog=EPILOG, allow_abbrev=False)
        _add_log_flags(child, top=False)
        module.configure(child)
    return parser


def _subparser(parser: argparse.ArgumentParser, name: str | None) -> argparse.ArgumentParser:
    """The parser of subcommand ``name`` (the top-level parser when there is none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            chosen: argparse.ArgumentParser = action.choices[name]
            return chosen
    return parser


class _Formatter(logging.Formatter):
    """``doras-oras: warning: ...``: the level in lower case, as the error prefix."""

    def format(self, record: logging.LogRecord) -> str:
        record.levelname_lower = record.levelname.lower()
        return super().format(record)


def _logging(args: argparse.Namespace) -> None:
    verbose = int(args.verbose) + int(getattr(args, "verbose_after", 0))
    quiet = bool(args.quiet or getattr(args, "quiet_after", False))
    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else
                                         logging.INFO if verbose else logging.WARNING)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter("doras-oras: %(levelname_lower)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a service manager stopping the unit), raised where the program is, as Ctrl-C is.

    A :class:`KeyboardInterrupt`, so every cleanup that runs for Ctrl-C runs for it
    (the lock released, nothing committed, partial downloads kept for the next run).
    """


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def _wants_json(argv: Sequence[str]) -> bool:
    """Whether ``--json`` was asked for (also when the flags did not parse)."""
    words = list(argv)
    if "--" in words:
        words = words[: words.index("--")]
    return "--json" in words


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    words = list(sys.argv[1:] if argv is None else argv)
    named = _named(words)
    helping = "-h" in words or "--help" in words  # the top-level help lists every command's
    parser = build_parser(None if helping else [named] if named else [])
    try:
        args, extra = parser.parse_known_args(words)
        if extra:
            _subparser(parser, args.command).error(f"unrecognized arguments: {' '.join(extra)}")
    except UsageError as exc:
        exc.parser.print_usage(sys.stderr)
        return report_error(None, exc.message, EXIT_USAGE, json_output=_wants_json(words))
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    _logging(args)
    if not args.command:
        build_parser().print_help(sys.stderr)
        return EXIT_USAGE
    runner = command(args.command).run
    handles_signals = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if handles_signals else None
    try:
        code: int = runner(args)
        return code
    except DorasOrasError as exc:
        code = exit_code_for(exc)
        if code == EXIT_USAGE:  # arguments refused after parsing: the usage too, as for bad flags
            _subparser(parser, args.command).print_usage(sys.stderr)
        return report_error(args, exc, code)
    except OSError as exc:  # a file named by the user (apply's --base, ...) cannot be read or written
        text = f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
        return report_error(args, text, EXIT_ERROR, kind=type(exc).__name__)
    except Terminated:
        return report_error(args, "terminated (SIGTERM)", EXIT_TERMINATED, kind="Terminated")
    except KeyboardInterrupt:
        return report_error(args, "interrupted", EXIT_INTERRUPTED, kind="Interrupted")
    except Exception as exc:  # a bug: still one JSON object for a script, and the traceback for a report
        report_error(args, f"internal error: {type(exc).__name__}: {exc}", EXIT_ERROR, kind="InternalError")
        traceback.print_exc(file=sys.stderr)
        return EXIT_ERROR
    finally:
        if handles_signals:
            signal.signal(signal.SIGTERM, previous)


def run() -> NoReturn:
    """The console script: :func:`main`, then exit at once.

    Once the command has returned, its files are closed, its lock released and
    its output written; what remains is the interpreter's teardown of every
    imported module (~60 ms on a small machine), which this skips by flushing
    the output streams and calling ``os._exit``. An exception that escapes
    :func:`main` (a bug) takes the normal way out, with its traceback.
    """
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: the output was not delivered
            code = code or EXIT_ERROR
    os._exit(code)


__all__ = ["COMMANDS", "EXIT_OK", "build_parser", "main", "run"]
