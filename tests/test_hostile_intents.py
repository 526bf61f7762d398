"""Hostile intent files: random and mutated YAML through the intent loader.

Whatever a file holds, ``check_intents`` reports problems (file, intent, step, field) and
never raises, and ``load_intents`` returns a registry or raises ``IntentFileError`` with one
line per error; never any other exception.  An intent that loads can validate any JSON value
against each of its schemas without raising (a schema that cannot be evaluated is a load
error, not a failure at call time).
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from intentgate.errors import ConfigError, IntentFileError
from intentgate.intents import IntentRegistry, Severity, check_intents, load_intents
from tests.conftest import INTENTS_DIR

FUZZ = settings(max_examples=250, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

REFUND = (INTENTS_DIR / "refund-order.yaml").read_text()
REFUND_DOC = yaml.safe_load(REFUND)
PROBES: list[Any] = [None, True, 0, -1, 1.5, 2**60, "", "x", "ORD-7", [], [1, "a"], {}, {"a": {"b": None}}]


@contextmanager
def intents_dir(files: dict[str, str | bytes]) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="hostile-intents-") as d:
        for name, content in files.items():
            path = Path(d) / name
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8", errors="surrogatepass")
        yield Path(d)


def exercise(registry: IntentRegistry) -> None:
    """What the decision pipeline does with a loaded intent, on arbitrary values."""
    for intent in registry:
        assert intent.document()["name"] == intent.name
        intent.param_errors({name: probe for name, probe in zip(intent.params, PROBES, strict=False)})
        intent.param_errors({"not-a-param": 1})
        for step in intent.steps:
            intent.start_or_next(step)
            for rule in intent.rules(step).values():
                for probe in PROBES:
                    assert isinstance(rule.schema_errors(probe), list)
    registry.data_document()


def load_and_check(directory: Path) -> None:
    """The properties every directory of intent files must have, whatever the files hold."""
    registry, problems = check_intents(directory)  # never raises for an existing directory
    for problem in problems:
        assert problem.message and problem.file.startswith(str(directory)), problem
    errors = [p for p in problems if p.severity is Severity.ERROR]
    exercise(registry)
    try:
        loaded = load_intents(directory)
    except IntentFileError as exc:
        assert errors, "load_intents refused what check_intents found no error in"
        assert exc.problems == [str(p) for p in errors]
        assert all(line.startswith("error: ") for line in exc.problems)
        assert isinstance(exc, ConfigError) and exc.message
    else:
        assert not errors
        assert loaded.names() == registry.names() and loaded.revision == registry.revision


# ----- text --------------------------------------------------------------------------------

YAML_PIECES = [
    "name:", "version:", "agents:", "params:", "start:", "steps:", "tool:", "next:", "arguments:", "bind:",
    "optional:", "type:", "pattern:", "$ref:", "approval:", "max_calls:", "ttl_seconds:", "mode:",
    " ", "  ", "\n", "\n  ", "\n    ", "- ", ": ", "{", "}", "[", "]", ",", "'", '"', "? ", "| ", "> ", "# ",
    "\t", "&a ", "*a", "&b ", "*b", "<<: *a", "!!binary ", "!!set ", "!!omap ", "!!python/object:os.system ",
    "!!str ", "!!int ", "!!float ", "!!timestamp ", "!custom ", "---\n", "...\n", "%YAML 1.1\n", "%TAG ! x\n",
    "1e999", ".nan", ".inf", "-.inf", "~", "null", "yes", "no", "0x1F", "0o17", "2024-01-01", "12:30:00",
    "payments.refund", "params.order_id", "steps.lookup.arguments.order_id", "spiffe://example.org/*",
    "refund", "lookup", "a", "b", "1" * 50, "é", "\u202e", "\ufeff", "\x00", "\x85", "\ud800", "\U0001f600",
]


@FUZZ
@given(text=st.text(max_size=400))
@example(text="")
@example(text="- a\n- b\n")
@example(text="\x00")
def test_random_text(text: str) -> None:
    with intents_dir({"x.yaml": text}) as d:
        load_and_check(d)


@FUZZ
@given(pieces=st.lists(st.sampled_from(YAML_PIECES), max_size=60))
def test_yaml_token_soup(pieces: list[str]) -> None:
    with intents_dir({"x.yaml": "".join(pieces)}) as d:
        load_and_check(d)


@FUZZ
@given(data=st.binary(max_size=400))
@example(data=b"\xff\xfe" + REFUND.encode("utf-16-le"))  # a UTF-16 file
@example(data=REFUND.encode() + b"\xc3\x28")  # invalid UTF-8
def test_random_bytes(data: bytes) -> None:
    with intents_dir({"x.yaml": data}) as d:
        load_and_check(d)


@FUZZ
@given(st.data())
def test_character_mutations_of_a_real_intent(data: st.DataObject) -> None:
    text = REFUND
    for _ in range(data.draw(st.integers(min_value=1, max_value=4), label="edits")):
        i = data.draw(st.integers(min_value=0, max_value=len(text)), label="at")
        op = data.draw(st.sampled_from(["replace", "insert", "delete", "duplicate-line"]), label="op")
        piece = data.draw(st.sampled_from(YAML_PIECES) | st.text(max_size=3), label="piece")
        if op == "replace":
            text = text[:i] + piece + text[i + len(piece):]
        elif op == "insert":
            text = text[:i] + piece + text[i:]
        elif op == "delete":
            text = text[:i] + text[i + data.draw(st.integers(1, 20), label="n"):]
        else:
            lines = text.splitlines(keepends=True)
            j = min(i, len(lines) - 1)
            text = "".join(lines[: j + 1] + [lines[j]] + lines[j + 1:])
    with intents_dir({"x.yaml": text}) as d:
        load_and_check(d)


# ----- structure ---------------------------------------------------------------------------

yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(),
    st.text(max_size=20), st.binary(max_size=8), st.dates(), st.datetimes(),
    st.sampled_from(["payments.refund", "params.order_id", "steps.lookup.arguments.order_id", "lookup", "refund",
                     "comment", "enforce", "shadow", "required", "never", "*", "#/$defs/x", "http://127.0.0.1:1/s"]),
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.one_of(st.text(max_size=10), st.integers(), st.sampled_from(
            ["type", "bind", "optional", "pattern", "$ref", "$defs", "items", "properties", "next", "tool"])),
        inner, max_size=4),
    max_leaves=10,
)


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a document (to a mapping value or list item), the root included."""
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found.extend(paths(value, (*prefix, key)))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found.extend(paths(value, (*prefix, i)))
    return found


