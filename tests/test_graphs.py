"""Free steps (callable at any point) and groups (steps in any order before the workflow moves
on): the workflow check, completion, bindings across them, the lints, and the graph picture."""

from __future__ import annotations

from pathlib import Path

import pytest

from intentgate.intents import Severity, check_intents, load_intents
from intentgate.review import intent_graph
from intentgate.ui.graph import PAD, layout, name_width, tool_width
from intentgate.ui.render import intent_svg
from intentgate.ui.textwidth import wrap
from intentgate.workflow import HistoryEntry, Task, allowed_next, check_call

NOW = 1_800_000_000.0
AGENT = "spiffe://example.org/agent/support-1"

RESEARCH = """
name: research
version: "1"
agents: ["spiffe://example.org/agent/*"]
begin: [agent]
start: [gather]
steps:
  search:
    tool: web.search
    free: true
    max_calls: 3
    arguments: {q: {type: string}}
  read_ticket:
    tool: tickets.get_ticket
    arguments: {ticket_id: {type: string}}
  lookup:
    tool: orders.get_order
    arguments: {order_id: {type: string}}
  answer:
    tool: tickets.add_comment
    arguments:
      ticket_id: {bind: steps.read_ticket.arguments.ticket_id}
      body: {type: string}
groups:
  gather:
    description: read the ticket and the order, in either order
    steps: [read_ticket, lookup]
    next: [answer]
"""

CALLS = {
    "search": ("web.search", {"q": "refund policy"}),
    "read_ticket": ("tickets.get_ticket", {"ticket_id": "TCK-1"}),
    "lookup": ("orders.get_order", {"order_id": "ORD-7"}),
    "answer": ("tickets.add_comment", {"ticket_id": "TCK-1", "body": "done"}),
}


@pytest.fixture
def research(tmp_path: Path):  # type: ignore[no-untyped-def]
    (tmp_path / "research.yaml").write_text(RESEARCH)
    return load_intents(tmp_path).get("research")


def after(steps: list[str]) -> Task:
    return Task(id="tsk_1", intent="research", intent_version="1", agent=AGENT, params={}, reason="r",
                created_at=NOW, expires_at=NOW + 900,
                history=[HistoryEntry(step=s, tool=CALLS[s][0], decision="allow", decision_id=f"dec_{i}", at=NOW,
                                      arguments=CALLS[s][1]) for i, s in enumerate(steps)])


def verdict(intent, steps: list[str], step: str) -> list[str]:  # type: ignore[no-untyped-def]
    tool, args = CALLS[step]
    return check_call(intent, after(steps), agent_id=AGENT, step=step, tool=tool, arguments=args, now=NOW).violations


def test_a_free_step_is_callable_anywhere_and_moves_nothing(research) -> None:  # type: ignore[no-untyped-def]
    assert allowed_next(research, after([])) == ["read_ticket", "lookup", "search"]
    for before in ([], ["read_ticket"], ["read_ticket", "search", "lookup"]):
        assert verdict(research, before, "search") == [], before
    # free calls between group steps do not change what is allowed next
    assert allowed_next(research, after(["lookup", "search"])) == allowed_next(research, after(["lookup"]))
    assert verdict(research, ["search", "search", "search"], "search") == ["max_calls_exceeded:search"]
    assert not research.is_terminal("search") and research.is_terminal("answer")


def test_a_group_runs_in_any_order_and_moves_on_when_every_step_is_taken(research) -> None:  # type: ignore[no-untyped-def]
    assert verdict(research, [], "lookup") == [] and verdict(research, [], "read_ticket") == []
    assert verdict(research, ["lookup"], "read_ticket") == []
    assert verdict(research, ["lookup"], "answer") == [  # read_ticket not taken yet (nor its ticket known)
        "step_out_of_order:answer", "binding_unresolved:ticket_id"]
    assert verdict(research, ["lookup", "read_ticket"], "answer") == []
    assert verdict(research, ["read_ticket", "search", "lookup", "search"], "answer") == []
    assert verdict(research, ["lookup"], "lookup") == ["max_calls_exceeded:lookup"]
    assert allowed_next(research, after(["lookup", "read_ticket"])) == ["answer", "search"]
    assert not research.is_terminal("read_ticket")  # a group's step never completes the task
    # a binding to a step of the group, read after the group: it may precede
    assert verdict(research, ["read_ticket", "lookup"], "answer") == []


