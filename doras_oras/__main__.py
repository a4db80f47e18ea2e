"""``python -m doras_oras`` runs the ``doras-oras`` command."""

from .cli import main

raise SystemExit(main())
