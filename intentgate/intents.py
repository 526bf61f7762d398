"""Intents: the workflow designers' YAML, validated and compiled.

One file per intent in ``intents/``.  Loading validates the schema (pydantic), compiles
every argument JSON Schema (``jsonschema``), and lints the graph; every problem names
the file, the intent, the step and the field.  A registry of loaded intents is what the
decision pipeline and the Rego policy (as ``data.intentgate.intents``) see.
"""

from __future__ import annotations

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
from .names import glob_match, identity_glob_problem
from .bindings import Binding, BindingError, parse_binding
from .schemas import CompiledSchema, InvalidSchema, compile_schema

__all__ = [
    "ArgumentRule",
    "Budget",
    "Group",
    "Intent",
    "IntentRegistry",
    "Problem",
    "Severity",
    "Step",
    "FIXTURE_SUFFIXES",
    "check_intents",
    "load_intents",
    "parse_tool",
    "with_lines",
]

NAME_RE = r"^[a-z0-9][a-z0-9_-]{0,63}$"
UPSTREAM_RE = r"[A-Za-z0-9][A-Za-z0-9-]{0,31}"
TOOL_RE = re.compile(rf"^(?P<upstream>{UPSTREAM_RE})\.(?P<tool>[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})$")
# keys of an argument rule that belong to IntentGate, not to the JSON Schema
_RULE_KEYS = ("bind", "path", "mode", "optional")
FIXTURE_SUFFIXES = (".test.yaml", ".test.yml")  # intent fixtures (`intentgate intent test`), not intents


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
    binding: Binding | None = None

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
    free: bool = Field(
        default=False,
        description="callable at any point of the task (a read-only lookup); it does not move the workflow on",
    )
    asks: list[Literal["sampling", "elicitation", "elicitation_url", "roots"]] = Field(
        default_factory=list,
        description="what the tool may ask the agent's client during this step's call (sampling/createMessage, "
                    "elicitation/create in form or URL mode, roots/list); nothing unless listed",
    )

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
        """No next step (a free step never completes a task; see ``Intent.is_terminal`` for groups)."""
        return not self.next and not self.free


