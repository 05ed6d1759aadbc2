"""cf_runs.context: what hooks carry from where a run was created (a trace context).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from celeryflow.store.tables import JSONText

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cf_runs") as batch:
        batch.add_column(sa.Column("context", JSONText, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cf_runs") as batch:
        batch.drop_column("context")
