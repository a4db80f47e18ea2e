"""Exit codes of the ``doras-oras`` command and the mapping of errors to them (docs/cli.md).

====  ==========================================================
0     success (updated / applied / answer printed)
1     error (any failure not covered below); the layout is unchanged
2     usage error (bad flags or arguments, missing files named by flags, a layout path that is a
      file or a directory holding something else)
3     up to date (nothing to do; the images are identical)
4     pending (the delta is still being built; ask again later)
5     trust failure: a signature that does not verify, an untrusted repository, an
      unusable key or policy file (every :class:`~doras_oras.errors.TrustError`);
      nothing was asked for, downloaded or written (docs/trust.md)
130   interrupted (SIGINT / Ctrl-C); the layout is unchanged, partial downloads are kept
143   terminated (SIGTERM, what a service manager sends on stop); as 130
====  ==========================================================
"""

from __future__ import annotations

from ..errors import DorasOrasError, InvalidArgumentError, NotALayoutError, TrustError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UP_TO_DATE = 3
EXIT_PENDING = 4
EXIT_TRUST = 5
"""Every :class:`~doras_oras.errors.TrustError` (the same value as ``doras_oras.trust.EXIT_TRUST``)."""
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
"""SIGTERM: 128 + 15, as a shell reports a process killed by it; handled as SIGINT."""

_BY_ERROR: tuple[tuple[type[DorasOrasError], int], ...] = (
    (InvalidArgumentError, EXIT_USAGE),
    (TrustError, EXIT_TRUST),
    (NotALayoutError, EXIT_USAGE),
)


def exit_code_for(error: DorasOrasError) -> int:
    """The exit code of a failure (the first class of the table it belongs to; else 1)."""
    for cls, code in _BY_ERROR:
        if isinstance(error, cls):
            return code
    return EXIT_ERROR
