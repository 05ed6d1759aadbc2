"""Operating a store, as opposed to running on it: checking and migrating its schema,
finding a run by an id prefix, cancelling every run of a function, pausing and
resuming a function."""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ..errors import ConfigError, RunNotFound
from ..runs import RunStatus, sources_of
from .database import create_store_engine, display_url, sqlite_path
from .tables import paused_functions, runs
from .waits import cancel_run

__all__ = ["CANCELLABLE", "PAUSED_TTL", "StoreAdmin", "cancellable_statuses"]

# The states a run can be cancelled from (the rest have ended).
CANCELLABLE = tuple(sources_of(RunStatus.CANCELLED))
CANCEL_CHUNK = 200  # runs cancelled per transaction
# How long a process trusts the paused set it read: every send plans runs with it, so
# it is read at most once per this interval (a pause takes effect everywhere within
# it; in the pausing process at once).
PAUSED_TTL = 1.0


def cancellable_statuses(
    status: RunStatus | str | list[RunStatus | str] | None,
) -> list[RunStatus]:
    """``status`` as a list of states a run can be cancelled from; all of them for None."""
    allowed = [RunStatus(s) for s in CANCELLABLE]
    if status is None:
        return allowed
    chosen: list[RunStatus] = []
    for value in status if isinstance(status, list) else [status]:
        try:
            state: RunStatus | None = RunStatus(value)
        except ValueError:
            state = None
        if state is None or state not in allowed:
            raise ConfigError(
                f"status {getattr(value, 'value', value)!r}: runs can be cancelled only "
                f"from {', '.join(s.value for s in allowed)}"
            )
        chosen.append(state)
    return chosen


