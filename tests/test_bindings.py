"""Bindings to earlier results, and finer bindings: parsing, extraction, every mode, the caps,
the workflow check, and over MCP against the example tool servers (what the tickets server
returned decides where a comment and a mail may go)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from intentgate.bindings import (
    MAX_VALUE_BYTES,
    MAX_VALUES,
    Binding,
    BindingError,
    extract,
    judge,
    parse_binding,
    parse_pointer,
    result_document,
)
from intentgate.intents import Severity, check_intents, load_intents
from intentgate.workflow import Task, check_call

NOW = 1_800_000_000.0


# ----- parsing ---------------------------------------------------------------------------------


def test_bindings_parse_and_refuse_what_they_cannot_mean() -> None:
    assert parse_binding({"bind": "params.x"}) == Binding("params", "x")
    assert parse_binding({"bind": "steps.a.arguments.x.y", "mode": "one_of"}) == Binding(
        "arguments", "a", keys=("x", "y"), mode="one_of")
    assert parse_binding({"bind": "steps.a.result", "path": "/lines/*/sku"}) == Binding(
        "result", "a", pointer=("lines", "*", "sku"), path="/lines/*/sku")
    for spec, message in [
        ({"bind": "steps.a.result"}, "needs a path"),
        ({"bind": "params.x", "path": "/x"}, "path is for bindings to a step's result"),
        ({"bind": "params.x", "mode": "roughly"}, "mode 'roughly' must be one of"),
        ({"bind": "steps.a.results", "path": "/x"}, "must be 'params.<name>'"),
        ({"bind": 7}, "must be 'params.<name>'"),
        ({"bind": "steps.a.result", "path": "x"}, "must start with '/'"),
        ({"bind": "steps.a.result", "path": "/a~2"}, "'~' must be followed by 0 or 1"),
        ({"bind": "steps.a.result", "path": "/x" * 40}, "more than 32 segments"),
    ]:
        with pytest.raises(BindingError, match=message):
            parse_binding(spec)
    assert parse_pointer("") == () and parse_pointer("/a~1b/~0c") == ("a/b", "~c")


def test_extract_follows_pointers_and_wildcards() -> None:
    doc = {"lines": [{"sku": "A"}, {"sku": "B"}, {"n": 1}], "by": {"x": {"id": 1}, "y": {"id": 2}},
           "a/b": 5, "list": [10, 20]}
    assert extract(doc, ("lines", "*", "sku")) == (["A", "B"], False)
    assert extract(doc, ("by", "*", "id")) == ([1, 2], False)
    assert extract(doc, ("a/b",)) == ([5], False)
    assert extract(doc, ("list", "1")) == ([20], False)
    assert extract(doc, ("list", "01")) == ([], False)  # no leading zeros (RFC 6901)
    assert extract(doc, ("list", "9")) == ([], False)
    assert extract(doc, ("nope", "*")) == ([], False)
    assert extract(doc, ()) == ([doc], False)
    many = {"x": list(range(MAX_VALUES + 50))}
    kept, dropped = extract(many, ("x", "*"))
    assert len(kept) == MAX_VALUES and dropped
    big = {"x": ["y" * (MAX_VALUE_BYTES + 1), "small"]}
    assert extract(big, ("x", "*")) == (["small"], True)  # a value too large to keep is not kept


def test_a_result_is_its_structured_content_or_its_json_text() -> None:
    assert result_document({"a": 1}, ["ignored"]) == {"a": 1}
    assert result_document(None, ['{"a": 2}']) == {"a": 2}
    assert result_document(None, ["[1, 2]"]) == [1, 2]
    assert result_document(None, ["plain words"]) is None
    assert result_document(None, ['"a string"']) is None
    assert result_document(None, ['{"a": 1}', '{"b": 2}']) is None  # two texts: which one?
    assert result_document(None, ["[" * 100_000]) is None  # nested beyond the parser: nothing, no crash


@pytest.mark.parametrize(("mode", "candidates", "value", "verdict"), [
    ("equals", ["A"], "A", "ok"),
    ("equals", ["A", "A"], "A", "ok"),
    ("equals", ["A", "B"], "A", "mismatch"),  # ambiguous: two values found
    ("equals", [1], 1.0, "ok"),
    ("equals", [1], True, "mismatch"),
    ("equals", [], "A", "unresolved"),
    ("one_of", ["A", "B"], "B", "ok"),
    ("one_of", ["A", "B"], "C", "mismatch"),
    ("one_of", [{"iban": "X"}], {"iban": "X"}, "ok"),
    ("contains", ["A"], ["B", "A"], "ok"),
    ("contains", ["A", "C"], ["B", "A"], "mismatch"),
    ("contains", ["A"], "A", "mismatch"),
    ("subset_of", ["A", "B", "C"], ["C", "A"], "ok"),
    ("subset_of", ["A", "B"], ["A", "Z"], "mismatch"),
    ("subset_of", ["A"], [], "ok"),
    ("prefix", ["/srv/task-7/"], "/srv/task-7/report.txt", "ok"),
    ("prefix", ["/srv/task-7/"], "/srv/task-70/x", "mismatch"),
    ("prefix", ["/srv/task-7/"], 7, "mismatch"),
    ("date", ["2026-12-01"], "2026-12-01T09:30:00Z", "ok"),
    ("date", ["2026-12-01T23:00:00+02:00"], "2026-12-01", "ok"),
    ("date", ["2026-12-01"], "2026-12-02T00:00:00Z", "mismatch"),
    ("date", ["2026-12-01"], "yesterday", "mismatch"),
    ("date", ["2026-12-01"], 20261201, "mismatch"),
])
def test_every_mode_judges(mode: str, candidates: list[Any], value: Any, verdict: str) -> None:
    assert judge(Binding("result", "s", pointer=("x",), path="/x", mode=mode), candidates, value) == verdict  # type: ignore[arg-type]


def test_a_list_parameter_gives_its_elements_to_one_of_and_subset_of() -> None:
    files = [["a.txt", "b.txt"]]  # the one value of params.files
    assert judge(Binding("params", "files", mode="one_of"), files, "b.txt") == "ok"
    assert judge(Binding("params", "files", mode="subset_of"), files, ["a.txt"]) == "ok"
    assert judge(Binding("params", "files", mode="subset_of"), files, ["a.txt", "c.txt"]) == "mismatch"
    assert judge(Binding("params", "files", mode="equals"), files, ["a.txt", "b.txt"]) == "ok"


# ----- in intents and the workflow --------------------------------------------------------------

PAYEES = """
name: pay-a-payee
version: "1"
agents: ["spiffe://example.org/agent/*"]
begin: [agent]
params:
  day: {type: string, format: date}
  invoices: {type: array, items: {type: string}}
