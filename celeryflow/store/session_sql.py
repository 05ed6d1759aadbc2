"""The run session's statements (store/session.py), built once per store, and the
paths the store's capabilities allow them (store/capabilities.py): SQLAlchemy's, one
self-fencing statement in autocommit (PostgreSQL), or the driver's cursor
(store/prepared.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from ..runs import RunStatus, sources_of
from .capabilities import Capabilities
from .one_statement import (
    run_end_handing_over,
    run_update_with_step,
    run_update_with_updated_step,
)
from .prepared import DriverStatement, positional_dialect
from .tables import runs, steps

__all__ = [
    "CLAIM_COLUMNS",
    "UNREGISTERED",
    "SessionStatements",
    "status_in",
    "update_step_params",
]

S = RunStatus
CLAIM_COLUMNS = (
    runs.c.id,
    runs.c.function_id,
    runs.c.events,
    runs.c.attempt,
    runs.c.fence,
    runs.c.status,
    runs.c.start_deadline,
    runs.c.finish_deadline,
    runs.c.parent_run_id,
    runs.c.parent_step,
    runs.c.branch,
    runs.c.concurrency_key1,
    runs.c.concurrency_key2,
    runs.c.queue_at,
    runs.c.context,
    runs.c.created_at,
)


# A run released by a worker that lacks its function carries this note in `error`
# while it stays queued; the next claim clears it.
UNREGISTERED = "FunctionNotRegistered"
_without_unregistered_note = sa.case(
    (runs.c.error.like(f'{{"type":"{UNREGISTERED}"%'), sa.null()), else_=runs.c.error
)


def status_in(values: Sequence[str]) -> sa.ColumnElement[bool]:
    """``status IN (...)`` with one plain parameter each: SQLAlchemy re-renders an
    expanding IN list on every execution, which cost more than the statement."""
    return sa.or_(*(runs.c.status == v for v in values))


def update_step_params(fence: int, values: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of :attr:`SessionStatements.update_step`: the step row
    ``values`` written over the row of its run and key, while ``fence`` holds."""
    params = {f"new_{c.name}": values.get(c.name) for c in steps.c}
    params.update(w_run_id=values["run_id"], w_key=values["key"], w_fence=fence)
    return params


