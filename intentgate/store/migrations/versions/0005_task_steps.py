"""Task state in O(1) per step: a compact state column, the history as one row per step.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

Each task's ``history`` (one JSON array, rewritten at every step until now) becomes rows of
``task_steps``, and its ``state`` (``workflow.TaskState``: calls, counts per step, the latest
call of each step and its arguments, the latest steps) is computed from it here, without
importing the gateway's models (a migration must mean the same thing whatever they become).
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

RECENT_STEPS = 20  # as workflow.RECENT_STEPS was when this revision was written


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def state_of(history: list[dict[str, Any]]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    last_at: dict[str, int] = {}
    last_arguments: dict[str, Any] = {}
    for n, h in enumerate(history, start=1):
        counts[h["step"]] = counts.get(h["step"], 0) + 1
        last_at[h["step"]] = n
        last_arguments[h["step"]] = h.get("arguments") or {}
    recent = [{"step": h["step"], "tool": h["tool"], "decision": h["decision"]} for h in history[-RECENT_STEPS:]]
    return {"calls": len(history), "counts": counts, "last_at": last_at, "last_arguments": last_arguments,
            "recent": recent}


def upgrade() -> None:
    op.create_table(
        "task_steps",
        sa.Column("task_id", sa.String(64), primary_key=True),
        sa.Column("n", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("step", sa.String(64), nullable=False),
        sa.Column("tool", sa.String(256), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("decision_id", sa.String(40), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("arguments", sa.JSON(), nullable=False),
    )
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("state", sa.JSON(), nullable=True))
    conn = op.get_bind()
    tasks = sa.table("tasks", sa.column("id", sa.String), sa.column("history", sa.JSON), sa.column("state", sa.JSON))
    steps = sa.table("task_steps", *(sa.column(c) for c in ("task_id", "n", "step", "tool", "decision",
                                                           "decision_id", "at")), sa.column("arguments", sa.JSON))
    for task_id, history in conn.execute(sa.select(tasks.c.id, tasks.c.history)).all():
        history = _json(history) or []
        if history:
            conn.execute(sa.insert(steps), [
                {"task_id": task_id, "n": n, "step": h["step"], "tool": h["tool"], "decision": h["decision"],
                 "decision_id": h["decision_id"], "at": h["at"], "arguments": h.get("arguments") or {}}
                for n, h in enumerate(history, start=1)])
        conn.execute(sa.update(tasks).where(tasks.c.id == task_id).values(state=state_of(history)))
    with op.batch_alter_table("tasks") as batch:
        batch.alter_column("state", existing_type=sa.JSON(), nullable=False)
        batch.drop_column("history")


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("history", sa.JSON(), nullable=True))
    conn = op.get_bind()
    tasks = sa.table("tasks", sa.column("id", sa.String), sa.column("history", sa.JSON))
    steps = sa.table("task_steps", *(sa.column(c) for c in ("task_id", "n", "step", "tool", "decision",
                                                           "decision_id", "at")), sa.column("arguments", sa.JSON))
    histories: dict[str, list[dict[str, Any]]] = {}
    for row in conn.execute(sa.select(steps).order_by(steps.c.task_id, steps.c.n)).all():
        histories.setdefault(row.task_id, []).append(
            {"step": row.step, "tool": row.tool, "decision": row.decision, "decision_id": row.decision_id,
             "at": row.at, "arguments": _json(row.arguments)})
    for (task_id,) in conn.execute(sa.select(tasks.c.id)).all():
        conn.execute(sa.update(tasks).where(tasks.c.id == task_id).values(history=histories.get(task_id, [])))
    with op.batch_alter_table("tasks") as batch:
        batch.alter_column("history", existing_type=sa.JSON(), nullable=False)
        batch.drop_column("state")
    op.drop_table("task_steps")
