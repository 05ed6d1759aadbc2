"""Creating the SQLAlchemy engine for a store URL, with each database's settings:
the URL checked up front, connect and statement timeouts, and the errors that mean
"the store is unreachable" turned into :class:`StoreUnavailable`."""

from __future__ import annotations

import fcntl
import math
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from ..errors import ConfigError, StoreUnavailable
from .silence import bounded_connection_class, client_bound, limited

__all__ = [
    "SQLiteWriteLock",
    "check_store_url",
    "create_store_engine",
    "display_url",
    "sqlite_path",
    "store_error_line",
]

# The driver module behind each extra of the distribution.
_EXTRAS = {"psycopg": "postgres", "pymysql": "mysql"}
_SUPPORTED = "sqlite:///path.db, postgresql+psycopg://user@host/db or mysql+pymysql://user@host/db"

_engines: weakref.WeakSet[sa.Engine] = weakref.WeakSet()


class _SQLiteConnection(sqlite3.Connection):
    """sqlite3's connection, weak-referenceable (for the set below)."""


# SQLite handles open in this process, and those a fork left here: the parent's,
# referenced for good so that the child never closes them. Closing one would run
# SQLite's close-time checkpoint and lock release from a process that does not own
# its locks (and POSIX locks drop per process), behind the parent's back.
_sqlite_open: weakref.WeakSet[_SQLiteConnection] = weakref.WeakSet()
_inherited: list[_SQLiteConnection] = []


def _dispose_after_fork() -> None:
    # Prefork children must not share the parent's sockets or SQLite handles.
    _inherited.extend(_sqlite_open)
    _sqlite_open.clear()
    for engine in list(_engines):
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_dispose_after_fork)


def sqlite_path(url: str | sa.URL) -> str | None:
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    return parsed.database or ":memory:"


