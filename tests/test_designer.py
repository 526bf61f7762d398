"""Designer commands, run as users run them (the console script in a subprocess):
``intentgate intent test`` (fixtures through the real workflow and Rego), ``intent schema``,
``graph``, ``intent new`` and ``upstreams`` against the demo's real tool servers."""

from __future__ import annotations

import json
import shutil
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator, FormatChecker

from intentgate.demo import write_config
from tests.conftest import INTENTS_DIR, POLICY_DIR, strict_refund_policy
from tests.test_cli import intentgate
from tests.test_graphs import RESEARCH

SHIPPED = sorted(p for p in INTENTS_DIR.glob("*.yaml") if not p.name.endswith(".test.yaml"))
FIXTURES = sorted(INTENTS_DIR.glob("*.test.yaml"))


def copy_intents(tmp_path: Path) -> Path:
    intents = tmp_path / "intents"
    shutil.copytree(INTENTS_DIR, intents)
    return intents


def test_shipped_fixtures_pass() -> None:
    out = intentgate("intent", "test", "-v")
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(FIXTURES) == len(SHIPPED)  # every shipped intent has its fixtures
    cases = sum(len(yaml.safe_load(f.read_text())["cases"]) for f in FIXTURES)
    assert out.stdout.count("PASS ") == cases
    assert f"PASS: {cases}/{cases} cases" in out.stdout and f"in {len(FIXTURES)} file(s)" in out.stdout


def test_a_wrong_expectation_fails_and_says_what_came_instead(tmp_path: Path) -> None:
    intents = copy_intents(tmp_path)
    fixture = intents / "refund-order.test.yaml"
    fixture.write_text(fixture.read_text().replace(
        "{step: refund, arguments: {order_id: ORD-8, amount: 30, currency: EUR}, expect: deny,",
        "{step: refund, arguments: {order_id: ORD-7, amount: 30, currency: EUR}, expect: deny,"))
    out = intentgate("intent", "test", "--intents", str(intents), "--policy", str(POLICY_DIR))
    assert out.returncode == 1
    text = " ".join(out.stdout.split())
    assert "FAIL" in text and "refund-order: another order than the one looked up" in text
    assert "call 3 (refund): expected deny, got allow []" in text
    assert "FAIL: 14/15 cases" in text


def test_the_fixtures_see_the_policy(tmp_path: Path) -> None:
    """The same fixtures against a stricter policy (refunds over 10 EUR denied): Rego is in the loop."""
    out = intentgate("intent", "test", str(INTENTS_DIR / "refund-order.test.yaml"),
                     "--intents", str(INTENTS_DIR), "--policy", str(strict_refund_policy(tmp_path)))
    assert out.returncode == 1
    assert "call 3 (refund): expected allow, got deny" in " ".join(out.stdout.split())


@pytest.mark.parametrize(("fixture", "message"), [
    ("intent: refund-order\nagent: a\ncases:\n  - name: x\n    calls: [{step: refnd}]\n",
     "call 1: intent 'refund-order' has no step 'refnd' (its steps: read_ticket, lookup, refund, comment); "
     "a call to an unknown step can only expect deny"),
    ("intent: refund-ordre\nagent: a\ncases: [{name: x}]\n", "intent 'refund-ordre' is not loaded"),
    ("intent: refund-order\ncases: [{name: x, calls: [{step: lookup, expect: maybe}]}]\n",
     "cases.0.calls.0.expect: Input should be 'allow', 'deny', 'hold' or 'would_deny'"),
    ("intent: refund-order\ncases: [{name: x}]\n", "case 1 ('x'): no agent"),
    ("intent: [unclosed\n", "cannot read"),
    ("[" * 5000, "cannot read"),
])
def test_a_fixture_that_cannot_run_is_a_clear_error(tmp_path: Path, fixture: str, message: str) -> None:
    path = tmp_path / "bad.test.yaml"
    path.write_text(fixture)
    out = intentgate("intent", "test", str(path), "--intents", str(INTENTS_DIR), "--policy", str(POLICY_DIR))
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in " ".join(out.stderr.split())
    assert "Traceback" not in out.stderr


