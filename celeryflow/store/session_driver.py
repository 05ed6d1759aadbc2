"""The run session's hottest writes on the driver's cursor (store/prepared.py): the
claim, a step row and the usual finish, where the store's capabilities allow them.

Every method here either does the write or raises :class:`DriverRefused`, having
written nothing; the caller then makes the same write on SQLAlchemy's path
(store/session.py), which succeeds or raises the error classified as everywhere else.
A method refuses too where its path does not apply (no such statement on this store,
or the connection is inside a SQLAlchemy transaction), so the caller has one way
back for both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import sqlalchemy as sa

from ..runs import RunStatus
from .prepared import DriverRefused, DriverStatement, driver_autocommit, driver_transaction
from .rows import Claim, StepWrite
from .session_sql import SessionStatements

__all__ = ["DriverRefused", "DriverWrites", "ensure_autocommit"]


class _Refused(Exception):
    """Rolls a fenced transaction on the driver back: the fence no longer holds."""


def ensure_autocommit(conn: sa.Connection) -> None:
    """After a lost connection SQLAlchemy reconnects ``conn`` on a fresh DBAPI
    connection, without the isolation level set on the old one: set it again, or a
    one-statement write would sit in a transaction nobody commits."""
    if not conn.connection.dbapi_connection.autocommit:  # type: ignore[union-attr]
        conn.execution_options(isolation_level="AUTOCOMMIT")


class DriverWrites:
    """One run session's writes on its connection's DBAPI cursor."""

    def __init__(
        self,
        conn: sa.Connection,
        sql: SessionStatements,
        write_lock: Callable[[], AbstractContextManager[object]],
    ) -> None:
        self.conn = conn
        self.sql = sql
        self.write_lock = write_lock

    def _free(self, statement: DriverStatement | None) -> DriverStatement:
        if statement is None or self.conn.in_transaction():
            raise DriverRefused("no driver path for this write here")
        return statement

    @contextmanager
    def _alone(self) -> Iterator[Any]:
        """A cursor whose statements each commit by themselves: autocommit is set
        again first (a connection SQLAlchemy re-made after a loss comes without it)."""
        ensure_autocommit(self.conn)
        with driver_autocommit(self.conn) as cursor:
            yield cursor

    def claim_alone(self, values: Mapping[str, Any]) -> list[sa.RowMapping]:
        """PostgreSQL: the claim as one statement in autocommit; its row, if claimed."""
        statement = self._free(self.sql.claim_alone_on_driver)
        with self._alone() as cursor:
            return statement.rows(cursor, values)

    def claim(
        self, params: Mapping[str, Any], slot_limits: Callable[[str], list[int]] | None
    ) -> Claim | None:
        """SQLite: the claim and its step loads in one transaction. A run whose
        function has concurrency limits is refused (rolled back): its slot is taken
        on SQLAlchemy's path, in the claim's transaction."""
        statement = self._free(self.sql.claim_on_driver)
        load = self.sql.load_steps_on_driver
        assert load is not None
        with self.write_lock(), driver_transaction(self.conn) as cursor:
            rows = statement.rows(cursor, params)
            if not rows:
                return None
            row = rows[0]
            if slot_limits is not None and slot_limits(row["function_id"]):
                raise DriverRefused("the run takes a concurrency slot")  # rolls back
            return _with_memo(cursor, load, row)

    def memo_alone(self, row: sa.RowMapping) -> Claim:
        """PostgreSQL: the claim of ``row`` with its recorded steps, read in autocommit
        (the steps cannot change while this executor holds the fence)."""
        load = self._free(self.sql.load_steps_alone_on_driver)
        with self._alone() as cursor:
            return _with_memo(cursor, load, row)

    def insert_step_alone(self, fence: int, values: Mapping[str, Any]) -> bool:
        """PostgreSQL: a new step row as one self-fencing statement in autocommit;
        False if the fence no longer holds."""
        statement = self._free(self.sql.insert_step_alone_on_driver)
        with self._alone() as cursor:
            return statement.execute(cursor, {**values, "fence": fence}) == 1

    def update_step_alone(self, values: Mapping[str, Any]) -> bool:
        """PostgreSQL: an existing step row's update (:func:`update_step_params`) as one
        self-fencing statement in autocommit; False if the fence no longer holds."""
        statement = self._free(self.sql.update_step_alone_on_driver)
        with self._alone() as cursor:
            return statement.execute(cursor, values) == 1

    def run_update_alone(self, status: RunStatus, values: Mapping[str, Any]) -> bool:
        """PostgreSQL: the run's fenced move to ``status`` (its end, or a park) with
        no step, one statement in autocommit; False if the fence no longer holds."""
        statement = self._free(self.sql.run_update_alone_on_driver.get(status))
        with self._alone() as cursor:
            return statement.execute(cursor, values) == 1

    def with_step_alone(self, status: RunStatus, values: Mapping[str, Any], new: bool) -> bool:
        """PostgreSQL: a step (``new``, or one the run has, updated) and the run's
        move to ``status`` (its end, or a park) as one statement in autocommit
        (store/one_statement.py); False if the fence no longer holds."""
        sql = self.sql
        statements = sql.with_step_alone_on_driver if new else sql.with_updated_step_alone_on_driver
        statement = self._free(statements.get(status))
        with self._alone() as cursor:
            return bool(statement.rows(cursor, values))

    def end_handing_over(
        self, status: RunStatus, step: str | None, values: Mapping[str, Any]
    ) -> list[sa.RowMapping]:
        """PostgreSQL: the run's end with its slot handed over, one statement in
        autocommit (store/one_statement.py's run_end_handing_over); its row, if the
        end was written."""
        statement = self._free(self.sql.end_handing_over_on_driver.get((status, step)))
        with self._alone() as cursor:
            return statement.rows(cursor, values)

    def fenced(
        self,
        fence: int,
        writes: Sequence[StepWrite],
        status: RunStatus | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> bool:
        """SQLite: new step rows and, with ``status``, the run's move there (its end,
        or a park), in one transaction; False (rolled back) if the fence no longer
        holds."""
        insert = self._free(self.sql.insert_step_on_driver)
        update = self.sql.run_update_on_driver.get(status) if status is not None else None
        end = self._free(update) if status is not None else None
        if not all(new for _, new in writes):
            raise DriverRefused("an existing step row is updated on SQLAlchemy's path")
        try:
            with self.write_lock(), driver_transaction(self.conn) as cursor:
                for values, _ in writes:
                    if insert.execute(cursor, {**values, "fence": fence}) != 1:
                        raise _Refused
                if end is not None and end.execute(cursor, params or {}) != 1:
                    raise _Refused
        except _Refused:
            return False
        return True


def _with_memo(cursor: Any, load: DriverStatement, row: sa.RowMapping) -> Claim:
    """The claim of ``row`` with its recorded steps (none before its first claim) and,
    for a step.parallel branch, its parent's, read on ``cursor``."""
    claim = Claim(run=row, fence=int(row["fence"]), steps={})
    if not claim.first:  # steps may have been recorded
        claim.steps = {r["key"]: r for r in load.rows(cursor, {"rid": row["id"]})}
    if row["branch"] is not None:
        parent = load.rows(cursor, {"rid": row["parent_run_id"]})
        claim.parent_steps = {r["key"]: r for r in parent}
    return claim
