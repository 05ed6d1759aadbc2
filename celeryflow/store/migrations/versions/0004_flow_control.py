"""Flow control: concurrency keys and queue order on runs, keyed flow state.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from celeryflow.store.tables import Key, UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cf_runs") as batch:
        batch.add_column(sa.Column("concurrency_key1", Key(255), nullable=True))
        batch.add_column(sa.Column("concurrency_key2", Key(255), nullable=True))
        batch.add_column(sa.Column("queue_at", UTCDateTime, nullable=True))
    op.create_index(
        "ix_cf_runs_slot1", "cf_runs", ["function_id", "concurrency_key1", "status", "queue_at"]
    )
    op.create_index(
        "ix_cf_runs_slot2", "cf_runs", ["function_id", "concurrency_key2", "status", "queue_at"]
    )
    op.create_table(
        "cf_flow_keys",
        sa.Column("function_id", Key(255), primary_key=True),
        sa.Column("scope", Key(32), primary_key=True),
        sa.Column("key", Key(255), primary_key=True),
        sa.Column("run_id", Key(36), nullable=True),
        sa.Column("until", UTCDateTime, nullable=True),
        sa.Column("since", UTCDateTime, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("cf_flow_keys")
    op.drop_index("ix_cf_runs_slot2", "cf_runs")
    op.drop_index("ix_cf_runs_slot1", "cf_runs")
    with op.batch_alter_table("cf_runs") as batch:
        batch.drop_column("queue_at")
        batch.drop_column("concurrency_key2")
        batch.drop_column("concurrency_key1")