def test_no_fixtures_is_a_failure(tmp_path: Path) -> None:
    intents = tmp_path / "intents"
    intents.mkdir()
    shutil.copy(INTENTS_DIR / "lookup-order.yaml", intents)
    out = intentgate("intent", "test", "--intents", str(intents), "--policy", str(POLICY_DIR))
    assert out.returncode == 1 and "no fixtures" in out.stderr


def test_fixture_results_feed_result_bindings(tmp_path: Path) -> None:
    """A fixture of an intent with a free step, a group and a binding to a result list."""
    intents = tmp_path / "intents"
    intents.mkdir()
    (intents / "research.yaml").write_text(RESEARCH.replace(
        "      body: {type: string}",
        "      body: {type: string}\n      order_ref: {bind: steps.lookup.result, path: /lines/*/sku, mode: one_of}"))
    (intents / "research.test.yaml").write_text(textwrap.dedent("""\
        intent: research
        agent: spiffe://example.org/agent/support-1
        cases:
          - name: search any time, the group in any order, bound to what lookup returned
            calls:
              - {step: search, arguments: {q: refunds}}
              - {step: lookup, arguments: {order_id: ORD-7}, result: {lines: [{sku: MUG-4}, {sku: LMP-1}]}}
              - {step: search, arguments: {q: mugs}}
              - {step: read_ticket, arguments: {ticket_id: TCK-1}}
              - {step: answer, arguments: {ticket_id: TCK-1, body: ok, order_ref: LMP-1}}
          - name: not a line the lookup returned
            calls:
              - {step: read_ticket, arguments: {ticket_id: TCK-1}}
              - {step: lookup, arguments: {order_id: ORD-7}, result: {lines: [{sku: MUG-4}]}}
              - {step: answer, arguments: {ticket_id: TCK-1, body: ok, order_ref: LMP-1}, expect: deny,
                 reasons: [binding_mismatch]}
          - name: the group is not done before answering
            calls:
              - {step: lookup, arguments: {order_id: ORD-7}, result: {lines: [{sku: MUG-4}]}}
              - {step: answer, arguments: {ticket_id: TCK-1, body: ok, order_ref: MUG-4}, expect: deny,
                 reasons: [step_out_of_order, binding_unresolved]}
        """))
    out = intentgate("intent", "test", "-v", "--intents", str(intents), "--policy", str(POLICY_DIR))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "PASS: 3/3 cases (10 calls)" in out.stdout