class Group(BaseModel):
    """Steps that may run in any order (each up to its ``max_calls``); once every one of them
    has been taken, the workflow moves on to ``next``.  Elsewhere in the graph (``start``, a
    step's ``next``) the group's name stands for its steps."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    steps: list[str] = Field(min_length=1)
    next: list[str] = Field(min_length=1)


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
    agents: list[str] = Field(min_length=1, description="glob patterns over agent ids (* within a /-segment, "
                                                        "** as the whole last segment)")
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
    groups: dict[str, Group] = Field(default_factory=dict)
    budgets: dict[str, Budget] = Field(default_factory=dict)

    _rules: dict[str, dict[str, ArgumentRule]] = PrivateAttr(default_factory=dict)
    _keeps: dict[str, dict[str, tuple[str, ...]]] = PrivateAttr(default_factory=dict)
    _param_validators: dict[str, CompiledSchema] = PrivateAttr(default_factory=dict)
    _source: str = PrivateAttr(default="<memory>")

    @field_validator("version", mode="before")
    @classmethod
    def _version_str(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v

    @field_validator("agents")
    @classmethod
    def _agent_globs(cls, v: list[str]) -> list[str]:
        for pattern in v:
            if (problem := identity_glob_problem(pattern)) is not None:
                raise ValueError(f"agent pattern {pattern!r}: {problem}")
        return v

    def permits_agent(self, agent_id: str) -> bool:
        return any(glob_match(pattern, agent_id) for pattern in self.agents)

    def begin_modes(self, default: Iterable[str] = ("issuer",)) -> list[str]:
        """Who may begin a task of this intent (``default`` when the file does not say)."""
        return list(self.begin) if self.begin is not None else list(default)

    def budgets_of(self, step: str) -> list[tuple[str, Budget]]:
        return [(name, b) for name, b in self.budgets.items() if b.step == step]

    def rules(self, step: str) -> dict[str, ArgumentRule]:
        return self._rules.get(step, {})

    def kept_paths(self, step: str) -> dict[str, tuple[str, ...]]:
        """The paths of ``step``'s results that later bindings read (``{path: pointer}``)."""
        return self._keeps.get(step, {})

    @property
    def reads_results(self) -> bool:
        """True when some binding reads an earlier step's result."""
        return bool(self._keeps)

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

    def expand(self, names: Iterable[str]) -> list[str]:
        """Step names, with each group's name replaced by its steps (order kept, no repeats)."""
        out: list[str] = []
        for name in names:
            for step in (self.groups[name].steps if name in self.groups else [name]):
                if step not in out:
                    out.append(step)
        return out

    def group_of(self, step: str) -> str | None:
        for name, group in self.groups.items():
            if step in group.steps:
                return name
        return None

    def free_steps(self) -> list[str]:
        return [name for name, step in self.steps.items() if step.free]

    def is_terminal(self, name: str) -> bool:
        """A call to this step completes the task (no next step; not free; not in a group)."""
        step = self.steps.get(name)
        return step is not None and step.terminal and self.group_of(name) is None

    def start_or_next(self, last_step: str | None, taken: Mapping[str, int] | None = None) -> list[str]:
        """Steps the graph allows after ``last_step`` (``None``: nothing taken yet), free steps
        aside; ``taken`` (calls per step so far) says whether a group is done."""
        if last_step is None:
            return self.expand(self.start)
        if (group := self.group_of(last_step)) is not None:
            members = self.groups[group].steps
            done = taken is not None and all(taken.get(m, 0) > 0 for m in members)
            return self.expand([*members, *(self.groups[group].next if done else [])])
        step = self.steps.get(last_step)
        return self.expand(step.next) if step else []

    def _next_of(self, name: str) -> list[str]:
        """Edges of the graph: a step's next, a group member's fellow members and its group's next."""
        if (group := self.group_of(name)) is not None:
            g = self.groups[group]
            return [n for n in self.expand([*g.steps, *g.next]) if n in self.steps and n != name]
        return [n for n in self.expand(self.steps[name].next) if n in self.steps]

    def predecessors(self, target: str) -> set[str]:
        """Every step that can be taken before ``target`` in a task (free steps included)."""
        reverse: dict[str, set[str]] = {name: set() for name in self.steps}
        for name in self.steps:
            for nxt in self._next_of(name):
                reverse.setdefault(nxt, set()).add(name)
        before = _closure(reverse.get(target, ()), lambda cur: reverse.get(cur, ()))
        return before | {f for f in self.free_steps() if f != target}

    def successors(self, name: str) -> set[str]:
        """Every step reachable from ``name`` by one or more edges."""
        return _closure(self._next_of(name), self._next_of)

    def reachable(self) -> set[str]:
        """Every step reachable from the start steps (start steps and free steps included)."""
        return _closure((s for s in self.expand(self.start) if s in self.steps), self._next_of) | set(self.free_steps())

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
            binding = None
            if bind is not None or "path" in spec or "mode" in spec:
                try:
                    binding = parse_binding(spec)
                except BindingError as exc:
                    err(str(exc), sname, f"{field}.bind")
                    continue
                if problem := _binding_problem(intent, sname, binding):
                    err(problem, sname, f"{field}.bind")
                    continue
                if binding.source == "result":
                    intent._keeps.setdefault(binding.name, {})[binding.path] = binding.pointer
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
                binding=binding,
            )
        intent._rules[sname] = rules
    problems.extend(_check_budgets(intent, file))
    return problems


