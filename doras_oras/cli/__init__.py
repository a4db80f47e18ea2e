"""The ``doras-oras`` command (see :mod:`.main`; exit codes in :mod:`.exits`).

Modules: :mod:`.main` (parser, command list, error boundary), :mod:`.options`
(the flags ``pull`` and ``delta`` share), :mod:`.output` (results, errors, JSON,
the fixes in flags), :mod:`.progress` (the bar and the spinner on a terminal),
:mod:`.exits` (exit codes), one module per command: :mod:`.pull`,
:mod:`.watch` (the update agent), :mod:`.delta`, :mod:`.apply`, :mod:`.gc`, :mod:`.fsck`, :mod:`.verify`, :mod:`.listing` (``list``).
"""

from __future__ import annotations

from .exits import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PENDING,
    EXIT_TRUST,
    EXIT_UP_TO_DATE,
    EXIT_USAGE,
)
from .main import main, run

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PENDING",
    "EXIT_TRUST",
    "EXIT_UP_TO_DATE",
    "EXIT_USAGE",
    "main",
    "run",
]
