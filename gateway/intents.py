"""Intents: the workflow designers' YAML, validated and compiled.

One file per intent in ``intents/``.  Loading validates the schema (pydantic), compiles
every argument JSON Schema (``jsonschema``), and lints the graph; every problem names
the file, the intent, the step and the field.  A registry of loaded intents is what the
decision pipeline and the Rego policy (as ``data.intentgate.intents``) see.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from .canonical import canonical_json, sha256_hex
from .errors import IntentFileError
from .schemas import CompiledSchema, InvalidSchema, compile_schema

__all__ = [
    "ArgumentRule",
    "Budget",
    "Intent",
    "IntentRegistry",
    "Problem",
    "Severity",
    "Step",
    "check_intents",
    "load_intents",
    "parse_tool",
]

NAME_RE = r"^[a-z0-9][a-z0-9_-]{0,63}$"
UPSTREAM_RE = r"[A-Za-z0-9][A-Za-z0-9-]{0,31}"
TOOL_RE = re.compile(rf"^(?P<upstream>{UPSTREAM_RE})\.(?P<tool>[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})$")
BIND_RE = re.compile(
    r"^(?:params\.(?P<param>[A-Za-z0-9_-]+)"
    r"|steps\.(?P<step>[A-Za-z0-9_-]+)\.arguments\.(?P<arg>[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*))$"
)
# keys of an argument rule that belong to IntentGate, not to the JSON Schema
_RULE_KEYS = ("bind", "optional")


def _closure(frontier: Iterable[str], neighbours: Callable[[str], Iterable[str]]) -> set[str]:
    """Every node reached from ``frontier`` (included) by following ``neighbours``."""
    seen: set[str] = set()
    todo = list(frontier)
    while todo:
        cur = todo.pop()
        if cur not in seen:
            seen.add(cur)
            todo.extend(neighbours(cur))
    return seen


def parse_tool(qualified: str) -> tuple[str, str]:
    """Split ``upstream.tool`` into its parts (raises ``ValueError``)."""
    m = TOOL_RE.match(qualified)
    if not m:
        raise ValueError(f"tool {qualified!r} is not of the form <upstream>.<tool>")
    return m["upstream"], m["tool"]


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Problem:
    """One finding of ``intentgate check``."""

    severity: Severity
    file: str
    message: str
    intent: str | None = None
    step: str | None = None
    field: str | None = None
    line: int | None = None  # where in the file (1-based), when the problem is about one place

    def __str__(self) -> str:
        where = [f"{self.file}:{self.line}" if self.line else self.file]
        if self.intent:
            where.append(f"intent {self.intent!r}")
        if self.step:
            where.append(f"step {self.step!r}")
        if self.field:
            where.append(f"field {self.field!r}")
        return f"{self.severity.value}: {', '.join(where)}: {self.message}"


@dataclass(frozen=True)
class ArgumentRule:
    """A compiled argument constraint: optional binding plus a JSON Schema."""

    name: str
    schema: dict[str, Any]
    validator: CompiledSchema
    bind: str | None
    optional: bool

    def schema_errors(self, value: Any) -> list[str]:
        return self.validator.errors(value)


class Step(BaseModel):
    """One workflow step: the single tool it may call, with constraints."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tool: str = Field(description="`<upstream>.<tool>` this step may call")
    description: str = ""
    arguments: dict[str, dict[str, Any]] = Field(default_factory=dict)
    next: list[str] = Field(default_factory=list)
    max_calls: int = Field(default=1, ge=1, le=1000)
    approval: Literal["never", "required"] = "never"

    @field_validator("tool")
    @classmethod
    def _tool_form(cls, v: str) -> str:
        parse_tool(v)
        return v

    @property
    def upstream(self) -> str:
        return parse_tool(self.tool)[0]

    @property
    def tool_name(self) -> str:
        return parse_tool(self.tool)[1]

    @property
    def terminal(self) -> bool:
        return not self.next


