"""Task rows: a task's compact state on its row, its history one row per step (``task_steps``).

The decision path reads the row only (``history`` left ``None``); reviewers, replay and the
CLI read the steps too, in one query for however many tasks they show.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, bindparam, insert, select

from ..workflow import HistoryEntry, Task, TaskState
from .compiled import OnSqliteCursor, json_value
from .tables import TaskRow, TaskStepRow

__all__ = ["histories_of", "insert_step", "task_from_row", "task_row_values", "task_with_history"]

tasks_t = TaskRow.__table__
steps_t = TaskStepRow.__table__
_TASK_COLUMNS = [c.name for c in tasks_t.columns]
_insert_step = OnSqliteCursor(insert(steps_t))
_STEPS_OF = (select(steps_t).where(steps_t.c.task_id.in_(bindparam("task_ids", expanding=True)))
             .order_by(steps_t.c.task_id, steps_t.c.n))


def task_from_row(row: Any, history: list[HistoryEntry] | None = None) -> Task:
    """The task a ``tasks`` row holds; ``history`` as loaded by ``histories_of`` (or not at all)."""
    m = row._mapping if hasattr(row, "_mapping") else dict(zip(_TASK_COLUMNS, row, strict=True))
    return Task(
        id=m["id"], intent=m["intent"], intent_version=m["intent_version"], agent=m["agent"],
        params=json_value(m["params"]), reason=m["reason"], status=m["status"], created_at=m["created_at"],
        expires_at=m["expires_at"], ended_at=m["ended_at"], version=m["version"], issuer=m["issuer"],
        state=TaskState.model_validate(json_value(m["state"])), history=history,
    )


def task_with_history(conn: Connection, row: Any) -> Task:
    """The task a ``tasks`` row holds, with every step it took (reviewers, the CLI)."""
    task = task_from_row(row)
    return task.model_copy(update={"history": histories_of(conn, [task.id]).get(task.id, [])})


def task_row_values(task: Task) -> dict[str, Any]:
    """The ``tasks`` row of a new task (its steps, if any, are rows of their own)."""
    return {**task.model_dump(exclude={"history", "state", "results"}), "state": task.state.model_dump()}


def histories_of(conn: Connection, task_ids: list[str]) -> dict[str, list[HistoryEntry]]:
    """Every step each task took, in order (tasks with none are left out)."""
    out: dict[str, list[HistoryEntry]] = {}
    if not task_ids:
        return out
    for r in conn.execute(_STEPS_OF, {"task_ids": list(task_ids)}):
        out.setdefault(r.task_id, []).append(HistoryEntry(
            step=r.step, tool=r.tool, decision=r.decision, decision_id=r.decision_id, at=r.at,
            arguments=json_value(r.arguments)))
    return out


def insert_step(conn: Connection, task_id: str, n: int, entry: HistoryEntry) -> None:
    """Append the ``n``-th step of a task (the primary key refuses a second ``n``)."""
    _insert_step(conn, {"task_id": task_id, "n": n, **entry.model_dump()})
