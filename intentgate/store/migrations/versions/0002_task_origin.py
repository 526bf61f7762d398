"""Task origin and budgets: who began each task, used task grants, budget usage, and
break-glass grants that say whether they override approvals.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # tasks begun before issuers existed were all begun by their agent: null
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("issuer", sa.String(512), nullable=True))
    op.create_index("ix_tasks_agent_intent_open", "tasks", ["agent", "intent", "status", "expires_at"])

    with op.batch_alter_table("grants") as batch:
        batch.add_column(sa.Column("overrides_approval", sa.Boolean(), nullable=False, server_default=sa.false()))

    op.create_table(
        "task_grants",
        sa.Column("jti", sa.String(64), primary_key=True),
        sa.Column("issuer", sa.String(512), nullable=False),
        sa.Column("agent", sa.String(512), nullable=False),
        sa.Column("task_id", sa.String(64), nullable=False),
        sa.Column("used_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_task_grants_expires_at", "task_grants", ["expires_at"])

    op.create_table(
        "budget_usage",
        sa.Column("budget", sa.String(64), primary_key=True),
        sa.Column("scope", sa.String(1024), primary_key=True),
        sa.Column("bucket_start", sa.Float(), primary_key=True),
        sa.Column("amount", sa.Float(), nullable=False),
        sa.Column("calls", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("budget_usage")
    op.drop_table("task_grants")
    with op.batch_alter_table("grants") as batch:
        batch.drop_column("overrides_approval")
    op.drop_index("ix_tasks_agent_intent_open", "tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("issuer")