def display_url(url: str | sa.URL) -> str:
    """The URL without its password, for messages."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return str(url)


def check_store_url(url: str) -> sa.URL:
    """The parsed URL, or a :class:`ConfigError` saying how to write it.

    Costs no connection: the dialect is loaded and its driver module imported, which
    the first use would do anyway. A URL without a driver is refused even where the
    installed SQLAlchemy has a default for it, so that one URL means the same driver
    on every SQLAlchemy version.
    """
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise ConfigError(
            f"the celeryflow store URL {url!r} cannot be parsed; write it as {_SUPPORTED}"
        ) from None
    name = parsed.drivername
    shown = parsed.render_as_string(hide_password=True)
    if name in ("postgres", "postgresql"):
        fixed = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=True)
        raise ConfigError(f"the celeryflow store URL {shown} names no driver: use {fixed}")
    if name in ("mysql", "mariadb"):
        fixed = parsed.set(drivername=f"{name}+pymysql").render_as_string(hide_password=True)
        raise ConfigError(f"the celeryflow store URL {shown} names no driver: use {fixed}")
    if parsed.get_backend_name() == "sqlite" and parsed.host:
        raise ConfigError(
            f"the celeryflow store URL {shown} has the file name where the host goes: "
            f"use sqlite:///{parsed.host}{'/' + parsed.database if parsed.database else ''} "
            "(three slashes for a relative path, four for an absolute one)"
        )
    try:
        dialect = parsed.get_dialect()
    except sa.exc.NoSuchModuleError:
        raise ConfigError(
            f"the celeryflow store URL {shown} names an unknown database or driver "
            f"{name!r}; write it as {_SUPPORTED}"
        ) from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        module = (exc.name or str(dialect.driver)).split(".")[0]
        extra = _EXTRAS.get(module)
        hint = (
            f"pip install 'celeryflow-engine[{extra}]'"
            if extra
            else f"install the {module} package, or use {_SUPPORTED}"
        )
        raise ConfigError(
            f"the celeryflow store URL {shown} needs the driver module {module!r}, "
            f"which is not installed: {hint}"
        ) from None
    return parsed


def _seconds(value: timedelta | None) -> float | None:
    return value.total_seconds() if value else None


def create_store_engine(
    url: str | sa.URL,
    *,
    connect_timeout: timedelta | None = None,
    statement_timeout: timedelta | None = None,
) -> sa.Engine:
    """The engine for ``url``. ``connect_timeout`` bounds opening a connection,
    ``statement_timeout`` one statement (PostgreSQL: the server cancels it, and the
    client closes a connection whose server stays silent a little longer, see
    ``silence.py``; MySQL/MariaDB: the client stops reading after it; SQLite: the
    busy timeout, how long a writer waits for the lock); ``None`` is no limit."""
    parsed = sa.make_url(url)
    backend = parsed.get_backend_name()
    kwargs: dict[str, Any] = {"future": True}
    connect = _seconds(connect_timeout)
    statement = _seconds(statement_timeout)
    connect_args: dict[str, Any] = {}
    if backend == "sqlite":
        connect_args = {
            "timeout": _sqlite_busy(statement),
            "check_same_thread": False,
            "factory": _SQLiteConnection,
        }
    elif backend in ("mysql", "mariadb"):
        # READ COMMITTED avoids gap locks between workers claiming different runs.
        kwargs["isolation_level"] = "READ COMMITTED"
        kwargs["pool_recycle"] = 3600
        if connect:
            # pymysql reads the server's handshake with its read timeout: bound the
            # whole connect by connect_timeout, then switch to the statement timeout
            connect_args["connect_timeout"] = connect
            connect_args["read_timeout"] = connect_args["write_timeout"] = connect
    elif backend == "postgresql":
        # Every use ends its transaction (SQLAlchemy's Connection.close rolls back an
        # open one), so the pool's own ROLLBACK on check-in is a wasted round trip.
        kwargs["pool_reset_on_return"] = None
        if connect:
            # libpq takes whole seconds (and treats 1 as 2)
            connect_args["connect_timeout"] = max(2, math.ceil(connect))
        if statement:
            # a startup option: no extra round trip per connection
            options = str(parsed.query.get("options", ""))
            connect_args["options"] = (
                f"{options} -c statement_timeout={math.ceil(statement * 1000)}".strip()
            )
    kwargs["connect_args"] = connect_args
    engine = sa.create_engine(parsed, **kwargs)
    if backend in ("mysql", "mariadb") and parsed.get_driver_name() == "pymysql":
        _pymysql_timeouts(engine, statement)
    if backend == "postgresql" and parsed.get_driver_name() == "psycopg":
        _psycopg_bound(engine, client_bound(statement))
    if backend == "sqlite":
        _configure_sqlite(engine, _sqlite_busy(statement))
    else:
        _ping_when_idle(engine, connect)
        _report_unavailable(engine, connect_timeout, statement_timeout)
    _engines.add(engine)
    return engine


def _pymysql_timeouts(engine: sa.Engine, statement: float | None) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # pymysql applies these before each read and write; a client-side bound is
        # the one MySQL and MariaDB share for every kind of statement
        dbapi_connection._read_timeout = statement
        dbapi_connection._write_timeout = statement


def _psycopg_bound(engine: sa.Engine, bound: float | None) -> None:
    dbapi = engine.dialect.loaded_dbapi
    connection_class = bounded_connection_class(dbapi.Connection, dbapi.OperationalError)

    @event.listens_for(engine, "do_connect")
    def _on_do_connect(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        connection = connection_class.connect(*cargs, **cparams)
        connection.cf_bound = bound
        return connection


# SQLite's busy timeout without a statement_timeout: how long a writer waits for
# another process's write lock before "database is locked".
SQLITE_BUSY_DEFAULT = 60.0


def _sqlite_busy(statement: float | None) -> float:
    return statement if statement else SQLITE_BUSY_DEFAULT


def _duration_text(value: timedelta | None) -> str:
    seconds = value.total_seconds() if value else 0
    return f"{seconds:g}s"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _report_unavailable(
    engine: sa.Engine, connect_timeout: timedelta | None, statement_timeout: timedelta | None
) -> None:
    """Errors that mean the store cannot be reached (a failed connect, a dropped
    connection, a statement past its timeout) become :class:`StoreUnavailable`,
    naming the store and the timeout; every other database error stays as it is."""
    where = display_url(engine.url)

    @event.listens_for(engine, "handle_error")
    def _on_error(context: sa.engine.ExceptionContext) -> None:
        original = context.sqlalchemy_exception
        if not isinstance(original, sa.exc.DBAPIError):
            return
        cause = context.original_exception
        text = _first_line(cause)
        if context.connection is None:  # opening a connection failed
            timed_out = connect_timeout and _is_timeout(cause)
            limit = f" within the connect_timeout ({_duration_text(connect_timeout)})"
            limit = limit if timed_out else ""
            message = f"cannot connect to the celeryflow store at {where}{limit}: {text}"
        elif _is_timeout(cause):
            message = (
                f"the celeryflow store at {where} did not answer within the "
                f"statement_timeout ({_duration_text(statement_timeout)}): {text}"
            )
        elif context.is_disconnect:
            message = f"lost the connection to the celeryflow store at {where}: {text}"
        else:
            return
        raise StoreUnavailable(message, original)


def _is_timeout(cause: BaseException) -> bool:
    """A statement cancelled by PostgreSQL's statement_timeout (SQLSTATE 57014), a
    MySQL client read past its read_timeout, a connect past its connect_timeout."""
    if getattr(cause, "sqlstate", None) == "57014":
        return True
    text = str(cause).lower()
    return "timed out" in text or "timeout expired" in text


def store_error_line(exc: BaseException) -> str | None:
    """One line describing ``exc`` if it is the store's (unreachable, refused, not
    migrated, a database error), else None: a bug keeps its traceback."""
    if isinstance(exc, (StoreUnavailable, ConfigError)):
        return str(exc)
    if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None:
        return f"{type(exc.orig).__name__}: {_first_line(exc.orig)}"
    if isinstance(exc, sa.exc.SQLAlchemyError):
        return f"{type(exc).__name__}: {_first_line(exc)}"
    return None


# A pooled connection idle longer than this is pinged before use.
PING_AFTER_IDLE = 1.0


def _ping_when_idle(engine: sa.Engine, connect: float | None) -> None:
    """SQLAlchemy's ``pool_pre_ping``, but only for connections idle over a second.

    A ping is a round trip, and on a busy worker it was one in three of a run's: a
    connection checked in a millisecond ago is as good as the ping would find it. A
    server restart or a dropped idle connection is still noticed before use; a
    connection lost in the very second it was last used fails that one statement,
    which SQLAlchemy then replaces (and the run's message or the reconciler retries).
    A live server answers a ping at once: it waits no longer than ``connect_timeout``
    (PostgreSQL), so a silent server costs a caller that much, not the statement bound.
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
            with limited(dbapi_connection, connect):
                alive = engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            if not engine.dialect.is_disconnect(exc, dbapi_connection, None):
                raise
            alive = False
        if not alive:
            # the pool discards this connection and checks out a new one
            raise sa.exc.DisconnectionError("the store connection is gone")


def _configure_sqlite(engine: sa.Engine, busy: float) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        _sqlite_open.add(dbapi_connection)
        # Take transaction control from pysqlite so writes can BEGIN IMMEDIATE:
        # a deferred BEGIN that later upgrades to a write lock can fail with
        # "database is locked" at once instead of waiting for the busy timeout.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a commit survives a crashed process (kill -9), only an OS
        # crash or power loss may lose the newest commits. Documented in README.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={math.ceil(busy * 1000)}")
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


# A fork waits while a thread of this process is inside a SQLite write transaction:
# SQLite's own lock bookkeeping is per process, so a child born in the middle of one
# (a prefork pool replacing a child while the reconciler thread writes) believes its
# process holds the write lock, and every write of its own waits for the busy timeout
# and fails ("database is locked"). No store write publishes (commit first, then
# ring), so this never waits on the embedded broker's own fork lock, nor it on this.
_write_guard = threading.RLock()


def _before_fork() -> None:
    _write_guard.acquire()


def _after_fork_in_parent() -> None:
    _write_guard.release()


def _after_fork_in_child() -> None:
    global _write_guard
    _write_guard = threading.RLock()


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
)


class SQLiteWriteLock:
    """Queues SQLite writers on a kernel file lock before BEGIN IMMEDIATE.

    SQLite's own busy handler polls with sleeps of 1, 2, 5, 10... ms, an eternity
    next to a 0.1 ms transaction: under contention from several worker processes most
    of the time went to sleeping. flock() wakes the next writer as soon as the lock
    is released. Each thread has its own descriptor, because flock excludes per open
    file, not per process. A fork waits for the transaction in progress (above).
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
        with _write_guard:
            fd = self._fd()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