def mutate(doc: Any, path: tuple, op: str, value: Any, key: Any) -> Any:
    if not path:
        return value if op == "set" else doc
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if op == "set":
        parent[last] = value
    elif op == "delete":
        del parent[last]
    elif op == "rename" and isinstance(parent, dict):
        parent[key] = parent.pop(last)
    elif op == "add" and isinstance(parent[last], dict):
        parent[last][key] = value
    elif op == "add" and isinstance(parent[last], list):
        parent[last].append(value)
    return doc


def dump(doc: Any) -> str:
    try:
        return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)
    except yaml.representer.RepresenterError:
        return yaml.dump(doc)  # pragma: no cover - every value drawn here is representable safely


@FUZZ
@given(st.data())
def test_structural_mutations_of_a_real_intent(data: st.DataObject) -> None:
    doc = copy.deepcopy(REFUND_DOC)
    for _ in range(data.draw(st.integers(min_value=1, max_value=3), label="edits")):
        path = data.draw(st.sampled_from(paths(doc)), label="path")
        op = data.draw(st.sampled_from(["set", "delete", "rename", "add"]), label="op")
        doc = mutate(doc, path, op, data.draw(yaml_values, label="value"),
                     data.draw(st.text(max_size=10) | st.integers(), label="key"))
    with intents_dir({"x.yaml": dump(doc)}) as d:
        load_and_check(d)


@FUZZ
@given(schema=yaml_values, where=st.sampled_from(["param", "argument"]))
@example(schema={"$ref": "#/nope"}, where="argument")
@example(schema={"$ref": "http://127.0.0.1:1/x.json"}, where="argument")
@example(schema={"$defs": {"s": {"type": "string"}}, "$ref": "#/$defs/s"}, where="param")
@example(schema={"type": "number", "maximum": float("nan")}, where="argument")
@example(schema={"type": "string", "pattern": "["}, where="param")
@example(schema={"type": "string", "format": "email"}, where="param")
@example(schema={"enum": [{"$ref": "http://127.0.0.1:1/x"}]}, where="argument")
@example(schema={"$dynamicRef": "#meta"}, where="argument")
def test_arbitrary_argument_and_parameter_schemas(schema: Any, where: str) -> None:
    doc = copy.deepcopy(REFUND_DOC)
    if where == "param":
        doc["params"]["order_id"] = schema
    else:
        doc["steps"]["refund"]["arguments"]["amount"] = schema
    with intents_dir({"x.yaml": dump(doc)}) as d:
        load_and_check(d)


