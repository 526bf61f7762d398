"""Baseline: tasks, decisions and the chain head, call outcomes, tokens, approvals, grants.

Revision ID: 0001
Revises:
Create Date: 2026-11-23

Databases created before migrations existed hold exactly this schema; the gateway stamps
them at this revision instead of running it (see ``intentgate.store.migrate``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

GENESIS_HASH = "0" * 64  # the chain's first prev_hash, frozen here as of this revision


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("intent", sa.String(64), nullable=False),
        sa.Column("intent_version", sa.String(64), nullable=False),
        sa.Column("agent", sa.String(512), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("ended_at", sa.Float(), nullable=True),
        sa.Column("history", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
    )
    for column in ("agent", "expires_at", "intent", "status"):
        op.create_index(f"ix_tasks_{column}", "tasks", [column])

    op.create_table(
        "decisions",
        sa.Column("seq", sa.Integer(), primary_key=True),
        sa.Column("id", sa.String(40), nullable=False, unique=True),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("agent", sa.String(512), nullable=False),
        sa.Column("intent", sa.String(64), nullable=True),
        sa.Column("intent_version", sa.String(64), nullable=True),
        sa.Column("task_id", sa.String(64), nullable=True),
        sa.Column("step", sa.String(64), nullable=True),
        sa.Column("upstream", sa.String(64), nullable=True),
        sa.Column("tool", sa.String(256), nullable=True),
        sa.Column("arguments_sha256", sa.String(64), nullable=True),
        sa.Column("arguments", sa.JSON(), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("policy_input", sa.JSON(), nullable=True),
        sa.Column("policy_result", sa.JSON(), nullable=True),
        sa.Column("policy_revision", sa.String(64), nullable=True),
        sa.Column("intents_revision", sa.String(64), nullable=True),
        sa.Column("token_jti", sa.String(64), nullable=True),
        sa.Column("token_expires_at", sa.Float(), nullable=True),
        sa.Column("masked", sa.JSON(), nullable=False),
        sa.Column("timings_us", sa.JSON(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_decisions_agent_seq", "decisions", ["agent", "seq"])
    op.create_index("ix_decisions_outcome_seq", "decisions", ["outcome", "seq"])
    op.create_index("ix_decisions_task_id", "decisions", ["task_id"])

    chain_head = op.create_table(
        "chain_head",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    # the head row exists from the start: replicas appending their first decisions at the
    # same moment then queue on its row lock instead of racing to insert it
    op.bulk_insert(chain_head, [{"id": 1, "seq": 0, "hash": GENESIS_HASH}])

    op.create_table(
        "call_outcomes",
        sa.Column("decision_id", sa.String(40), primary_key=True),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
    )

    op.create_table(
        "tokens",
        sa.Column("jti", sa.String(64), primary_key=True),
        sa.Column("decision_id", sa.String(40), nullable=False),
        sa.Column("task_id", sa.String(64), nullable=False),
        sa.Column("agent", sa.String(512), nullable=False),
        sa.Column("audience", sa.String(64), nullable=False),
        sa.Column("tool", sa.String(256), nullable=False),
        sa.Column("arguments_sha256", sa.String(64), nullable=False),
        sa.Column("issued_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("consumed_at", sa.Float(), nullable=True),
        sa.Column("revoked_at", sa.Float(), nullable=True),
    )
    op.create_index("ix_tokens_task_id", "tokens", ["task_id"])

    op.create_table(
        "approvals",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("decision_id", sa.String(40), nullable=False),
        sa.Column("agent", sa.String(512), nullable=False),
        sa.Column("task_id", sa.String(64), nullable=False),
        sa.Column("step", sa.String(64), nullable=False),
        sa.Column("tool", sa.String(256), nullable=False),
        sa.Column("arguments_sha256", sa.String(64), nullable=False),
        sa.Column("policy_revision", sa.String(64), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("decided_by", sa.String(512), nullable=True),
        sa.Column("decided_at", sa.Float(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("used_by_decision", sa.String(40), nullable=True),
    )
    for column in ("decision_id", "status", "task_id"):
        op.create_index(f"ix_approvals_{column}", "approvals", [column])

    op.create_table(
        "grants",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("agent", sa.String(512), nullable=False),
        sa.Column("tool", sa.String(256), nullable=True),
        sa.Column("intent", sa.String(64), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(512), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("revoked_at", sa.Float(), nullable=True),
        sa.Column("revoked_by", sa.String(512), nullable=True),
        sa.Column("uses", sa.Integer(), nullable=False),
        sa.Column("last_used_decision", sa.String(40), nullable=True),
        sa.Column("signed_off_by", sa.String(512), nullable=True),
        sa.Column("signed_off_at", sa.Float(), nullable=True),
        sa.Column("sign_off_note", sa.Text(), nullable=True),
    )
    op.create_index("ix_grants_agent", "grants", ["agent"])
    op.create_index("ix_grants_signed_off_at", "grants", ["signed_off_at"])


def downgrade() -> None:
    for table in ("grants", "approvals", "tokens", "call_outcomes", "chain_head", "decisions", "tasks"):
        op.drop_table(table)  # their indexes go with them
