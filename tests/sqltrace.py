"""Every statement a store's PostgreSQL connections send, whether through
SQLAlchemy or on psycopg's own cursor (store/prepared.py's driver writes skip
SQLAlchemy's cursor events, so those events alone would miss them)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event

__all__ = ["pg_statements"]

OnStatement = Callable[[str, bool, int], None]


@contextmanager
def pg_statements(
    engine: sa.Engine, on_statement: OnStatement | None = None
) -> Iterator[list[str]]:
    """The SQL sent meanwhile on connections checked out from ``engine`` (one line
    each); ``on_statement(sql, autocommit, id of the DBAPI connection)`` is called for
    each as it is sent."""
    sent: list[str] = []
    originals: dict[int, tuple[Any, Any]] = {}

    def recording(base: Any) -> Any:
        class Recording(base):  # type: ignore[misc, valid-type]
            def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
                sql = " ".join(str(query).split())
                sent.append(sql)
                if on_statement is not None:
                    on_statement(sql, bool(self.connection.autocommit), id(self.connection))
                return super().execute(query, params, **kwargs)

        return Recording

    def on_checkout(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        if id(dbapi_conn) not in originals:
            originals[id(dbapi_conn)] = (dbapi_conn, dbapi_conn.cursor_factory)
            dbapi_conn.cursor_factory = recording(dbapi_conn.cursor_factory)

    sa_event.listen(engine, "checkout", on_checkout)
    try:
        yield sent
    finally:
        sa_event.remove(engine, "checkout", on_checkout)
        for dbapi_conn, factory in originals.values():
            dbapi_conn.cursor_factory = factory
