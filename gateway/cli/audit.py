"""``intentgate audit``: verify the hash chain of the decision log."""

from __future__ import annotations

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import GatewayError
from ..store import Store
from .common import ConfigOption, config_or_exit, console, database_or_exit, err_console

__all__ = ["audit_app"]

audit_app = typer.Typer(no_args_is_help=True)


@audit_app.command("verify")
def verify(config: ConfigOption = None) -> None:
    """Recompute the decision log's hash chain; exit 1 if any row was edited or deleted."""
    cfg = config_or_exit(config)
    database_or_exit(cfg)
    try:
        store = Store.open(cfg.database_url, timeout=cfg.store.timeout_seconds, migrate=cfg.store.migrate)
    except GatewayError as exc:
        err_console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from exc
    try:
        with Progress(
            TextColumn("verifying decisions"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=err_console, transient=True,
        ) as progress:
            bar = progress.add_task("verify", total=None)
            report = store.verify_chain(progress=lambda n: progress.advance(bar, n))
    finally:
        store.close()
    for problem in report.problems:
        console.print(f"[red]{problem}[/red]", highlight=False)
    if report.ok:
        console.print(f"audit chain OK: {report.checked} decisions, head seq {report.head_seq}")
    else:
        console.print(f"[red]audit chain BROKEN[/red]: {len(report.problems)} problem(s) in {report.checked} rows")
        raise typer.Exit(1)
