"""The ``doras-oras`` command. The only module that prints.

Subcommands register themselves in ``COMMANDS`` (name -> (configure, run));
``main`` parses, sets up logging to stderr and maps exceptions to exit codes.

Exit codes (documented in docs/cli.md):

====  ==========================================================
0     success (updated / applied / answer printed)
1     error (any failure not covered below)
2     usage error (bad flags or arguments)
3     up to date (nothing to do; the images are identical)
4     pending (the delta is still being built; ask again later)
====  ==========================================================
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from . import __version__
from .errors import DorasOrasError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UP_TO_DATE = 3
EXIT_PENDING = 4

Configure = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]

COMMANDS: dict[str, tuple[str, Configure, Run]] = {}


def command(name: str, help_text: str) -> Callable[[Configure], Callable[[Run], Run]]:
    """Register a subcommand: ``@command(name, help)(configure)(run)``."""

    def with_configure(configure: Configure) -> Callable[[Run], Run]:
        def with_run(run: Run) -> Run:
            COMMANDS[name] = (help_text, configure, run)
            return run

        return with_run

    return with_configure


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="doras-oras",
        description="Delta-aware pulls of OCI artifacts through a Doras delta server.",
    )
    parser.add_argument("--version", action="version", version=f"doras-oras {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logs on stderr")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, configure, _run) in sorted(COMMANDS.items()):
        configure(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def _load_commands() -> None:
    # Subcommand modules register themselves on import.
    from . import cli_commands  # noqa: F401


def main(argv: Sequence[str] | None = None) -> int:
    _load_commands()
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.ERROR if args.quiet else (logging.DEBUG if args.verbose > 1 else
                                              logging.INFO if args.verbose else logging.WARNING)
    logging.basicConfig(level=level, stream=sys.stderr, format="doras-oras: %(levelname)s: %(message)s")
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    _help, _configure, run_command = COMMANDS[args.command]
    try:
        return run_command(args)
    except DorasOrasError as exc:
        print(f"doras-oras: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("doras-oras: interrupted", file=sys.stderr)
        return 130


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
