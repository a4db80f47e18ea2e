"""The ``doras-oras`` command: the parser, the command list, the one error boundary.

The commands are listed in :data:`COMMANDS` (each a module with ``NAME``,
``HELP``, ``configure(parser)`` and ``run(args) -> exit code``). :func:`main`
parses, sets up logging to stderr, runs the command and turns every failure
into one message (``doras-oras: error: ...``, and a JSON object with
``--json``) and an exit code (:mod:`.exits`). The command package is the only
place that prints.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from .. import __version__
from ..errors import DorasOrasError
from . import apply, delta, gc, pull, verify
from .exits import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, exit_code_for
from .output import report_error

COMMANDS: tuple[ModuleType, ...] = (pull, delta, apply, gc, verify)
"""The subcommands, in the order ``--help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of the command line (abbreviated long flags are not accepted)."""
    parser = argparse.ArgumentParser(
        prog="doras-oras",
        description="Delta-aware pulls of OCI artifacts through a Doras delta server.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"doras-oras {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logs on stderr")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        configure = command.configure
        configure(sub.add_parser(command.NAME, help=command.HELP, description=command.HELP, allow_abbrev=False))
    return parser


def _logging(args: argparse.Namespace) -> None:
    level = logging.ERROR if args.quiet else (logging.DEBUG if args.verbose > 1 else
                                              logging.INFO if args.verbose else logging.WARNING)
    logging.basicConfig(level=level, stream=sys.stderr, format="doras-oras: %(levelname)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (2), --help and --version (0)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    _logging(args)
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    runner = {command.NAME: command for command in COMMANDS}[args.command].run
    try:
        code: int = runner(args)
        return code
    except DorasOrasError as exc:
        return report_error(args, exc, exit_code_for(exc))
    except OSError as exc:  # a file named by the user (apply's --base, ...) cannot be read or written
        text = f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
        return report_error(args, text, EXIT_ERROR)
    except KeyboardInterrupt:
        print("doras-oras: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


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
