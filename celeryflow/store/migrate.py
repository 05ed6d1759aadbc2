"""Alembic, driven from code: the migrations ship inside the package.

Alembic's own INFO lines ("Context impl ...", "Will assume ... DDL", one per
migration) would appear in every process that opens a store, since each checks the
schema revision; they are dropped (see :mod:`celeryflow.logs`), and an upgrade that
applies something logs one INFO line saying what.
"""

from __future__ import annotations

import logging
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from ..logs import quiet_alembic

__all__ = ["VERSION_TABLE", "alembic_config", "current_revision", "head_revision", "upgrade"]

# Our own version table, so a user's alembic history in the same database is untouched.
VERSION_TABLE = "cf_alembic_version"
_HERE = Path(__file__).parent
log = logging.getLogger("celeryflow.store")


def alembic_config(engine: sa.Engine | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_HERE / "migrations"))
    if engine is not None:
        config.attributes["engine"] = engine
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(conn: sa.Connection) -> str | None:
    with quiet_alembic():
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def upgrade(engine: sa.Engine, revision: str = "head") -> tuple[str | None, str | None]:
    """Upgrade to ``revision``; returns the revisions before and after."""
    with engine.connect() as conn:
        before = current_revision(conn)
    with quiet_alembic():
        command.upgrade(alembic_config(engine), revision)
    with engine.connect() as conn:
        after = current_revision(conn)
    if after != before:
        script = ScriptDirectory.from_config(alembic_config())
        applied = [r.revision for r in script.iterate_revisions(after, before)][::-1]
        where = engine.url.render_as_string(hide_password=True)
        log.info(
            "celeryflow store %s: applied migration(s) %s (schema %s -> %s)",
            where,
            ", ".join(applied),
            before or "empty",
            after,
        )
    return before, after