class StoreAdmin:
    """Mixed into :class:`~celeryflow.store.Store`."""

    if TYPE_CHECKING:
        url: str
        is_sqlite: bool
        auto_migrate: bool
        _engine: sa.Engine | None
        connect_timeout: timedelta | None
        _paused: tuple[float, frozenset[str]] | None

        @property
        def engine(self) -> sa.Engine: ...
        def _read(self) -> AbstractContextManager[sa.Connection]: ...
        def _write(self) -> AbstractContextManager[sa.Connection]: ...
        def insert_if_new(
            self, conn: sa.Connection, table: sa.Table, row: dict[str, Any]
        ) -> bool: ...

    # -- schema -----------------------------------------------------------------------

    def check(self) -> None:
        """Connect, and check the schema (or migrate it, with auto_migrate): raises
        StoreUnavailable if the store does not answer, ConfigError if not migrated."""
        if self._engine is None:
            self.engine  # noqa: B018 (building it checks the schema)
        else:
            self._check_schema(self._engine)

    def migrate(self) -> tuple[str | None, str | None]:
        """Bring the schema to the newest migration (idempotent, safe to run twice);
        returns the revisions before and after. A migration may rewrite big tables,
        so it runs without the statement timeout (the connect timeout holds)."""
        from .migrate import upgrade

        if self.is_sqlite:  # no statement timeout; and ":memory:" lives in its engine
            engine = self._engine or create_store_engine(self.url)
        else:
            engine = create_store_engine(self.url, connect_timeout=self.connect_timeout)
        try:
            with self._migration_lock():
                before, after = upgrade(engine)
        finally:
            if not self.is_sqlite:
                engine.dispose()
        if self.is_sqlite:
            self._engine = engine
        return before, after

    @contextmanager
    def _migration_lock(self) -> Iterator[None]:
        # Two workers starting on a fresh SQLite file must not both create tables.
        path = sqlite_path(self.url)
        if path is None or path == ":memory:":
            yield
            return
        with open(path + ".migrate-lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _check_schema(self, engine: sa.Engine) -> None:
        from .migrate import current_revision, head_revision

        with engine.connect() as conn:
            current = current_revision(conn)
        if current == head_revision():
            return
        if self.auto_migrate:
            from .migrate import upgrade

            with self._migration_lock():
                upgrade(engine)
            return
        where = display_url(engine.url)
        raise ConfigError(
            f"the celeryflow store at {where} is at schema revision {current or 'none'}, "
            f"not {head_revision()}: run `celeryflow migrate --store {where}` "
            "(or Flow(..., auto_migrate=True))"
        )

    # -- finding and cancelling runs --------------------------------------------------

    def run_id_for(self, prefix: str) -> str:
        """The one run whose id is ``prefix`` or starts with it. RunNotFound if none
        or several (the message says how many)."""
        with self._read() as conn:
            exact = conn.execute(sa.select(runs.c.id).where(runs.c.id == prefix)).scalar()
            if exact is not None:
                return str(exact)
            pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            like = runs.c.id.like(pattern, escape="\\")
            found = list(conn.execute(sa.select(runs.c.id).where(like).limit(2)).scalars())
            if len(found) == 1:
                return str(found[0])
            if not found:
                raise RunNotFound(f"no run with id {prefix!r} or an id starting with it")
            count = conn.execute(sa.select(sa.func.count()).where(like)).scalar_one()
        raise RunNotFound(f"the run id prefix {prefix!r} matches {count} runs; give more of it")

    def count_runs(self, function_id: str, statuses: Iterable[RunStatus | str]) -> int:
        """How many runs of ``function_id`` are in one of ``statuses``."""
        wanted = [RunStatus(s).value for s in statuses]
        with self._read() as conn:
            query = sa.select(sa.func.count()).where(
                runs.c.function_id == function_id, runs.c.status.in_(wanted)
            )
            return int(conn.execute(query).scalar_one())

    def cancel_runs(
        self,
        function_id: str,
        statuses: Iterable[RunStatus | str],
        now: datetime,
    ) -> int:
        """Cancel every run of ``function_id`` in one of ``statuses`` (each as
        :meth:`cancel` would: a parked run at once, a running one at its next step),
        a chunk per transaction; returns how many were cancelled."""
        wanted = [RunStatus(s).value for s in statuses]
        query = (
            sa.select(runs.c.id)
            .where(runs.c.function_id == function_id, runs.c.status.in_(wanted))
            .order_by(runs.c.id)
            .limit(CANCEL_CHUNK)
        )
        cancelled = 0
        after = ""
        while True:
            with self._write() as conn:
                ids = list(conn.execute(query.where(runs.c.id > after)).scalars())
                done = sum(cancel_run(conn, str(run_id), now) for run_id in ids)
            cancelled += done
            if len(ids) < CANCEL_CHUNK:
                return cancelled
            after = str(ids[-1])

    # -- pausing functions --------------------------------------------------------------

    def pause_function(self, function_id: str, now: datetime) -> bool:
        """Pause ``function_id``: events and cron slots start no run of it until
        :meth:`resume_function` (runs already started go on). False if it was paused."""
        row = {"function_id": function_id, "paused_at": now}
        with self._write() as conn:
            new = self.insert_if_new(conn, paused_functions, row)
        self._paused = None
        return new

    def resume_function(self, function_id: str) -> bool:
        """Undo :meth:`pause_function`; False if it was not paused."""
        with self._write() as conn:
            gone = conn.execute(
                paused_functions.delete().where(paused_functions.c.function_id == function_id)
            ).rowcount
        self._paused = None
        return bool(gone)

    def paused_functions(self) -> dict[str, datetime]:
        """The paused functions and when each was paused (read now, not cached)."""
        with self._read() as conn:
            rows = conn.execute(sa.select(paused_functions)).all()
        found = {str(row.function_id): row.paused_at for row in rows}
        self._paused = (time.monotonic(), frozenset(found))
        return found

    def paused_function_ids(self) -> frozenset[str]:
        """The ids of the paused functions, as read at most ``PAUSED_TTL`` ago (run
        planning asks on every send)."""
        cached = self._paused
        if cached is not None and time.monotonic() - cached[0] < PAUSED_TTL:
            return cached[1]
        return frozenset(self.paused_functions())
