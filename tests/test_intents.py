"""Intent loading and linting: real YAML files, every problem located."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from intentgate.errors import IntentFileError
from intentgate.intents import Severity, check_intents, load_intents, parse_tool
from tests.conftest import INTENTS_DIR

GOOD = """
name: demo
version: 1
agents: ["spiffe://example.org/agent/*"]
params:
  order_id: {type: string}
start: [a]
steps:
  a:
    tool: orders.get_order
    arguments:
      order_id: {bind: params.order_id}
    next: [b]
  b:
    tool: payments.refund
    arguments:
      order_id: {bind: steps.a.arguments.order_id}
      amount: {type: number, maximum: 10}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(tmp_path: Path) -> list[str]:
    _, problems = check_intents(tmp_path)
    return [str(p) for p in problems]


def test_project_intents_load_clean(registry) -> None:
    _, problems = check_intents(INTENTS_DIR)
    assert problems == []
    assert registry.names() == ["lookup-order", "refund-order", "rotate-credential", "triage-ticket"]
    # what moves money, credentials or mail is begun by a task issuer; a read-only lookup by the agent
    assert {i.name: registry.begin_modes(i) for i in registry} == {
        "lookup-order": ["agent"], "refund-order": ["issuer"], "rotate-credential": ["issuer"],
        "triage-ticket": ["issuer"]}
    refund = registry.get("refund-order")
    assert refund.budgets_of("refund")[0][0] == "refund_total"
    assert refund.steps["refund"].tool == "payments.refund"
    assert refund.steps["comment"].terminal
    assert refund.rules("refund")["reason"].optional
    assert refund.rules("refund")["order_id"].bind == "steps.lookup.arguments.order_id"


def test_good_file_loads_and_version_is_text(tmp_path: Path) -> None:
    write(tmp_path, "demo.yaml", GOOD)
    reg = load_intents(tmp_path)
    assert reg.get("demo").version == "1"
    assert reg.get("demo").permits_agent("spiffe://example.org/agent/x")
    assert not reg.get("demo").permits_agent("spiffe://evil.example/agent/x")


def test_revision_changes_with_content(tmp_path: Path) -> None:
    write(tmp_path, "demo.yaml", GOOD)
    before = load_intents(tmp_path).revision
    write(tmp_path, "demo.yaml", GOOD.replace("maximum: 10", "maximum: 11"))
    assert load_intents(tmp_path).revision != before


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        (("next: [b]", "next: [c]"), "step 'a', field 'next': next step 'c' does not exist"),
        (("start: [a]", "start: [zz]"), "field 'start': start step 'zz' does not exist"),
        (
            ("bind: steps.a.arguments.order_id", "bind: steps.b.arguments.order_id"),
            "step 'b', field 'arguments.order_id.bind': binding to step 'b', which can never precede 'b'",
        ),
        (
            ("bind: params.order_id", "bind: params.nope"),
            "step 'a', field 'arguments.order_id.bind': binding to undeclared parameter 'nope'",
        ),
        (
            ("bind: params.order_id", "bind: orders.order_id"),
            "field 'arguments.order_id.bind': binding 'orders.order_id' must be",
        ),
        (("maximum: 10", "maximum: ten"), "step 'b', field 'arguments.amount': invalid JSON Schema"),
        (("tool: orders.get_order", "tool: get_order"), "step 'a', field 'tool':"),
        (("mode: enforce", "mode: yolo"), "field 'mode'"),
        (("version: 1\n", "version: 1\ncolour: red\n"), "field 'colour': Extra inputs are not permitted"),
    ],
)
def test_lint_errors_name_file_intent_step_field(tmp_path: Path, mutation, expected: str) -> None:
    old, new = mutation
    text = GOOD if old != "mode: enforce" else GOOD.replace("start:", "mode: enforce\nstart:")
    assert old in text
    path = write(tmp_path, "demo.yaml", text.replace(old, new, 1))
    found = problems_of(tmp_path)
    assert any(expected in p and str(path) in p and "intent 'demo'" in p for p in found), found
    with pytest.raises(IntentFileError):
        load_intents(tmp_path)


def test_no_terminal_step_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "demo.yaml", GOOD.replace("      amount: {type: number, maximum: 10}", "      amount: {type: number}\n    next: [a]"))
    found = problems_of(tmp_path)
    assert any("no terminal step" in p and p.startswith("error") for p in found), found


def test_unreachable_step_is_a_warning_only(tmp_path: Path) -> None:
    text = GOOD + "  orphan:\n    tool: email.send\n"
    write(tmp_path, "demo.yaml", text)
    registry, problems = check_intents(tmp_path)
    assert [(p.severity, p.step) for p in problems] == [(Severity.WARNING, "orphan")]
    assert "unreachable" in str(problems[0])
    assert "demo" in registry  # warnings do not stop loading


def test_duplicate_intent_names_across_files(tmp_path: Path) -> None:
    write(tmp_path, "one.yaml", GOOD)
    second = write(tmp_path, "two.yaml", GOOD)
    found = problems_of(tmp_path)
    assert any("duplicate intent name" in p and str(second) in p for p in found), found


def test_duplicate_yaml_keys_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "demo.yaml", GOOD.replace("  b:\n", "  a:\n    tool: email.send\n  b:\n", 1))
    found = problems_of(tmp_path)
    assert any("duplicate key 'a'" in p for p in found), found


