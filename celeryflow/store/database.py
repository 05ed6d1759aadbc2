"""Creating the SQLAlchemy engine for a store URL, with each database's settings."""

from __future__ import annotations

import fcntl
import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

__all__ = ["SQLiteWriteLock", "create_store_engine", "sqlite_path"]

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
        kwargs["pool_recycle"] = 3600
    elif backend == "postgresql":
        # Every use ends its transaction (SQLAlchemy's Connection.close rolls back an
        # open one), so the pool's own ROLLBACK on check-in is a wasted round trip.
        kwargs["pool_reset_on_return"] = None
    engine = sa.create_engine(parsed, **kwargs)
    if backend == "sqlite":
        _configure_sqlite(engine)
    else:
        _ping_when_idle(engine)
    _engines.add(engine)
    return engine


# A pooled connection idle longer than this is pinged before use.
PING_AFTER_IDLE = 1.0


def _ping_when_idle(engine: sa.Engine) -> None:
    """SQLAlchemy's ``pool_pre_ping``, but only for connections idle over a second.

    A ping is a round trip, and on a busy worker it was one in three of a run's: a
    connection checked in a millisecond ago is as good as the ping would find it. A
    server restart or a dropped idle connection is still noticed before use; a
    connection lost in the very second it was last used fails that one statement,
    which SQLAlchemy then replaces (and the run's message or the reconciler retries).
    """

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["checked_in_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("checked_in_at")
        if idle_since is not None and time.monotonic() - idle_since < PING_AFTER_IDLE:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            if not engine.dialect.is_disconnect(exc, dbapi_connection, None):
                raise
            alive = False
        if not alive:
            # the pool discards this connection and checks out a new one
            raise sa.exc.DisconnectionError("the store connection is gone")


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


class SQLiteWriteLock:
    """Queues SQLite writers on a kernel file lock before BEGIN IMMEDIATE.

    SQLite's own busy handler polls with sleeps of 1, 2, 5, 10... ms, an eternity
    next to a 0.1 ms transaction: under contention from several worker processes most
    of the time went to sleeping. flock() wakes the next writer as soon as the lock
    is released. Each thread has its own descriptor, because flock excludes per open
    file, not per process.
    """

    def __init__(self, database_path: str) -> None:
        self.path = database_path + ".write-lock"
        self._local = threading.local()

    def _fd(self) -> int:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            local.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            local.pid = os.getpid()
        return int(local.fd)

    @contextmanager
    def __call__(self) -> Iterator[None]:
        fd = self._fd()
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