def _binding_problem(intent: Intent, step: str, binding: Binding) -> str | None:
    """Why a binding can never be satisfied in this intent, or None."""
    if binding.source == "params":
        return None if binding.name in intent.params else f"binding to undeclared parameter {binding.name!r}"
    src = binding.name
    if src not in intent.steps:
        return f"binding to unknown step {src!r}"
    if src not in intent.predecessors(step):
        return f"binding to step {src!r}, which can never precede {step!r}"
    if binding.source == "arguments" and binding.keys[0] not in intent.steps[src].arguments:
        return f"binding to argument {'.'.join(binding.keys)!r}, which step {src!r} does not declare"
    return None


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

    def add(severity: Severity, message: str, step: str | None, field: str | None) -> None:
        problems.append(Problem(severity, file, message, intent.name, step, field))

    names = set(intent.steps) | set(intent.groups)
    for s in intent.start:
        if s not in names:
            add(Severity.ERROR, f"start step {s!r} does not exist", None, "start")
    if len(set(intent.start)) != len(intent.start):
        add(Severity.ERROR, "duplicate start step", None, "start")
    for sname, step in intent.steps.items():
        if len(set(step.next)) != len(step.next):
            add(Severity.ERROR, "duplicate step in next", sname, "next")
        for n in step.next:
            if n not in names:
                add(Severity.ERROR, f"next step {n!r} does not exist", sname, "next")
        if not re.match(NAME_RE, sname):
            add(Severity.ERROR, f"step name must match {NAME_RE}", sname, None)
        if step.free and (step.next or sname in intent.expand(intent.start) or intent.group_of(sname)):
            add(Severity.ERROR, "a free step is callable at any point: it has no next, is no start step and "
                "belongs to no group", sname, "free")
    seen: dict[str, str] = {}
    for gname, group in intent.groups.items():
        field = f"groups.{gname}"
        if gname in intent.steps:
            add(Severity.ERROR, f"group {gname!r} has the name of a step", None, field)
        if not re.match(NAME_RE, gname):
            add(Severity.ERROR, f"group name must match {NAME_RE}", None, field)
        for member in group.steps:
            if member not in intent.steps:
                add(Severity.ERROR, f"group step {member!r} does not exist", None, f"{field}.steps")
            elif member in seen:
                add(Severity.ERROR, f"step {member!r} is in groups {seen[member]!r} and {gname!r}", None,
                    f"{field}.steps")
            elif intent.steps[member].next:
                add(Severity.ERROR, f"step {member!r} is in group {gname!r}: the group's next is its next",
                    member, "next")
            seen.setdefault(member, gname)
        for n in group.next:
            if n not in names or n == gname:
                add(Severity.ERROR, f"next step {n!r} of the group does not exist", None, f"{field}.next")
    if any(p.severity is Severity.ERROR for p in problems):
        return problems  # the graph below would be built on names that do not exist
    reachable = intent.reachable()
    for sname in intent.steps:
        if sname not in reachable:
            add(Severity.WARNING, "step is unreachable from the start steps", sname, None)
    if not any(intent.is_terminal(s) for s in reachable):
        add(Severity.ERROR, "no terminal step (a step with empty 'next') is reachable, so the task can never complete",
            None, "steps")
    for sname in reachable - set(intent.free_steps()):
        if not any(intent.is_terminal(t) for t in ({sname} | intent.successors(sname))):
            add(Severity.WARNING, "no terminal step is reachable from this step", sname, "next")
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


def with_lines(problems: list[Problem]) -> list[Problem]:
    """The problems, each with the line of its place in its file (files read once each)."""
    cache: dict[str, dict[tuple[str, ...], int]] = {}
    out = []
    for problem in problems:
        if problem.file not in cache:
            try:
                cache[problem.file] = _key_lines(Path(problem.file).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError):
                cache[problem.file] = {}
        out.append(_with_line(problem, cache[problem.file]))
    return out


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
    """Load every ``*.yaml``/``*.yml`` under ``directory`` (not the fixtures, ``*.test.yaml``);
    return what loaded and all problems."""
    directory = Path(directory)
    if not directory.is_dir():
        raise IntentFileError([f"error: {directory}: intents directory does not exist"])
    files = sorted(p for p in directory.rglob("*")
                   if p.suffix in {".yaml", ".yml"} and not p.name.endswith(FIXTURE_SUFFIXES) and p.is_file())
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


def intent_json_schema() -> dict[str, Any]:
    """A JSON Schema (2020-12) of an intent file, for editors and CI (``intentgate intent
    schema``): the file's structure, and an argument rule's own keys (``bind``, ``path``,
    ``mode``, ``optional``) beside the JSON Schema keywords it constrains the value with.
    What it cannot say (a step that does not exist, a cycle, a tool an upstream lacks) is for
    ``intentgate check``."""
    from .bindings import MODES, _SOURCE

    schema = Intent.model_json_schema()
    defs = schema.setdefault("$defs", {})
    defs["Argument"] = {
        "type": "object",
        "description": "a JSON Schema for the argument's value, and what it is bound to",
        "properties": {
            "bind": {"type": "string", "pattern": _SOURCE.pattern,
                     "description": "params.<name>, steps.<step>.arguments.<name>, or steps.<step>.result"},
            "path": {"type": "string", "pattern": "^(/.*)?$",
                     "description": "JSON Pointer into a step's result, '*' a segment for every element"},
            "mode": {"enum": list(MODES), "default": "equals"},
            "optional": {"type": "boolean", "default": False, "description": "the call may leave it out"},
        },
        "dependentRequired": {"path": ["bind"], "mode": ["bind"]},
    }
    defs["Step"]["properties"]["arguments"]["additionalProperties"] = {"$ref": "#/$defs/Argument"}
    defs["Step"]["properties"]["tool"]["pattern"] = TOOL_RE.pattern
    for key in ("steps", "groups", "budgets", "params"):
        schema["properties"][key]["propertyNames"] = {"pattern": NAME_RE if key != "params" else r"^[A-Za-z0-9_-]+$"}
    schema["properties"]["params"]["additionalProperties"] = {
        "type": "object", "description": "a JSON Schema for the parameter's value"}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "IntentGate intent", **schema}