class SessionStatements:
    """The executor's statements, built once per store, and the paths its
    capabilities allow (store/capabilities.py)."""

    def __init__(self, capabilities: Capabilities) -> None:
        self.update_returning = capabilities.update_returning
        self.async_claim = capabilities.async_claim
        self.insert_returning = capabilities.insert_returning
        P = sa.bindparam
        may_start = sa.and_(
            status_in([S.QUEUED.value, S.SLEEPING.value]),
            sa.or_(runs.c.wake_at.is_(None), runs.c.wake_at <= P("now")),
        )
        lease_lapsed = sa.and_(runs.c.status == S.RUNNING.value, runs.c.lease_expires_at < P("now"))
        # a run waiting for an event is claimable only at its timeout
        wait_expired = sa.and_(runs.c.status == S.WAITING.value, runs.c.wake_at <= P("now"))
        claim_values = {
            "status": S.RUNNING.value,
            "lease_owner": P("owner"),
            "lease_expires_at": P("lease_until"),
            "due_at": P("lease_until"),
            "wake_at": None,
            "fence": runs.c.fence + 1,
            "started_at": sa.func.coalesce(runs.c.started_at, P("now")),
            "error": _without_unregistered_note,
        }
        claimable = sa.or_(may_start, wait_expired, lease_lapsed)
        claim = runs.update().where(runs.c.id == P("rid"), claimable).values(**claim_values)
        self.claim = claim.returning(*CLAIM_COLUMNS) if self.update_returning else claim
        # PostgreSQL: a claim, or a single step write, is one statement sent in
        # autocommit (one round trip instead of BEGIN, statement, COMMIT). The claim
        # leaves out runs of concurrency-limited functions, which take their slot in
        # a transaction.
        self.single_statement_writes = capabilities.one_statement_writes
        # `<> ALL(array)`, not NOT IN: an expanding IN is re-rendered on every call.
        # The claim's commit need not wait for its WAL flush (see claim()); joining
        # set_config(..., true), evaluated once as an uncorrelated subquery, makes that
        # setting local to this one statement's transaction: no SET round trip.
        asynchronous_commit = sa.select(
            sa.func.set_config("synchronous_commit", "off", sa.true())
        ).scalar_subquery()
        self.claim_in_one_statement = claim.where(
            runs.c.function_id != sa.all_(P("limited", type_=postgresql.ARRAY(sa.String))),
            asynchronous_commit.is_not(None),
        ).returning(*CLAIM_COLUMNS)
        self.claimed = sa.select(*CLAIM_COLUMNS).where(runs.c.id == P("rid"))
        self.load_steps = steps.select().where(steps.c.run_id == P("rid"))
        # SQLite: new step rows, the claim and the usual finish skip SQLAlchemy's
        # execute path (store/prepared.py)
        on_driver = capabilities.driver_writes
        dialect = capabilities.dialect
        claim_on_driver = on_driver and self.update_returning
        self.claim_on_driver = DriverStatement(self.claim, dialect) if claim_on_driver else None
        self.load_steps_on_driver = DriverStatement(self.load_steps, dialect) if on_driver else None
        # PostgreSQL (psycopg): the one-statement writes on the driver's cursor
        alone = positional_dialect(dialect) if capabilities.driver_one_statement_writes else None
        self.claim_alone_on_driver = (
            DriverStatement(self.claim_in_one_statement, alone) if alone else None
        )
        self.load_steps_alone_on_driver = DriverStatement(self.load_steps, alone) if alone else None

        names = [c.name for c in steps.c]
        source = (
            sa.select(runs.c.id, *(P(n, type_=steps.c[n].type) for n in names if n != "run_id"))
            .where(runs.c.id == P("run_id"), runs.c.fence == P("fence"))
            # the shared row lock orders this write against a concurrent claim
            .with_for_update(read=True)
        )
        insert = steps.insert().from_select(names, source)
        self.insert_step = insert.returning(steps.c.key) if self.insert_returning else insert
        self.insert_step_on_driver = DriverStatement(insert, dialect) if on_driver else None
        self.insert_step_alone_on_driver = DriverStatement(insert, alone) if alone else None
        holds = sa.exists().where(runs.c.id == P("w_run_id"), runs.c.fence == P("w_fence"))
        self.update_step = (
            steps.update()
            .where(steps.c.run_id == P("w_run_id"), steps.c.key == P("w_key"), holds)
            .values(
                {
                    n: P(f"new_{n}", type_=steps.c[n].type)
                    for n in names
                    if n not in ("run_id", "key")
                }
            )
        )
        self.update_step_alone_on_driver = (
            DriverStatement(self.update_step, alone) if alone else None
        )

        def fenced_run_update(allowed: sa.ColumnElement[bool], **values: Any) -> sa.Update:
            """The run's UPDATE, only while this executor's fence holds and from the
            statuses ``allowed``."""
            fenced = sa.and_(runs.c.id == P("rid"), runs.c.fence == P("p_fence"), allowed)
            return runs.update().where(fenced).values(**values)

        self.move: dict[RunStatus, sa.Update] = {
            target: fenced_run_update(
                status_in(sources_of(target)),
                status=target.value,
                wake_at=P("p_wake_at"),
                due_at=P("p_due_at"),
                attempt=P("p_attempt"),
                lease_owner=None,
                lease_expires_at=None,
            )
            for target in (S.QUEUED, S.SLEEPING, S.WAITING)
        }
        # infrastructure failed under a running run: queued again, its attempt not
        # counted; only from running, so a park or end that did commit stays
        self.release = fenced_run_update(
            runs.c.status == S.RUNNING.value,
            status=S.QUEUED.value,
            wake_at=P("p_wake_at"),
            due_at=P("p_due_at"),
            lease_owner=None,
            lease_expires_at=None,
        )

        def finish(target: RunStatus) -> sa.Update:
            return fenced_run_update(
                status_in(sources_of(target)),
                status=target.value,
                output=P("p_output"),
                error=P("p_error"),
                ended_at=P("now"),
                due_at=None,
                wake_at=None,
                lease_owner=None,
                lease_expires_at=None,
            )

        self.finish: dict[RunStatus, sa.Update] = {t: finish(t) for t in (S.COMPLETED, S.FAILED)}
        # a run's end or park: with the one new step that led there, one statement
        # on PostgreSQL (store/one_statement.py) ...
        self.run_update: dict[RunStatus, sa.Update] = {**self.move, **self.finish}
        self.with_step = {t: run_update_with_step(u) for t, u in self.run_update.items()}
        self.with_step_alone_on_driver = (
            {t: DriverStatement(u, alone) for t, u in self.with_step.items()} if alone else {}
        )
        # ... or with the one step row it already has, updated (a sleep that ended)
        self.with_updated_step = {
            t: run_update_with_updated_step(u) for t, u in self.run_update.items()
        }
        self.with_updated_step_alone_on_driver = (
            {t: DriverStatement(u, alone) for t, u in self.with_updated_step.items()}
            if alone
            else {}
        )
        self.run_update_alone_on_driver = (
            {t: DriverStatement(u, alone) for t, u in self.run_update.items()} if alone else {}
        )
        self.run_update_on_driver = (
            {t: DriverStatement(u, dialect) for t, u in self.run_update.items()}
            if on_driver
            else {}
        )
        # a run's end that hands its concurrency slot to the run next in line, with
        # its one step (new, updated, or none), as one statement on PostgreSQL
        self.end_handing_over: dict[tuple[RunStatus, str | None], sa.Select[Any]] = {}
        self.end_handing_over_on_driver: dict[tuple[RunStatus, str | None], DriverStatement] = {}
        if self.single_statement_writes and capabilities.skip_locked:
            for target in (S.COMPLETED, S.FAILED):
                for step in (None, "new", "updated"):
                    # a fresh UPDATE: one compiled already (DriverStatement) keeps the
                    # empty RETURNING columns SQLAlchemy memoized then, in its copies
                    statement = run_end_handing_over(
                        finish(target), step, claim_values, claimable, CLAIM_COLUMNS
                    )
                    self.end_handing_over[target, step] = statement
                    if alone is not None:
                        driven = DriverStatement(statement, alone)
                        self.end_handing_over_on_driver[target, step] = driven
        # some write of this store may go on the driver (store/session_driver.py)
        self.on_driver = on_driver or alone is not None