def test_published_schema_accepts_every_shipped_intent_and_fixture(tmp_path: Path) -> None:
    out = intentgate("intent", "schema", "-o", str(tmp_path / "intent.schema.json"))
    assert out.returncode == 0, out.stderr
    schema = json.loads((tmp_path / "intent.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema, format_checker=FormatChecker())
    for path in SHIPPED:
        assert list(validator.iter_errors(yaml.safe_load(path.read_text()))) == [], path
    fixture_schema = json.loads(intentgate("intent", "schema", "--fixture").stdout)
    Draft202012Validator.check_schema(fixture_schema)
    for path in FIXTURES:
        assert list(Draft202012Validator(fixture_schema).iter_errors(yaml.safe_load(path.read_text()))) == [], path


def test_published_schema_rejects_what_the_loader_rejects() -> None:
    schema = json.loads(intentgate("intent", "schema").stdout)
    validator = Draft202012Validator(schema)
    good = yaml.safe_load((INTENTS_DIR / "triage-ticket.yaml").read_text())

    def errors(change) -> list[str]:  # type: ignore[no-untyped-def]
        doc = json.loads(json.dumps(good))
        change(doc)
        return [e.message for e in validator.iter_errors(doc)]

    assert errors(lambda d: d.update(nexts=[]))  # unknown top-level key
    assert errors(lambda d: d["steps"]["comment"]["arguments"]["ticket_id"].update(mode="sometimes"))
    assert errors(lambda d: d["steps"]["comment"]["arguments"]["ticket_id"].update(bind="step.read_ticket.result"))
    assert errors(lambda d: d["steps"]["comment"].update(tool="no-dot"))
    assert errors(lambda d: d["steps"].update({"Bad Name": {"tool": "a.b"}}))
    assert errors(lambda d: d["steps"]["comment"]["arguments"]["body"].update(path="/x"))  # path without bind


def test_graph_in_three_formats(tmp_path: Path) -> None:
    intents = tmp_path / "intents"
    intents.mkdir()
    (intents / "research.yaml").write_text(RESEARCH)
    args = ("--intents", str(intents))
    svg = intentgate("graph", "research", *args)
    assert svg.returncode == 0, svg.stderr
    root = ET.fromstring(svg.stdout)
    nodes = [g for g in root.iter("{http://www.w3.org/2000/svg}g") if "node" in g.get("class", "").split()]
    assert sorted(g.get("data-step") for g in nodes) == ["answer", "lookup", "read_ticket", "search"]
    assert [g.get("data-step") for g in nodes if "free" in g.get("class", "")] == ["search"]
    assert any("gather (any order)" in (t.text or "") for t in root.iter("{http://www.w3.org/2000/svg}text"))
    assert "svg.graph .node rect" in svg.stdout  # styles inlined: it stands alone

    dot = intentgate("graph", "research", *args, "--format", "dot").stdout
    assert 'subgraph cluster_0 {' in dot and 'label="gather (any order)"' in dot
    assert '"read_ticket" -> "answer";' in dot and '"lookup" -> "answer";' in dot
    assert '"__start" -> "read_ticket";' in dot and '"__start" -> "lookup";' in dot
    assert 'style="rounded,dashed"' in dot  # the free step

    mermaid = intentgate("graph", "research", *args, "-f", "mermaid").stdout
    assert mermaid.startswith("flowchart LR\n") and 'subgraph g0["gather (any order)"]' in mermaid
    assert '("search<br/>web.search<br/>any time<br/>up to 3 calls")' in mermaid

    assert intentgate("graph", "research", *args, "-f", "png").returncode == 2
    missing = intentgate("graph", "reserch", *args)
    assert missing.returncode == 2 and "no intent 'reserch'" in missing.stderr and "loaded: research" in missing.stderr


@pytest.mark.slow
def test_new_intent_from_the_real_schemas_checks_clean(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "demo")
    intents = tmp_path / "intents"
    intents.mkdir()
    out = intentgate("intent", "new", "order-refunds", "--upstream", "payments", "--tools", "list_refunds,refund",
                     "--config", str(cfg), "-o", str(intents / "order-refunds.yaml"))
    assert out.returncode == 0, out.stdout + out.stderr
    written = yaml.safe_load((intents / "order-refunds.yaml").read_text())
    assert written["start"] == ["list_refunds"] and written["steps"]["list_refunds"]["next"] == ["refund"]
    assert written["steps"]["refund"]["arguments"]["currency"] == {"type": "string", "pattern": "^[A-Z]{3}$"}
    assert written["steps"]["refund"]["arguments"]["reason"]["optional"] is True  # not required by the tool
    document = yaml.safe_load(cfg.read_text())
    cfg.write_text(yaml.safe_dump({**document, "intents_dir": str(intents)}))
    check = intentgate("check", "--config", str(cfg))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "1 intents (2 steps)" in check.stdout and "0 error(s)" in check.stdout

    typo = intentgate("intent", "new", "x", "-u", "payments", "-t", "refnd", "--config", str(cfg))
    assert typo.returncode == 1 and "has no tool 'refnd' (did you mean 'refund'?)" in typo.stderr
    nowhere = intentgate("intent", "new", "x", "-u", "paymnts", "-t", "refund", "--config", str(cfg))
    assert nowhere.returncode == 2 and "no upstream 'paymnts'" in nowhere.stderr


@pytest.mark.slow
def test_upstreams_lists_tools_and_schemas(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "demo")
    out = intentgate("upstreams", "--json", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    listing = json.loads(out.stdout)
    assert sorted(listing) == ["email", "orders", "payments", "secrets", "tickets"]
    get_order = next(t for t in listing["orders"] if t["name"] == "get_order")
    assert get_order["inputSchema"]["required"] == ["order_id"]
    text = intentgate("upstreams", "orders", "--config", str(cfg))
    assert "orders.get_order" in text.stdout and "orders.list_orders" in text.stdout
    assert "payments" not in text.stdout
