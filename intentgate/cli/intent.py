"""Designer commands: ``intentgate upstreams``, ``intentgate graph`` and ``intentgate intent
new|test|schema``: what the upstreams offer, a starting intent from their real schemas, an
intent's graph, its fixtures run offline, and the JSON Schema of the YAML."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import GatewayError
from .common import ConfigOption, config_or_exit, console, err_console

__all__ = ["intent_app", "register_designer"]

intent_app = typer.Typer(
    help="Write and test intents: a starting YAML, fixtures run offline, the JSON Schema of the YAML.",
    no_args_is_help=True,
)

IntentsDir = Annotated[
    Path | None, typer.Option("--intents", help="intents directory (default: from config, else ./intents)")
]
Output = Annotated[Path | None, typer.Option("--output", "-o", help="write to this file instead of stdout")]


def _emit(text: str, output: Path | None) -> None:
    if output is None:
        typer.echo(text, nl=not text.endswith("\n"))
    else:
        output.write_text(text, encoding="utf-8")
        err_console.print(f"wrote {output}")


def _catalogue(cfg: Any, only: list[str] | None) -> Any:
    import asyncio

    from ..catalogue import fetch_catalogue

    known = {u.name for u in cfg.upstreams}
    unknown = [n for n in only or [] if n not in known]
    if unknown:
        err_console.print(f"[red]error:[/red] no upstream {', '.join(map(repr, unknown))} in the config "
                          f"(configured: {', '.join(sorted(known)) or 'none'})")
        raise typer.Exit(2)
    if only:
        cfg = cfg.model_copy(update={"upstreams": [u for u in cfg.upstreams if u.name in only]})
    with err_console.status(f"asking {len(cfg.upstreams)} upstream(s) for their tools"):
        return asyncio.run(fetch_catalogue(cfg))


def upstreams(
    names: Annotated[list[str] | None, typer.Argument(help="upstreams to list (default: all configured)")] = None,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print {upstream: [tool, ...]} as JSON")] = False,
    schemas: Annotated[bool, typer.Option("--schemas/--no-schemas", help="print each tool's input schema")] = True,
) -> None:
    """Start each configured upstream, list its tools with their input schemas.  Exit 1 if
    one does not answer."""
    cfg = config_or_exit(config)
    if not cfg.upstreams:
        err_console.print("[red]error:[/red] no upstreams configured (upstreams: in intentgate.yaml)")
        raise typer.Exit(2)
    catalogue = _catalogue(cfg, names)
    if as_json:
        typer.echo(json.dumps({
            name: [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tools]
            for name, tools in catalogue.tools.items()
        } | {name: {"error": message} for name, message in catalogue.failures.items()}, indent=2))
    else:
        for name in sorted(catalogue.tools):
            console.print(f"[bold]{name}[/bold]: {len(catalogue.tools[name])} tools", highlight=False)
            for tool in catalogue.tools[name]:
                console.print(f"  [cyan]{name}.{tool.name}[/cyan]  {(tool.description or '').strip()}",
                              highlight=False, soft_wrap=True)
                if schemas:
                    console.print("    " + json.dumps(tool.input_schema, sort_keys=True), highlight=False,
                                  soft_wrap=True)
        for name, message in sorted(catalogue.failures.items()):
            err_console.print(f"[red]{name}: did not answer: {message}[/red]", highlight=False)
    if catalogue.failures:
        raise typer.Exit(1)


def _registry(cfg: Any) -> Any:
    from ..intents import Severity, check_intents

    try:
        registry, problems = check_intents(cfg.intents_dir, default_begin=cfg.tasks.begin)
    except GatewayError as exc:
        err_console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from exc
    for p in problems:
        if p.severity is Severity.ERROR:
            err_console.print(f"[red]{p}[/red]", highlight=False, soft_wrap=True)
    return registry


def graph(
    name: Annotated[str, typer.Argument(help="intent name")],
    config: ConfigOption = None,
    intents: IntentsDir = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="svg, dot (Graphviz) or mermaid")] = "svg",
    output: Output = None,
) -> None:
    """Draw an intent's workflow graph: the reviewer UI's SVG, Graphviz DOT, or Mermaid."""
    from ..review import intent_graph
    from ..ui.graph import to_dot, to_mermaid
    from ..ui.render import intent_svg

    renderers = {"svg": intent_svg, "dot": to_dot, "mermaid": to_mermaid}
    if fmt not in renderers:
        err_console.print(f"[red]error:[/red] --format must be one of {', '.join(renderers)}, not {fmt!r}")
        raise typer.Exit(2)
    cfg = config_or_exit(config, intents_dir=intents)
    registry = _registry(cfg)
    intent = registry.get(name)
    if intent is None:
        err_console.print(f"[red]error:[/red] no intent {name!r} in {cfg.intents_dir} "
                          f"(loaded: {', '.join(sorted(i.name for i in registry)) or 'none'})")
        raise typer.Exit(2)
    _emit(renderers[fmt](intent_graph(intent)), output)


@intent_app.command("schema")
def schema(
    output: Output = None,
    fixture: Annotated[bool, typer.Option("--fixture", help="the schema of a fixture file (*.test.yaml)")] = False,
) -> None:
    """Print the JSON Schema (2020-12) of an intent file, for editor completion and CI
    (e.g. yaml-language-server's `# yaml-language-server: $schema=intent.schema.json`)."""
    from ..fixtures import FixtureFile
    from ..intents import intent_json_schema

    document = ({"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "IntentGate intent fixtures",
                 **FixtureFile.model_json_schema()} if fixture else intent_json_schema())
    _emit(json.dumps(document, indent=2) + "\n", output)


def _starting_rule(spec: Any, required: bool) -> dict[str, Any]:
    """A constraint from a tool's own schema for one argument: its JSON Schema keywords."""
    rule = {k: v for k, v in (spec if isinstance(spec, dict) else {}).items()
            if k not in {"description", "title", "default", "examples"}}
    if not rule:
        rule = {"type": "string", "maxLength": 1000}  # the tool says nothing: a designer must narrow it
    if not required:
        rule["optional"] = True
    return rule


@intent_app.command("new")
def new(
    name: Annotated[str, typer.Argument(help="the intent's name (lowercase, digits, - and _)")],
    upstream: Annotated[str, typer.Option("--upstream", "-u", help="the upstream whose tools the steps call")],
    tools: Annotated[str, typer.Option("--tools", "-t", help="comma-separated tool names, in workflow order")],
    agent: Annotated[str, typer.Option(help="agent ids (glob) that may use it")] = "spiffe://example.org/agent/*",
    config: ConfigOption = None,
    output: Output = None,
) -> None:
    """Write a starting intent: one step per tool, in the order given, each argument
    constrained by the tool's own input schema (required ones required).  Edit it: bind what
    the task fixes, narrow the rest; then `intentgate check`."""
    import re

    import yaml

    from ..intents import NAME_RE

    if not re.match(NAME_RE, name):
        err_console.print(f"[red]error:[/red] {name!r} is no intent name (lowercase letters, digits, - and _)")
        raise typer.Exit(2)
    wanted = [t.strip() for t in tools.split(",") if t.strip()]
    if not wanted:
        err_console.print("[red]error:[/red] --tools names no tool")
        raise typer.Exit(2)
    cfg = config_or_exit(config)
    catalogue = _catalogue(cfg, [upstream])
    if upstream in catalogue.failures:
        err_console.print(f"[red]error:[/red] upstream {upstream!r} did not answer: {catalogue.failures[upstream]}")
        raise typer.Exit(1)
    import difflib

    have = {t.name: t for t in catalogue.tools.get(upstream, [])}
    missing = [t for t in wanted if t not in have]
    if missing:
        for t in missing:
            near = difflib.get_close_matches(t, list(have), n=3, cutoff=0.6)
            err_console.print(f"[red]error:[/red] upstream {upstream!r} has no tool {t!r}"
                              + (f" (did you mean {', '.join(map(repr, near))}?)" if near else ""))
        raise typer.Exit(1)
    steps: dict[str, Any] = {}
    names = [re.sub(r"[^a-z0-9_-]", "_", t.lower())[:64] or "step" for t in wanted]
    for i, (tool_name, step_name) in enumerate(zip(wanted, names, strict=True)):
        tool = have[tool_name]
        input_schema = tool.input_schema if isinstance(tool.input_schema, dict) else {}
        props = input_schema.get("properties") if isinstance(input_schema.get("properties"), dict) else {}
        required = set(input_schema.get("required") or [])
        step: dict[str, Any] = {"description": (tool.description or "").strip().splitlines()[0][:200]
                                if tool.description else "", "tool": f"{upstream}.{tool_name}"}
        if props:
            step["arguments"] = {arg: _starting_rule(spec, arg in required) for arg, spec in props.items()}
        if i + 1 < len(wanted):
            step["next"] = [names[i + 1]]
        steps[step_name] = step
    document = {"name": name, "version": "1", "description": f"TODO: what a task of {name} does",
                "agents": [agent], "begin": ["issuer"], "ttl_seconds": 900, "start": [names[0]], "steps": steps}
    header = (f"# Starting intent from {upstream}'s tools/list ({', '.join(wanted)}). Before it ships:\n"
              "# bind what the task fixes ({bind: params.x}), narrow what stays free, and run intentgate check.\n")
    _emit(header + yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=110, default_flow_style=None), output)