@pytest.mark.parametrize(("change", "field", "message"), [
    (("    free: true\n", "    free: true\n    next: [answer]\n"), "free", "a free step is callable at any point"),
    (("    steps: [read_ticket, lookup]", "    steps: [read_ticket, nowhere]"), "groups.gather.steps",
     "group step 'nowhere' does not exist"),
    (("  gather:\n", "  lookup:\n"), "groups.lookup", "has the name of a step"),
    (("    next: [answer]\n\"\"\"", "    next: [gather]\n\"\"\""), "groups.gather.next", "does not exist"),
    (("  lookup:\n    tool: orders.get_order\n", "  lookup:\n    tool: orders.get_order\n    next: [answer]\n"),
     "next", "the group's next is its next"),
])
def test_graphs_that_make_no_sense_are_errors(tmp_path: Path, change: tuple[str, str], field: str,
                                              message: str) -> None:
    text = RESEARCH + '"""'
    old, new = change
    assert old in text, change
    (tmp_path / "r.yaml").write_text(text.replace(old, new).removesuffix('"""'))
    registry, problems = check_intents(tmp_path)
    errors = [p for p in problems if p.severity is Severity.ERROR]
    assert len(registry) == 0 and any(p.field == field and message in p.message for p in errors), \
        [str(p) for p in errors]


# ----- the picture: long names ---------------------------------------------------------------
LONG_STEP = "look_up_the_customers_full_order_history_across_every_region"  # 60 characters
LONG_TOOL = "billing-reconciliation.reconcile_refunds_for_the_order_and_notify"  # 65
UNBROKEN = "x" * 60
LONG_GROUP = "gather_everything_the_agent_needs_before_answering"
LONG = f"""
name: long-names
version: "1"
agents: ["spiffe://example.org/agent/*"]
begin: [agent]
start: [{LONG_GROUP}]
steps:
  {LONG_STEP}:
    tool: orders.get_order
  short:
    tool: tickets.get_ticket
  refund:
    tool: {LONG_TOOL}
    approval: required
    next: [answer]
  answer:
    tool: tickets.{UNBROKEN}
  search:
    tool: web.search
    free: true
groups:
  {LONG_GROUP}:
    steps: [{LONG_STEP}, short]
    next: [refund]
"""


def test_long_names_are_drawn_whole_inside_their_boxes(tmp_path: Path) -> None:
    assert len(LONG_STEP) == 60 and len(LONG_TOOL) > 60
    (tmp_path / "long.yaml").write_text(LONG)
    graph = intent_graph(load_intents(tmp_path).get("long-names"))
    g = layout(graph, "")
    tools = {s.name: s.tool for s in graph.steps}
    for n in g.nodes:
        names = [line.text for line in n.lines if line.cls == "name"]
        shown = [line.text for line in n.lines if line.cls == "tool"]
        assert "".join(names) == n.name  # the whole name, over as many lines as it takes
        assert "".join(shown).replace(" ", "").startswith(tools[n.name].replace(" ", ""))  # the whole tool
        for line in n.lines:  # no line wider than its box (estimated as the layout estimates)
            width = name_width(line.text) if line.cls == "name" else tool_width(line.text)
            assert width <= n.w - 2 * PAD, (n.name, line.text, width, n.w)
            assert line.dy < n.h, (n.name, line.text)
    # boxes do not overlap, and all of them lie inside the drawing
    for a in g.nodes:
        assert a.x + a.w <= g.width and a.y + a.h <= g.height
        for b in g.nodes:
            if a is not b:
                assert a.x + a.w <= b.x or b.x + b.w <= a.x or a.y + a.h <= b.y or b.y + b.h <= a.y, (a.name, b.name)
    by_name = {n.name: n for n in g.nodes}
    assert len([line for line in by_name[LONG_STEP].lines if line.cls == "name"]) > 1  # wrapped, not cut
    assert by_name["short"].w == by_name[LONG_STEP].w  # one column, one width
    # the group's label is cut to its frame; the full name is the frame's tooltip
    (frame,) = g.frames
    assert frame.title == f"{LONG_GROUP} (any order)"
    assert frame.label.endswith("…") and frame.label[:-1] in frame.title
    # the SVG carries every line, and the full name and tool in each box's tooltip
    svg = intent_svg(graph)
    assert f"<title>{LONG_STEP}: orders.get_order</title>" in svg
    assert f"<title>refund: {LONG_TOOL}</title>" in svg and f"<title>{frame.title}</title>" in svg
    assert all(f">{line.text}</text>" in svg for n in g.nodes for line in n.lines)


def test_wrap_keeps_every_character() -> None:
    measure = len  # one unit a character
    assert wrap("payments.refund", measure, 40) == ["payments.refund"]
    assert wrap("billing-reconciliation.reconcile_refunds", measure, 16) == [
        "billing-", "reconciliation.", "reconcile_", "refunds"]
    assert wrap(UNBROKEN, measure, 25) == ["x" * 25, "x" * 25, "x" * 10]  # no separator: cut
    assert wrap("needs approval, end", measure, 9) == ["needs", "approval,", "end"]  # spaces end lines
    assert wrap("a_b", measure, 10, first=1) == ["a", "_b"]
    assert wrap("", measure, 10) == [""]
