"""Result bindings: the values kept from calls' results at the paths later bindings read.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "task_results",
        sa.Column("decision_id", sa.String(40), primary_key=True),
        sa.Column("path", sa.String(512), primary_key=True),
        sa.Column("task_id", sa.String(64), nullable=False),
        sa.Column("step", sa.String(64), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("found", sa.JSON(), nullable=False),
        sa.Column("dropped", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_task_results_task", "task_results", ["task_id", "at"])


def downgrade() -> None:
    op.drop_table("task_results")
