"""``intentgate db``: the database schema (Alembic migrations)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from ..errors import GatewayError
from .common import ConfigOption, config_or_exit, console, err_console

if TYPE_CHECKING:
    from ..store import Database

__all__ = ["db_app"]

db_app = typer.Typer(no_args_is_help=True)


def _open(config: ConfigOption) -> Database:
    from ..store import Database

    cfg = config_or_exit(config)
    if cfg.store.url is None:
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        return Database(cfg.database_url, timeout=cfg.store.timeout_seconds, pool_size=1, inline=False)
    except GatewayError as exc:
        err_console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from exc


@db_app.command("status")
def status(config: ConfigOption = None) -> None:
    """Show the schema revision of the database and the one this gateway needs; exit 1 if behind."""
    from ..store.migrate import schema_status

    db = _open(config)
    try:
        st = schema_status(db)
    except GatewayError as exc:
        err_console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from exc
    finally:
        db.close()
    current = st.current or ("none (tables from before migrations)" if st.legacy else "none (empty database)")
    console.print(f"database revision: {current}\ngateway needs:     {st.head}", highlight=False)
    if not st.up_to_date:
        console.print("[yellow]behind[/yellow]: run `intentgate db upgrade`")
        raise typer.Exit(1)
    console.print("up to date")


@db_app.command("upgrade")
def upgrade(config: ConfigOption = None) -> None:
    """Apply pending migrations (safe to run while other replicas start: they wait on a lock)."""
    from ..store.migrate import ensure_schema, schema_status

    db = _open(config)
    try:
        before = schema_status(db)
        after = ensure_schema(db, migrate=True)
    except GatewayError as exc:
        err_console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from exc
    finally:
        db.close()
    if before.up_to_date:
        console.print(f"already at {after.current}", highlight=False)
    else:
        console.print(f"upgraded: {before.current or 'none'} -> {after.current}", highlight=False)
