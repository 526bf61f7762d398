"""``intentgate policy``: run the Rego tests, evaluate one input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..errors import GatewayError
from ..intents import load_intents
from ..policy import EmbeddedEngine, run_rego_tests
from .common import ConfigOption, config_or_exit, console, err_console

__all__ = ["policy_app"]

policy_app = typer.Typer(no_args_is_help=True)

PolicyDir = Annotated[Path | None, typer.Option("--policy", help="policy directory (default: from config, else ./opa)")]
IntentsDir = Annotated[
    Path | None, typer.Option("--intents", help="intents directory (default: from config, else ./intents)")
]


@policy_app.command("test")
def test(
    config: ConfigOption = None,
    policy: PolicyDir = None,
    intents: IntentsDir = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="list passing tests too")] = False,
) -> None:
    """Run every test_* rule in the policy's *_test.rego files, like `opa test`."""
    cfg = config_or_exit(config, policy_dir=policy, intents_dir=intents)
    try:
        registry = load_intents(cfg.intents_dir)
        results = run_rego_tests(cfg.policy_dir, registry.data_document())
    except GatewayError as exc:
        err_console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from exc
    if not results:
        err_console.print(f"[red]no Rego tests (test_* rules in *_test.rego) found in {cfg.policy_dir}[/red]")
        raise typer.Exit(1)
    failed = [r for r in results if not r.passed]
    for r in results:
        if r.passed and not verbose:
            continue
        mark = "[green]PASS[/green]" if r.passed else "[red]FAIL[/red]"
        where = f"{r.file}:{r.line}"
        console.print(f"{mark} data.{r.package}.{r.name} ({where}, {r.duration_ms:.1f} ms)", highlight=False)
        if r.error:
            console.print(f"     {r.error}", highlight=False)
    console.print("-" * 60)
    summary = f"PASS: {len(results) - len(failed)}/{len(results)}"
    if failed:
        console.print(f"[red]{summary}, FAIL: {len(failed)}/{len(results)}[/red]")
        raise typer.Exit(1)
    console.print(f"[green]{summary}[/green]")


@policy_app.command("eval")
def evaluate(
    input_file: Annotated[Path, typer.Option("--input", "-i", help="JSON file holding the policy input")],
    config: ConfigOption = None,
    policy: PolicyDir = None,
    intents: IntentsDir = None,
) -> None:
    """Evaluate data.intentgate.decision for one input and print the decision as JSON."""
    cfg = config_or_exit(config, policy_dir=policy, intents_dir=intents)
    try:
        document = json.loads(input_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        err_console.print(f"[red]error:[/red] {input_file}: {exc}")
        raise typer.Exit(2) from exc
    try:
        registry = load_intents(cfg.intents_dir)
        engine = EmbeddedEngine(cfg.policy_dir, registry.data_document(), environment=cfg.environment)
        result = engine.evaluate_sync(document)
    except GatewayError as exc:
        err_console.print(f"[red]error ({exc.code.value}):[/red] {exc.message}")
        raise typer.Exit(1) from exc
    console.print_json(json.dumps({"revision": engine.revision, **result.model_dump()}))
