"""Operators' tables: paused functions, the reconcilers' heartbeats, and an index
on cf_runs.created_at for the newest-first run list (celeryflow runs, the dashboard).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from celeryflow.store.tables import Key, UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cf_paused_functions",
        sa.Column("function_id", Key(255), primary_key=True),
        sa.Column("paused_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "cf_heartbeats",
        sa.Column("kind", Key(32), primary_key=True),
        sa.Column("owner", Key(64), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("seen_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_cf_runs_created", "cf_runs", ["created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_cf_runs_created", "cf_runs")
    op.drop_table("cf_heartbeats")
    op.drop_table("cf_paused_functions")
