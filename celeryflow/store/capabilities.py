"""What the store's database can do, decided once per store: the one place in store/
that reads the dialect. Everything else asks a :class:`Capabilities` which path to take.

The *fast paths* are shortcuts for the commonest writes: on PostgreSQL a claim, a
lone step write, the usual finish and the usual send are each one statement in
autocommit (store/one_statement.py), the first three on psycopg's cursor
(store/prepared.py); on SQLite the usual send is two statements in
one transaction, and new step rows, the claim and the usual finish go on the
driver's cursor (store/prepared.py).
Each has a general path (a short transaction through SQLAlchemy) that decides the
same way, and MySQL/MariaDB take only that one.

``CELERYFLOW_STORE_FAST_PATHS=0`` in the environment turns the fast paths off on every
database: a test and diagnostic switch, not a setting to run with (the general path
costs more round trips). The suite runs the PostgreSQL tests that exercise the fast
paths with it off (tests/test_general_path.py), so both paths stay correct. It is read
when a store first connects; worker processes inherit it.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

__all__ = ["FAST_PATHS_ENV", "Capabilities", "EventPath", "fast_paths_enabled"]

FAST_PATHS_ENV = "CELERYFLOW_STORE_FAST_PATHS"


class EventPath(enum.Enum):
    """How a single event whose runs have no flow control and no waiters is recorded."""

    GENERAL = "general"  # Store.record_events_on in a transaction
    ONE_STATEMENT = "one statement"  # PostgreSQL: the event and its runs, autocommit
    INSERT_THEN_RUNS = "insert then runs"  # SQLite: two statements, one transaction


def fast_paths_enabled() -> bool:
    """False when ``$CELERYFLOW_STORE_FAST_PATHS`` says off (``0``, ``false``, ``no``,
    ``off``)."""
    value = os.environ.get(FAST_PATHS_ENV, "").strip().lower()
    return value not in ("0", "false", "no", "off")


@dataclass(frozen=True)
class Capabilities:
    """One database's differences, as the store's code needs them."""

    name: str
    dialect: sa.Dialect = field(repr=False, compare=False)
    insert_returning: bool
    update_returning: bool
    # SELECT ... FOR UPDATE SKIP LOCKED (SQLite has one writer: it is already us)
    skip_locked: bool
    # MySQL/MariaDB: batch deletes run READ COMMITTED (no gap locks, fresh re-checks)
    read_committed_batches: bool
    # PostgreSQL: a claim's commit need not wait for its WAL flush (session.claim)
    async_claim: bool
    # PostgreSQL fast paths: the claim, a lone step write and the usual finish are one
    # statement each in autocommit
    one_statement_writes: bool
    # SQLite fast path: new step rows, the claim and the usual finish on the
    # driver's cursor (store/prepared.py)
    driver_writes: bool
    # PostgreSQL with psycopg 3: the one-statement claim, lone step write and usual
    # finish on the driver's cursor (store/prepared.py)
    driver_one_statement_writes: bool
    event_path: EventPath

    @classmethod
    def of(cls, dialect: sa.Dialect, *, fast_paths: bool | None = None) -> Capabilities:
        """The capabilities of ``dialect``; ``fast_paths`` None: as the environment says."""
        fast = fast_paths_enabled() if fast_paths is None else fast_paths
        name = dialect.name
        postgres = name == "postgresql"
        event_path = EventPath.GENERAL
        if fast and postgres:
            event_path = EventPath.ONE_STATEMENT
        elif fast and name == "sqlite":
            event_path = EventPath.INSERT_THEN_RUNS
        return cls(
            name=name,
            dialect=dialect,
            insert_returning=bool(dialect.insert_returning),
            update_returning=bool(dialect.update_returning),
            skip_locked=name != "sqlite",
            read_committed_batches=name in ("mysql", "mariadb"),
            async_claim=postgres,
            one_statement_writes=fast and postgres,
            driver_writes=fast and name == "sqlite",
            driver_one_statement_writes=fast and postgres and dialect.driver == "psycopg",
            event_path=event_path,
        )

    def insert_ignoring_duplicates(self, table: sa.Table) -> Any:
        """An INSERT into ``table`` that skips a row whose key exists."""
        if self.name == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing()
        if self.name == "sqlite":
            return sqlite.insert(table).on_conflict_do_nothing()
        return sa.insert(table).prefix_with("IGNORE")
