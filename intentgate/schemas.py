"""The JSON Schemas of intents (parameters, step arguments): checked when loaded, fast to apply.

Checking a schema when an intent loads (python-jsonschema against the 2020-12 metaschema)
reports every problem, each with the JSON path inside the schema where it is, not the first
one only.  References must stay inside the schema (``#/$defs/x``): nothing is ever fetched,
and a schema's meaning does not depend on another document.

Applying a schema to a value, on every call, is done by jsonschema-rs (Rust), which follows
the specification where Python's ``re`` does not: ``pattern`` is an ECMA-262 regular
expression, so ``^TCK-[0-9]{1,12}$`` refuses ``"TCK-1001\\n"`` (Python's ``$`` also matches
before a trailing newline), and it is several times faster.  Formats (``email`` …) are
asserted, as the intents mean them to be.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from typing import Any

import jsonschema_rs
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

__all__ = ["CompiledSchema", "InvalidSchema", "compile_schema"]

_SCHEMA_BASE = "urn:intentgate:schema"
# keywords whose values are data, not subschemas: a "$ref" inside them is not a reference
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})
_META = Draft202012Validator(Draft202012Validator.META_SCHEMA)
_MAX_PROBLEMS = 20


class InvalidSchema(Exception):
    """A schema that cannot be used; ``problems`` lists each one (``at <path>: <what>``)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems

    @property
    def message(self) -> str:
        return str(self)


def _refuse_retrieval(uri: str) -> Any:
    raise ValueError(f"{uri[:80]}: nothing is fetched")


class CompiledSchema:
    """A checked schema, compiled for jsonschema-rs."""

    __slots__ = ("_validator", "schema")

    def __init__(self, schema: dict[str, Any], validator: Any) -> None:
        self.schema = schema
        self._validator = validator

    def errors(self, value: Any) -> list[str]:
        """What is wrong with ``value`` (empty when it conforms)."""
        try:
            if self._validator.is_valid(value):
                return []
            return [e.message for e in self._validator.iter_errors(value)][:_MAX_PROBLEMS]
        except (ValueError, TypeError, OverflowError) as exc:  # nested beyond the converter, or not JSON
            return [f"not a value this schema can check ({str(exc)[:80]})"]


def _refs(node: Any) -> Iterable[str]:
    """Every ``$ref`` / ``$dynamicRef`` in a schema."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("$ref", "$dynamicRef") and isinstance(value, str):
                yield value
            elif key not in _DATA_KEYWORDS:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _ref_problems(schema: Any) -> list[str]:
    """References that validation could not follow (it would fail at call time instead)."""
    problems = []
    resolver = Registry().with_resource(_SCHEMA_BASE, DRAFT202012.create_resource(schema)).resolver(_SCHEMA_BASE)
    for ref in _refs(schema):
        if not ref.startswith("#"):
            problems.append(f"$ref {ref[:80]!r}: only references within the schema ('#...') are allowed")
            continue
        try:
            resolver.lookup(ref)
        except (Unresolvable, ValueError):
            problems.append(f"$ref {ref[:80]!r} does not resolve within the schema")
    return problems


def _path(parts: Iterable[Any]) -> str:
    return "/" + "/".join(str(p) for p in parts) if parts else "/"


@functools.lru_cache(maxsize=4096)
def _compile(schema_json: str) -> CompiledSchema:
    schema = json.loads(schema_json)
    problems = [f"at {_path(e.absolute_path)}: {e.message}" for e in _META.iter_errors(schema)]
    if isinstance(schema, dict | bool):
        problems += _ref_problems(schema)
    if problems:
        raise InvalidSchema(problems[:_MAX_PROBLEMS])
    try:
        validator = jsonschema_rs.Draft202012Validator(schema, validate_formats=True, retriever=_refuse_retrieval)
    except (jsonschema_rs.ValidationError, ValueError) as exc:  # e.g. a pattern no ECMA-262 engine takes
        raise InvalidSchema([f"{getattr(exc, 'message', None) or str(exc)}"[:200]]) from exc
    return CompiledSchema(schema, validator)


def compile_schema(schema: Any) -> CompiledSchema:
    """Check and compile one schema (cached per distinct schema); raises ``InvalidSchema``."""
    try:
        text = json.dumps(schema, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:  # YAML dates, NaN, integers of thousands of digits: not JSON
        raise InvalidSchema([f"not plain JSON ({exc})"]) from exc
    except RecursionError as exc:
        raise InvalidSchema(["nested too deeply"]) from exc
    try:
        return _compile(text)
    except RecursionError as exc:
        raise InvalidSchema(["nested too deeply"]) from exc
