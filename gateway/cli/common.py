"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from ..config import GatewayConfig, load_config
from ..errors import GatewayError

T = TypeVar("T")

console = Console()
err_console = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", envvar="INTENTGATE_CONFIG", help="intentgate.yaml to use", show_default=False),
]


def config_or_exit(path: Path | None, **overrides: Any) -> GatewayConfig:
    try:
        return load_config(path, **overrides)
    except GatewayError as exc:
        err_console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from exc


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine; turn gateway errors into a clean message and exit code 1."""
    try:
        return asyncio.run(coro)
    except GatewayError as exc:
        err_console.print(f"[red]error ({exc.code.value}):[/red] {exc.message}")
        raise typer.Exit(1) from exc
