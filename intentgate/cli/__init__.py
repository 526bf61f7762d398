"""The ``intentgate`` command line.

Building the command table must stay cheap (``intentgate --help`` is the first thing anyone
runs, and a read-only command should not pay for the serving stack): at module level the
command modules import only typer, rich and ``intentgate.errors``.  Everything heavier (config,
intents, store, review, policy, keys, the front) is imported inside the command that uses it,
and names used only in annotations are imported under ``TYPE_CHECKING``.  The one exception:
typer resolves the annotations of command functions' parameters when the table is built, so
those must name only builtins, ``Path`` and the option aliases.  ``tests/test_cli.py`` checks
which modules ``--help`` loads.
"""

from __future__ import annotations

from typing import Annotated

import typer

from .audit import audit_app
from .core import register_core
from .db import db_app
from .intent import register_designer
from .keys import keys_app
from .policy import policy_app
from .actions import register_actions
from .review import register_review
from .tasks import task_app

__all__ = ["app"]

app = typer.Typer(
    name="intentgate",
    help="IntentGate: an MCP gateway giving AI agents zero standing privilege.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"intentgate {version('intentgate')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            typer.echo("intentgate (not installed)")
        raise typer.Exit()


@app.callback()
def _main(
    show_version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                               help="print the version and exit")] = False,
) -> None:
    """IntentGate: an MCP gateway giving AI agents zero standing privilege."""


register_core(app)
register_designer(app)
app.add_typer(policy_app, name="policy", help="Test and evaluate the Rego policy.")
app.add_typer(keys_app, name="keys", help="Manage the action-token signing keys.")
register_review(app, audit_app)
register_actions(app)
app.add_typer(audit_app, name="audit", help="Verify and export the decision log.")
app.add_typer(db_app, name="db", help="Database schema: status and migrations.")
app.add_typer(task_app, name="task", help="Begin tasks for agents and sign task grants (the local task issuer).")
