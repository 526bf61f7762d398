"""Checkpointed audit log: record encoding versions, Merkle leaves, signed checkpoints.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

Rows written before this revision keep encoding v1 (the hash chain) and verify as before;
the sealer seals them into the tree first, in seq order.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.add_column(sa.Column("hash_v", sa.Integer(), nullable=False, server_default="1"))
    if op.get_bind().dialect.name == "postgresql":
        # rows were numbered by the chain head until now, never by the column's sequence:
        # the database numbers them from here on, after the newest
        op.execute("SELECT setval(pg_get_serial_sequence('decisions', 'seq'), "
                   "COALESCE((SELECT MAX(seq) FROM decisions), 0) + 1, false)")
    op.create_table(
        "audit_leaves",
        sa.Column("idx", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("seq", sa.Integer(), nullable=False, unique=True),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("size", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("root", sa.String(64), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("max_seq", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("frontier", sa.JSON(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_checkpoints")
    op.drop_table("audit_leaves")
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("hash_v")
