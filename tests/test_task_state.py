"""A task's state costs the same at every step: what the decision path reads, writes and sends
to the policy does not grow with the number of calls the task has made.

A long task (a lookup step that may follow itself up to 1,000 times, its argument bound to
the first step's) is walked through the real decision core (embedded Rego, SQLite); the
policy input each decision recorded is inspected, and the history reviewers read is checked
against the decisions, step for step.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

from intentgate.clock import FrozenClock
from intentgate.config import load_config
from intentgate.runtime import Runtime
from intentgate.store.tables import TaskStepRow
from intentgate.workflow import RECENT_STEPS, HistoryEntry, Task, TaskState
from tests.conftest import POLICY_DIR
from tests.tasks import ISSUER
from tests.test_decide import MONDAY_10, SUPPORT, call

LONG = {
    "name": "long-research", "version": "1", "description": "a long task",
    "agents": ["spiffe://example.org/agent/support-*"],
    "params": {"ticket_id": {"type": "string", "pattern": "^TCK-[0-9]{1,12}$"}},
    "ttl_seconds": 86400, "mode": "enforce", "begin": ["issuer"], "start": ["read_ticket"],
    "steps": {
        "read_ticket": {"tool": "tickets.get_ticket", "arguments": {"ticket_id": {"bind": "params.ticket_id"}},
                        "next": ["lookup"]},
        "lookup": {"tool": "tickets.get_ticket", "max_calls": 1000, "next": ["lookup", "close"],
                   "arguments": {"ticket_id": {"bind": "steps.read_ticket.arguments.ticket_id"}}},
        "close": {"tool": "tickets.close_ticket", "arguments": {"ticket_id": {"bind": "params.ticket_id"}}},
    },
}
STEPS = 45


@pytest.fixture
async def rt(tmp_path: Path, db_url: str):
    intents = tmp_path / "intents"
    intents.mkdir()
    (intents / "long-research.yaml").write_text(yaml.safe_dump(LONG))
    config = load_config(None, data_dir=tmp_path / "var", intents_dir=intents, policy_dir=POLICY_DIR,
                         store={"url": db_url}, front={"rate_limit_per_second": None})
    runtime = await Runtime.open(config, clock=FrozenClock(MONDAY_10))
    yield runtime
    await runtime.aclose()


async def test_a_long_task_sends_a_bounded_summary_and_keeps_its_whole_history(rt: Runtime) -> None:
    task_id = (await rt.decider.begin_task(SUPPORT, "long-research", {"ticket_id": "TCK-1"}, "research",
                                           issuer=ISSUER)).task_id
    inputs, ids = [], []
    for n in range(1, STEPS + 1):
        v = await rt.decider.decide(call(task_id, "read_ticket" if n == 1 else "lookup", "tickets.get_ticket",
                                         {"ticket_id": "TCK-1"}))
        assert v.outcome == "allow", (n, v)
        ids.append(v.decision_id)
        inputs.append((await rt.store.get_decision(v.decision_id)).policy_input["task"])

    for n, task_input in enumerate(inputs, start=1):  # what the task had done before call n
        assert task_input["steps_taken"] == n - 1
        assert len(task_input["history"]) == min(n - 1, RECENT_STEPS)
        assert task_input["counts"] == ({} if n == 1 else {"read_ticket": 1, **({"lookup": n - 2} if n > 2 else {})})
        assert task_input["last_step"] == (None, "read_ticket", "lookup")[min(n - 1, 2)]
    # past the window the summary stops growing: the 30th call's input is the 45th's size
    assert len(json.dumps(inputs[29])) == len(json.dumps(inputs[44]))
    assert inputs[44]["history"][-1] == {"step": "lookup", "tool": "tickets.get_ticket", "decision": "allow"}

    # a call that breaks the binding to the first step's argument is refused at step 46 as at step 2
    v = await rt.decider.decide(call(task_id, "lookup", "tickets.get_ticket", {"ticket_id": "TCK-2"}))
    assert v.outcome == "deny" and "binding_mismatch:ticket_id" in v.reasons, v

    # reviewers read the whole history, one row per step, in the order the decisions were taken
    task = await rt.store.get_task(task_id)
    assert [h.decision_id for h in task.history] == ids
    assert task.state == TaskState.of(task.history) and task.state.calls == STEPS
    rows = rt.store.db.run_sync(lambda c: c.execute(
        select(func.count()).select_from(TaskStepRow.__table__).where(TaskStepRow.__table__.c.task_id == task_id)
    ).scalar_one())
    assert rows == STEPS
    # the decision path reads the row alone, without the history
    hot, _ = await rt.store.get_task_and_usage(task_id, lambda t: [], MONDAY_10)
    assert hot.history is None and hot.state == task.state


def test_state_of_a_history_matches_step_by_step_updates() -> None:
    """``TaskState.after`` (the decision path) and ``TaskState.of`` (migration, replay, tests)
    agree, and a task built from a history alone gets its state."""
    entries = [HistoryEntry(step=s, tool=f"t.{s}", decision="allow", decision_id=f"dec_{i}", at=float(i),
                            arguments={"i": i}) for i, s in enumerate(["a", "b", "a", "c"] + ["b"] * 30)]
    state = TaskState()
    for e in entries:
        state = state.after(e)
    assert state == TaskState.of(entries)
    assert state.calls == 34 and state.counts == {"a": 2, "b": 31, "c": 1} and state.last_step == "b"
    assert state.last_arguments == {"a": {"i": 2}, "b": {"i": 33}, "c": {"i": 3}}
    assert len(state.recent) == RECENT_STEPS and state.recent[0].step == "b"
    task = Task(id="tsk_1", intent="i", intent_version="1", agent="a", params={}, reason="r",
                created_at=0.0, expires_at=1.0, history=entries)
    assert task.state == state and task.last_ordered_step({"b"}) == "c" and task.calls_of("a") == 2
    assert task.with_history(entries[:3]).state == TaskState.of(entries[:3])