class Budget(BaseModel):
    """A limit across tasks: calls to one step, or the sum of one of its numeric arguments,
    within a sliding window, per agent (or per intent, parameter or argument value).

    Budgets are named; intents that declare the same name share one budget (and must agree on
    its limit, window, scope and what happens beyond it).  Without ``intent`` in ``per``, the
    spend of every intent declaring the name counts together.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    step: str = Field(description="the step whose allowed calls spend the budget")
    sum: str | None = Field(default=None, description="numeric argument whose values are summed (omit: count calls)")
    limit: float = Field(gt=0, le=1e15)
    window_seconds: int = Field(ge=1, le=366 * 86400)
    per: list[str] = Field(
        default_factory=lambda: ["agent"],
        description="what one budget is kept for: agent, intent, params.<name>, arguments.<name>",
    )
    on_exceed: Literal["hold", "deny"] = Field(default="deny", description="a reviewer may approve a held call")

    def shared_terms(self) -> tuple[Any, ...]:
        """What two intents declaring this budget's name must agree on."""
        return (self.limit, self.window_seconds, tuple(self.per), self.on_exceed, self.sum is None)


class Intent(BaseModel):
    """A named, versioned workflow an agent may declare."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_RE)
    version: str = Field(min_length=1, max_length=64)
    description: str = ""
    agents: list[str] = Field(min_length=1, description="glob patterns over agent ids")
    params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    ttl_seconds: int = Field(default=900, ge=1, le=7 * 24 * 3600)
    mode: Literal["enforce", "shadow"] = "enforce"
    begin: list[Literal["issuer", "agent"]] | None = Field(
        default=None, min_length=1,
        description="who may begin a task of this intent: a task issuer, the agent itself, or both "
        "(unset: the gateway's tasks.begin)",
    )
    start: list[str] = Field(min_length=1)
    steps: dict[str, Step] = Field(min_length=1)
    budgets: dict[str, Budget] = Field(default_factory=dict)

    _rules: dict[str, dict[str, ArgumentRule]] = PrivateAttr(default_factory=dict)
    _param_validators: dict[str, CompiledSchema] = PrivateAttr(default_factory=dict)
    _source: str = PrivateAttr(default="<memory>")

    @field_validator("version", mode="before")
    @classmethod
    def _version_str(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v

    def permits_agent(self, agent_id: str) -> bool:
        return any(fnmatch.fnmatchcase(agent_id, pattern) for pattern in self.agents)

    def begin_modes(self, default: Iterable[str] = ("issuer",)) -> list[str]:
        """Who may begin a task of this intent (``default`` when the file does not say)."""
        return list(self.begin) if self.begin is not None else list(default)

    def budgets_of(self, step: str) -> list[tuple[str, Budget]]:
        return [(name, b) for name, b in self.budgets.items() if b.step == step]

    def rules(self, step: str) -> dict[str, ArgumentRule]:
        return self._rules.get(step, {})

    def param_errors(self, params: Mapping[str, Any]) -> list[str]:
        """Validate task parameters: every declared one present and valid, no others."""
        errors: list[str] = []
        for name in params:
            if name not in self.params:
                errors.append(f"{name}: not a parameter of intent {self.name!r}")
        for name, validator in self._param_validators.items():
            if name not in params:
                errors.append(f"{name}: required")
                continue
            errors.extend(f"{name}: {e}" for e in validator.errors(params[name]))
        return errors

    def start_or_next(self, last_step: str | None) -> list[str]:
        """Steps the graph allows after ``last_step`` (``None``: nothing taken yet)."""
        if last_step is None:
            return list(self.start)
        step = self.steps.get(last_step)
        return list(step.next) if step else []

    def predecessors(self, target: str) -> set[str]:
        """Every step from which ``target`` is reachable by one or more edges."""
        reverse: dict[str, set[str]] = {name: set() for name in self.steps}
        for name, step in self.steps.items():
            for nxt in step.next:
                reverse.setdefault(nxt, set()).add(name)
        return _closure(reverse.get(target, ()), lambda cur: reverse.get(cur, ()))

    def successors(self, name: str) -> set[str]:
        """Every step reachable from ``name`` by one or more edges."""
        return _closure(self._next_of(name), self._next_of)

    def reachable(self) -> set[str]:
        """Every step reachable from the start steps (start steps included)."""
        return _closure((s for s in self.start if s in self.steps), self._next_of)

    def _next_of(self, name: str) -> list[str]:
        return [n for n in self.steps[name].next if n in self.steps]

    def tools(self) -> set[str]:
        return {step.tool for step in self.steps.values()}

    def document(self) -> dict[str, Any]:
        """The intent as plain JSON (what Rego sees under ``data.intentgate.intents``)."""
        return self.model_dump(mode="json")


def _format_loc(loc: tuple[int | str, ...]) -> tuple[str | None, str | None]:
    """Turn a pydantic error location into (step, field)."""
    parts = [str(p) for p in loc]
    if len(parts) >= 2 and parts[0] == "steps":
        return parts[1], ".".join(parts[2:]) or None
    return None, ".".join(parts) or None


class _UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Safe YAML loader (libyaml when present) refusing duplicate mapping keys."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:  # a list or mapping as a key (`? [a, b]`): what PyYAML itself refuses
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, "found unhashable key", key_node.start_mark
            ) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _compile(intent: Intent, file: str) -> list[Problem]:
    """Compile JSON Schemas and bindings into the intent; return problems found."""
    problems: list[Problem] = []

    def err(message: str, step: str | None = None, field: str | None = None) -> None:
        problems.append(Problem(Severity.ERROR, file, message, intent.name, step, field))

    for pname, pschema in intent.params.items():
        try:
            intent._param_validators[pname] = compile_schema(pschema)
        except InvalidSchema as exc:
            for problem in exc.problems:
                err(f"invalid JSON Schema: {problem}", field=f"params.{pname}")

    for sname, step in intent.steps.items():
        rules: dict[str, ArgumentRule] = {}
        for aname, spec in step.arguments.items():
            field = f"arguments.{aname}"
            schema = {k: v for k, v in spec.items() if k not in _RULE_KEYS}
            bind = spec.get("bind")
            optional = spec.get("optional", False)
            if not isinstance(optional, bool):
                err("'optional' must be true or false", sname, f"{field}.optional")
                continue
            if bind is not None:
                if not isinstance(bind, str) or not (m := BIND_RE.match(bind)):
                    err(
                        f"binding {bind!r} must be 'params.<name>' or "
                        "'steps.<step>.arguments.<name>'",
                        sname,
                        f"{field}.bind",
                    )
                    continue
                if m["param"] and m["param"] not in intent.params:
                    err(f"binding to undeclared parameter {m['param']!r}", sname, f"{field}.bind")
                if m["step"]:
                    src = m["step"]
                    if src not in intent.steps:
                        err(f"binding to unknown step {src!r}", sname, f"{field}.bind")
                    elif src not in intent.predecessors(sname):
                        err(
                            f"binding to step {src!r}, which can never precede {sname!r}",
                            sname,
                            f"{field}.bind",
                        )
                    elif m["arg"].split(".")[0] not in intent.steps[src].arguments:
                        err(
                            f"binding to argument {m['arg']!r}, which step {src!r} does not declare",
                            sname,
                            f"{field}.bind",
                        )
            try:
                validator = compile_schema(schema)
            except InvalidSchema as exc:
                for problem in exc.problems:
                    err(f"invalid JSON Schema: {problem}", sname, field)
                continue
            rules[aname] = ArgumentRule(
                name=aname,
                schema=schema,
                validator=validator,
                bind=bind,
                optional=optional,
            )
        intent._rules[sname] = rules
    problems.extend(_check_budgets(intent, file))
    return problems


_BUDGET_PER = re.compile(r"^(agent|intent|params\.[A-Za-z0-9_-]+|arguments\.[A-Za-z0-9_-]+)$")


def _check_budgets(intent: Intent, file: str) -> list[Problem]:
    problems: list[Problem] = []

    def err(message: str, name: str, field: str) -> None:
        problems.append(Problem(Severity.ERROR, file, message, intent.name, None, f"budgets.{name}.{field}"))

    for name, budget in intent.budgets.items():
        if not re.match(NAME_RE, name):
            err(f"budget name must match {NAME_RE}", name, "name")
        step = intent.steps.get(budget.step)
        if step is None:
            err(f"budget on unknown step {budget.step!r}", name, "step")
            continue
        if budget.sum is not None:
            spec = step.arguments.get(budget.sum)
            if spec is None:
                err(f"step {budget.step!r} has no argument {budget.sum!r} to sum", name, "sum")
            elif "type" in spec and spec["type"] not in ("number", "integer"):
                err(f"argument {budget.sum!r} must be declared with type number or integer to be summed", name, "sum")
            elif spec.get("optional"):
                err(f"argument {budget.sum!r} is optional: a call without it would spend nothing", name, "sum")
        if len(set(budget.per)) != len(budget.per):
            err("duplicate entry in per", name, "per")
        for entry in budget.per:
            if not _BUDGET_PER.match(entry):
                err(f"per entry {entry!r} must be agent, intent, params.<name> or arguments.<name>", name, "per")
            elif entry.startswith("params.") and entry[7:] not in intent.params:
                err(f"per entry {entry!r}: no such parameter", name, "per")
            elif entry.startswith("arguments.") and entry[10:] not in step.arguments:
                err(f"per entry {entry!r}: step {budget.step!r} declares no such argument", name, "per")
    return problems


def _lint_graph(intent: Intent, file: str) -> list[Problem]:
    problems: list[Problem] = []
    for s in intent.start:
        if s not in intent.steps:
            problems.append(
                Problem(Severity.ERROR, file, f"start step {s!r} does not exist", intent.name, None, "start")
            )
    if len(set(intent.start)) != len(intent.start):
        problems.append(Problem(Severity.ERROR, file, "duplicate start step", intent.name, None, "start"))
    for sname, step in intent.steps.items():
        if len(set(step.next)) != len(step.next):
            problems.append(Problem(Severity.ERROR, file, "duplicate step in next", intent.name, sname, "next"))
        for n in step.next:
            if n not in intent.steps:
                problems.append(
                    Problem(Severity.ERROR, file, f"next step {n!r} does not exist", intent.name, sname, "next")
                )
        if not re.match(NAME_RE, sname):
            problems.append(
                Problem(Severity.ERROR, file, f"step name must match {NAME_RE}", intent.name, sname, None)
            )
    reachable = intent.reachable()
    for sname in intent.steps:
        if sname not in reachable:
            problems.append(
                Problem(Severity.WARNING, file, "step is unreachable from the start steps", intent.name, sname, None)
            )
    if not any(intent.steps[s].terminal for s in reachable):
        problems.append(
            Problem(
                Severity.ERROR,
                file,
                "no terminal step (a step with empty 'next') is reachable, so the task can never complete",
                intent.name,
                None,
                "steps",
            )
        )
    for sname in reachable:
        if not any(intent.steps[t].terminal for t in ({sname} | intent.successors(sname))):
            problems.append(
                Problem(Severity.WARNING, file, "no terminal step is reachable from this step", intent.name, sname, "next")
            )
    return problems


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """The line (1-based) of every mapping key in a YAML document, by its path."""
    lines: dict[tuple[str, ...], int] = {}
    try:
        root = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (yaml.YAMLError, RecursionError, ValueError):
        return lines
    todo: list[tuple[tuple[str, ...], Any]] = [((), root)]
    while todo and len(lines) < 100_000:
        path, node = todo.pop()
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    where = (*path, str(key.value))
                    lines.setdefault(where, key.start_mark.line + 1)
                    todo.append((where, value))
    return lines


def _with_line(problem: Problem, lines: dict[tuple[str, ...], int]) -> Problem:
    """The problem, with the line of the deepest key of its place that the file has."""
    parts: list[str] = ["steps", problem.step] if problem.step else []
    parts += problem.field.split(".") if problem.field else []
    while parts:
        if (line := lines.get(tuple(parts))) is not None:
            return replace(problem, line=line)
        parts.pop()
    return problem


def _load_file(path: Path, display: str) -> tuple[Intent | None, list[Problem]]:
    intent, problems = _parse_file(path, display)
    if problems:
        try:
            lines = _key_lines(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            lines = {}
        problems = [_with_line(p, lines) for p in problems]
    return intent, problems


def _parse_file(path: Path, display: str) -> tuple[Intent | None, list[Problem]]:
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - safe loader subclass
    except yaml.YAMLError as exc:
        return None, [Problem(Severity.ERROR, display, f"invalid YAML: {exc}".replace("\n", " "))]
    except (OSError, UnicodeDecodeError) as exc:
        return None, [Problem(Severity.ERROR, display, f"cannot read: {exc}")]
    except RecursionError:  # nesting deeper than the stack (where exactly varies: no detail)
        return None, [Problem(Severity.ERROR, display, "invalid YAML: nested too deeply")]
    except ValueError as exc:  # an integer of thousands of digits
        return None, [Problem(Severity.ERROR, display, f"invalid YAML: {type(exc).__name__}: {str(exc)[:200]}")]
    if not isinstance(raw, dict):
        return None, [Problem(Severity.ERROR, display, "an intent file must hold one YAML mapping")]
    intent_name = raw.get("name") if isinstance(raw.get("name"), str) else None
    try:
        intent = Intent.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            step, field = _format_loc(e["loc"])
            problems.append(Problem(Severity.ERROR, display, e["msg"], intent_name, step, field))
        return None, problems
    intent._source = display
    problems = _compile(intent, display) + _lint_graph(intent, display)
    return intent, problems


class IntentRegistry:
    """The loaded intents, by name, with a revision hash over all of them.

    ``default_begin`` is who may begin intents whose files do not say (``tasks.begin``); the
    data document shows every intent's effective ``begin``.
    """

    def __init__(self, intents: Iterable[Intent], *, default_begin: Iterable[str] = ("issuer",)) -> None:
        self._intents = {i.name: i for i in intents}
        self.default_begin = list(default_begin)
        self.revision = sha256_hex(
            canonical_json({"intents": {n: i.document() for n, i in sorted(self._intents.items())},
                            "default_begin": self.default_begin})
        )[:16]
        self._tools = {t for i in self._intents.values() for t in i.tools()}

    def __contains__(self, name: object) -> bool:
        return name in self._intents

    def __len__(self) -> int:
        return len(self._intents)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._intents.values())

    def get(self, name: str) -> Intent | None:
        return self._intents.get(name)

    def names(self) -> list[str]:
        return sorted(self._intents)

    def for_agent(self, agent_id: str) -> list[Intent]:
        return [i for i in self._intents.values() if i.permits_agent(agent_id)]

    def tools(self) -> set[str]:
        return set(self._tools)

    def begin_modes(self, intent: Intent) -> list[str]:
        return intent.begin_modes(self.default_begin)

    def data_document(self) -> dict[str, Any]:
        """``{name: intent document}`` for ``data.intentgate.intents`` (``begin`` made effective)."""
        return {n: {**i.document(), "begin": self.begin_modes(i)} for n, i in self._intents.items()}


def _check_shared_budgets(intents: list[Intent]) -> list[Problem]:
    """Intents that declare one budget name share it: they must agree on its terms."""
    problems: list[Problem] = []
    first: dict[str, tuple[Intent, Budget]] = {}
    for intent in intents:
        for name, budget in intent.budgets.items():
            if name not in first:
                first[name] = (intent, budget)
            elif first[name][1].shared_terms() != budget.shared_terms():
                problems.append(Problem(
                    Severity.ERROR, intent._source,
                    f"budget {name!r} is also declared by intent {first[name][0].name!r} with another limit, "
                    "window, per, on_exceed or kind (count or sum); one name is one budget",
                    intent.name, None, f"budgets.{name}"))
    return problems


def check_intents(directory: Path, *, default_begin: Iterable[str] = ("issuer",)
                  ) -> tuple[IntentRegistry, list[Problem]]:
    """Load every ``*.yaml``/``*.yml`` under ``directory``; return what loaded and all problems."""
    directory = Path(directory)
    if not directory.is_dir():
        raise IntentFileError([f"error: {directory}: intents directory does not exist"])
    files = sorted(p for p in directory.rglob("*") if p.suffix in {".yaml", ".yml"} and p.is_file())
    intents: list[Intent] = []
    problems: list[Problem] = []
    first_seen: dict[str, str] = {}
    for path in files:
        display = str(path)
        intent, found = _load_file(path, display)
        problems.extend(found)
        if intent is None:
            continue
        if intent.name in first_seen:
            problems.append(
                Problem(
                    Severity.ERROR,
                    display,
                    f"duplicate intent name, already defined in {first_seen[intent.name]}",
                    intent.name,
                    None,
                    "name",
                )
            )
            continue
        first_seen[intent.name] = display
        if not any(p.severity is Severity.ERROR and p.file == display for p in found):
            intents.append(intent)
    if not files:
        problems.append(Problem(Severity.WARNING, str(directory), "no intent files (*.yaml) found"))
    shared = _check_shared_budgets(intents)
    problems.extend(shared)
    bad = {p.intent for p in shared}
    return IntentRegistry([i for i in intents if i.name not in bad], default_begin=default_begin), problems


def load_intents(directory: Path, *, default_begin: Iterable[str] = ("issuer",)) -> IntentRegistry:
    """Load intents for serving: any error-level problem raises ``IntentFileError``."""
    registry, problems = check_intents(directory, default_begin=default_begin)
    errors = [str(p) for p in problems if p.severity is Severity.ERROR]
    if errors:
        raise IntentFileError(errors)
    return registry
