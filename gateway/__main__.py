"""``python -m gateway`` (deprecated: ``python -m intentgate``) runs the ``intentgate`` CLI."""

from intentgate.cli import app

app()