def test_invalid_yaml_and_non_mapping(tmp_path: Path) -> None:
    write(tmp_path, "broken.yaml", "name: [unclosed\n")
    write(tmp_path, "list.yaml", "- a\n- b\n")
    found = problems_of(tmp_path)
    assert any("broken.yaml" in p and "invalid YAML" in p for p in found)
    assert any("list.yaml" in p and "one YAML mapping" in p for p in found)


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(IntentFileError, match="does not exist"):
        load_intents(tmp_path / "nope")


def test_params_validation(registry) -> None:
    refund = registry.get("refund-order")
    assert refund.param_errors({"order_id": "ORD-7", "ticket_id": "TCK-1"}) == []
    errors = refund.param_errors({"order_id": "7", "extra": 1})
    assert any(e.startswith("order_id:") for e in errors)
    assert any(e.startswith("ticket_id: required") for e in errors)
    assert any(e.startswith("extra: not a parameter") for e in errors)
    triage = registry.get("triage-ticket")
    assert triage.param_errors({"ticket_id": "TCK-1", "customer_email": "not-an-address"})


def test_parse_tool() -> None:
    assert parse_tool("payments.refund") == ("payments", "refund")
    assert parse_tool("fs.read.file") == ("fs", "read.file")
    for bad in ("refund", "pay_ments.refund", ".refund", "payments."):
        with pytest.raises(ValueError):
            parse_tool(bad)


def test_schema_that_is_not_json_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "demo.yaml", GOOD.replace("maximum: 10", "maximum: 10, default: 2024-01-01"))
    found = problems_of(tmp_path)
    assert any("field 'arguments.amount': invalid JSON Schema: not plain JSON" in p for p in found), found


# ----- JSON Schema as the specification says --------------------------------------------------


def test_patterns_are_ecma_262_a_trailing_newline_does_not_match(tmp_path: Path) -> None:
    """Python's ``re`` lets ``$`` match before a final newline; JSON Schema's ECMA-262 does not."""
    registry = load_intents(INTENTS_DIR)
    refund = registry.get("refund-order")
    assert refund.param_errors({"ticket_id": "TCK-1001", "order_id": "ORD-5001"}) == []
    for sneaky in ("TCK-1001\n", "TCK-1001\r\n", "\nTCK-1001", "TCK-1001\u2028"):
        errors = refund.param_errors({"ticket_id": sneaky, "order_id": "ORD-5001"})
        assert errors and errors[0].startswith("ticket_id:"), (sneaky, errors)
    write(tmp_path, "a.yaml", GOOD.replace("      amount: {type: number, maximum: 10}\n",
                                           "      amount: {type: number, maximum: 10}\n"
                                           '      note: {type: string, pattern: "^[a-z]+$", optional: true}\n'))
    rule = load_intents(tmp_path).get("demo").rules("b")["note"]
    assert rule.schema_errors("abc") == [] and rule.schema_errors("abc\n")


def test_pathological_patterns_are_answered_not_backtracked() -> None:
    """Patterns that make a backtracking engine (Python's ``re``) run for ages on a long
    mismatch: refused at once.  The 60 s limit only keeps a regression from hanging CI."""
    import threading

    from intentgate.schemas import compile_schema

    cases = [("^(a+)+$", "a" * 20_000 + "!", "aaa"), ("(x+x+)+y", "x" * 20_000, "xxy"),
             ("^(a|aa)+$", "a" * 20_000 + "b", "aaaa"), ("^(\\w+\\s?)*$", "an " * 7_000 + "!", "an an")]
    answers: list[tuple[bool, bool]] = []

    def run() -> None:
        for pattern, bad, good in cases:
            schema = compile_schema({"type": "string", "pattern": pattern})
            answers.append((bool(schema.errors(bad)), schema.errors(good) == []))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "a pattern backtracked"
    assert answers == [(True, True)] * len(cases)  # every mismatch refused, every match accepted


def test_every_problem_of_a_broken_schema_is_reported_with_where_it_is(tmp_path: Path) -> None:
    broken = '{type: strng, minLength: -1, pattern: "(unclosed", properties: 7}'
    write(tmp_path, "a.yaml", GOOD.replace("{type: number, maximum: 10}", broken))
    _, problems = check_intents(tmp_path)
    schema_problems = [p for p in problems if "invalid JSON Schema" in p.message]
    assert len(schema_problems) >= 3, schema_problems  # type, minLength and properties, not only the first
    assert all(p.field == "arguments.amount" and p.step == "b" for p in schema_problems)
    text = " ".join(p.message for p in schema_problems)
    assert "at /type" in text and "at /minLength" in text and "at /properties" in text


def test_problems_name_the_line(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    write(tmp_path / "one", "a.yaml", GOOD.replace("tool: payments.refund", "tool: payments.refund\n    max_calls: 0"))
    write(tmp_path / "two", "b.yaml", GOOD.replace("{type: number, maximum: 10}", "{type: strng}"))
    for d, name, field, starts in (("one", "a.yaml", "max_calls", "max_calls: 0"),
                                   ("two", "b.yaml", "arguments.amount", "amount:")):
        _, problems = check_intents(tmp_path / d)
        [problem] = [p for p in problems if p.field == field]
        lines = (tmp_path / d / name).read_text().splitlines()
        assert problem.line and lines[problem.line - 1].strip().startswith(starts), problems
        assert str(problem).startswith(f"error: {tmp_path / d / name}:{problem.line}, intent 'demo', step 'b'")
