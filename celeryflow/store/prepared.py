"""The hottest writes of the engine, sent on the driver's cursor: a step row, the
claim (and its step loads) and the usual finish.

A 100-step run writes 100 step rows, each committed by itself (DESIGN principle 2:
a step's result is durable before the next step works). SQLAlchemy's execute path
(the compiled-cache lookup, parameter processing, events, the result object) and its
transaction object cost several times the database's own work for such a write.
:class:`DriverStatement` compiles a statement once, through SQLAlchemy (the SQL and
the types' bind and result processing stay SQLAlchemy's), and runs it on the DBAPI
cursor:

* SQLite: under :func:`driver_transaction` (``BEGIN IMMEDIATE`` ... ``COMMIT``, what
  SQLAlchemy sends there anyway). A 100-step run went from 11.3 ms to 5.7 ms; the
  claim and the finish of a one-step run from 630-710 us to 340-370 us of CPU.
* PostgreSQL with psycopg 3: the writes that are one self-fencing statement (the
  claim, a lone step write, the usual finish; the usual send, in store.py) under
  :func:`driver_autocommit`, on the run session's connection, which stays in
  autocommit. A step took 210-330 us of CPU in one process this way, 510-680 us
  through SQLAlchemy (bench/RESULTS.md, "Stop 21").

What SQLAlchemy's path gives and this one does not: its error classification (a
disconnect, a timeout, the store's ``handle_error`` hook) and its ``*_execute``
events. So a driver error never leaves this module: :class:`DriverRefused` tells
the caller to make the same write through SQLAlchemy, which either succeeds or
raises the error classified as everywhere else. That redo is sound. On SQLite the
database runs in this process: a statement or COMMIT that raised wrote nothing.
On PostgreSQL the write is one statement in autocommit: one the server refused
rolled back, and one whose connection died (so may have committed) cannot be redone
on that connection: SQLAlchemy reports the lost connection, and the guard's retry on
a fresh one meets the fence or the step's key, as after any lost connection
(infra.py). Instrumentation that listens to SQLAlchemy's cursor events does not see
these writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine.result import result_tuple
from sqlalchemy.sql.compiler import SQLCompiler

__all__ = [
    "DriverRefused",
    "DriverStatement",
    "driver_autocommit",
    "driver_transaction",
    "positional_dialect",
]


class DriverRefused(Exception):
    """The driver raised; nothing was written. Make the write through SQLAlchemy."""


class DriverStatement:
    """``statement`` compiled once for ``dialect`` (a positional paramstyle, as
    SQLite's ``qmark``), executed on a DBAPI cursor with its parameters processed as
    SQLAlchemy would process them, and its RETURNING rows read back as SQLAlchemy
    reads them (each column's result processor: a ``UTCDateTime`` comes back aware)."""

    def __init__(self, statement: sa.ClauseElement, dialect: sa.Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        if compiled.positiontup is None:
            raise ValueError(f"{dialect.name}: a positional paramstyle is needed")
        self.sql = str(compiled)
        binds = {**{bind.key: bind for bind in compiled.binds.values()}, **compiled.binds}
        # a bind the caller does not name keeps the value the statement gave it (a
        # literal such as ``status == 'running'``), None for a named parameter
        self._order: list[tuple[str, Any, Callable[[Any], Any] | None]] = []
        for name in compiled.positiontup:
            bind = binds[name]
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            self._order.append((name, bind.effective_value, process))
        # the rows it gives: a SELECT's columns, or an INSERT's or UPDATE's RETURNING
        if isinstance(statement, sa.Select):
            columns = list(statement.selected_columns)
        else:
            columns = list(compiled.returning or ())
        self._make_row = result_tuple([str(column.key) for column in columns])
        self._results = [
            column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns
        ]

    def parameters(self, values: Mapping[str, Any]) -> list[Any]:
        out = []
        for name, fixed, process in self._order:
            value = values[name] if name in values else fixed
            out.append(value if process is None or value is None else process(value))
        return out

    def execute(self, cursor: Any, values: Mapping[str, Any]) -> int:
        """The statement's rowcount."""
        cursor.execute(self.sql, self.parameters(values))
        return int(cursor.rowcount)

    def rows(self, cursor: Any, values: Mapping[str, Any]) -> list[sa.RowMapping]:
        """The rows the statement gives, as ``.mappings()`` of SQLAlchemy's result
        would give them."""
        cursor.execute(self.sql, self.parameters(values))
        # fetched in full before COMMIT: SQLite will not commit under a live statement
        return [self._row(raw) for raw in cursor.fetchall()]

    def _row(self, raw: Sequence[Any]) -> sa.RowMapping:
        values = [
            value if process is None or value is None else process(value)
            for value, process in zip(raw, self._results, strict=True)
        ]
        return self._make_row(values)._mapping


@contextmanager
def driver_transaction(conn: sa.Connection) -> Iterator[Any]:
    """A write transaction on ``conn``'s DBAPI connection, yielding its cursor:
    committed on leaving, rolled back (and :class:`DriverRefused` raised) if the
    driver raised. ``conn`` must not be inside a SQLAlchemy transaction."""
    driver: Any = conn.connection.dbapi_connection
    errors = conn.dialect.loaded_dbapi.Error
    try:
        cursor = driver.cursor()
        cursor.execute("BEGIN IMMEDIATE")
    except errors as exc:
        raise DriverRefused(str(exc)) from exc
    try:
        yield cursor
        cursor.execute("COMMIT")
    except errors as exc:
        if driver.in_transaction:
            driver.rollback()
        raise DriverRefused(str(exc)) from exc
    except BaseException:
        if driver.in_transaction:
            driver.rollback()
        raise
    finally:
        cursor.close()


@contextmanager
def driver_autocommit(conn: sa.Connection) -> Iterator[Any]:
    """A cursor on ``conn``'s DBAPI connection, which is in autocommit: each statement
    commits by itself. A driver error raises :class:`DriverRefused`."""
    errors = conn.dialect.loaded_dbapi.Error
    try:
        driver: Any = conn.connection.dbapi_connection
        if not driver.autocommit:  # a statement here would open a transaction
            raise DriverRefused("the connection is not in autocommit")
        cursor = driver.cursor()
    except errors as exc:
        raise DriverRefused(str(exc)) from exc
    try:
        yield cursor
    except errors as exc:
        raise DriverRefused(str(exc)) from exc
    finally:
        cursor.close()


def positional_dialect(dialect: sa.Dialect) -> sa.Dialect:
    """``dialect``, or one of its kind that compiles positional parameters (psycopg's
    ``%s``, where SQLAlchemy's own uses named ones)."""
    if dialect.positional:
        return dialect
    kind: Any = type(dialect)
    made: sa.Dialect = kind(paramstyle="format")
    return made
