"""``python -m doras_oras`` runs the ``doras-oras`` command."""

from .cli.main import run

run()
