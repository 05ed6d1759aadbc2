"""Event waiters with their correlation index, cron tick ledger, parent steps and
timeouts on runs.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from celeryflow.store.tables import JSONText, Key, UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cf_runs") as batch:
        batch.add_column(sa.Column("parent_step", Key(255), nullable=True))
        batch.add_column(sa.Column("start_deadline", UTCDateTime, nullable=True))
        batch.add_column(sa.Column("finish_deadline", UTCDateTime, nullable=True))
    op.create_table(
        "cf_waits",
        sa.Column("run_id", Key(36), primary_key=True),
        sa.Column("key", Key(255), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("event_name", Key(255), nullable=False),
        sa.Column("match_field", Key(255), nullable=True),
        sa.Column("match_value", Key(255), nullable=True),
        sa.Column("condition", JSONText, nullable=True),
        sa.Column("expires_at", UTCDateTime, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_cf_waits_match", "cf_waits", ["event_name", "match_field", "match_value"])
    op.create_table(
        "cf_wait_fields",
        sa.Column("event_name", Key(255), primary_key=True),
        sa.Column("match_field", Key(255), primary_key=True),
    )
    op.create_table(
        "cf_cron_ticks",
        sa.Column("function_id", Key(255), primary_key=True),
        sa.Column("scheduled_at", UTCDateTime, primary_key=True),
        sa.Column("run_id", Key(36), nullable=True),
        sa.Column("fired_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("cf_cron_ticks")
    op.drop_table("cf_wait_fields")
    op.drop_index("ix_cf_waits_match", "cf_waits")
    op.drop_table("cf_waits")
    with op.batch_alter_table("cf_runs") as batch:
        batch.drop_column("finish_deadline")
        batch.drop_column("start_deadline")
        batch.drop_column("parent_step")
