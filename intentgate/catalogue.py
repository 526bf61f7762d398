"""The upstreams' own tools, and the intents checked against them.

``intentgate check`` (and ``intentgate serve`` when it starts) asks every configured upstream
for its ``tools/list`` and holds each intent step against it: an upstream that is not
configured or does not answer, a tool it does not have (with the names it does have that come
closest), an argument the tool does not take, an argument the tool requires that the step
does not declare (the workflow refuses undeclared arguments, so every call would fail), and a
constraint whose type contradicts the tool's.  Each is a problem naming the file, line,
intent, step and field.
"""

from __future__ import annotations

import difflib
from typing import Any

import mcp_types as types

from .config import GatewayConfig
from .intents import IntentRegistry, Problem, Severity, with_lines
from .upstreams import UpstreamPool

__all__ = ["Catalogue", "check_against", "fetch_catalogue"]

_TYPES = {"string", "number", "integer", "boolean", "object", "array", "null"}


class Catalogue:
    """What each upstream answered to ``tools/list`` (and which ones did not answer)."""

    def __init__(self, tools: dict[str, list[types.Tool]], failures: dict[str, str], configured: set[str]) -> None:
        self.tools = tools
        self.failures = failures
        self.configured = configured

    @classmethod
    def of(cls, pool: UpstreamPool, failures: dict[str, str]) -> Catalogue:
        """What a started pool holds (``failures`` as its ``start()`` returned them)."""
        tools = {name: list(up.tools) for name, up in pool.upstreams.items() if name not in failures}
        return cls(tools, dict(failures), set(pool.upstreams))

    def tool(self, upstream: str, name: str) -> types.Tool | None:
        return next((t for t in self.tools.get(upstream, []) if t.name == name), None)


async def fetch_catalogue(config: GatewayConfig) -> Catalogue:
    """Start every configured upstream once and read its tools."""
    pool = UpstreamPool(config.upstreams)
    try:
        return Catalogue.of(pool, await pool.start())
    finally:
        await pool.aclose()


def _types_of(schema: Any) -> set[str] | None:
    """The JSON types a schema allows at its top, when it says (integer counts as number too)."""
    if not isinstance(schema, dict) or "type" not in schema:
        return None
    declared = schema["type"]
    found = {declared} if isinstance(declared, str) else set(declared) if isinstance(declared, list) else set()
    found &= _TYPES
    if "integer" in found:
        found.add("number")
    return found or None


def _close(word: str, choices: list[str]) -> str:
    near = difflib.get_close_matches(word, choices, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(repr(n) for n in near)}?)" if near else ""


def check_against(registry: IntentRegistry, catalogue: Catalogue) -> list[Problem]:
    """Every step's tool and arguments held against what its upstream says it has."""
    problems: list[Problem] = []
    reported: set[str] = set()
    for intent in registry:
        def err(message: str, step: str, field: str) -> None:
            problems.append(Problem(Severity.ERROR, intent._source, message, intent.name, step, field))

        for sname, step in intent.steps.items():
            upstream, name = step.upstream, step.tool_name
            if upstream not in catalogue.configured:
                err(f"upstream {upstream!r} is not configured{_close(upstream, sorted(catalogue.configured))} "
                    f"(configured: {', '.join(sorted(catalogue.configured)) or 'none'})", sname, "tool")
                continue
            if upstream in catalogue.failures:
                if upstream not in reported:
                    reported.add(upstream)
                    err(f"upstream {upstream!r} did not list its tools: {catalogue.failures[upstream]}", sname, "tool")
                continue
            tool = catalogue.tool(upstream, name)
            if tool is None:
                names = sorted(t.name for t in catalogue.tools.get(upstream, []))
                err(f"upstream {upstream!r} has no tool {name!r}{_close(name, names)}", sname, "tool")
                continue
            schema = tool.input_schema if isinstance(tool.input_schema, dict) else {}
            properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
            open_ended = schema.get("additionalProperties", True) is not False and not properties
            for arg, spec in step.arguments.items():
                if arg not in properties and not open_ended:
                    err(f"tool {step.tool!r} takes no argument {arg!r}{_close(arg, sorted(properties))} "
                        f"(it takes: {', '.join(sorted(properties)) or 'none'})", sname, f"arguments.{arg}")
                    continue
                ours, theirs = _types_of(spec), _types_of(properties.get(arg))
                if ours and theirs and not ours & theirs:
                    err(f"argument {arg!r} is constrained to {'/'.join(sorted(ours))}, but tool {step.tool!r} takes "
                        f"{'/'.join(sorted(theirs))}", sname, f"arguments.{arg}")
            for required in schema.get("required", []) if isinstance(schema.get("required"), list) else []:
                if required not in step.arguments:
                    err(f"tool {step.tool!r} requires {required!r}, which the step neither binds nor constrains: "
                        "the gateway refuses undeclared arguments, so every call would fail", sname, "arguments")
    return with_lines(problems)