start: [payees]
steps:
  payees:
    tool: bank.list_payees
    next: [pay]
  pay:
    tool: bank.transfer
    arguments:
      iban: {type: string, bind: steps.payees.result, path: /payees/*/iban, mode: one_of}
      when: {type: string, bind: params.day, mode: date}
      invoices: {type: array, bind: params.invoices, mode: subset_of}
"""


def task_with(results: dict[str, dict[str, list[Any]]], history: list[str]) -> Task:
    from intentgate.workflow import HistoryEntry

    return Task(id="tsk_1", intent="pay-a-payee", intent_version="1", agent="spiffe://example.org/agent/a",
                params={"day": "2026-12-01", "invoices": ["INV-1", "INV-2"]}, reason="r", created_at=NOW,
                expires_at=NOW + 900, results=results,
                history=[HistoryEntry(step=s, tool="bank.list_payees", decision="allow", decision_id=f"dec_{i}", at=NOW)
                         for i, s in enumerate(history)])


@pytest.fixture
def payees(tmp_path: Path):  # type: ignore[no-untyped-def]
    (tmp_path / "pay.yaml").write_text(PAYEES)
    return load_intents(tmp_path).get("pay-a-payee")


def test_the_workflow_checks_result_and_finer_bindings(payees) -> None:  # type: ignore[no-untyped-def]
    assert payees.kept_paths("payees") == {"/payees/*/iban": ("payees", "*", "iban")} and payees.reads_results
    known = {"payees": {"/payees/*/iban": ["DE02 1001", "FR76 3000"]}}
    good = {"iban": "FR76 3000", "when": "2026-12-01T15:00:00Z", "invoices": ["INV-2"]}

    def check(arguments: dict, results=known) -> list[str]:  # type: ignore[no-untyped-def]
        return check_call(payees, task_with(results, ["payees"]), agent_id="spiffe://example.org/agent/a",
                          step="pay", tool="bank.transfer", arguments=arguments, now=NOW).violations

    assert check(good) == []
    assert check({**good, "iban": "GB00 ATTACKER"}) == ["binding_mismatch:iban"]
    assert check({**good, "when": "2026-12-02T00:00:00Z"}) == ["binding_mismatch:when"]
    assert check({**good, "invoices": ["INV-2", "INV-9"]}) == ["binding_mismatch:invoices"]
    assert check(good, results={"payees": {"/payees/*/iban": []}}) == ["binding_unresolved:iban"]  # found nothing
    assert check(good, results={}) == ["binding_unresolved:iban"]


def test_result_bindings_that_cannot_work_are_load_errors(tmp_path: Path) -> None:
    cases = {
        "later-step": PAYEES.replace("bind: steps.payees.result", "bind: steps.pay.result"),
        "unknown-step": PAYEES.replace("bind: steps.payees.result", "bind: steps.nowhere.result"),
        "no-path": PAYEES.replace(", path: /payees/*/iban", ""),
        "bad-mode": PAYEES.replace("mode: one_of", "mode: sort_of"),
        "unknown-param": PAYEES.replace("bind: params.day", "bind: params.night"),
    }
    for name, text in cases.items():
        d = tmp_path / name
        d.mkdir()
        (d / "pay.yaml").write_text(text)
        registry, problems = check_intents(d)
        errors = [p for p in problems if p.severity is Severity.ERROR]
        assert len(registry) == 0 and errors, name
        assert all(p.step == "pay" and p.field and p.field.endswith(".bind") and p.line for p in errors), \
            (name, [str(p) for p in errors])


# ----- over MCP, against the example tool servers -------------------------------------------------


@pytest.mark.slow
async def test_the_comment_and_the_mail_go_where_the_ticket_that_was_read_says(tmp_path: Path) -> None:
    from agents_examples._agent import Agent, connect
    from agents_examples.orchestrator import ORCHESTRATOR, Orchestrator
    from intentgate.demo import start_gateway, write_config

    with start_gateway(write_config(tmp_path)) as gw:
        agent_id = "spiffe://example.org/agent/support-7"
        queue = Orchestrator(gw.base_url, gw.agent_token(ORCHESTRATOR))
        # the queue begins triage of TCK-1001 with an address that is not the ticket's customer's
        task = (await queue.begin(agent_id, "triage-ticket", {"ticket_id": "TCK-1001",
                                                              "customer_email": "alice.martin@example.com"},
                                  "triage"))["task"]
        async with connect(gw.mcp_url, gw.agent_token(agent_id)) as client:
            agent = Agent(client, "support-7", None)

            async def step(step: str, tool: str, args: dict) -> Any:  # noqa: ANN401
                return await agent.call(step, tool, args, task=task, step=step)

            read = await step("read_ticket", "tickets__get_ticket", {"ticket_id": "TCK-1001"})
            assert read.outcome == "allow" and read.result["customer_email"] == "alice.martin@example.com"
            other = await step("comment", "tickets__add_comment", {"ticket_id": "TCK-1002", "body": "x"})
            assert other.outcome == "deny" and other.reasons == ["binding_mismatch:ticket_id"]
            ok = await step("comment", "tickets__add_comment", {"ticket_id": "TCK-1001", "body": "triaged"})
            assert ok.outcome == "allow"
            evil = await step("notify", "email__send", {"to": "ops@evil.example", "subject": "s", "body": "b"})
            assert evil.outcome == "deny" and evil.reasons == ["binding_mismatch:to"]
            mail = await step("notify", "email__send", {"to": "alice.martin@example.com", "subject": "Triaged",
                                                        "body": "We are on it."})
            assert mail.outcome == "allow"
        db = sqlite3.connect(gw.config.data_dir / "intentgate.db")
        kept = db.execute("SELECT step, path, found FROM task_results WHERE task_id = ? ORDER BY path",
                          (task,)).fetchall()
        db.close()
        # only the values the bindings read, never the whole ticket
        assert [(s, p, json.loads(f)) for s, p, f in kept] == [
            ("read_ticket", "/customer_email", ["alice.martin@example.com"]),
            ("read_ticket", "/ticket_id", ["TCK-1001"])]
        outbox = sqlite3.connect(gw.config.data_dir / "servers" / "email.db")
        sent = [r[0] for r in outbox.execute("SELECT to_addr FROM outbox")]
        outbox.close()
        assert sent == ["alice.martin@example.com"]
