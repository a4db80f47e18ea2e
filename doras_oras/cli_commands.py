"""Imports every subcommand module so that it registers itself with :mod:`doras_oras.cli`."""

from __future__ import annotations

from . import (
    cli_apply,  # noqa: F401  (apply)
    cli_delta,  # noqa: F401  (delta)
    cli_pull,  # noqa: F401  (pull, gc)
)
