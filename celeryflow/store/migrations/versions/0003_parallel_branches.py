"""step.parallel: a branch index on runs, and children found by their parent.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cf_runs") as batch:
        batch.add_column(sa.Column("branch", sa.Integer, nullable=True))
    op.create_index("ix_cf_runs_parent", "cf_runs", ["parent_run_id", "parent_step"])


def downgrade() -> None:
    op.drop_index("ix_cf_runs_parent", "cf_runs")
    with op.batch_alter_table("cf_runs") as batch:
        batch.drop_column("branch")
