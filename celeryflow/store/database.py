"""Creating the SQLAlchemy engine for a store URL, with each database's settings."""

from __future__ import annotations

import os
import weakref
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

__all__ = ["create_store_engine", "sqlite_path"]

_engines: weakref.WeakSet[sa.Engine] = weakref.WeakSet()


def _dispose_after_fork() -> None:
    # Prefork children must not share the parent's sockets or SQLite handles.
    for engine in list(_engines):
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_dispose_after_fork)


def sqlite_path(url: str | sa.URL) -> str | None:
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    return parsed.database or ":memory:"


def create_store_engine(url: str | sa.URL) -> sa.Engine:
    parsed = sa.make_url(url)
    backend = parsed.get_backend_name()
    kwargs: dict[str, Any] = {"future": True}
    if backend == "sqlite":
        kwargs["connect_args"] = {"timeout": 60, "check_same_thread": False}
    elif backend in ("mysql", "mariadb"):
        # READ COMMITTED avoids gap locks between workers claiming different runs.
        kwargs["isolation_level"] = "READ COMMITTED"
        kwargs["pool_pre_ping"] = True
        kwargs["pool_recycle"] = 3600
    elif backend == "postgresql":
        kwargs["pool_pre_ping"] = True
    engine = sa.create_engine(parsed, **kwargs)
    if backend == "sqlite":
        _configure_sqlite(engine)
    _engines.add(engine)
    return engine


def _configure_sqlite(engine: sa.Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from pysqlite so writes can BEGIN IMMEDIATE:
        # a deferred BEGIN that later upgrades to a write lock can fail with
        # "database is locked" at once instead of waiting for the busy timeout.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a commit survives a crashed process (kill -9), only an OS
        # crash or power loss may lose the newest commits. Documented in README.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # Straight to the driver: this runs once per step, and SQLAlchemy's full
        # statement path would cost more than the BEGIN itself.
        driver = conn.connection.driver_connection
        assert driver is not None
        if conn.get_execution_options().get("readonly"):
            driver.execute("BEGIN")
        else:
            driver.execute("BEGIN IMMEDIATE")
