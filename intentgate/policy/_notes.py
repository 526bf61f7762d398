"""What the policy says of its own reasons: the ``title`` and ``description`` of the rule that
gives each reason, from the rule's METADATA annotation as OPA defines it.

OPA reads these annotations (``opa inspect -a``, ``rego.metadata.rule()``); regorus, the
embedded engine, skips them as comments and has no ``rego.metadata`` built-ins, so a policy
cannot hand them over with its answer on both engines.  They are read here instead, once per
load, from the files both engines run: the rules from regorus's parse of each module (a rule's
head is read by a Rego parser, not by a pattern), the annotations from the comments before
them, attached as OPA attaches them:

- a block begins with the comment ``# METADATA`` at column 1 and takes the column-1 comment
  lines after it, up to the first other line (a blank one too) or the next ``# METADATA``;
  what follows the ``#`` of those lines is a YAML document;
- it annotates the first statement after it (the package, or a rule), blank lines and other
  comments between them notwithstanding;
- scope ``rule`` (the default before a rule) is that rule alone, ``document`` every rule of
  that name in the package; ``package`` and ``subpackages`` describe packages, not reasons.

A reason is explained by a partial set rule whose key is that string literal (``deny contains
"refund_over_limit" if …``): by the rule's own annotation, else by its document's.  A reason
made at evaluation time (``deny contains msg if …``) has no note; the UI says then only that
the policy gave it.  A block that OPA refuses (not YAML, not a mapping, ``title`` not a string,
an unknown or misplaced scope) is refused here too (``ConfigError``), so that both engines
load the same policies.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import regorus
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import ConfigError

__all__ = ["ReasonNote", "read_reason_notes", "ref_path"]


@dataclass(frozen=True)
class ReasonNote:
    """What the annotated rule says of a reason, and where that rule is."""

    title: str
    description: str
    rule: str  # data.intentgate.deny
    location: str  # intentgate/refunds.rego:24


class _Annotation(BaseModel):
    """The part of OPA's annotation schema read here; other keys (authors, custom, …) are kept
    out of the way, as OPA keeps them."""

    model_config = ConfigDict(extra="ignore", strict=True)

    scope: Literal["rule", "document", "package", "subpackages"] | None = None
    title: str = ""
    description: str = ""


@dataclass(frozen=True)
class _Rule:
    package: str
    name: str  # the rule's name inside the package (deny, a.b for a ref head)
    key: str | None  # the string literal a partial set rule adds, if it is one
    line: int


def ref_path(node: Any) -> list[str]:
    """Flatten a regorus AST reference (``Var`` / ``RefDot`` chain) into names."""
    if not isinstance(node, dict):
        return []
    if "Var" in node:
        return [node["Var"]["value"]]
    if "RefDot" in node:
        ref = node["RefDot"]
        return [*ref_path(ref["refr"]), ref["field"][1]]
    if "RefBrack" in node:  # a bracket ends the name: test_x[note] (a table-driven test) is test_x
        return ref_path(node["RefBrack"]["refr"])
    return []


def _blocks(text: str) -> Iterator[tuple[int, int, str]]:
    """(first line, last line, YAML text) of every METADATA block, lines numbered from 1."""
    current: tuple[int, list[str]] | None = None
    last = 0
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("#") and line[1:].strip() == "METADATA":
            if current is not None:
                yield current[0], last, "\n".join(current[1])
            current, last = (n, []), n
        elif line.startswith("#") and current is not None:
            current[1].append(line[1:])
            last = n
        elif current is not None:
            yield current[0], last, "\n".join(current[1])
            current = None
    if current is not None:
        yield current[0], last, "\n".join(current[1])


def _rules(ast: dict[str, Any]) -> tuple[str, int, list[_Rule]]:
    """The package, its line, and the rules of one parsed module (regorus's AST)."""
    package = ".".join(ref_path(ast["package"]["refr"]))
    rules = []
    for rule in ast.get("rules", []):
        kind = next(iter(rule))
        node = rule[kind]
        if kind == "Default":
            rules.append(_Rule(package, ".".join(ref_path(node["refr"])), None, node["span"]["line"]))
            continue
        head_kind = next(iter(node["head"]))
        head = node["head"][head_kind]
        key = None
        if head_kind == "Set" and isinstance(head.get("key"), dict):
            literal = head["key"].get("String") or head["key"].get("RawString")
            key = literal["value"] if literal else None
        rules.append(_Rule(package, ".".join(ref_path(head.get("refr"))), key, node["span"]["line"]))
    return package, ast["package"]["span"]["line"], rules


def _parse_block(module_id: str, line: int, text: str) -> _Annotation:
    where = f"{module_id}:{line}"
    try:
        # BaseLoader: every scalar a string, as OPA reads `title: 123` or `title: yes`
        doc = yaml.load(text, Loader=yaml.BaseLoader)  # noqa: S506 - BaseLoader builds no objects
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: METADATA is not YAML: {' '.join(str(exc).split())}") from exc
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: METADATA must be a YAML mapping (title: …, description: …)")
    try:
        return _Annotation.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "METADATA"
        raise ConfigError(f"{where}: METADATA {field}: {first['msg']}") from exc


def _parse(modules: list[tuple[str, str]]) -> list[dict[str, Any]]:
    engine = regorus.Engine()
    try:
        for module_id, text in modules:
            engine.add_policy(module_id, text)
        return json.loads(engine.get_ast_as_json())
    except Exception as exc:  # noqa: BLE001 - parse errors name file, line and column
        message = str(exc).split("Stack backtrace")[0].strip()  # without the Rust backtrace
        raise ConfigError(f"policy does not parse: {message}") from exc


def read_reason_notes(modules: list[tuple[str, str]]) -> dict[str, ReasonNote]:
    """Reason (the string a rule adds to a set) -> the note of the rule that adds it.

    ``modules`` are ``(module id, text)`` as a :class:`~intentgate.policy.PolicyBundle` holds
    them.  Where several annotated rules add one reason, the first (in file, then line
    order) explains it.  Raises ``ConfigError`` for a block OPA would refuse.
    """
    texts = dict(modules)
    own: dict[tuple[str, int], _Annotation] = {}  # (module, rule line) -> its rule-scope annotation
    documents: dict[tuple[str, str], _Annotation] = {}  # (package, rule name) -> its document-scope annotation
    keyed: list[tuple[str, _Rule]] = []
    for parsed in _parse(modules):
        module_id = parsed["source"]["file"]
        package, package_line, rules = _rules(parsed["ast"])
        statements = sorted([(package_line, None), *((r.line, r) for r in rules)], key=lambda s: s[0])
        for first, last, block in _blocks(texts[module_id]):
            annotation = _parse_block(module_id, first, block)
            target = next((rule for line, rule in statements if line > last), None)
            if target is None:  # the package's own annotation (or one after the last rule): no reason's
                continue
            scope = annotation.scope or "rule"
            if scope in ("package", "subpackages"):
                raise ConfigError(f"{module_id}:{first}: METADATA scope {scope!r} must be applied to the package "
                                  f"statement, not to rule {target.name!r}")
            if scope == "rule":
                merged = own.get((module_id, target.line))
                own[(module_id, target.line)] = _merge(merged, annotation) if merged else annotation
            else:
                documents.setdefault((target.package, target.name), annotation)
        keyed += [(module_id, r) for r in rules if r.key is not None]

    notes: dict[str, ReasonNote] = {}
    for module_id, rule in sorted(keyed, key=lambda mr: (mr[0], mr[1].line)):
        assert rule.key is not None
        annotation = own.get((module_id, rule.line))
        if annotation is None or not (annotation.title or annotation.description):
            annotation = documents.get((rule.package, rule.name))
        if annotation is None or not (annotation.title or annotation.description) or rule.key in notes:
            continue
        notes[rule.key] = ReasonNote(title=annotation.title.strip(), description=annotation.description.strip(),
                                     rule=f"data.{rule.package}.{rule.name}", location=f"{module_id}:{rule.line}")
    return notes


def _merge(first: _Annotation, second: _Annotation) -> _Annotation:
    """Two blocks on one rule: each field from the first block that has it."""
    return _Annotation(scope=first.scope, title=first.title or second.title,
                       description=first.description or second.description)
