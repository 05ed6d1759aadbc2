"""Initial schema: events, runs, steps.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from celeryflow.store.tables import JSONText, Key, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cf_events",
        sa.Column("id", Key(64), primary_key=True),
        sa.Column("name", Key(255), nullable=False),
        sa.Column("data", JSONText, nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("received_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_cf_events_name_received", "cf_events", ["name", "received_at"])
    op.create_table(
        "cf_runs",
        sa.Column("id", Key(36), primary_key=True),
        sa.Column("function_id", Key(255), nullable=False),
        sa.Column("event_id", Key(64), nullable=True),
        sa.Column("events", JSONText, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("output", JSONText, nullable=True),
        sa.Column("error", JSONText, nullable=True),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("fence", sa.BigInteger, nullable=False),
        sa.Column("lease_owner", sa.String(128), nullable=True),
        sa.Column("lease_expires_at", UTCDateTime, nullable=True),
        sa.Column("wake_at", UTCDateTime, nullable=True),
        sa.Column("due_at", UTCDateTime, nullable=True),
        sa.Column("dispatches", sa.Integer, nullable=False),
        sa.Column("parent_run_id", Key(36), nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("started_at", UTCDateTime, nullable=True),
        sa.Column("ended_at", UTCDateTime, nullable=True),
    )
    op.create_index("ix_cf_runs_due_at", "cf_runs", ["due_at"])
    op.create_index("ix_cf_runs_event_id", "cf_runs", ["event_id"])
    op.create_index("ix_cf_runs_function_created", "cf_runs", ["function_id", "created_at"])
    op.create_index("ix_cf_runs_status_created", "cf_runs", ["status", "created_at"])
    op.create_table(
        "cf_steps",
        sa.Column("run_id", Key(36), primary_key=True),
        sa.Column("key", Key(255), primary_key=True),
        sa.Column("name", Key(255), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("output", JSONText, nullable=True),
        sa.Column("error", JSONText, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("wake_at", UTCDateTime, nullable=True),
        sa.Column("started_at", UTCDateTime, nullable=True),
        sa.Column("ended_at", UTCDateTime, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("cf_steps")
    op.drop_table("cf_runs")
    op.drop_table("cf_events")
