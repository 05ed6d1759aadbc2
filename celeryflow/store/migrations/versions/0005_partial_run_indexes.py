"""Partial run indexes on PostgreSQL and SQLite: rows without a parent, a
concurrency key or anything due are left out (see tables.partial).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_cf_runs_due_at": (["due_at"], "due_at IS NOT NULL"),
    "ix_cf_runs_parent": (["parent_run_id", "parent_step"], "parent_run_id IS NOT NULL"),
    "ix_cf_runs_slot1": (
        ["function_id", "concurrency_key1", "status", "queue_at"],
        "concurrency_key1 IS NOT NULL",
    ),
    "ix_cf_runs_slot2": (
        ["function_id", "concurrency_key2", "status", "queue_at"],
        "concurrency_key2 IS NOT NULL",
    ),
}


def _recreate(partial: bool) -> None:
    if op.get_bind().dialect.name not in ("postgresql", "sqlite"):
        return  # MariaDB/MySQL have no partial indexes: theirs stay as they are
    for name, (columns, where) in INDEXES.items():
        op.drop_index(name, "cf_runs")
        options: dict[str, Any] = {}
        if partial:
            options = {"postgresql_where": sa.text(where), "sqlite_where": sa.text(where)}
        op.create_index(name, "cf_runs", columns, **options)


def upgrade() -> None:
    _recreate(partial=True)


def downgrade() -> None:
    _recreate(partial=False)
