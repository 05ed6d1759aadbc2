"""The one place that writes SQL: every state change of events, runs and steps.

Writes made on behalf of an executing run are *fenced*: they name the fence value
the executor got when it claimed the run, and do nothing if the run was claimed
again or cancelled since (DESIGN principle 3). The steady state costs one statement
and one commit per step.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from ..codec import from_json, to_json
from ..errors import RunNotFound
from ..events import Event
from ..flowcontrol import Admission
from ..runs import TERMINAL, Run, RunStatus, StepRecord, StepStatus
from .admin import StoreAdmin
from .capabilities import Capabilities, EventPath
from .database import SQLiteWriteLock, check_store_url, create_store_engine, sqlite_path
from .due import DueRun, take_due
from .flowkeys import admit, slot_heads, slot_waiting_keys
from .one_statement import (
    MAX_RUNS_IN_ONE_STATEMENT,
    event_insert,
    event_statement,
    event_statement_params,
)
from .prepared import DriverRefused, DriverStatement, driver_autocommit, positional_dialect
from .rows import RunRow
from .session import Claim, RunSession
from .session_sql import SessionStatements
from .tables import events, flow_keys, metadata, runs, steps, wait_fields
from .waits import cancel_run, register_wait, report_cancelled, resolve_parent, wake_waiters

__all__ = ["EVENT_DEDUP_WINDOW", "DueRun", "PlannedRun", "Recorded", "Store"]

EVENT_DEDUP_WINDOW = timedelta(hours=24)
FAST_MISS_MEMORY = 1.0  # seconds an event name skips the fast path after a miss
FAST_MISS_NAMES = 1024  # names remembered at most (then forgotten at once)
S = RunStatus


@dataclass
class PlannedRun:
    """A run to create, with the waiters (cancel_on) it starts with."""

    row: RunRow
    waits: list[dict[str, Any]] = field(default_factory=list)
    admission: Admission | None = None  # flow control that decides at recording time


@dataclass
class Recorded:
    """What recording events did: runs created, waiting runs resumed or cancelled."""

    created: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    planned: list[RunRow] = field(default_factory=list)  # every run row planned


class Store(StoreAdmin):
    """A SQL store at ``url`` (SQLite, PostgreSQL, MySQL/MariaDB).

    SQLite stores are created on first use; other databases are migrated explicitly
    with ``celeryflow migrate`` or :meth:`migrate`, unless ``auto_migrate=True``.
    The URL is checked at once (a ConfigError says how to fix it); the database is
    first connected to on first use.
    """

    def __init__(
        self,
        url: str,
        *,
        auto_migrate: bool | None = None,
        connect_timeout: timedelta | None = None,
        statement_timeout: timedelta | None = None,
    ) -> None:
        check_store_url(url)
        self.url = url
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        self.is_sqlite = sqlite_path(url) is not None
        self.auto_migrate = self.is_sqlite if auto_migrate is None else auto_migrate
        self._engine: sa.Engine | None = None
        self._capabilities: Capabilities | None = None
        self._lock = threading.Lock()
        self._session_sql: SessionStatements | None = None
        path = sqlite_path(url)
        self.write_lock: Callable[[], AbstractContextManager[None]] = (
            SQLiteWriteLock(path) if path and path != ":memory:" else nullcontext
        )
        self._insert_event: Any = None
        self._insert_field: Any = None
        self._insert_flow_key: Any = None
        self._event_statements: dict[int, Any] = {}  # by the number of runs
        self._event_statements_on_driver: dict[int, DriverStatement] = {}
        self._fast_misses: dict[str, float] = {}  # event name -> when its fast path wrote nothing
        self._event_insert: Any = None
        # an event id seen within this window starts nothing new (Flow's dedup_window)
        self.dedup_window = EVENT_DEDUP_WINDOW
        self._paused: tuple[float, frozenset[str]] | None = None  # see paused_function_ids

    # -- setup ------------------------------------------------------------------------

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    engine = create_store_engine(
                        self.url,
                        connect_timeout=self.connect_timeout,
                        statement_timeout=self.statement_timeout,
                    )
                    self._check_schema(engine)
                    self._engine = engine
        return self._engine

    def reopen(self, url: str, *, auto_migrate: bool | None = None) -> None:
        """Point this store at another database, closing the pooled connections to
        the old one (the pytest plugin gives tests their own store this way; every
        holder of this object follows). Not while runs execute."""
        old = self._engine
        dedup_window = self.dedup_window
        # a new Store's state, so nothing cached for the old database survives
        fresh = Store(
            url,
            auto_migrate=auto_migrate,
            connect_timeout=self.connect_timeout,
            statement_timeout=self.statement_timeout,
        )
        self.__dict__.update(fresh.__dict__)
        self.dedup_window = dedup_window
        if old is not None:
            old.dispose()

    def clear(self) -> None:
        """Delete every event, run, step and flow-control row (tests only: the pytest
        plugin empties a test database's store between tests)."""
        with self._write() as conn:
            for table in reversed(metadata.sorted_tables):
                conn.execute(table.delete())

    @property
    def capabilities(self) -> Capabilities:
        """The database's differences and the fast paths this store takes
        (store/capabilities.py); decided at the first connection."""
        if self._capabilities is None:
            self._capabilities = Capabilities.of(self.engine.dialect)
        return self._capabilities

    @property
    def dialect(self) -> str:
        return self.capabilities.name

    @contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        with self.write_lock(), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        with self.engine.connect() as conn:
            conn.execution_options(readonly=True)
            with conn.begin():
                yield conn

    def insert_if_new(self, conn: sa.Connection, table: sa.Table, row: dict[str, Any]) -> bool:
        """Insert ``row`` unless its primary key exists; True if it was inserted.
        (SQLAlchemy 2.1 with psycopg reports rowcount -1 for INSERTs: use RETURNING.)"""
        insert = self.capabilities.insert_ignoring_duplicates(table)
        if self.capabilities.insert_returning:
            key = next(iter(table.primary_key.columns))
            return conn.execute(insert.returning(key), row).first() is not None
        return bool(conn.execute(insert, row).rowcount == 1)

    # -- events -----------------------------------------------------------------------

    def record_events(
        self,
        items: Sequence[Event],
        plan_runs: Callable[[Event], list[PlannedRun]],
        now: datetime,
        *,
        resume_due: datetime | None = None,
        condition_holds: Callable[[str, dict[str, Any], dict[str, Any]], bool] | None = None,
    ) -> Recorded:
        """Store the events and, for each one not seen in the last 24 h, the runs
        ``plan_runs`` gives for it, and wake the runs waiting for it — all in one
        transaction. A lone event whose runs have no flow control and no waiters
        takes the event fast path where the store has one (store/capabilities.py)."""
        if len(items) == 1:
            planned = plan_runs(items[0])
            if self._record_event_fast_unless_waited(items[0], planned, now):
                return Recorded(created=[str(p.row["id"]) for p in planned])

            def plan_runs(_ev: Event) -> list[PlannedRun]:
                return planned  # planned once: the general path records the same runs

        with self._write() as conn:
            recorded = self.record_events_on(
                conn,
                items,
                plan_runs,
                now,
                resume_due=resume_due or now,
                condition_holds=condition_holds or (lambda *_: False),
            )
        # cancel_on and Singleton(mode="cancel") cancelled runs: what they started
        # goes too, once their cancel has committed
        if recorded.cancelled:
            self.cancel_descendants(recorded.cancelled, now)
        return recorded

    def _record_event_fast_unless_waited(
        self, event: Event, planned: list[PlannedRun], now: datetime
    ) -> bool:
        """:meth:`_record_event_fast`, not tried for a name whose last try wrote nothing
        in the last second (runs wait for it, or its id was a duplicate): that try is
        a round trip the general path repeats. A stale memory costs only that."""
        missed = self._fast_misses.get(event.name)
        if missed is not None and time.monotonic() - missed < FAST_MISS_MEMORY:
            return False
        if self._record_event_fast(event, planned, now):
            return True
        if len(self._fast_misses) >= FAST_MISS_NAMES:
            self._fast_misses.clear()
        self._fast_misses[event.name] = time.monotonic()
        return False

    def _record_event_fast(self, event: Event, planned: list[PlannedRun], now: datetime) -> bool:
        """Record ``event`` and its plain runs (no flow control, no waiters) if its id
        is new and no run waits for its name: one statement on PostgreSQL, two on
        SQLite (store/one_statement.py). False when it wrote nothing (no fast path
        here, or it does not apply): the general path must decide."""
        path = self.capabilities.event_path
        if (
            path is EventPath.GENERAL
            or len(planned) > MAX_RUNS_IN_ONE_STATEMENT
            or any(p.admission or p.waits for p in planned)
        ):
            return False
        rows = [p.row for p in planned]
        values = {
            "id": event.id,
            "name": event.name,
            "data": to_json(event.data, f"event {event.name!r} data"),
            "ts": event.ts,
            "received_at": now,
        }
        if path is EventPath.INSERT_THEN_RUNS:
            if self._event_insert is None:
                self._event_insert = event_insert("sqlite")
            with self._write() as conn:
                params = event_statement_params(values, [])
                if conn.execute(self._event_insert, params).first() is None:
                    return False
                if rows:
                    conn.execute(runs.insert(), rows)
                return True
        statement = self._event_statements.get(len(rows))
        if statement is None:
            statement = self._event_statements[len(rows)] = event_statement(len(rows))
        params = event_statement_params(values, rows)
        with self.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            if self.capabilities.driver_one_statement_writes:
                on_driver = self._event_statements_on_driver.get(len(rows))
                if on_driver is None:
                    dialect = positional_dialect(self.capabilities.dialect)
                    on_driver = DriverStatement(statement, dialect)
                    self._event_statements_on_driver[len(rows)] = on_driver
                try:
                    with driver_autocommit(conn) as cursor:
                        found = on_driver.rows(cursor, params)
                except DriverRefused:
                    pass  # SQLAlchemy's path below: the same write, or the error classified
                else:
                    return bool(found) and next(iter(found[0].values())) == 1
            with conn.begin():  # no BEGIN is sent: only SQLAlchemy's bookkeeping
                result = conn.execute(statement, params)
                return bool(result.scalar() == 1)

    def record_events_on(
        self,
        conn: sa.Connection,
        items: Sequence[Event],
        plan_runs: Callable[[Event], list[PlannedRun]],
        now: datetime,
        *,
        resume_due: datetime,
        condition_holds: Callable[[str, dict[str, Any], dict[str, Any]], bool],
    ) -> Recorded:
        """:meth:`record_events` inside the caller's transaction (``step.send_event``
        records its events together with its step)."""
        recorded = Recorded()
        planned: list[PlannedRun] = []
        redeliver_after = max(resume_due - now, timedelta(0))
        if self._insert_event is None:
            insert = self.capabilities.insert_ignoring_duplicates(events)
            if self.capabilities.insert_returning:
                insert = insert.returning(events.c.id)
            self._insert_event = insert
        insert_event = self._insert_event
        cutoff = now - self.dedup_window
        fields_seen: dict[str, list[str]] = {}  # wait fields per event name, see wake_waiters
        rows = [
            {
                "id": ev.id,
                "name": ev.name,
                "data": to_json(ev.data, f"event {ev.name!r} data"),
                "ts": ev.ts,
                "received_at": now,
            }
            for ev in items
        ]
        inserted: set[str] | None = None
        if len(rows) > 1 and self.capabilities.insert_returning:
            # one executemany (batched into multi-row INSERTs) instead of a round trip
            # per event; an id repeated within the call counts once, as before
            inserted = set(conn.execute(insert_event, rows).scalars())
        taken: set[str] = set()
        for ev, values in zip(items, rows, strict=True):
            if inserted is not None:
                fresh = ev.id in inserted and ev.id not in taken
                taken.add(str(ev.id))
            elif self.capabilities.insert_returning:
                fresh = conn.execute(insert_event, values).first() is not None
            else:
                fresh = conn.execute(insert_event, values).rowcount == 1
            if not fresh and (inserted is None or ev.id not in inserted):
                # An id seen before the dedup window counts as new again.
                fresh = (
                    conn.execute(
                        events.update()
                        .where(events.c.id == ev.id, events.c.received_at < cutoff)
                        .values(**values)
                    ).rowcount
                    == 1
                )
            if not fresh:
                continue
            runs_planned = plan_runs(ev)
            recorded.planned.extend(p.row for p in runs_planned)
            for p in runs_planned:
                if not p.admission:
                    planned.append(p)
                    continue
                # inserted at once: the next event of this batch may depend on it
                admitted = admit(
                    conn, self.insert_flow_key(), p.row, p.admission, now, redeliver_after
                )
                recorded.created.extend(admitted.ring)
                recorded.cancelled.extend(admitted.cancelled)
                if admitted.row is None:
                    continue
                conn.execute(runs.insert(), [admitted.row])
                if admitted.row["status"] != S.SKIPPED.value:
                    for wait in p.waits:
                        register_wait(conn, self.insert_wait_field(), wait)
                        fields_seen.clear()
                    recorded.created.append(str(admitted.row["id"]))
            woken = wake_waiters(
                conn,
                ev.model_dump(),
                now=now,
                resume_due=resume_due,
                condition_holds=condition_holds,
                fields_seen=fields_seen,
            )
            recorded.resumed.extend(woken.runs)
            recorded.cancelled.extend(woken.cancelled)
        if planned:
            conn.execute(runs.insert(), [p.row for p in planned])
            for p in planned:
                for wait in p.waits:
                    register_wait(conn, self.insert_wait_field(), wait)
        recorded.created.extend(str(p.row["id"]) for p in planned)
        return recorded

    def insert_flow_key(self) -> Any:
        if self._insert_flow_key is None:
            self._insert_flow_key = self.capabilities.insert_ignoring_duplicates(flow_keys)
        return self._insert_flow_key

    def insert_wait_field(self) -> Any:
        if self._insert_field is None:
            self._insert_field = self.capabilities.insert_ignoring_duplicates(wait_fields)
        return self._insert_field

    def insert_runs(self, rows: list[RunRow]) -> None:
        with self._write() as conn:
            conn.execute(runs.insert(), rows)

    # -- executing a run --------------------------------------------------------------

    def session_statements(self) -> SessionStatements:
        if self._session_sql is None:
            self._session_sql = SessionStatements(self.capabilities)
        return self._session_sql

    def session(self) -> RunSession:
        """A held connection for one execution of a run (claim, steps, park, finish)."""
        return RunSession(self)

    def claim(self, run_id: str, owner: str, now: datetime, lease_until: datetime) -> Claim | None:
        with self.session() as session:
            return session.claim(run_id, owner, now, lease_until)

    def peek(self, run_id: str) -> sa.RowMapping | None:
        with self._read() as conn:
            return conn.execute(runs.select().where(runs.c.id == run_id)).mappings().first()

    def renew_leases(self, held: Sequence[tuple[str, int]], until: datetime) -> list[str]:
        """Extend the leases this process holds; returns the run ids it lost (taken
        over or cancelled: the fence moved on). A run its executor parked or ended
        meanwhile keeps its fence and is not lost, only no longer running."""
        lost: list[str] = []
        with self._write() as conn:
            for run_id, fence in held:
                renewed = conn.execute(
                    runs.update()
                    .where(
                        runs.c.id == run_id,
                        runs.c.fence == fence,
                        runs.c.status == S.RUNNING.value,
                    )
                    .values(lease_expires_at=until, due_at=until)
                ).rowcount
                if renewed == 1:
                    continue
                now_fence = conn.execute(
                    sa.select(runs.c.fence).where(runs.c.id == run_id)
                ).scalar()
                if now_fence != fence:
                    lost.append(run_id)
        return lost

    def resolve_step(
        self,
        run_id: str,
        key: str,
        *,
        output: str | None,
        error: str | None,
        now: datetime,
        resume_due: datetime,
    ) -> str:
        """Complete (or fail) a run's waiting step from outside (a legacy task's
        outcome) and queue the run: "resolved"; "early" if the step is not recorded
        yet while the run goes on; "gone" if it was resolved already or the run ended."""
        with self._write() as conn:
            if resolve_parent(
                conn, run_id, key, output=output, error=error, now=now, resume_due=resume_due
            ):
                return "resolved"
            recorded = conn.execute(
                sa.select(steps.c.status).where(steps.c.run_id == run_id, steps.c.key == key)
            ).scalar()
            status = conn.execute(sa.select(runs.c.status).where(runs.c.id == run_id)).scalar()
        if status is None or RunStatus(status) in TERMINAL:
            return "gone"
        if recorded is None or recorded == StepStatus.WAITING.value:
            # not recorded yet, or recorded by a commit that landed between the two
            # statements above: try again shortly
            return "early"
        return "gone"  # resolved already (its timeout, a duplicate callback)

    # -- concurrency slots ------------------------------------------------------------

    def next_for_slots(
        self, function_id: str, keys: Sequence[str | None], limits: Sequence[int], now: datetime
    ) -> list[str]:
        """The runs first in line for the free slots of these concurrency keys (to
        ring when a run leaves its slot)."""
        heads: list[str] = []
        with self._read() as conn:
            for index, (key, limit) in enumerate(zip(keys, limits, strict=False)):
                if key is not None:
                    heads += slot_heads(conn, function_id, index, key, limit, now)
        return list(dict.fromkeys(heads))

    def parked_for_slots(self, function_id: str, limits: Sequence[int], now: datetime) -> list[str]:
        """The reconciler's pass over one function: runs first in line for a free
        slot, for every key with runs parked on it (covers a lost doorbell, and a
        slot freed by a lease that lapsed)."""
        heads: list[str] = []
        with self._read() as conn:
            for index, limit in enumerate(limits):
                for key in slot_waiting_keys(conn, function_id, index):
                    heads += slot_heads(conn, function_id, index, key, limit, now)
        return list(dict.fromkeys(heads))

    # -- reconciling ------------------------------------------------------------------

    def take_due(
        self,
        now: datetime,
        lookahead: timedelta,
        redeliver_after: timedelta,
        limit: int = 500,
        *,
        consuming_since: datetime | None = None,
        ended: list[dict[str, Any]] | None = None,
    ) -> list[DueRun]:
        """Runs whose next move is due (or, for sleepers, due within ``lookahead``);
        the rules are in ``due.py``. ``ended`` gets the rows of the cancelled runs
        whose end this pass must tell the hooks (``cancel_run``, DESIGN 9)."""
        expired: list[str] = []
        told: list[str] = []
        with self._write() as conn:
            due = take_due(
                conn,
                now,
                lookahead,
                redeliver_after,
                limit=limit,
                skip_locked=self.capabilities.skip_locked,
                cancelled=expired,
                consuming_since=consuming_since,
                ended=told,
            )
            if told and ended is not None:
                ended += self._hook_rows(conn, told)
        if expired:  # cancelled by their Timeouts: what they started goes too
            self.cancel_descendants(expired, now)
        return due

    @staticmethod
    def _hook_rows(conn: sa.Connection, run_ids: list[str]) -> list[dict[str, Any]]:
        query = sa.select(
            runs.c.id,
            runs.c.function_id,
            runs.c.attempt,
            runs.c.events,
            runs.c.context,
            runs.c.parent_run_id,
            runs.c.created_at,
        ).where(runs.c.id.in_(run_ids))
        return [dict(row) for row in conn.execute(query).mappings()]

    def report_cancelled(self, run_id: str) -> bool:
        """True if the caller is the one to tell the hooks that this cancelled run
        ended (see ``cancel_run``); False if someone did already, or it is not
        cancelled."""
        with self._write() as conn:
            return bool(report_cancelled(conn, [run_id]))

    def woken(self, now: datetime, limit: int = 500) -> list[str]:
        """Parked runs whose wake time has come (a retry back-off, a sleep, a wait's
        timeout), soonest first: what ``celeryflow.testing.run_due`` executes."""
        parked = (S.QUEUED.value, S.SLEEPING.value, S.WAITING.value)
        query = (
            sa.select(runs.c.id)
            .where(runs.c.status.in_(parked), runs.c.wake_at <= now)
            .order_by(runs.c.wake_at)
            .limit(limit)
        )
        with self._read() as conn:
            return [str(run_id) for run_id in conn.execute(query).scalars()]

    # -- reading and control ----------------------------------------------------------

    def get_run(self, run_id: str) -> Run:
        with self._read() as conn:
            row = conn.execute(runs.select().where(runs.c.id == run_id)).mappings().first()
            if row is None:
                raise RunNotFound(f"no run with id {run_id!r}")
            step_rows = conn.execute(
                steps.select().where(steps.c.run_id == run_id).order_by(steps.c.position)
            ).mappings()
            return self._to_run(row, list(step_rows))

    def list_runs(
        self,
        *,
        event_id: str | None = None,
        function_id: str | None = None,
        status: RunStatus | str | None = None,
        limit: int = 100,
    ) -> list[Run]:
        query = runs.select().order_by(runs.c.created_at.desc(), runs.c.id.desc()).limit(limit)
        if event_id is not None:
            query = query.where(runs.c.event_id == event_id)
        if function_id is not None:
            query = query.where(runs.c.function_id == function_id)
        if status is not None:
            query = query.where(runs.c.status == RunStatus(status).value)
        with self._read() as conn:
            return [self._to_run(row, None) for row in conn.execute(query).mappings()]

    def cancel(self, run_id: str, now: datetime, *, children: bool = True) -> bool:
        """Cancel at once; a running executor finds its fence gone at its next write.
        Then, unless ``children`` is False, the runs it started
        (:meth:`cancel_descendants`)."""
        with self._write() as conn:
            done = cancel_run(conn, run_id, now)
            exists = done or (
                conn.execute(sa.select(runs.c.status).where(runs.c.id == run_id)).first()
                is not None
            )
        if done:
            if children:
                self.cancel_descendants([run_id], now)
            return True
        if not exists:
            raise RunNotFound(f"no run with id {run_id!r}")
        return False

    def cancel_branches(self, parent_run_id: str, key: str, now: datetime) -> list[str]:
        """Cancel the branches of a parallel step that are still out (a race was
        won, or a branch failed). One transaction per branch: each locks the
        branch's run row, then the parent's step, in the order a finishing branch
        does, so the two can never deadlock."""
        with self._read() as conn:
            out = conn.execute(
                sa.select(runs.c.id).where(
                    runs.c.parent_run_id == parent_run_id,
                    runs.c.parent_step == key,
                    runs.c.branch.is_not(None),
                    runs.c.status.not_in([s.value for s in TERMINAL]),
                )
            ).scalars()
            candidates = list(out)
        return [run_id for run_id in candidates if self.cancel(run_id, now)]

    @staticmethod
    def _to_run(row: sa.RowMapping, step_rows: list[sa.RowMapping] | None) -> Run:
        return Run(
            id=row["id"],
            function_id=row["function_id"],
            event_id=row["event_id"],
            status=RunStatus(row["status"]),
            output=from_json(row["output"]),
            error=from_json(row["error"]),
            attempt=row["attempt"],
            events=from_json(row["events"]),
            parent_run_id=row["parent_run_id"],
            branch=row["branch"],
            wake_at=row["wake_at"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            ended_at=row["ended_at"],
            steps=[
                StepRecord(
                    id=s["key"],
                    name=s["name"],
                    kind=s["kind"],
                    status=s["status"],
                    output=from_json(s["output"]),
                    error=from_json(s["error"]),
                    attempts=s["attempts"],
                    position=s["position"],
                    wake_at=s["wake_at"],
                    started_at=s["started_at"],
                    ended_at=s["ended_at"],
                )
                for s in (step_rows or [])
            ],
        )
