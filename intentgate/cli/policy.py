"""``intentgate policy``: run the Rego unit tests, evaluate the policy on one input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..errors import GatewayError
from .common import ConfigOption, config_or_exit, console, err_console, project_or_exit

__all__ = ["policy_app"]

policy_app = typer.Typer(
    help="Test and evaluate the Rego policy (data.intentgate.decision) with the embedded engine.",
    no_args_is_help=True,
)

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
    """Run every test_* rule in the policy's *_test.rego files, like `opa test`.

    Exit 1 if a test fails or none is found, 2 if the policy or intents do not load.
    """
    from ..intents import load_intents
    from ..policy import run_rego_tests

    cfg = config_or_exit(config, policy_dir=policy, intents_dir=intents)
    project_or_exit(cfg, config, given=(intents, policy))
    try:
        registry = load_intents(cfg.intents_dir, default_begin=cfg.tasks.begin)
        results = run_rego_tests(cfg.policy_dir, registry.data_document())
    except GatewayError as exc:
        err_console.print(f"[red]error:[/red] {exc.message}", highlight=False)
        raise typer.Exit(2) from exc
    if not results:
        err_console.print(f"[red]no Rego tests (test_* rules in *_test.rego) found in {cfg.policy_dir}[/red]")
        raise typer.Exit(1)
    failed = [r for r in results if not r.passed]
    shown = results if verbose else failed
    current_file = None
    for r in shown:
        if r.file != current_file:
            current_file = r.file
            console.print(f"{r.file}:", highlight=False)
        mark = "[green]PASS[/green]" if r.passed else "[red]FAIL[/red]"
        console.print(f"{r.ref}: {mark} ({r.duration_ms:.1f}ms, line {r.line})", highlight=False, soft_wrap=True)
        if r.error:
            console.print(f"    {r.error}", highlight=False, markup=False, soft_wrap=True)
    if shown:
        console.print("-" * 80)
    console.print(f"[green]PASS[/green]: {len(results) - len(failed)}/{len(results)}", highlight=False)
    if failed:
        console.print(f"[red]FAIL[/red]: {len(failed)}/{len(results)}", highlight=False)
        raise typer.Exit(1)


@policy_app.command("bundle")
def bundle(
    output: Annotated[Path, typer.Option("--output", "-o", help="where to write the bundle (.tar.gz)")],
    config: ConfigOption = None,
    policy: PolicyDir = None,
    intents: IntentsDir = None,
) -> None:
    """Write an OPA bundle: the policy modules, the data documents and the intents.

    For an OPA sidecar that pulls its policy from a bundle server (set policy.push_policy:
    false on the gateway).  Exit 2 if the policy or intents do not load.
    """
    from ..intents import load_intents
    from ..policy import load_policy_dir
    from ..policy._embedded import check_compiles
    from ..policy._opa_bundle import build_opa_bundle

    cfg = config_or_exit(config, policy_dir=policy, intents_dir=intents)
    try:
        registry = load_intents(cfg.intents_dir, default_begin=cfg.tasks.begin)
        check_compiles(load_policy_dir(cfg.policy_dir), registry.data_document())
        content, manifest = build_opa_bundle(cfg.policy_dir, registry.data_document())
        output.write_bytes(content)
    except GatewayError as exc:
        err_console.print(f"[red]error:[/red] {exc.message}", highlight=False)
        raise typer.Exit(2) from exc
    except OSError as exc:
        err_console.print(f"[red]error:[/red] {output}: {exc.strerror}", highlight=False)
        raise typer.Exit(2) from exc
    console.print(f"wrote {output} (revision {manifest['revision']}, roots {', '.join(manifest['roots'])})",
                  highlight=False)


@policy_app.command("eval")
def evaluate(
    input_file: Annotated[Path, typer.Option("--input", "-i", help="JSON file holding the policy input")],
    config: ConfigOption = None,
    policy: PolicyDir = None,
    intents: IntentsDir = None,
) -> None:
    """Evaluate data.intentgate.decision for one input and print the decision as JSON.

    Exit 1 if the policy fails or answers off-contract, 2 if a file does not load.
    """
    from ..intents import load_intents
    from ..policy import EmbeddedEngine

    cfg = config_or_exit(config, policy_dir=policy, intents_dir=intents)
    try:
        document = json.loads(input_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        err_console.print(f"[red]error:[/red] {input_file}: {exc}", highlight=False)
        raise typer.Exit(2) from exc
    try:
        registry = load_intents(cfg.intents_dir, default_begin=cfg.tasks.begin)
        engine = EmbeddedEngine(cfg.policy_dir, registry.data_document(), environment=cfg.environment)
    except GatewayError as exc:
        err_console.print(f"[red]error:[/red] {exc.message}", highlight=False)
        raise typer.Exit(2) from exc
    try:
        result = engine.evaluate_sync(document)
    except GatewayError as exc:
        err_console.print(f"[red]error ({exc.code.value}):[/red] {exc.message}", highlight=False)
        raise typer.Exit(1) from exc
    console.print_json(result.model_dump_json())
