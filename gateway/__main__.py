"""``python -m gateway`` runs the ``intentgate`` CLI."""

from .cli import app

app()
