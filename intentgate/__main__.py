"""``python -m intentgate`` runs the ``intentgate`` CLI."""

from .cli import app

app()
