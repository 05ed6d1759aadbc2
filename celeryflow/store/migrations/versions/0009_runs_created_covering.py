"""ix_cf_runs_created covers (function_id, status) too, so the dashboard's functions
page counts a window's runs by function and status from the index alone (an
index-only scan on PostgreSQL: a day of 172,800 runs in 60 ms instead of 195 ms read
from the table, bench/RESULTS.md "Dashboard"). The run list pages on it as before
((created_at, id) lead). Every write that moves a run's status already adds an entry
to each index of cf_runs (status is indexed), so the wider entry costs no new write.
Rebuilding the index on a large table takes a while under a lock: MIGRATION.md.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_cf_runs_created", "cf_runs")
    op.create_index("ix_cf_runs_created", "cf_runs", ["created_at", "id", "function_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_cf_runs_created", "cf_runs")
    op.create_index("ix_cf_runs_created", "cf_runs", ["created_at", "id"])