@intent_app.command("test")
def test(
    paths: Annotated[list[Path] | None, typer.Argument(help="fixture files or directories (default: the intents dir)")]
    = None,
    config: ConfigOption = None,
    intents: IntentsDir = None,
    policy: Annotated[Path | None, typer.Option("--policy", help="policy directory (default: from config)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="list passing cases too")] = False,
) -> None:
    """Run the intents' fixtures (*.test.yaml: call sequences with the outcome and reasons
    each call must get) through the workflow and the Rego policy, offline, like `opa test`.
    Exit 1 if a case fails or none is found, 2 if a fixture cannot be run."""
    import asyncio

    from ..fixtures import FixtureError, find_fixtures, run_fixtures

    cfg = config_or_exit(config, intents_dir=intents, policy_dir=policy)
    try:
        files = find_fixtures(paths or [cfg.intents_dir])
    except FixtureError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    if not files:
        err_console.print(f"[red]error:[/red] no fixtures (*.test.yaml) in {', '.join(map(str, paths or [cfg.intents_dir]))}")
        raise typer.Exit(1)

    def show(result: Any) -> None:
        if result.passed:
            if verbose:
                console.print(f"[green]PASS[/green] {result.file}: {result.intent}: {result.case}", highlight=False, soft_wrap=True)
            return
        console.print(f"[red]FAIL[/red] {result.file}: {result.intent}: {result.case}", highlight=False, soft_wrap=True)
        for failure in result.failures:
            console.print(f"  {failure}", highlight=False, soft_wrap=True)

    try:
        results = asyncio.run(run_fixtures(cfg, files, on_case=show))
    except (FixtureError, GatewayError) as exc:
        err_console.print(f"[red]error:[/red] {getattr(exc, 'message', None) or exc}")
        raise typer.Exit(2) from exc
    failed = sum(not r.passed for r in results)
    calls = sum(r.calls for r in results)
    summary = f"{len(results) - failed}/{len(results)} cases ({calls} calls) in {len(files)} file(s)"
    console.print(("[red]FAIL[/red]: " if failed else "[green]PASS[/green]: ") + summary, highlight=False)
    if failed:
        raise typer.Exit(1)


def register_designer(app: typer.Typer) -> None:
    app.command("upstreams")(upstreams)
    app.command("graph")(graph)
    app.add_typer(intent_app, name="intent", help="Write and test intents: new, test, schema.")
