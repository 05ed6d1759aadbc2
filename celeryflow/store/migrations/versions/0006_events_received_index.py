"""An index on cf_events.received_at, so pruning finds the oldest events without a
scan.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_cf_events_received", "cf_events", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_cf_events_received", "cf_events")
