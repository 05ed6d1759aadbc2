"""Alembic environment: runs on the engine handed in by celeryflow.store.migrate.

Workers started together on a fresh database each migrate it (``auto_migrate``): on
PostgreSQL and MariaDB the migration takes a lock of the database first, so the
others wait and then find the schema at its head (two at once would both create the
tables, and all but one fail). SQLite's is a file lock (store/admin.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import context

from celeryflow.errors import CeleryflowError
from celeryflow.store.migrate import VERSION_TABLE
from celeryflow.store.tables import metadata

LOCK_SECONDS = 600  # the longest a migration may wait for another process's


@contextmanager
def migration_lock(connection: sa.Connection) -> Iterator[None]:
    """Hold the database's migration lock: PostgreSQL's until the transaction ends,
    MariaDB's (session-wide, DDL commits there) until released."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        key = "SELECT pg_advisory_xact_lock(hashtext('celeryflow'), hashtext('migrate'))"
        connection.execute(sa.text(key))
        yield
        return
    if dialect not in ("mysql", "mariadb"):
        yield
        return
    name = "CONCAT('celeryflow-migrate:', DATABASE())"
    got = connection.execute(sa.text(f"SELECT GET_LOCK({name}, {LOCK_SECONDS})")).scalar()
    if got != 1:
        raise CeleryflowError(
            f"the store's migration lock was held by another process for {LOCK_SECONDS} s:"
            " is a migration of this database still running?"
        )
    try:
        yield
    finally:
        connection.execute(sa.text(f"SELECT RELEASE_LOCK({name})"))


engine = context.config.attributes["engine"]
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with migration_lock(connection), context.begin_transaction():
        context.run_migrations()
    connection.commit()