# ----- regressions and the shapes that are hard to reach at random ---------------------------


def test_references_that_cannot_be_followed_are_load_errors() -> None:
    """They used to load, then fail every call at validation time (an internal error)."""
    for ref, message in [("#/nope", "does not resolve"), ("http://127.0.0.1:1/x.json", "only references within"),
                         ("other.json#/a", "only references within")]:
        doc = copy.deepcopy(REFUND_DOC)
        doc["steps"]["refund"]["arguments"]["amount"] = {"$ref": ref}
        with intents_dir({"x.yaml": dump(doc)}) as d, pytest.raises(IntentFileError) as exc:
            load_intents(d)
        assert "step 'refund', field 'arguments.amount'" in exc.value.message and message in exc.value.message
    doc = copy.deepcopy(REFUND_DOC)
    doc["steps"]["refund"]["arguments"]["amount"] = {"$defs": {"n": {"type": "number"}}, "$ref": "#/$defs/n"}
    with intents_dir({"x.yaml": dump(doc)}) as d:
        rule = load_intents(d).get("refund-order").rules("refund")["amount"]
        assert rule.schema_errors(5) == [] and rule.schema_errors("five")


def test_nan_limit_is_a_load_error() -> None:
    """``maximum: .nan`` compares false with everything: it would have let any amount through."""
    with intents_dir({"x.yaml": REFUND.replace("maximum: 5000", "maximum: .nan")}) as d:
        assert "maximum: 5000" in REFUND
        with pytest.raises(IntentFileError, match="not plain JSON"):
            load_intents(d)


@pytest.mark.parametrize(("name", "text", "message"), [
    # libyaml refuses the nesting itself (PyYAML >= 6.0.4: "exceeded maximum nesting depth"), the
    # pure-Python parser runs out of stack (RecursionError): either way one clear YAML error
    ("deep-mapping", "name: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n", "invalid YAML"),
    ("unhashable-key", REFUND + "? [1, 2]\n: x\n", "found unhashable key"),
    ("huge-integer", REFUND.replace("ttl_seconds: 900", "ttl_seconds: 1" + "0" * 5000), "invalid YAML"),
    ("recursive-alias", REFUND + "description: &a [*a]\n", "description"),
    ("alias-bomb", REFUND + "".join(
        f"x{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" if i else "x0: &l0 [lol]\n" for i in range(12)),
     "x0"),
    ("python-tag", REFUND.replace(f'version: "{REFUND_DOC["version"]}"', "version: !!python/object/apply:os.system [true]"),
     "could not determine a constructor"),
    ("two-documents", REFUND + "---\n" + REFUND, "single document"),
])
def test_hard_shapes_are_reported_not_raised(name: str, text: str, message: str) -> None:
    with intents_dir({f"{name}.yaml": text}) as d:
        registry, problems = check_intents(d)
        assert len(registry) == 0
        assert any(message in str(p) and f"{name}.yaml" in str(p) for p in problems), problems
        load_and_check(d)


@pytest.mark.parametrize("depth", [60, 100, 130, 300])
def test_deeply_nested_schema_is_reported_not_raised(depth: int) -> None:
    """Nesting the YAML parser takes but the schema checker's recursion may not."""
    schema = "{type: object, properties: {a: " * depth + "{type: string}" + "}}" * depth
    text = REFUND.replace("amount: {type: number, exclusiveMinimum: 0, maximum: 5000}", f"amount: {schema}")
    assert text != REFUND
    with intents_dir({"deep.yaml": text}) as d:
        load_and_check(d)


def test_dates_and_binary_in_schemas_are_not_json() -> None:
    doc = copy.deepcopy(REFUND_DOC)
    doc["steps"]["refund"]["arguments"]["amount"] = {"type": "string", "default": date(2024, 1, 1)}
    doc["params"]["order_id"] = {"type": "string", "examples": [datetime(2024, 1, 1, 12, 0), b"\x00"]}
    with intents_dir({"x.yaml": dump(doc)}) as d:
        _, problems = check_intents(d)
        fields = {p.field for p in problems}
        assert {"arguments.amount", "params.order_id"} <= fields, problems
        load_and_check(d)
