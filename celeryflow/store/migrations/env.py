"""Alembic environment: runs on the engine handed in by celeryflow.store.migrate."""

from __future__ import annotations

from alembic import context

from celeryflow.store.migrate import VERSION_TABLE
from celeryflow.store.tables import metadata

engine = context.config.attributes["engine"]
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
